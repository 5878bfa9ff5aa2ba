"""The histogram-equalisation input layer: invariant to a scanner's contrast curve, free of parameters, exportable."""

from __future__ import annotations

import pytest
import torch

from shared.intensity import HistogramEqualize
from shared.models import build_model


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand((3, 1, 16, 16), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("curve", [lambda x: x**0.5, lambda x: torch.sigmoid(8 * (x - 0.45)), lambda x: 3 * x - 1])
def test_any_monotone_contrast_curve_gives_the_same_input(images: torch.Tensor, curve) -> None:
    eq = HistogramEqualize()
    assert torch.equal(eq(curve(images)), eq(images))
    assert not torch.equal(curve(images), images)


def test_each_image_is_spread_over_zero_to_one_and_ties_stay_tied(images: torch.Tensor) -> None:
    images[0, 0, :8] = 0.0  # a clipped, unexposed band
    out = HistogramEqualize()(images)
    assert out.shape == images.shape and float(out.max()) == 1.0 and float(out.min()) > 0.0
    band = out[0, 0, :8]
    assert torch.all(band == band[0, 0]) and float(band[0, 0]) == pytest.approx(128 / 256)
    assert torch.equal(HistogramEqualize()(images[1:2]), out[1:2])  # per image: the batch does not matter


@pytest.mark.parametrize(("plain", "equalized"), [("smallcnn", "smallcnn-eq"), ("smallcnn-gn", "smallcnn-gn-eq")])
def test_the_lever_adds_no_weights_so_fedbn_and_aggregation_see_the_same_model(plain: str, equalized: str) -> None:
    torch.manual_seed(0)
    a = build_model(plain, 2, 32)
    torch.manual_seed(0)
    b = build_model(equalized, 2, 32)
    assert list(a.state_dict()) == list(b.state_dict())
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    x = torch.rand((2, 1, 32, 32))
    with torch.no_grad():
        assert torch.equal(b.eval()(x**2), b(x)) and not torch.equal(a.eval()(x**2), a(x))


def test_torchscript_keeps_the_layer() -> None:
    model = build_model("smallcnn-eq", 2, 32).eval()
    x = torch.rand((4, 1, 32, 32))
    scripted = torch.jit.trace(model, x)
    with torch.no_grad():
        assert torch.allclose(scripted(x**3), model(x), atol=1e-6)


def test_onnx_export_of_an_equalizing_model_is_refused_with_the_way_out(tmp_path) -> None:
    from server.checkpoints import RunDir, RunTask
    from server.enrollment import init_consortium
    from server.export import export_model
    from shared.config import ConfigError
    from shared.tasks import TaskSpec

    c = tmp_path / "consortium"
    init_consortium(c, "Eq Net", "127.0.0.1:9443")
    task = RunTask(TaskSpec("classification", ("normal", "nodule"), "smallcnn-eq", 32), "Eq Net", "fedavg", 0)
    run = RunDir(c / "runs" / "r1")
    run.prepare(task, resume=False)
    run.save_round(
        1,
        build_model("smallcnn-eq", 2, 32).state_dict(),
        task=task,
        num_server_rounds=1,
        metrics={"round": 1, "sites_answered": 2},
        eval_auc=None,
    )
    with pytest.raises(ConfigError, match="smallcnn-eq.*--format torchscript"):
        export_model(c, tmp_path / "g.onnx", run_dir=c / "runs" / "r1", fmt="onnx")
    info = export_model(c, tmp_path / "g.ts", run_dir=c / "runs" / "r1", fmt="torchscript")
    assert info["max_gap"] <= 1e-5 and info["architecture"] == "smallcnn-eq"
