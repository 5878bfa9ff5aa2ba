"""A site's DICOM export and its DICOM SEGs → a :class:`SegDataset`, split by patient.

The segmentation counterpart of :func:`shared.site_data.load_site_dataset`:
the images come from the same scan and tensor cache (so a site checked for
classification is not decoded again), the masks from
:func:`shared.imaging.segmentation.match_segmentations`, which aligns them
with the preprocessed images. Only images with a usable SEG are cases; every
other image and every SEG problem stays in the returned report, so the caller
can show ``fedrad-site check --segments`` figures next to the training.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from shared.config import ConfigError, SiteDataConfig
from shared.imaging.planar import model_input_spacing
from shared.imaging.scan import ScanResult, scan_site
from shared.imaging.segmentation import SegReport, match_segmentations, seg_files
from shared.packed import from_scan
from shared.splits import stratified_group_split
from shared.tasks.segmentation.dataset import SegDataset


def match_site_masks(config: SiteDataConfig, scan: ScanResult, labels: list[str]) -> SegReport:
    """The site's masks for ``labels``: from the PNG/NIfTI manifest when site.yaml sets ``masks:``, else its DICOM SEGs.

    The manifest wins when both exist: setting ``masks:`` is an explicit choice, and mixing
    two sources of truth for one image would hide disagreements. SEG files in the export are
    then ignored (they stay rejected files of the scan, as always).
    """
    if config.masks is not None:
        from shared.imaging.mask_manifest import match_mask_manifest

        return match_mask_manifest(scan.records, Path(config.masks), config.key, labels, config.image_size)
    data = Path(config.data)
    return match_segmentations(scan.usable, seg_files(scan.records, data), labels, config.image_size, data)


def load_seg_dataset(
    config: SiteDataConfig, labels: list[str], workers: int | None = None
) -> tuple[SegDataset, SegReport]:
    """Every image of the export with usable masks (:func:`match_site_masks`), channels in ``labels`` order."""
    data = Path(config.data)
    scan = scan_site(data, config.preprocess(), config.resolved_cache_dir(), workers=workers)
    report = match_site_masks(config, scan, labels)
    by_uid = {r.header.sop_instance_uid: r for r in scan.usable}
    uids = [u for u in report.masks if u in by_uid]
    size = config.image_size
    images = from_scan(scan, [by_uid[u] for u in uids], (size, size), workers=config.data_workers)
    groups, spacing = [], []
    for uid in uids:
        rec = by_uid[uid]
        groups.append(rec.header.patient_id or rec.header.study_instance_uid or rec.path)
        spacing.append(model_input_spacing(rec.header, size))  # HD95 in mm where the image says its pixel size
    masks = (
        torch.from_numpy(np.stack([report.masks[u] for u in uids]))
        if uids
        else torch.zeros((0, len(labels), size, size), dtype=torch.bool)
    )
    data = SegDataset(images=images, masks=masks.bool(), labels=list(labels), groups=groups, spacing=spacing)
    return data, report


def split_seg_dataset(data: SegDataset, fraction: float, seed: int) -> tuple[SegDataset, SegDataset]:
    """(train, held-out) by patient, stratified by whether a case has any foreground in its first label
    (e.g. nodule present or not), so both parts see both kinds of case."""
    strata = data.masks[:, 0].flatten(1).any(1).long().tolist()
    train_idx, val_idx = stratified_group_split(strata, data.groups, fraction, seed)
    return data.subset(train_idx.tolist()), data.subset(val_idx.tolist())


MIN_SEG_CASES = 2  # federated segmentation needs a training part and a held-out part (shared.tasks.segmentation)


def check_seg_export(config: SiteDataConfig) -> tuple[bool, str]:
    """(ok, verdict) of a segmentation-only site before it joins: usable images and DICOM SEG files in the export.

    The segment names come with each run, so this counts SEG objects rather than
    matching segments; ``fedrad-site check --segments <labels>`` matches them.
    """
    data = Path(config.data)
    if not data.is_dir():
        raise ConfigError(f"data folder {data} does not exist or is not a folder (set 'data' in site.yaml)")
    scan = scan_site(data, config.preprocess(), config.resolved_cache_dir())
    if config.masks is not None:  # the manifest wins over SEGs (match_site_masks): count the images it names
        from shared.imaging.mask_manifest import read_mask_manifest

        n_seg = len({k for _, k, _, _ in read_mask_manifest(Path(config.masks), config.key)})
        source = f"image key(s) in the mask manifest {config.masks}"
    else:
        n_seg, source = len(seg_files(scan.records, data)), "DICOM SEG file(s)"
    ok = len(scan.usable) >= MIN_SEG_CASES and n_seg >= MIN_SEG_CASES
    what = f"{len(scan.usable)} usable image(s) and {n_seg} {source} in {data} (segmentation only: no label CSV)"
    if ok:
        return True, f"ready for segmentation: {what}"
    return False, f"cannot train segmentation: {what}; need at least {MIN_SEG_CASES} images with masks each"


def check_segments_only(config: SiteDataConfig, labels: list[str], on_progress=None) -> dict:  # noqa: ANN001
    """``fedrad-site check --segments`` at a site without a label CSV: the SEG ↔ image matching, with a verdict."""
    data = Path(config.data)
    if not data.is_dir():
        raise ConfigError(f"data folder {data} does not exist or is not a folder (set --data or 'data' in site.yaml)")
    scan = scan_site(data, config.preprocess(), config.resolved_cache_dir(), on_progress)
    report = match_site_masks(config, scan, labels)
    n = len(report.masks)
    ok = n >= MIN_SEG_CASES
    verdict = (
        f"ready for segmentation: {n} images with masks of {labels}"
        if ok
        else f"cannot train segmentation: {n} image(s) with masks of {labels}, need at least {MIN_SEG_CASES}"
    )
    return {
        "ok": ok,
        "verdict": verdict,
        "data": str(data),
        "labels_file": None,
        "images": {"files": len(scan.records), "usable": len(scan.usable), "rejected": len(scan.rejected)},
        "segmentation": report.to_json(),
    }
