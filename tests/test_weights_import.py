"""Plain PyTorch state dicts (torchvision ImageNet, torchxrayvision, a colleague's) start FedRad's clinical backbones.

The source files are made here with torchvision's exact key names, order and shapes (recorded from torchvision
in ``tests/data/torchvision_layouts.json``; FedRad does not depend on torchvision) and random values, so every
placed tensor can be traced back to the one it came from.
"""

from __future__ import annotations

import copy
import re
import socket
from pathlib import Path

import pytest
import torch

from shared.models import CLINICAL_BACKBONES, MODEL_BUILDERS, build_model
from shared.weights_import import WeightsImportError, import_weights_file
from tests.torchvision_files import monai_densenet_key, torchvision_state

SIZE = 64


@pytest.fixture(scope="module")
def fresh() -> dict:
    """Each clinical backbone built once (1 channel, 2 outputs, 64 px); tests import into deep copies."""
    torch.manual_seed(0)
    return {name: build_model(name, 2, SIZE) for name in CLINICAL_BACKBONES}


def _import(fresh: dict, name: str, path: Path):
    model = copy.deepcopy(fresh[name])
    return model, import_weights_file(model, path, architecture=name)


@pytest.mark.parametrize("wrap", ["plain", "module-prefix", "state_dict-wrapper", "both"])
def test_torchvision_densenet_maps_onto_fedrad_densenet121(fresh, tmp_path: Path, wrap: str) -> None:
    src = torchvision_state("densenet121")
    saved = {f"module.{k}": v for k, v in src.items()} if wrap in ("module-prefix", "both") else src
    if wrap in ("state_dict-wrapper", "both"):
        saved = {"epoch": 90, "state_dict": saved, "optimizer": {"lr": 0.1}}
    torch.save(saved, tmp_path / "densenet121-imagenet.pt")
    model, report = _import(fresh, "densenet121", tmp_path / "densenet121-imagenet.pt")
    got = model.state_dict()

    # the stem: one filter per output, the sum of its R, G and B filters
    assert got["features.conv0.weight"].shape == (64, 1, 7, 7)
    assert torch.allclose(got["features.conv0.weight"], src["features.conv0.weight"].sum(dim=1, keepdim=True))
    # every other backbone tensor is the source's, under MONAI's name
    for key, value in src.items():
        if key.startswith(("classifier.", "features.conv0.")):
            continue
        assert torch.equal(got[monai_densenet_key(key)], value), key
    # the head: 1000 ImageNet classes do not fit 2 outputs, so it keeps its fresh init and the report says so
    head = ["class_layers.out.weight", "class_layers.out.bias"]
    assert all(torch.equal(got[k], fresh["densenet121"].state_dict()[k]) for k in head)
    prefix = "module." if wrap in ("module-prefix", "both") else ""
    assert set(report.unplaced) == {f"{prefix}classifier.weight", f"{prefix}classifier.bias"}
    assert report.left_at_init == head and report.head_fresh
    assert report.placed == report.tensors - 2 and report.placed_by_position == 0
    assert report.counters_reset == 0
    assert report.container == ("['state_dict']" if "wrapper" in wrap or wrap == "both" else "")
    text = "\n".join(report.lines())
    assert "summed into 1" in text and f"{prefix}classifier.weight" in text and "class_layers.out.bias" in text


def test_torchvisions_legacy_densenet_file_old_names_and_no_counters(fresh, tmp_path: Path) -> None:
    """torchvision's published DenseNet file predates its own names (``norm.1``) and BatchNorm counters."""
    src = {k: v for k, v in torchvision_state("densenet121", seed=1).items() if not k.endswith("num_batches_tracked")}
    legacy = {re.sub(r"(denselayer\d+)\.(norm|relu|conv)([12])\.", r"\1.\2.\3.", k): v for k, v in src.items()}
    assert "features.denseblock1.denselayer1.norm.1.weight" in legacy
    path = tmp_path / "densenet121-a639ec97.pth"
    torch.save(legacy, path, _use_new_zipfile_serialization=False)  # the format of that era
    model, report = _import(fresh, "densenet121", path)
    got = model.state_dict()
    assert torch.equal(
        got["features.denseblock1.denselayer1.layers.norm1.weight"],
        legacy["features.denseblock1.denselayer1.norm.1.weight"],
    )
    assert report.placed == report.tensors - 2
    assert report.counters_reset == sum(k.endswith("num_batches_tracked") for k in got)


def test_torchxrayvision_densenet_one_channel_stem_is_copied_and_extras_are_named(fresh, tmp_path: Path) -> None:
    """A torchxrayvision DenseNet: already one channel, 18 findings, an ``op_threshs`` buffer."""
    src = torchvision_state("densenet121", seed=2, channels=1, classes=18)
    src["op_threshs"] = torch.rand(18)
    torch.save(src, tmp_path / "xrv-densenet121-res224-all.pt")
    model, report = _import(fresh, "densenet121", tmp_path / "xrv-densenet121-res224-all.pt")
    assert torch.equal(model.state_dict()["features.conv0.weight"], src["features.conv0.weight"])
    assert report.first_conv == ""  # nothing to adapt
    assert set(report.unplaced) == {"classifier.weight", "classifier.bias", "op_threshs"}
    assert "no layer of densenet121" in report.unplaced["op_threshs"]


def test_a_colleagues_fedrad_shaped_checkpoint_loads_whole_head_included(fresh, tmp_path: Path) -> None:
    """Same network, same outputs, MONAI names, wrapped as {'model': ...} with a 'model.' prefix: all of it fits."""
    torch.manual_seed(5)
    colleague = build_model("densenet121", 2, SIZE).state_dict()
    torch.save({"model": {f"model.{k}": v for k, v in colleague.items()}}, tmp_path / "colleague.ckpt")
    model, report = _import(fresh, "densenet121", tmp_path / "colleague.ckpt")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in colleague.items())
    assert report.unplaced == {} and report.left_at_init == [] and not report.head_fresh
    assert report.prefixes == {"model.": len(colleague)}
    assert "loaded from the file" in "\n".join(report.lines())


def test_torchvision_resnet50_maps_name_for_name(fresh, tmp_path: Path) -> None:
    src = torchvision_state("resnet50", seed=3)
    torch.save({f"module.{k}": v for k, v in src.items()}, tmp_path / "resnet50-imagenet.pt")
    model, report = _import(fresh, "resnet50", tmp_path / "resnet50-imagenet.pt")
    got = model.state_dict()
    assert torch.allclose(got["conv1.weight"], src["conv1.weight"].sum(dim=1, keepdim=True))
    assert all(torch.equal(got[k], v) for k, v in src.items() if not k.startswith(("fc.", "conv1.")))
    assert set(report.unplaced) == {"module.fc.weight", "module.fc.bias"}
    assert report.left_at_init == ["fc.weight", "fc.bias"]
    assert report.params_placed == report.params - sum(got[k].numel() for k in ("fc.weight", "fc.bias"))


def test_torchvision_efficientnet_b0_maps_by_position_onto_monais_names(fresh, tmp_path: Path) -> None:
    """torchvision's ``features.N.M.block…`` and MONAI's ``_blocks.K…``: one network, other names, same order."""
    src = torchvision_state("efficientnet_b0", seed=4)
    torch.save({"state_dict": src}, tmp_path / "efficientnet_b0-imagenet.pt")
    model, report = _import(fresh, "efficientnet_b0", tmp_path / "efficientnet_b0-imagenet.pt")
    got = model.state_dict()
    assert torch.allclose(got["_conv_stem.weight"], src["features.0.0.weight"].sum(dim=1, keepdim=True))
    pairs = {
        "features.1.0.block.0.0.weight": "_blocks.0.0._depthwise_conv.weight",  # stage 1: no expansion
        "features.1.0.block.1.fc1.weight": "_blocks.0.0._se_reduce.weight",
        "features.2.0.block.0.0.weight": "_blocks.1.1._expand_conv.weight",  # MONAI counts blocks across stages
        "features.6.3.block.3.1.running_var": "_blocks.5.14._bn2.running_var",
        "features.8.0.weight": "_conv_head.weight",
        "features.8.1.bias": "_bn1.bias",
    }
    for theirs, ours in pairs.items():
        assert torch.equal(got[ours], src[theirs]), (theirs, ours)
    assert report.placed_by_position == report.placed == report.tensors - 2
    assert set(report.unplaced) == {"classifier.1.weight", "classifier.1.bias"}
    assert report.left_at_init == ["_fc.weight", "_fc.bias"]


def test_a_file_of_another_network_is_an_error_naming_file_and_network(fresh, tmp_path: Path) -> None:
    torch.save(torchvision_state("resnet50"), tmp_path / "resnet50.pt")
    with pytest.raises(WeightsImportError) as exc:
        _import(fresh, "densenet121", tmp_path / "resnet50.pt")
    msg = str(exc.value)
    assert str(tmp_path / "resnet50.pt") in msg and "densenet121" in msg and "a ResNet" in msg


@pytest.mark.parametrize(
    "content, expected",
    [
        (b"not a checkpoint at all", "not a PyTorch file"),
        ("whole-model", "never unpickles"),
        ({"epoch": 3, "optimizer": {"lr": 0.1}}, "no state dict found"),
        ("missing", "not found"),
    ],
)
def test_unreadable_weights_files_are_named_errors(fresh, tmp_path: Path, content, expected: str) -> None:
    path = tmp_path / "weights.pt"
    if content == "whole-model":
        torch.save(torch.nn.Linear(2, 2), path)  # torch.save(model): pickled code, not weights
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, dict):
        torch.save(content, path)
    with pytest.raises(WeightsImportError, match=expected) as exc:
        _import(fresh, "resnet50", path)
    assert str(path) in str(exc.value)


@pytest.mark.parametrize("name", CLINICAL_BACKBONES)
def test_backbones_name_the_input_size_they_need(name: str) -> None:
    with pytest.raises(ValueError, match=rf"{name} needs at least 32 px"):
        build_model(name, 2, 16)
    from server.consortium import parse_consortium
    from shared.config import ConfigError

    with pytest.raises(ConfigError, match="at least 32 px"):
        parse_consortium({"name": "c", "address": "127.0.0.1:9443", "task": {"model": name, "image_size": 16}})


def test_backbones_run_at_test_sizes_and_take_any_number_of_outputs(fresh) -> None:
    for name, model in fresh.items():
        assert model(torch.rand(2, 1, SIZE, SIZE)).shape == (2, 2), name
    small = build_model("efficientnet_b0", 5, 32).eval()
    assert small(torch.rand(1, 1, 32, 32)).shape == (1, 5)


def test_building_every_architecture_downloads_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """weights=None everywhere: no socket opens and torch.hub's cache stays empty."""
    hub = tmp_path / "hub"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))

    def no_network(*args, **kwargs):
        raise AssertionError(f"a network connection was attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for name in MODEL_BUILDERS:
        build_model(name, 2, SIZE)
    assert not hub.exists() and not (tmp_path / "torch-home").exists()
