"""Where a site trains (site.yaml device / threads / amp): validation, what `check` prints, a GPU that is not there.

This machine has no GPU and a CPU-only torch, so the CUDA paths are checked for what they must do without one:
refuse with the file, the key and the install command. GPU figures come from `fedrad-bench throughput`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from client.site_options import command_hardware
from shared.config import ConfigError, SiteDataConfig
from shared.hardware import CUDA_INSTALL, Hardware, placed, resolve_hardware, resolve_threads, usable_cores
from shared.models import build_model
from shared.tasks.classification.dataset import SiteDataset
from shared.training import TrainConfig, train_model
from tests import dicom_factory as f

CLI = [sys.executable, "-m", "client"]
needs_cpu_torch = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")


def _site(tmp_path: Path, **extra: object) -> Path:
    data = tmp_path / "dicom"
    rows = ["SOPInstanceUID,label"]
    for i in range(4):
        ds = f.write_image(data / f"P{i}" / f"IM{i}", f.phantom(64, 64, seed=i), patient_id=f"P{i}")
        rows.append(f"{ds.SOPInstanceUID},{'nodule' if i % 2 else 'normal'}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    doc = {"data": "dicom", "labels": "labels.csv", "classes": ["normal", "nodule"], **extra}
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _check(config: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [*CLI, "check", "--config", str(config), "--json"], capture_output=True, text=True, timeout=120, env=env
    )


def test_device_and_threads_are_validated_with_the_key_named() -> None:
    assert SiteDataConfig(data="d", device="CUDA:1").device == "cuda:1"
    assert SiteDataConfig(data="d", threads="auto").threads == "auto"
    assert SiteDataConfig(data="d", threads="8").threads == 8
    for bad in ({"device": "gpu"}, {"device": "cuda:x"}, {"threads": 0}, {"threads": "many"}, {"threads": True}):
        with pytest.raises(ValueError, match="device|threads"):
            SiteDataConfig(data="d", **bad)


def test_auto_threads_are_the_cores_this_process_may_use() -> None:
    assert resolve_threads("auto") == usable_cores() == len(os.sched_getaffinity(0))
    assert resolve_threads(3) == 3


@needs_cpu_torch
def test_a_gpu_asked_for_on_a_cpu_only_machine_is_refused_with_the_install_command() -> None:
    assert resolve_hardware("auto", 2).device == "cpu"  # auto falls back; only an explicit GPU is an error
    with pytest.raises(ConfigError) as err:
        resolve_hardware("cuda:0", 1, where="/etc/fedrad/site.yaml: key 'device'")
    message = str(err.value)
    assert "/etc/fedrad/site.yaml: key 'device'" in message and CUDA_INSTALL in message and "cuda:0" in message


@needs_cpu_torch
def test_a_command_flag_overrides_site_yaml_and_its_error_names_the_flag(tmp_path: Path) -> None:
    cfg = SiteDataConfig(data="d", device="cpu", threads=1)
    hw = command_hardware(cfg, tmp_path / "site.yaml", threads=2)
    try:
        assert (hw.device, hw.threads, torch.get_num_threads()) == ("cpu", 2, 2)
        with pytest.raises(ConfigError, match="--device"):
            command_hardware(cfg, tmp_path / "site.yaml", device="cuda")
        with pytest.raises(ConfigError, match="--device: must be auto, cpu"):
            command_hardware(cfg, tmp_path / "site.yaml", device="tpu")
    finally:
        torch.set_num_threads(1)


def test_check_prints_what_the_site_trains_on(tmp_path: Path) -> None:
    proc = _check(_site(tmp_path, device="cpu", threads=1))
    assert proc.returncode == 0, proc.stderr
    hw = json.loads(proc.stdout)["hardware"]
    assert (hw["device"], hw["threads"], hw["amp"], hw["memory_bytes"]) == ("cpu", 1, False, None)
    assert hw["name"]
    env = {**os.environ, "COLUMNS": "200"}
    text = subprocess.run(
        [*CLI, "check", "--config", str(tmp_path / "site.yaml")], capture_output=True, text=True, timeout=120, env=env
    )
    assert "Trains on cpu (" in text.stdout and "1 threads, float32" in text.stdout


@needs_cpu_torch
def test_check_refuses_device_cuda_without_a_gpu_naming_the_file(tmp_path: Path) -> None:
    config = _site(tmp_path, device="cuda")
    proc = _check(config)
    assert proc.returncode == 2
    out = proc.stdout + proc.stderr
    assert f"{config}: key 'device'" in out and "download.pytorch.org/whl/cu" in out and "Traceback" not in out


def test_training_on_cpu_hardware_gives_the_same_weights_as_before() -> None:
    """The CPU path is untouched by the device code: an explicit CPU Hardware trains bit for bit like the default."""
    g = torch.Generator().manual_seed(0)
    data = SiteDataset(torch.rand(12, 1, 32, 32, generator=g), torch.tensor([0, 1] * 6), ["normal", "nodule"])
    cfg = TrainConfig(epochs=1, batch_size=4, augment=1.0, seed=3)
    a, b = build_model("smallcnn", 2, 32), build_model("smallcnn", 2, 32)
    b.load_state_dict(a.state_dict())
    train_model(a, data, cfg)
    train_model(b, data, cfg, hardware=Hardware.cpu(torch.get_num_threads()))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k


def test_placing_on_the_cpu_leaves_the_model_alone() -> None:
    model = build_model("smallcnn", 2, 32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with placed(model, Hardware.cpu(1)) as channels_last:
        assert channels_last is False
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_inference_batches_are_capped_by_pixels_not_by_count() -> None:
    """256 images a batch at 64 px as before; a 512 px backbone evaluates 16 at a time, a volume fewer."""
    from shared.training import inference_batch_size

    assert inference_batch_size(256, (64, 64)) == 256
    assert inference_batch_size(256, (224, 224)) == 83
    assert inference_batch_size(256, (512, 512)) == 16
    assert inference_batch_size(256, (128, 256, 256)) == 1
    model = build_model("smallcnn", 2, 32)
    images = torch.rand(10, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    from shared.training import batched_logits

    assert torch.allclose(batched_logits(model, images, 3), batched_logits(model, images, 10), atol=1e-6)
