"""NIfTI label volumes and their manifest → label map on the series' grid (shared/imaging/volume_labels_nifti.py)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from shared.config import ConfigError
from shared.imaging.volume_labels_nifti import (
    ANY_NONZERO,
    match_volume_mask_manifest,
    nifti_labels,
    parse_value_names,
    read_volume_mask_manifest,
)
from tests.volume_label_factory import CtSeries, expected_labels, shapes, write_ct_series, write_nifti

LABELS = ["sphere", "box"]
ACQUISITIONS = [("HFS", False), ("FFP", True), ("FFS", False), ("SAG", True), ("OBL", False)]


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CtSeries]:
    root = tmp_path_factory.mktemp("ct")
    return {pos: write_ct_series(root / pos, pos, descending) for pos, descending in ACQUISITIONS}


def kinds(result) -> list[str]:  # noqa: ANN001 - VolumeLabels or VolumeLabelReport
    return [p.kind.value for p in result.problems]


def save(data: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.mark.parametrize("position", [p for p, _ in ACQUISITIONS])
def test_nifti_in_itk_voxel_order_is_reoriented(series: dict[str, CtSeries], tmp_path: Path, position: str) -> None:
    ct = series[position]
    result = nifti_labels(write_nifti(ct, tmp_path / "mask.nii.gz"), ct.target, LABELS)
    assert result.ok and result.problems == [], result.problems
    assert result.label_map.dtype == np.uint8
    np.testing.assert_array_equal(result.label_map, expected_labels(ct))


def test_nifti_shifted_by_5_mm(series: dict[str, CtSeries], tmp_path: Path) -> None:
    ct = series["FFP"]
    result = nifti_labels(write_nifti(ct, tmp_path / "m.nii.gz", shift_mm=(5.0, 0.0, 0.0)), ct.target, LABELS)
    assert not result.ok and kinds(result) == ["label-geometry-mismatch"]
    detail = result.problems[0].detail
    assert "differs by 5.00 mm (L +5.00, P +0.00, S +0.00 mm)" in detail and "7.14 voxels along L" in detail


def test_nifti_with_another_slice_spacing(series: dict[str, CtSeries], tmp_path: Path) -> None:
    ct = series["HFS"]
    image = nib.load(str(write_nifti(ct, tmp_path / "m.nii.gz")))
    affine = image.affine.copy()
    affine[:3, 2] *= 1.2  # 3 mm slices instead of 2.5
    result = nifti_labels(save(np.asarray(image.dataobj), affine, tmp_path / "s.nii.gz"), ct.target, LABELS)
    assert kinds(result) == ["label-geometry-mismatch"] and "spacing 3 vs 2.5 mm along S" in result.problems[0].detail


def test_nifti_with_another_shape(series: dict[str, CtSeries], tmp_path: Path) -> None:
    ct = series["HFS"]
    image = nib.load(str(write_nifti(ct, tmp_path / "m.nii.gz")))
    cropped = save(np.asarray(image.dataobj)[:, :, :8], image.affine, tmp_path / "c.nii.gz")
    result = nifti_labels(cropped, ct.target, LABELS)
    assert kinds(result) == ["label-geometry-mismatch"]
    assert "the mask is 8 S x 24 P x 20 L voxels, the series 10 S x 24 P x 20 L" in result.problems[0].detail


def test_probability_map_and_4d_are_unreadable(series: dict[str, CtSeries], tmp_path: Path) -> None:
    ct = series["HFS"]
    probabilities = save(np.full((20, 24, 10), 0.3, np.float32), np.eye(4), tmp_path / "p.nii.gz")
    assert kinds(nifti_labels(probabilities, ct.target, LABELS)) == ["label-unreadable"]
    one_hot = save(np.zeros((20, 24, 10, 2), np.uint8), np.eye(4), tmp_path / "h.nii.gz")
    assert kinds(nifti_labels(one_hot, ct.target, LABELS)) == ["label-unreadable"]
    (tmp_path / "x.nii.gz").write_bytes(b"junk")
    assert kinds(nifti_labels(tmp_path / "x.nii.gz", ct.target, LABELS)) == ["label-unreadable"]


def test_explicit_values_and_unknown_values(series: dict[str, CtSeries], tmp_path: Path) -> None:
    ct = series["HFS"]
    image = nib.load(str(write_nifti(ct, tmp_path / "m.nii.gz")))
    data = np.asarray(image.dataobj).astype(np.uint16) * 7  # sphere = 7, box = 14
    data[0, 0, 0] = 3
    path = save(data, image.affine, tmp_path / "v.nii.gz")
    result = nifti_labels(path, ct.target, LABELS, values={7: "Sphere", 14: "BOX"})
    assert result.ok and kinds(result) == ["label-value-unknown"] and "[3]" in result.problems[0].detail
    np.testing.assert_array_equal(result.label_map, expected_labels(ct))  # the unnamed voxel stays background


def test_value_names_cell() -> None:
    assert parse_value_names("") is None
    assert parse_value_names("liver") == {ANY_NONZERO: "liver"}
    assert parse_value_names("liver; tumour") == {1: "liver", 2: "tumour"}
    assert parse_value_names("5=liver|7 = tumour") == {5: "liver", 7: "tumour"}
    for bad in ("0=liver", "x=liver", "1=liver;1=tumour", "1=liver;tumour"):
        with pytest.raises(ValueError):
            parse_value_names(bad)


def test_manifest_by_uid_folder_and_one_file_per_structure(series: dict[str, CtSeries], tmp_path: Path) -> None:
    hfs, ffp, ffs = series["HFS"], series["FFP"], series["FFS"]
    write_nifti(hfs, tmp_path / "masks" / "hfs.nii.gz")
    write_nifti(ffp, tmp_path / "masks" / "ffp.nii.gz")
    for name, mask in shapes(ffs.stack).items():  # one binary file per structure, ITK voxel order, 255 = inside
        affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ffs.stack.affine[:, [2, 1, 0, 3]]
        save(np.transpose(mask, (2, 1, 0)).astype(np.uint8) * 255, affine, tmp_path / "masks" / f"{name}.nii")
    manifest = tmp_path / "volume-masks.csv"
    manifest.write_text(
        "series,mask,labels\n"
        f"{hfs.series_uid},masks/hfs.nii.gz,\n"  # values 1..K are the task labels in order
        f"{ffp.target.folder}/,masks\\ffp.nii.gz,1=sphere;2=box\n"  # by folder, Windows separators
        f"{ffs.series_uid},masks/sphere.nii,sphere\n"
        f"{ffs.series_uid},masks/box.nii,Box\n"
        "1.2.3.4,masks/hfs.nii.gz,\n"
    )
    report = match_volume_mask_manifest([s.target for s in (hfs, ffp, ffs)], manifest, LABELS)
    assert kinds(report) == ["label-series-missing"] and report.problems[0].path == "volume-masks.csv line 6"
    assert sorted(report.label_maps) == sorted([hfs.series_uid, ffp.series_uid, ffs.series_uid])
    for ct in (hfs, ffp, ffs):
        np.testing.assert_array_equal(report.label_maps[ct.series_uid], expected_labels(ct))
    assert report.results[ffs.series_uid].source == "volume-masks.csv lines 4, 5"


def test_manifest_problems(series: dict[str, CtSeries], tmp_path: Path) -> None:
    hfs, ffp = series["HFS"], series["FFP"]
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"series,mask\n{hfs.series_uid},nowhere.nii.gz\n")
    report = match_volume_mask_manifest([hfs.target, ffp.target], manifest, LABELS)
    assert kinds(report) == ["label-file-missing", "label-missing"]
    assert report.problems[0].path == "nowhere.nii.gz" and report.problems[1].series_uid == ffp.series_uid
    assert report.label_maps == {}
    json = report.to_json()
    assert json["problems_by_kind"]["label-missing"]["count"] == 1 and json["series_with_labels"] == 0


def test_bad_manifest_is_a_config_error(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("uid,mask\n1.2,m.nii\n")
    with pytest.raises(ConfigError, match="'series'"):
        read_volume_mask_manifest(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text("series,mask,labels\n1.2,m.nii,0=liver\n")
    with pytest.raises(ConfigError, match="line 2"):
        read_volume_mask_manifest(tmp_path / "m.csv")
