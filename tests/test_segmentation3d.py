"""3D segmentation: volume cases, patch sampling, models, and training through the one loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shared.batches import ImageBatches
from shared.hardware import is_2d_convnet
from shared.modelfile import weights_sha256
from shared.tasks import get_task
from shared.tasks.segmentation3d.augment import intensity_augment
from shared.tasks.segmentation3d.dataset import PatchSampling, VolumeCases
from shared.tasks.segmentation3d.models import SEG3D_MODEL_BUILDERS, build_seg3d_model
from shared.tasks.segmentation3d.sampling import PatchBatches, candidates_of, crop_region, read_patch
from shared.training import TrainConfig, seed_everything, train_model
from tests.seg3d_cases import LABELS, make_cases, write_npy_cases

TASK = get_task("segmentation3d")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


# --- dataset -----------------------------------------------------------------------------------------


def test_cases_differ_in_shape_and_subsets_share_the_arrays() -> None:
    data = make_cases(4)
    assert len({data.shape(i) for i in range(4)}) > 1
    sub = data.subset([2, 0])
    assert len(sub) == 2 and sub.images[0] is data.images[2] and sub.groups == ["patient-2", "patient-0"]
    assert sub.sampling == data.sampling and sub.cache == {"counts": {}}
    data.label_counts(2)
    assert list(data.subset([1, 2]).cache["counts"]) == [1]  # counted once, kept by position


def test_uint16_volumes_need_and_use_their_scale(tmp_path: Path) -> None:
    data = make_cases(2)
    images, maps = write_npy_cases(data, tmp_path, uint16=True)
    with pytest.raises(ValueError, match="intensity_scale"):
        VolumeCases.from_npy(images, maps, data.spacing, LABELS)
    stored = VolumeCases.from_npy(images, maps, data.spacing, LABELS, intensity_scale=1 / 65535)
    assert isinstance(stored.images[0], np.memmap) and stored.images[0].dtype == np.uint16
    region = (slice(3, 9), slice(0, 5), slice(10, 20))
    got = stored.read_image(0, region)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, data.read_image(0, region), atol=0.5 / 65535 + 1e-6)


def test_bad_cases_are_refused_naming_the_problem() -> None:
    img, lab = np.zeros((8, 8, 8), np.float32), np.zeros((8, 8, 8), np.uint8)
    with pytest.raises(ValueError, match="must both be"):
        VolumeCases.from_arrays([img], [lab[:4]], [(1, 1, 1)], ["a"])
    with pytest.raises(ValueError, match="uint8"):
        VolumeCases.from_arrays([img], [lab.astype(np.int32)], [(1, 1, 1)], ["a"])
    with pytest.raises(ValueError, match="spacing"):
        VolumeCases.from_arrays([img], [lab], [(1, 0, 1)], ["a"])
    lab[2, 2, 2] = 3
    data = VolumeCases.from_arrays([img], [lab], [(1, 1, 1)], ["a", "b"])
    with pytest.raises(ValueError, match="label value 3"):
        data.label_counts(0)


def test_split_keeps_patients_apart() -> None:
    data = make_cases(8)
    data.groups = [f"p{i // 2}" for i in range(8)]
    train, held = TASK.split(data, 0.25, seed=0)
    assert len(train) + len(held) == 8 and len(held) >= 1
    assert not set(train.groups) & set(held.groups)
    assert TASK.output_counts(data) == {"sphere": 8, "cube": 8}


# --- patch sampling ----------------------------------------------------------------------------------


def test_foreground_share_is_respected_and_patches_lie_inside() -> None:
    data = make_cases(4, patches_per_case=50)
    for share in (0.0, 0.5, 1.0):
        data.sampling = PatchSampling(patch_size=16, patches_per_case=50, foreground=share)
        plan = PatchBatches(data, batch_size=4).plan(torch.Generator().manual_seed(1))
        assert len(plan) == 200
        centre_class = np.array([data.label_maps[case][tuple(int(v) for v in c)] for case, c in plan])
        fg = float((centre_class > 0).mean())
        assert abs(fg - share) < 0.1, (share, fg)
        if share > 0:  # both segments are drawn, each about half of the foreground patches
            assert 0.3 < (centre_class == 1).sum() / (centre_class > 0).sum() < 0.7
        for case, c in plan:
            src, dst = crop_region(c, data.shape(case), 16)
            assert all(0 <= s.start < s.stop <= n and s.stop - s.start == 16 for s, n in zip(src, data.shape(case)))
            assert all(d == slice(0, 16) for d in dst)
            assert all(s.start <= int(v) < s.stop for s, v in zip(src, c))  # the centre is in its patch


def test_a_volume_smaller_than_the_patch_is_padded_around_the_middle() -> None:
    img = np.full((10, 40, 20), 0.7, np.float32)
    lab = np.zeros(img.shape, np.uint8)
    lab[5, 20, 10] = 1
    data = VolumeCases.from_arrays([img], [lab], [(2, 1, 1)], ["dot"], sampling=PatchSampling(patch_size=32))
    image, label = read_patch(data, 0, np.array([5, 20, 10]), 32)
    assert image.shape == label.shape == (32, 32, 32)
    assert image[11:21, :, 6:26].min() == pytest.approx(0.7) and image.sum() == pytest.approx(0.7 * 10 * 32 * 20)
    assert label.sum() == 1 and label[16, 16, 16] == 1  # axis 0 padded 11 + 11, axis 2 6 + 6; axis 1 cropped
    x = next(iter(PatchBatches(data.subset([0, 0]), 2).epoch(torch.Generator().manual_seed(0))))[1]
    assert tuple(x.shape) == (2, 1, 32, 32, 32)


def test_the_same_seed_gives_the_same_patches_and_candidates_are_few() -> None:
    data = make_cases(3)

    def epoch(seed: int) -> list[torch.Tensor]:
        return [t for batch in PatchBatches(data, 4).epoch(torch.Generator().manual_seed(seed)) for t in batch]

    a, b, c = epoch(5), epoch(5), epoch(6)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
    table = candidates_of(data)  # one table per case and class, kept on the dataset
    assert candidates_of(data) is table and len(table) == 3 and all(len(t) == 3 for t in table)
    assert all(0 < len(t[c]) <= 1024 and t[c].dtype == np.uint16 for t in table for c in range(3))


def test_an_epoch_is_patches_per_case_times_cases_and_a_lone_last_patch_is_dropped() -> None:
    data = make_cases(3, patches_per_case=3)  # 9 patches: batches of 2, the ninth alone
    batches = PatchBatches(data, 2)
    steps = list(batches.epoch(torch.Generator().manual_seed(0)))
    assert batches.steps == len(steps) == 4
    idx = torch.cat([i for i, _, _ in steps])
    assert len(idx) == 8 and set(idx.tolist()) == {0, 1, 2}
    assert all(y.dtype == torch.long and y.shape[1] == 1 for _, _, y in steps)


def test_augmentation_changes_intensity_only_and_never_flips() -> None:
    x = torch.rand(2, 1, 8, 8, 8)
    y = torch.randint(0, 3, (2, 1, 8, 8, 8))
    ax, ay = intensity_augment(1.0)(x, y, torch.Generator().manual_seed(0))
    assert ay is y and not torch.equal(ax, x) and 0 <= ax.min() and ax.max() <= 1
    assert torch.corrcoef(torch.stack([ax.flatten(), x.flatten()]))[0, 1] > 0.9  # same voxels, same places
    same = intensity_augment(0.0)(x, y, torch.Generator())
    assert same[0] is x


# --- models ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SEG3D_MODEL_BUILDERS))
def test_each_architecture_maps_a_patch_to_background_and_label_logits(name: str) -> None:
    model = TASK.build_model(name, 2, 16).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 1, 16, 16, 16))
    assert tuple(out.shape) == (1, 3, 16, 16, 16)
    with pytest.raises(ValueError, match="multiple of 8"):
        build_seg3d_model(name, 2, 20)
    assert not is_2d_convnet(model, PatchBatches(make_cases(2), 2).sample_ndim)  # never channels_last on CUDA
    hist = train_model(model, make_cases(2, patch=16, patches_per_case=1), TrainConfig(epochs=1, batch_size=2))
    assert np.isfinite(hist[0]["loss"])  # one step through the loop


def test_the_task_is_registered_with_its_metric_rules() -> None:
    assert TASK.name == "segmentation3d" and TASK.outputs_key == "labels" and TASK.headline_metric == "dice-mean"
    assert TASK.input_shape(32) == (1, 32, 32, 32)
    assert TASK.check_options({}) == (
        ("foreground", "0.5"),
        ("patches_per_case", "4"),
        ("spacing", "1.5x1.5x1.5"),
        ("window", "soft_tissue"),
    )
    assert dict(TASK.check_options({"spacing": "3, 1.5, 1.5", "window": "-600 / 1500"})) == {
        "foreground": "0.5",
        "patches_per_case": "4",
        "spacing": "3x1.5x1.5",
        "window": "-600/1500",
    }
    for bad in ({"spacing": "0"}, {"spacing": "1x2"}, {"window": "liver"}, {"window": "40/0"}):
        with pytest.raises(ValueError, match=f"task.{next(iter(bad))}"):
            TASK.check_options(bad)
    with pytest.raises(ValueError, match="not 'mean'"):
        TASK.check_outputs(["mean"])
    assert TASK.unsupported("image-dp") and TASK.unsupported("finetune") is None


# --- training through the one loop --------------------------------------------------------------


def train(seed: int = 0, epochs: int = 20, data: VolumeCases | None = None) -> torch.nn.Module:
    seed_everything(seed)
    model = build_seg3d_model("unet", 2, 32)
    cfg = TrainConfig.for_task(TASK, epochs=epochs, lr=3e-3, lr_schedule="cosine", seed=seed)
    train_model(model, data if data is not None else make_cases(6), cfg)
    return model


def test_training_raises_held_out_dice_far_above_untrained() -> None:
    held = make_cases(3, seed=1)
    seed_everything(0)
    untrained = TASK.validation(build_seg3d_model("unet", 2, 32), held)
    model = train()
    trained = TASK.validation(model, held)
    assert untrained["val_dice"] < 0.1
    assert trained["val_dice"] > 0.7, trained  # 0.96 here: the claim leaves room for other CPUs' rounding
    assert trained["val_loss"] < untrained["val_loss"] / 3


def test_the_same_seed_gives_the_same_weights_and_another_seed_does_not() -> None:
    data = make_cases(3)
    a, b, c = (weights_sha256(train(seed, epochs=2, data=data).state_dict()) for seed in (0, 0, 1))
    assert a == b != c


def test_history_counts_patches_and_records_validation() -> None:
    data = make_cases(3, patches_per_case=2)
    seed_everything(0)
    model = build_seg3d_model("unet", 1 + 1, 32)
    hist = train_model(model, data, TrainConfig(epochs=1, batch_size=2), val=data.subset([0]))
    assert set(hist[0]) >= {"loss", "images_per_s", "val_loss", "val_dice"} and "train_acc" not in hist[0]


def test_2d_tasks_keep_their_whole_image_batches() -> None:
    from shared.tasks.segmentation.dataset import SegDataset

    seg = SegDataset(torch.rand(5, 1, 8, 8), torch.zeros(5, 1, 8, 8, dtype=torch.bool), ["x"])
    batches = get_task("segmentation").train_batches(seg, 2, pin_memory=False)
    assert isinstance(batches, ImageBatches) and batches.sample_ndim == 4 and batches.steps == 2  # 2 + 2, not 1
    gen = torch.Generator().manual_seed(0)
    expect = torch.randperm(5, generator=torch.Generator().manual_seed(0))
    got = torch.cat([idx for idx, _, _ in batches.epoch(gen)])
    assert torch.equal(got, expect[:4])


def test_a_federated_round_trains_and_evaluates_3d_cases_at_a_site(tmp_path: Path) -> None:
    """The site worker's round functions, unchanged, on volume cases: weights back, aggregate metrics only."""
    from client.federated import SiteData, evaluate_round, train_round
    from shared.tasks import TaskSpec

    spec = TaskSpec("segmentation3d", tuple(LABELS), "unet", 32)
    seed_everything(0)
    state = spec.build_model().state_dict()
    site = SiteData(make_cases(3), make_cases(2, seed=1), True, 0.0, "ct-site", tmp_path)
    config = {"local-epochs": 1, "server-round": 1, "seed": 0, "lr": 3e-3}
    new_state, train_metrics = train_round(spec, state, site, config, store=None)
    assert set(new_state) == set(state) and any(not torch.equal(new_state[k], state[k]) for k in state)
    assert train_metrics["num-examples"] == 3 and train_metrics["train-loss"] > 0
    metrics = evaluate_round(spec, new_state, site, {"server-round": 1}, store=None)
    assert metrics["num-examples"] == 2 and metrics["held-out"] == 1 and "dice-sphere" in metrics
