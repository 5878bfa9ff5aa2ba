"""DICOM SEG to Dice, end to end at one site: synthetic DICOM + SEG files → scan → masks → UNet → Dice.

The pieces the federated segmentation task will reuse, joined on real files:
``write_site(task="segmentation")`` writes images and highdicom SEGs; the
site's scan and SEG matching give aligned masks; a MONAI UNet trained on the
patient-split training part segments the held-out lungs far better than the
untrained network.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shared.config import SiteDataConfig
from shared.synth import write_cohort
from shared.tasks import get_task
from shared.tasks.segmentation.data import load_seg_dataset, split_seg_dataset
from shared.tasks.segmentation.dataset import predict_masks
from shared.tasks.segmentation.metrics import evaluate_segmentation
from shared.tasks.segmentation.models import build_seg_model
from shared.training import TrainConfig, train_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
LABELS = ["nodule", "lung"]


def test_synthetic_seg_site_trains_a_unet_that_finds_the_lungs(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    site = write_cohort(tmp_path / "cohort", n_sites=1, unseen=0, scale=0.1, seed=4, task="segmentation")[0]
    cfg = SiteDataConfig(data=site.dicom_dir, labels=site.labels_csv, image_size=32, cache_dir=tmp_path / "cache")
    data, report = load_seg_dataset(cfg, LABELS, workers=1)
    assert report.problems == [] and len(data) == site.n_images
    assert data.masks[:, 1].flatten(1).any(1).all()  # every film shows lungs
    nodules = int(data.masks[:, 0].flatten(1).any(1).sum())
    assert nodules == site.class_counts["nodule"]
    train, held = split_seg_dataset(data, 0.25, seed=0)
    assert not set(train.groups) & set(held.groups) and len(held) > 0
    torch.manual_seed(0)
    model = build_seg_model("unet", len(LABELS), 32)
    before = evaluate_segmentation(predict_masks(model, held.images), held.masks, LABELS, n_bootstrap=0)
    train_model(model, train, TrainConfig.for_task(get_task("segmentation"), epochs=25, lr=1e-2, seed=0))
    after = evaluate_segmentation(predict_masks(model, held.images), held.masks, LABELS, n_bootstrap=200)
    lung_before, lung_after = before.per_label["lung"].dice_mean, after.per_label["lung"].dice_mean
    print(
        f"\nheld-out lung Dice {lung_before:.3f} → {lung_after:.3f}; nodule Dice "
        f"{after.per_label['nodule'].dice_mean:.3f}; {len(train)} train / {len(held)} held-out images"
    )
    assert lung_after > 0.8 and lung_after > lung_before + 0.3
    low, high = after.per_label["lung"].dice_ci95
    assert low <= lung_after <= high
