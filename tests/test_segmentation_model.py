"""Segmentation model, training loop and metrics: real training on tiny synthetic discs, hand-computed metrics."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from shared.models import MODEL_BUILDERS
from shared.tasks import get_task
from shared.tasks.segmentation.dataset import SegDataset, concat_seg_datasets, flip_pairs, predict_masks
from shared.tasks.segmentation.metrics import (
    bootstrap_mean_ci,
    evaluate_segmentation,
    hd95_per_case,
)
from shared.tasks.segmentation.models import SEG_MODEL_BUILDERS, build_seg_model
from shared.training import TrainConfig, train_model


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def disc_dataset(n: int, size: int = 32, seed: int = 0, inner: bool = False) -> SegDataset:
    """A bright disc of random place and radius on a noisy background; its mask is the disc.

    With ``inner`` a second, overlapping label marks the disc's brighter core (as a nodule lies inside a lung).
    """
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images = 0.2 + 0.1 * torch.rand(n, 1, size, size, generator=g)
    masks = torch.zeros(n, 2 if inner else 1, size, size, dtype=torch.bool)
    for i in range(n):
        cy, cx = torch.randint(8, size - 8, (2,), generator=g).tolist()
        r = 3 + 3 * float(torch.rand((), generator=g))
        d2 = (yy - cy) ** 2 + (xx - cx) ** 2
        masks[i, 0] = d2 <= r * r
        images[i, 0][masks[i, 0]] += 0.5
        if inner:
            masks[i, 1] = d2 <= (r / 2) ** 2
            images[i, 0][masks[i, 1]] += 0.3
    labels = ["disc", "core"] if inner else ["disc"]
    return SegDataset(images=images, masks=masks, labels=labels, groups=[f"p{i}" for i in range(n)])


def square(size: int, top: int, left: int, side: int) -> torch.Tensor:
    m = torch.zeros(size, size, dtype=torch.bool)
    m[top : top + side, left : left + side] = True
    return m


def as_batch(*masks: torch.Tensor) -> torch.Tensor:
    """(N, 1, S, S) from N (S, S) masks: one label."""
    return torch.stack(masks).unsqueeze(1)


# --- model -----------------------------------------------------------------------------------------


def test_unet_is_registered_apart_from_classification():
    assert "unet" in SEG_MODEL_BUILDERS and "unet" not in MODEL_BUILDERS
    torch.manual_seed(0)
    model = build_seg_model("unet", n_labels=2, image_size=32)
    assert model(torch.rand(3, 1, 32, 32)).shape == (3, 2, 32, 32)
    with pytest.raises(ValueError, match="unknown segmentation architecture"):
        build_seg_model("smallcnn", 1, 32)
    with pytest.raises(ValueError, match="divisible"):
        build_seg_model("unet", 1, 30)
    with pytest.raises(ValueError, match="cannot build"):
        build_seg_model("unet", 1, 32, no_such_option=1)


# --- training --------------------------------------------------------------------------------------


def test_training_raises_held_out_dice_far_above_untrained():
    train, test = disc_dataset(24, seed=0), disc_dataset(8, seed=1)
    torch.manual_seed(0)
    model = build_seg_model("unet", n_labels=1, image_size=32)
    untrained = evaluate_segmentation(predict_masks(model, test.images), test.masks, test.labels, n_bootstrap=200)
    t0 = time.perf_counter()
    history = train_model(
        model, train, TrainConfig.for_task(get_task("segmentation"), epochs=30, batch_size=8, lr=1e-2, seed=0), val=test
    )
    seconds = time.perf_counter() - t0
    trained = evaluate_segmentation(predict_masks(model, test.images), test.masks, test.labels, n_bootstrap=200)

    print(f"held-out Dice untrained {untrained.mean_dice:.3f} → trained {trained.mean_dice:.3f} in {seconds:.1f} s")
    assert len(history) == 30 and history[-1]["loss"] < history[0]["loss"]
    assert {"epoch", "loss", "images_per_s", "val_loss", "val_dice"} <= history[-1].keys()
    assert history[-1]["val_dice"] == pytest.approx(trained.mean_dice)
    assert trained.mean_dice > 0.7
    assert trained.mean_dice > untrained.mean_dice + 0.3
    assert trained.per_label["disc"].hd95_px_mean < untrained.per_label["disc"].hd95_px_mean
    assert not model.training


def test_training_is_reproducible_and_handles_overlapping_labels():
    data = disc_dataset(6, seed=2, inner=True)
    cfg = TrainConfig.for_task(get_task("segmentation"), epochs=2, batch_size=4, seed=3)
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_seg_model("unet", n_labels=2, image_size=32)
        history = train_model(model, data, cfg)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])
    assert len(history) == 2 and np.isfinite(history[-1]["loss"])
    assert predict_masks(model, data.images).shape == data.masks.shape


def test_flip_moves_image_and_mask_together():
    data = disc_dataset(16, seed=4)
    x, y = flip_pairs(data.images, data.masks, torch.Generator().manual_seed(0))
    flipped = [not torch.equal(x[i], data.images[i]) for i in range(16)]
    assert 0 < sum(flipped) < 16
    for i in range(16):
        img, mask = data.images[i], data.masks[i]
        if flipped[i]:
            img, mask = img.flip(-1), mask.flip(-1)
        assert torch.equal(x[i], img) and torch.equal(y[i], mask)


def test_dataset_checks_shapes():
    data = disc_dataset(4)
    with pytest.raises(ValueError, match="masks must be"):
        SegDataset(data.images, data.masks, ["a", "b"])
    with pytest.raises(ValueError, match="bool"):
        SegDataset(data.images, data.masks.float(), data.labels)
    sub = data.subset([2, 0])
    assert len(sub) == 2 and sub.groups == ["p2", "p0"] and torch.equal(sub.masks[1], data.masks[0])


# --- metrics: hand-computed cases ------------------------------------------------------------------


def test_perfect_overlap():
    m = as_batch(square(16, 4, 4, 6))
    r = evaluate_segmentation(m, m, ["x"], n_bootstrap=0)
    assert r.dice[0, 0] == pytest.approx(1.0) and r.hd95[0, 0] == pytest.approx(0.0)


def test_disjoint_squares():
    # A: rows/cols 2..5; B: rows 2..5, cols 12..15. A's edge ring has 4 pixels in column 2 (10 px from B's
    # left column 12), 2+2 in columns 3 and 4 (9, 8) and 4 in column 5 (7): the 95th percentile is 10,
    # and B → A mirrors it.
    a, b = as_batch(square(20, 2, 2, 4)), as_batch(square(20, 2, 12, 4))
    r = evaluate_segmentation(a, b, ["x"], n_bootstrap=0)
    assert r.dice[0, 0] == 0.0
    assert r.hd95[0, 0] == pytest.approx(10.0)


def test_shifted_square_hd95_is_the_shift():
    # 8×8 square shifted 3 px right: 10 of the 28 edge pixels (left column + two top/bottom corners) are
    # exactly 3 px from the other square's edge and none farther, so HD95 = 3 both ways. Dice = 2·40/128.
    a, b = as_batch(square(24, 8, 8, 8)), as_batch(square(24, 8, 11, 8))
    r = evaluate_segmentation(b, a, ["x"], n_bootstrap=0)
    assert r.hd95[0, 0] == pytest.approx(3.0)
    assert r.dice[0, 0] == pytest.approx(2 * 40 / 128)


def test_hd95_is_in_millimetres_at_the_cases_pixel_spacing_and_in_pixels_without_one():
    # The 3 px column shift of test_shifted_square_hd95_is_the_shift at 0.5 mm pixels is 1.5 mm; a coarser row
    # spacing changes nothing (the offset lies along the rows). The third case has no spacing: 3 px, kept apart.
    a, b = square(24, 8, 8, 8), square(24, 8, 11, 8)
    spacing = [(0.5, 0.5), (2.0, 0.5), None]
    r = evaluate_segmentation(as_batch(b, b, b), as_batch(a, a, a), ["x"], n_bootstrap=0, spacing=spacing)
    assert r.hd95[:, 0].tolist() == pytest.approx([1.5, 1.5, 3.0]) and r.in_mm.tolist() == [True, True, False]
    s = r.per_label["x"]
    assert (s.hd95_mm_mean, s.n_hd95_mm) == (pytest.approx(1.5), 2)
    assert (s.hd95_px_mean, s.n_hd95_px) == (pytest.approx(3.0), 1)  # never one mean over mm and pixels
    out = json.loads(json.dumps(r.to_json(include_cases=True)))
    assert out["n_cases_without_spacing"] == 1 and set(out["hd95_units"]) == {"hd95_mm", "hd95_px"}
    assert out["cases"]["hd95_mm"] == [[1.5], [1.5], [None]] and out["cases"]["hd95_px"] == [[None], [None], [3.0]]
    # a shift of N px at 0.5 mm is N x 0.5 mm, for several N
    for n in (1, 2, 5):
        shifted = as_batch(square(24, 8, 8 + n, 8))
        assert hd95_per_case(shifted, as_batch(a), [(0.5, 0.5)])[0, 0] == pytest.approx(n * 0.5)
    with pytest.raises(ValueError, match="2 pixel spacings for 3 cases"):
        evaluate_segmentation(as_batch(b, b, b), as_batch(a, a, a), ["x"], spacing=spacing[:2])
    with pytest.raises(ValueError, match="positive"):
        hd95_per_case(as_batch(b), as_batch(a), [(0.0, 0.5)])


class _Fixed(torch.nn.Module):
    """Predicts the masks it was built with, whatever the image: logits +10 inside, -10 outside."""

    def __init__(self, masks: torch.Tensor) -> None:
        super().__init__()
        self.masks = masks

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.masks[: len(x)].float() * 20 - 10


def test_site_metrics_send_hd95_in_mm_and_in_pixels_under_their_own_keys():
    from shared.tasks.segmentation.metric_keys import count_key

    a, b = square(24, 8, 8, 8), square(24, 8, 11, 8)
    data = SegDataset(
        images=torch.rand(3, 1, 24, 24),
        masks=as_batch(a, a, a),
        labels=["x"],
        groups=["p0", "p1", "p2"],
        spacing=[(0.5, 0.5), None, (0.5, 0.5)],
    )
    out = get_task("segmentation").site_metrics(_Fixed(as_batch(b, b, b)), data, seed=0)
    assert out["hd95-mm-x"] == pytest.approx(1.5) and out["hd95-mm-x-examples"] == 2
    assert out["hd95-px-x"] == pytest.approx(3.0) and out["hd95-px-x-examples"] == 1
    assert all(count_key(k, ["x"]) is not False for k in out if k.startswith("hd95"))
    assert not [k for k in out if k.startswith("hd95-x")]  # no key without its unit
    # the spacing follows its case through a split and a pooling of sites
    assert data.subset([2, 1]).spacing == [(0.5, 0.5), None]
    pooled = concat_seg_datasets([data, SegDataset(data.images[:1], data.masks[:1], ["x"], ["q"])])
    assert pooled.spacing == [(0.5, 0.5), None, (0.5, 0.5), None]
    with pytest.raises(ValueError, match="1 pixel spacings for 3 cases"):
        SegDataset(data.images, data.masks, ["x"], spacing=[None])


def test_hd95_ignores_a_single_far_outlier():
    # Prediction = the square plus one stray pixel 10+ px away: 1 of 29 edge distances is large, so the
    # 95th percentile (position 26.6 of 0..28) is still 0, where the plain Hausdorff distance would be >10.
    ref = square(32, 4, 4, 8)
    pred = ref.clone()
    pred[28, 28] = True
    r = evaluate_segmentation(as_batch(pred), as_batch(ref), ["x"], n_bootstrap=0)
    assert r.hd95[0, 0] == pytest.approx(0.0)
    assert r.dice[0, 0] == pytest.approx(128 / 129)


def test_empty_mask_policy():
    empty, sq = torch.zeros(16, 16, dtype=torch.bool), square(16, 4, 4, 4)
    # cases: both empty, false positive, false negative, perfect
    pred = as_batch(empty, sq, empty, sq)
    ref = as_batch(empty, empty, sq, sq)
    r = evaluate_segmentation(pred, ref, ["nodule"], n_bootstrap=100)
    assert r.dice[:, 0].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert np.isnan(r.hd95[:3, 0]).all() and r.hd95[3, 0] == 0.0
    s = r.per_label["nodule"]
    assert (s.n_both_empty, s.n_false_positive, s.n_false_negative, s.n_hd95_px, s.n_hd95_mm) == (1, 1, 1, 1, 0)
    assert s.dice_mean == pytest.approx(0.5)
    assert s.hd95_px_mean == 0.0 and s.hd95_px_ci95 is None  # one defined case: no interval
    assert s.hd95_mm_mean is None  # no case has a pixel spacing
    # every pair empty: HD95 has no cases at all
    none = evaluate_segmentation(as_batch(empty, empty), as_batch(empty, empty), ["nodule"], n_bootstrap=10)
    assert none.per_label["nodule"].hd95_px_mean is None and none.mean_dice == 1.0
    assert np.isnan(hd95_per_case(as_batch(sq), as_batch(empty))).all()


def test_multi_label_summary_and_json():
    sq, sq2 = square(16, 2, 2, 6), square(16, 3, 3, 2)
    pred = torch.stack([torch.stack([sq, sq2]), torch.stack([sq, torch.zeros_like(sq2)])])
    r = evaluate_segmentation(pred, pred.clone(), ["lung", "nodule"], n_bootstrap=50)
    out = json.loads(json.dumps(r.to_json(include_cases=True)))
    assert out["labels"] == ["lung", "nodule"] and out["n_cases"] == 2 and out["mean_dice"] == 1.0
    assert out["per_label"]["nodule"]["n_both_empty"] == 1
    assert out["cases"]["hd95_px"][1] == [0.0, None] and out["cases"]["hd95_mm"][1] == [None, None]
    assert "cases" not in r.to_json()  # per-case figures stay site-local unless asked for
    with pytest.raises(ValueError, match="labels"):
        evaluate_segmentation(pred, pred, ["lung"])


def test_bootstrap_ci():
    v = np.array([0.2, 0.4, 0.6, 0.8, 1.0, np.nan])
    ci = bootstrap_mean_ci(v, 500, seed=1)
    assert ci == bootstrap_mean_ci(v, 500, seed=1)  # seeded
    assert ci[0] < 0.6 < ci[1] and 0.2 <= ci[0] and ci[1] <= 1.0
    assert bootstrap_mean_ci(np.full(5, 0.7), 100) == pytest.approx([0.7, 0.7])
    assert bootstrap_mean_ci(np.array([0.5]), 100) is None
    assert bootstrap_mean_ci(v, 0) is None
