"""Architectures build by name, run on (B, 1, S, S) inputs, and expose their normalisation state for FedBN."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from shared.models import MODEL_BUILDERS, build_model, norm_layer_names


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("name", sorted(MODEL_BUILDERS))
def test_each_model_builds_and_runs_forward(name):
    torch.manual_seed(0)
    model = build_model(name, num_classes=3, image_size=64).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 1, 64, 64))
    assert out.shape == (2, 3)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_unknown_architecture_names_the_known_ones():
    with pytest.raises(ValueError) as exc:
        build_model("vgg99", 2, 64)
    msg = str(exc.value)
    assert "vgg99" in msg and "smallcnn" in msg and "densenet121" in msg and "resnet18" in msg


def test_bad_architecture_option_is_a_value_error():
    with pytest.raises(ValueError, match="smallcnn"):
        build_model("smallcnn", 2, 64, no_such_option=1)


def test_smallcnn_too_small_input_is_rejected():
    with pytest.raises(ValueError, match="image_size"):
        build_model("smallcnn", 2, 8)


def test_smallcnn_options_change_the_network():
    model = build_model("smallcnn", 2, 32, channels=(8, 16), dropout=0.0)
    assert model.classifier.in_features == 16
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 2)


def test_norm_layer_names_finds_every_batchnorm_key_of_smallcnn():
    model = build_model("smallcnn", 2, 64)
    keys = norm_layer_names(model)
    expected = set()
    for mod_name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            expected |= {
                f"{mod_name}.{k}" for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
            }
    assert len(expected) == 4 * 5
    assert keys == expected
    assert keys <= set(model.state_dict())
    # Convolutions and the classifier are federated, never treated as norm state.
    assert not any(k.startswith("classifier") for k in keys)
    conv_keys = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    assert not (keys & conv_keys)


def test_norm_layer_names_works_for_monai_resnet():
    model = build_model("resnet18", 2, 64)
    keys = norm_layer_names(model)
    assert keys and keys <= set(model.state_dict())
    assert all(("bn" in k or "downsample" in k) for k in keys)
    assert any(k.endswith("running_var") for k in keys)
