"""3D segmentation evaluation: Dice and HD95 in mm, sliding-window inference, memory, aggregate keys, report, export."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

from client.outbound_guard import guard_reply
from server.strategies.validation import validate_eval_reply
from shared.tasks import TaskSpec, get_task
from shared.tasks.segmentation3d.dataset import PatchSampling, VolumeCases
from shared.tasks.segmentation3d.evaluation import evaluate_cases
from shared.tasks.segmentation3d.inference import predict_volume, volume_logits
from shared.tasks.segmentation3d.local_evaluation import evaluate_volumes
from shared.tasks.segmentation3d.metrics import hd95_mm, score_case, summarize
from shared.tasks.segmentation3d.models import build_seg3d_model
from shared.tasks.segmentation3d.sampling import PatchBatches
from shared.training import TrainConfig, seed_everything, train_model
from tests.seg3d_cases import LABELS, make_cases
from tests.test_strategies import reply

TASK = get_task("segmentation3d")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def trained() -> torch.nn.Module:
    """A unet trained briefly: good on some cases, not all (the report shows a Dice range)."""
    torch.set_num_threads(1)
    seed_everything(0)
    model = build_seg3d_model("unet", 2, 32)
    train_model(model, make_cases(4), TrainConfig(epochs=8, batch_size=2, lr=3e-3, seed=0))
    return model.eval()


def box(shape: tuple[int, int, int], lo: tuple[int, int, int], hi: tuple[int, int, int]) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] = True
    return m


# --- metrics -----------------------------------------------------------------------------------------


def test_hd95_of_a_box_shifted_two_slices_is_six_mm_at_three_mm_slices() -> None:
    a = box((40, 40, 40), (10, 5, 5), (20, 35, 35))
    b = box((40, 40, 40), (12, 5, 5), (22, 35, 35))  # two voxels along axis 0
    assert hd95_mm(a, b, (3.0, 1.0, 1.0)) == pytest.approx(6.0)
    assert hd95_mm(a, b, (1.0, 1.0, 1.0)) == pytest.approx(2.0)
    sideways = box((40, 40, 40), (10, 5, 7), (20, 35, 37))  # two voxels along axis 2, 1 mm each
    assert hd95_mm(a, sideways, (3.0, 1.0, 1.0)) == pytest.approx(2.0)
    zz, yy, xx = np.indices((40, 40, 40))
    sphere = (zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2 <= 64
    shifted = (zz - 22) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2 <= 64
    assert 3.0 < hd95_mm(sphere, shifted, (3.0, 1.0, 1.0)) <= 6.0  # at most the 6 mm shift, more than 2 voxels


def test_identical_maps_score_one_and_zero_and_empty_labels_follow_the_policy() -> None:
    ref = np.zeros((20, 20, 20), np.uint8)
    ref[5:10, 5:10, 5:10] = 1
    same = score_case(ref, ref, 3, (2.0, 1.0, 1.0))
    # label 1 identical; labels 2 and 3 absent from both: Dice 1, HD95 undefined
    np.testing.assert_array_equal(same.dice, [1.0, 1.0, 1.0])
    assert same.hd95[0] == 0.0 and np.isnan(same.hd95[1:]).all()
    pred = np.zeros_like(ref)
    pred[12:15, 12:15, 12:15] = 2  # misses label 1, invents label 2
    miss = score_case(pred, ref, 3, (2.0, 1.0, 1.0))
    np.testing.assert_array_equal(miss.dice, [0.0, 0.0, 1.0])
    assert np.isnan(miss.hd95).all()
    summary = summarize([same, miss], ["a", "b", "c"], n_bootstrap=50)
    a, b, c = summary.per_label.values()
    assert a.hd95_mm_mean == 0.0 and a.n_hd95_mm == 1 and a.n_hd95_undefined == 1 and a.n_false_negative == 1
    assert b.hd95_mm_mean is None and b.n_false_positive == 1 and b.n_both_empty == 1 and b.n_hd95_undefined == 2
    assert c.dice_mean == 1.0 and c.n_both_empty == 2
    assert summary.mean_dice == pytest.approx((0.5 + 0.5 + 1.0) / 3)
    assert "cases" not in summary.to_json() and len(summary.to_json(include_cases=True)["cases"]["dice"]) == 2


# --- inference and memory ------------------------------------------------------------------------------


def test_sliding_window_output_has_the_volumes_shape_whatever_its_size(trained: torch.nn.Module) -> None:
    for shape in ((40, 37, 45), (20, 50, 33)):  # larger than the 32³ window, and smaller along axis 0
        logits = volume_logits(trained, np.random.default_rng(0).random(shape, dtype=np.float32), 32)
        assert tuple(logits.shape) == (3, *shape) and logits.dtype == torch.float32
    data = make_cases(1, seed=3)
    pred = predict_volume(trained, data, 0)
    assert pred.shape == data.shape(0) and pred.dtype == np.uint8 and set(np.unique(pred)) <= {0, 1, 2}
    assert trained.training is False


def test_memmapped_cases_are_read_a_patch_at_a_time(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images, maps = [], []
    for i in range(4):  # four 128³ volumes: 8 MiB of float32 each, 40 MiB on disk in all
        img = rng.random((128, 128, 128), dtype=np.float32)
        lab = np.zeros(img.shape, np.uint8)
        lab[40:60, 50:90, 30:70] = 1
        images.append(tmp_path / f"img{i}.npy")
        maps.append(tmp_path / f"lab{i}.npy")
        np.save(images[-1], img)
        np.save(maps[-1], lab)
    del img, lab
    data = VolumeCases.from_npy(
        images, maps, [(1.0, 1.0, 1.0)] * 4, ["box"], sampling=PatchSampling(patch_size=32, patches_per_case=8)
    )
    assert all(isinstance(a, np.memmap) for a in data.images + data.label_maps)
    tracemalloc.start()
    try:
        for _ in PatchBatches(data, 4).epoch(torch.Generator().manual_seed(0)):
            pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    one_volume = 128**3 * 4
    assert peak < one_volume / 4, f"sampling allocated {peak / 2**20:.1f} MiB"  # patches and tables, no volume
    # Mapped pages once read are handed back: neither the epoch of patches from every case nor an evaluation of
    # every volume leaves the cache files in this process's resident set (without that: 40 MiB here).
    assert evaluate_cases(torch.nn.Conv3d(1, 2, 1), data, with_hd95=False).loss > 0
    kept = resident_bytes_of(tmp_path)
    assert kept < one_volume / 2, f"{kept / 2**20:.1f} MiB of the cache files' pages still resident"


def resident_bytes_of(folder: Path) -> int:
    """Bytes of this process's resident set that are mapped pages of files under ``folder`` (Linux smaps)."""
    smaps = Path("/proc/self/smaps")
    if not smaps.exists():
        pytest.skip("no /proc/self/smaps here")
    total, inside = 0, False
    for line in smaps.read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:  # a mapping's header line
            inside = len(fields) > 5 and fields[5].startswith(str(folder))
        elif inside and fields[0] == "Rss:":
            total += int(fields[1]) * 1024
    return total


# --- what leaves the site --------------------------------------------------------------------------


def test_site_metrics_are_aggregates_the_guard_and_the_server_accept(trained: torch.nn.Module) -> None:
    data = make_cases(3, seed=4)
    metrics = TASK.site_metrics(trained, data, seed=0)
    assert metrics["num-examples"] == 3 and 0 <= metrics["dice-mean"] <= 1
    allowed = set(TASK.example_metrics(LABELS))
    assert set(metrics) <= allowed and not any("px" in k for k in allowed)
    for key, value in metrics.items():
        assert np.isscalar(value), key  # never a per-case array
        assert TASK.metric_count_key(key, LABELS) is not False or key in ("num-examples", "loss")
    spec = TaskSpec("segmentation3d", tuple(LABELS), "unet", 32)
    guarded = guard_reply("evaluate", incoming={}, arrays=None, metrics=metrics, min_count=1, task=spec)
    assert guarded.metrics == metrics, guarded.decisions
    assert TASK.metric_count_key("hd95-px-sphere", LABELS) is False  # volumes always have a spacing
    assert TASK.metric_count_key("dice-liver", LABELS) is False  # not one of the task's segments
    assert TASK.per_site("dice-sphere-ci-low") and TASK.metric_bounds("dice-cube") == (0.0, 1.0)
    clean, problem = validate_eval_reply(reply(1, None, metrics).content, spec)
    assert problem is None and clean["dice-mean"] == pytest.approx(metrics["dice-mean"])


def test_local_scores_and_benchmark_scores_lead_with_the_headline(trained: torch.nn.Module) -> None:
    data = make_cases(2, seed=5)
    scores = TASK.local_scores(trained, data, threshold=None, n_bootstrap=20, seed=0)
    assert next(iter(scores)) == "dice-mean" and "hd95-mm-sphere_ci95" in scores
    fast = TASK.score(trained, data)
    assert list(fast) == TASK.score_keys(LABELS) and fast["dice-mean"] == pytest.approx(scores["dice-mean"])


def test_evaluate_writes_the_report_with_axial_and_coronal_montages(trained: torch.nn.Module, tmp_path: Path) -> None:
    data = make_cases(5, seed=6)
    metrics = evaluate_volumes(trained, data, tmp_path / "report", model_info={"architecture": "unet"}, n_bootstrap=50)
    assert metrics["n_cases"] == 5 and metrics["hd95_unit"] == "mm" and set(metrics["per_label"]) == set(LABELS)
    for name in ("report.html", "metrics.json", "predictions.csv", "montage-axial.png", "montage-coronal.png"):
        path = tmp_path / "report" / name
        assert path.stat().st_size > 0, name
        assert path.stat().st_mode & 0o077 == 0, name  # per-case results: owner-only
    for png in ("montage-axial.png", "montage-coronal.png"):
        assert (tmp_path / "report" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "report" / "report.html").read_text()
    assert "HD95, millimetres" in page and "HD95 undefined" in page and page.count("data:image/png") == 2
    assert len((tmp_path / "report" / "predictions.csv").read_text().splitlines()) == 6


def test_a_ct_export_loads_as_cases_read_from_the_cache(tmp_path: Path) -> None:
    """DICOM series + SEG/RTSTRUCT → cases at the consortium's spacing, images read patch by patch from the cache."""
    from shared.config import SiteDataConfig
    from shared.imaging.volume_store import StoredArray
    from shared.synth.ct_cohort import write_ct_cohort

    write_ct_cohort(tmp_path / "ct", n_sites=1, seed=1, unseen=0, patients_per_site=2, size=32)
    cfg = SiteDataConfig(data=tmp_path / "ct" / "site-1" / "dicom", image_size=16, cache_dir=tmp_path / "cache")
    data = TASK.load_site(cfg, ["liver", "lesion"], tmp_path / "site.yaml", spacing="8", patches_per_case="2")
    assert len(data) == 2 and data.sampling.patch_size == 16 and data.sampling.patches_per_case == 2
    assert all(isinstance(a, StoredArray) for a in data.images + data.label_maps)  # nothing held in memory
    assert all(s == (8.0, 8.0, 8.0) for s in data.spacing)
    image = data.read_image(0)
    assert image.dtype == np.float32 and 0.0 <= image.min() and image.max() <= 1.0
    assert data.presence()[:, 0].all()  # every patient has a liver
    with pytest.raises(ValueError, match="task.spacing"):
        TASK.load_site(cfg, ["liver"], tmp_path / "site.yaml", spacing="0")


def test_a_3d_model_file_exports_as_onnx_with_a_softmax_over_background_and_labels(
    trained: torch.nn.Module, tmp_path: Path
) -> None:
    """Checkpoint → model file → ``fedrad-server export --format onnx``: the graph takes (N, 1, p, p, p) patches."""
    import onnxruntime

    from server.checkpoints import RunDir, RunTask
    from server.enrollment import init_consortium
    from server.export import export_model

    c = tmp_path / "consortium"
    init_consortium(c, "CT Export", "127.0.0.1:9443")
    run = RunDir(c / "runs" / "r1")
    options = TASK.check_options({"spacing": "3x1.5x1.5", "window": "lung"})
    task = RunTask(TaskSpec("segmentation3d", tuple(LABELS), "unet", 32, options), "CT Export", "fedavg", 0)
    run.prepare(task, resume=False)
    run.save_round(1, trained.state_dict(), task=task, num_server_rounds=1, metrics={"round": 1, "eval": {}})
    result = export_model(c, tmp_path / "ct.onnx", fmt="onnx")
    assert result["max_gap"] is not None and result["max_gap"] < 1e-5
    x = torch.rand(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    session = onnxruntime.InferenceSession(str(tmp_path / "ct.onnx"))
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        expected = torch.softmax(trained(x), dim=1).numpy()
    assert got.shape == (1, 3, 32, 32, 32) and np.abs(got - expected).max() < 1e-4
    card = Path(result["model_card"]).read_text()
    assert "(N, 1, S, S, S)" in card and "input 1×32×32×32," in card
    assert "spacing: resampled to 3x1.5x1.5 mm" in card and "CT lung (level -600 HU, width 1500 HU)" in card
    assert "LPS patient coordinates" in card and "pad to square" not in card


def test_train_local_on_ct_series_writes_a_3d_model_file_with_its_preprocessing(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from client.cli import app
    from shared.modelfile import load_model_file
    from shared.synth.ct_cohort import write_ct_cohort

    write_ct_cohort(tmp_path / "ct", n_sites=1, seed=2, unseen=0, patients_per_site=3, size=32)
    site = ["--data", str(tmp_path / "ct" / "site-1" / "dicom"), "--cache-dir", str(tmp_path / "cache")]
    refused = CliRunner().invoke(app, ["train-local", *site, "--volumes", "--out", str(tmp_path / "x.pt")])
    assert refused.exit_code == 2 and "--volumes needs --segments" in refused.output
    args = ["train-local", *site, "--volumes", "--segments", "liver,lesion", "--spacing", "8", "--window", "-50/400"]
    args += ["--image-size", "16", "--epochs", "1", "--threads", "1", "--out", str(tmp_path / "local.pt"), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    loaded = load_model_file(tmp_path / "local.pt")
    assert loaded.task == "segmentation3d" and list(loaded.labels) == ["liver", "lesion"]
    assert loaded.task_options["spacing"] == "8x8x8" and loaded.task_options["window"] == "-50/400"
