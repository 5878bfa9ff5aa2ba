"""Masks from a manifest of PNG/NIfTI files: aligned like SEG masks, problems are data, same dataset as SEGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.config import ConfigError, PreprocessConfig, SiteDataConfig
from shared.imaging import scan_site
from shared.imaging.mask_manifest import match_mask_manifest, read_mask_file
from shared.imaging.segmentation import align_mask, match_segmentations, seg_files
from shared.tasks.segmentation.data import check_seg_export, check_segments_only, load_seg_dataset
from tests import dicom_factory as f
from tests.test_segmentation_ingest import LABELS, SIZE, _disc, _image, _seg

pytestmark = pytest.mark.timeout(60)


def _png(path: Path, mask: np.ndarray, mode: str = "L") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8))
    (img.convert(mode) if mode != "L" else img).save(path)
    return path.name


def _manifest(path: Path, key: str, rows: list[tuple[str, str, str]]) -> Path:
    path.write_text("\n".join([f"{key},label,mask", *(",".join(r) for r in rows)]) + "\n")
    return path


def _square(rows: int, cols: int, top: int, left: int, side: int) -> np.ndarray:
    m = np.zeros((rows, cols), bool)
    m[top : top + side, left : left + side] = True
    return m


def test_png_and_nifti_masks_align_like_seg_masks(tmp_path):
    """A square drawn at native size lands where the same square from a SEG lands, after padding and resampling."""
    data = tmp_path / "data"
    rows, cols = 80, 120  # wide: padded to 120x120, then box-resampled to 32
    nodule, lung = _square(rows, cols, 20, 84, 16), _square(rows, cols, 30, 0, 40)
    ds = _image(data / "wide.dcm", np.where(nodule, 0.9, 0.2))
    _seg(data / "seg" / "wide.dcm", [ds], {"nodule": nodule[None], "lung": lung[None]})
    masks = tmp_path / "masks"
    _png(masks / "wide-nodule.png", nodule, mode="RGB")  # colour PNG: any channel set = inside
    nib = pytest.importorskip("nibabel")
    nib.save(
        nib.Nifti1Image(lung.T[:, :, None].astype(np.uint8), np.eye(4)), masks / "wide-lung.nii.gz"
    )  # (cols, rows, 1)
    manifest = _manifest(
        masks / "masks.csv",
        "path",
        [("wide.dcm", "nodule", "wide-nodule.png"), ("./wide.dcm", "Lung", "wide-lung.nii.gz")],
    )

    scan = scan_site(data, PreprocessConfig(image_size=SIZE), cache_dir=tmp_path / "cache", workers=1)
    report = match_mask_manifest(scan.records, manifest, "path", LABELS, SIZE)
    assert report.problems == [] and report.image_paths == {ds.SOPInstanceUID: "wide.dcm"}
    got = report.masks[ds.SOPInstanceUID]
    assert np.array_equal(got[0], align_mask(nodule, SIZE)) and np.array_equal(got[1], align_mask(lung, SIZE))
    # 120 → 32 px and 20 rows of padding on top: the nodule square (rows 20-35, cols 84-99) ends up near rows 11-14, cols 22-26
    ys, xs = np.nonzero(got[0])
    assert 10 <= ys.min() and ys.max() <= 15 and 22 <= xs.min() and xs.max() <= 27
    seg = match_segmentations(scan.usable, seg_files(scan.records, data), LABELS, SIZE, data)
    assert np.array_equal(seg.masks[ds.SOPInstanceUID], got)  # exactly what the SEG path gives
    image = scan.load_image(next(r for r in scan.usable if r.path == "wide.dcm"))
    assert np.count_nonzero((image >= 0.5) != got[0]) <= 2  # and it lines up with the preprocessed image


def test_read_mask_file_formats(tmp_path):
    m = _square(10, 14, 2, 3, 4)
    _png(tmp_path / "a.png", m, mode="1")
    _png(tmp_path / "p.png", m, mode="P")
    assert np.array_equal(read_mask_file(tmp_path / "a.png"), m) and np.array_equal(
        read_mask_file(tmp_path / "p.png"), m
    )


def test_every_mask_problem_is_reported_with_its_file(tmp_path):
    data, masks = tmp_path / "data", tmp_path / "masks"
    img, disc = f.phantom(64, 64), _disc(64, 64, 32, 32, 8)
    uids = {n: _image(data / f"{n}.dcm", img).SOPInstanceUID for n in ("ok", "small", "broken", "half", "none", "odd")}
    _png(masks / "disc.png", disc)
    _png(masks / "small.png", _disc(48, 48, 24, 24, 6))
    (masks / "broken.png").write_text("not a PNG")
    rows = [
        (uids["ok"], "nodule", "disc.png"),
        (uids["ok"], "lung", "disc.png"),
        (uids["small"], "nodule", "small.png"),
        (uids["small"], "lung", "disc.png"),
        (uids["broken"], "nodule", "broken.png"),
        (uids["broken"], "lung", "gone.png"),
        (uids["half"], "nodule", "disc.png"),
        (uids["odd"], "nodule", "disc.png"),
        (uids["odd"], "lung", "disc.png"),
        (uids["odd"], "effusion", "disc.png"),
        ("1.2.3.999", "nodule", "disc.png"),
    ]
    manifest = _manifest(masks / "masks.csv", "SOPInstanceUID", rows)
    scan = scan_site(data, PreprocessConfig(image_size=SIZE), cache_dir=tmp_path / "cache", workers=1)
    report = match_mask_manifest(scan.records, manifest, "SOPInstanceUID", LABELS, SIZE)

    got = sorted((p.kind.value, p.path) for p in report.problems)
    assert got == sorted(
        [
            ("mask-geometry-mismatch", "small.png"),
            ("unreadable-mask", "broken.png"),
            ("mask-file-missing", "gone.png"),
            ("missing-mask-label", "half.dcm"),
            ("unknown-mask-label", "masks.csv line 11"),
            ("mask-key-not-found", "masks.csv line 12"),
            ("image-without-mask", "none.dcm"),
        ]
    ), got
    assert set(report.masks) == {uids["ok"], uids["odd"]}  # an unknown extra label does not drop the image
    by_kind = {p.kind.value: p for p in report.problems}
    assert (
        "48x48" in by_kind["mask-geometry-mismatch"].detail and "small.dcm" in by_kind["mask-geometry-mismatch"].detail
    )
    assert "'effusion'" in by_kind["unknown-mask-label"].detail and "1.2.3.999" in by_kind["mask-key-not-found"].detail
    assert "['lung']" in by_kind["missing-mask-label"].detail
    assert all(p.to_dict()["what_to_do"] for p in report.problems)
    (tmp_path / "bad.csv").write_text("SOPInstanceUID,label\n")  # no 'mask' column: a config error naming the file
    with pytest.raises(ConfigError, match=r"bad\.csv: missing column\(s\) 'mask'"):
        match_mask_manifest(scan.records, tmp_path / "bad.csv", "SOPInstanceUID", LABELS, SIZE)


def test_load_seg_dataset_from_a_png_manifest_equals_the_seg_path(tmp_path):
    """One synthetic export with SEGs, and the same masks as PNGs: the datasets are identical; the manifest wins."""
    data, masks = tmp_path / "data", tmp_path / "masks"
    rows = []
    for i, (r, c) in enumerate([(64, 96), (96, 64)]):  # keyed by AccessionNumber, as a label CSV may be
        nodule, lung = _disc(r, c, r / 3, c / 2, 7 + i), _square(r, c, 5, 5, 30)
        ds = _image(data / f"img{i}.dcm", np.where(nodule, 0.9, 0.2), patient_id=f"P{i}", accession=f"A{i}")
        _seg(data / "seg" / f"img{i}.dcm", [ds], {"nodule": nodule[None], "lung": lung[None]})
        rows += [
            (f"A{i}", "nodule", _png(masks / f"{i}-n.png", nodule)),
            (f"A{i}", "lung", _png(masks / f"{i}-l.png", lung)),
        ]
    manifest = _manifest(masks / "masks.csv", "AccessionNumber", rows)
    base = dict(data=data, key="AccessionNumber", image_size=SIZE, cache_dir=tmp_path / "cache")
    from_seg, seg_report = load_seg_dataset(SiteDataConfig(**base), LABELS, workers=1)
    from_png, png_report = load_seg_dataset(SiteDataConfig(**base, masks=manifest), LABELS, workers=1)
    assert seg_report.problems == [] and png_report.problems == []
    assert len(from_png.images) == 2
    assert sorted(from_png.groups) == sorted(from_seg.groups)
    order = [from_seg.groups.index(g) for g in from_png.groups]
    assert np.array_equal(from_png.masks.numpy(), from_seg.masks.numpy()[order])
    assert np.array_equal(from_png.images.numpy(), from_seg.images.numpy()[order])
    ok, verdict = check_seg_export(SiteDataConfig(**base, masks=manifest))
    assert ok and "2 image key(s) in the mask manifest" in verdict
    checked = check_segments_only(SiteDataConfig(**base, masks=manifest), LABELS)  # fedrad-site check --segments
    assert checked["ok"] and checked["segmentation"]["images_with_masks"] == 2
