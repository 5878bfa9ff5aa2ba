"""Scanner-appearance augmentation: off means untouched, on means reproducible, in range, and per image."""

from __future__ import annotations

import pytest
import torch

from shared.augment import BatchAugment, ComposedAugment, build_augment
from shared.scanner_augment import ScannerAugment, _rewindow
from shared.training import TrainConfig


class Always(ScannerAugment):
    p = 1.0  # re-image every image (the default leaves half as they are)


@pytest.fixture
def images() -> torch.Tensor:
    """Smooth, structured images in [0, 1] (a ramp plus a blob), so blur and curves change them visibly."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 32), torch.linspace(-1, 1, 32), indexing="ij")
    base = 0.3 + 0.4 * (xs + 1) / 2 + 0.3 * torch.exp(-((xs - 0.2) ** 2 + ys**2) / 0.05)
    return base.clamp(0, 1).expand(6, 1, 32, 32).clone()


def test_strength_zero_is_off_and_build_augment_keeps_the_plain_augmentation(images: torch.Tensor) -> None:
    assert ScannerAugment(0.0)(images) is images
    assert isinstance(build_augment(1.0), BatchAugment)
    composed = build_augment(0.0, scanner=1.0)
    assert isinstance(composed, ComposedAugment) and composed.enabled
    with pytest.raises(ValueError, match="scanner augmentation strength"):
        ScannerAugment(-0.5)
    with pytest.raises(ValueError, match="scanner_augment"):
        TrainConfig(scanner_augment=-1.0)


def test_output_is_windowed_like_ingest_and_the_input_is_untouched(images: torch.Tensor) -> None:
    before = images.clone()
    out = Always(1.0)(images, torch.Generator().manual_seed(0))
    assert torch.equal(images, before)
    assert out.shape == images.shape and out.dtype == images.dtype
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    flat = out.flatten(1)
    assert torch.all(flat.amin(1) == 0.0) and torch.all(flat.amax(1) == 1.0)  # percentile window: both ends used
    assert not torch.allclose(out, images, atol=0.02)


def test_it_is_reproducible_from_the_generator_and_draws_per_image(images: torch.Tensor) -> None:
    aug = Always(1.0)
    a = aug(images, torch.Generator().manual_seed(3))
    b = aug(images, torch.Generator().manual_seed(3))
    c = aug(images, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # The six input images are identical; their augmented versions must all differ.
    assert len({tuple(img.flatten()[:64].tolist()) for img in a}) == len(a)


def test_by_default_a_share_of_images_keeps_its_own_scanner_look() -> None:
    x = torch.rand(200, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    out = ScannerAugment(1.0)(x, torch.Generator().manual_seed(1))
    kept = (out == x).flatten(1).all(1).float().mean().item()
    assert kept == pytest.approx(1 - ScannerAugment.p, abs=0.1)


def test_collimator_borders_are_bright_and_leave_the_middle_alone(images: torch.Tensor) -> None:
    class OnlyCollimation(Always):
        max_bias = max_blur_px = max_log_gamma = max_noise_std = sigmoid_p = 0.0
        collimation_p = 1.0
        max_collimation = 0.2

    out = OnlyCollimation(1.0)(images, torch.Generator().manual_seed(1))
    # Margins are drawn in [0, 20 %] of the side per edge; at least one edge per image must be bright.
    edges = torch.stack([out[:, 0, :, 0], out[:, 0, :, -1], out[:, 0, 0, :], out[:, 0, -1, :]], dim=1)
    assert torch.all((edges == 1.0).all(dim=2).any(dim=1))
    centre = out[:, 0, 12:20, 12:20]
    assert torch.allclose(centre, _rewindow(images)[:, 0, 12:20, 12:20], atol=0.15)  # only the window moved


def test_a_monotone_curve_keeps_the_order_of_pixel_values(images: torch.Tensor) -> None:
    class OnlyCurve(Always):
        max_bias = max_blur_px = max_noise_std = collimation_p = 0.0
        sigmoid_p = 1.0

    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    out = OnlyCurve(1.0)(x, torch.Generator().manual_seed(2))
    # Sorted by the input's values, the output never decreases (ties only where the window clips)...
    ranked = torch.gather(out.flatten(1), 1, x.flatten(1).argsort(1))
    assert torch.all(ranked[:, 1:] >= ranked[:, :-1])
    # ...while the values themselves moved: the contrast curve changed.
    assert not torch.allclose(out, _rewindow(x), atol=0.02)


def test_consortium_yaml_to_site_training_carries_the_strength(tmp_path) -> None:
    """consortium.yaml ``scanner_augment`` → run config → every round's train config → the site's TrainConfig."""
    import yaml

    from client.federated import train_config
    from server.app import RunConfigError, RunSettings
    from server.consortium import consortium_yaml_text, parse_consortium

    data = yaml.safe_load(consortium_yaml_text("Net", "fedrad.example.org:9443")) | {"scanner_augment": 0.5}
    run = parse_consortium(data).to_run_config(run_dir=tmp_path / "r")
    assert run["scanner-augment"] == 0.5
    sent = RunSettings.from_run_config(run).train_config(1)
    task = RunSettings.from_run_config(run).task
    assert train_config(task, sent).scanner_augment == 0.5
    assert train_config(task, {}).scanner_augment == 0.0  # off unless the coordinator asks
    with pytest.raises(RunConfigError, match="'scanner-augment'"):
        RunSettings.from_run_config({**run, "scanner-augment": -1})
    with pytest.raises(RunConfigError, match="scanner-appearance augmentation is not available for segmentation"):
        RunSettings.from_run_config({**run, "task-type": "segmentation", "labels": "nodule", "scanner-augment": 1.0})


def test_a_multi_channel_batch_is_refused_not_silently_mixed() -> None:
    with pytest.raises(ValueError, match="expected 1 channel, got 3"):
        ScannerAugment(1.0)(torch.rand(2, 3, 16, 16))
