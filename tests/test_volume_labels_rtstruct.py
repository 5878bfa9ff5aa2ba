"""RTSTRUCT contours → label map on the series' canonical grid (shared/imaging/volume_labels_rtstruct.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from shared.imaging.volume_labels_rtstruct import SLICE_TOLERANCE, rasterise, rtstruct_labels
from tests.volume_label_factory import (
    SLICE_STEP,
    CtSeries,
    expected_labels,
    polygons,
    shapes,
    write_ct_series,
    write_rtstruct,
)

LABELS = ["sphere", "Box"]
ACQUISITIONS = [("HFS", False), ("FFP", True), ("FFS", False), ("SAG", True), ("OBL", False)]
MIN_DICE = 0.95  # per label; contours at the 0.5 iso-line between pixel centres in fact give the exact mask


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CtSeries]:
    root = tmp_path_factory.mktemp("ct")
    return {pos: write_ct_series(root / pos, pos, descending) for pos, descending in ACQUISITIONS}


def kinds(result) -> list[str]:  # noqa: ANN001 - VolumeLabels
    return [p.kind.value for p in result.problems]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


@pytest.mark.parametrize("position", [p for p, _ in ACQUISITIONS])
def test_contours_fill_the_canonical_grid(series: dict[str, CtSeries], tmp_path: Path, position: str) -> None:
    ct = series[position]
    result = rtstruct_labels(write_rtstruct(ct, tmp_path / "rt.dcm"), ct.target, LABELS)
    assert result.ok and result.problems == [], result.problems
    expected = expected_labels(ct)
    assert result.label_map.dtype == np.uint8 and result.label_map.shape == expected.shape
    for value in (1, 2):
        assert dice(result.label_map == value, expected == value) > MIN_DICE
    np.testing.assert_array_equal(result.label_map, expected)  # this phantom's contours reproduce it exactly
    assert result.overlap_voxels > 0  # the box was painted over the sphere: the later label wins


def test_the_box_ring_is_two_nested_contours_filled_even_odd(series: dict[str, CtSeries]) -> None:
    ct = series["HFS"]
    box = shapes(ct.stack)["box"]
    k = int(np.argmax(box.sum(axis=(1, 2))))
    assert len(polygons(box[k])) == 2  # outer boundary + the hole: the fixture exercises the hole rule


def test_even_odd_rule_holes_and_islands() -> None:
    def square(lo: float, hi: float) -> np.ndarray:
        return np.array([[lo, lo], [lo, hi], [hi, hi], [hi, lo]])

    outer, hole, island = (
        rasterise(square(0.5, 9.5), (11, 11)),
        rasterise(square(2.5, 7.5), (11, 11)),
        rasterise(square(4.5, 5.5), (11, 11)),
    )
    filled = outer ^ hole ^ island
    assert filled[1, 1] and not filled[3, 3] and filled[5, 5] and not filled[0, 0]
    assert filled.sum() == 81 - 25 + 1


def test_contour_between_slices(series: dict[str, CtSeries], tmp_path: Path) -> None:
    ct = series["FFP"]
    result = rtstruct_labels(write_rtstruct(ct, tmp_path / "rt.dcm", z_shift=SLICE_STEP / 2), ct.target, LABELS)
    assert not result.ok and kinds(result) == ["label-contour-off-slice"]
    detail = result.problems[0].detail
    assert "ROI 'sphere'" in detail and "1.25 mm from the nearest slice" in detail and "more contours" in detail


def test_contour_within_the_slice_tolerance_is_accepted(series: dict[str, CtSeries], tmp_path: Path) -> None:
    ct = series["HFS"]
    shift = 0.9 * SLICE_TOLERANCE * SLICE_STEP
    result = rtstruct_labels(write_rtstruct(ct, tmp_path / "rt.dcm", z_shift=shift), ct.target, LABELS)
    np.testing.assert_array_equal(result.label_map, expected_labels(ct))


def test_contour_outside_the_series(series: dict[str, CtSeries], tmp_path: Path) -> None:
    ct = series["HFS"]
    result = rtstruct_labels(write_rtstruct(ct, tmp_path / "rt.dcm", z_shift=10 * SLICE_STEP), ct.target, LABELS)
    assert kinds(result) == ["label-contour-off-slice"] and "outside the series" in result.problems[0].detail


def test_rtstruct_referencing_another_series(series: dict[str, CtSeries], tmp_path: Path) -> None:
    ct = series["HFS"]
    other = generate_uid()
    path = write_rtstruct(ct, tmp_path / "rt.dcm", referenced_series_uid=other)
    result = rtstruct_labels(path, ct.target, LABELS)
    assert not result.ok and kinds(result) == ["label-series-mismatch"] and other in result.problems[0].detail


def test_rtstruct_in_another_frame_of_reference(series: dict[str, CtSeries], tmp_path: Path) -> None:
    ct = series["HFS"]
    path = write_rtstruct(ct, tmp_path / "rt.dcm", frame_of_reference_uid=generate_uid())
    assert kinds(rtstruct_labels(path, ct.target, LABELS)) == ["label-frame-of-reference"]


def test_missing_roi(series: dict[str, CtSeries], tmp_path: Path) -> None:
    ct = series["HFS"]
    result = rtstruct_labels(write_rtstruct(ct, tmp_path / "rt.dcm"), ct.target, ["sphere", "box", "GTV"])
    assert not result.ok and kinds(result) == ["label-segment-missing"] and "'GTV'" in result.problems[0].detail


def test_open_contour_of_a_wanted_roi(series: dict[str, CtSeries], tmp_path: Path) -> None:
    ct = series["HFS"]
    path = write_rtstruct(ct, tmp_path / "rt.dcm")
    ds = pydicom.dcmread(path)
    ds.ROIContourSequence[1].ContourSequence[0].ContourGeometricType = "OPEN_PLANAR"
    ds.save_as(path)
    result = rtstruct_labels(path, ct.target, LABELS)
    assert kinds(result) == ["label-contour-unsupported"] and "'box'" in result.problems[0].detail
    assert rtstruct_labels(path, ct.target, ["sphere"]).ok  # an unwanted ROI's contours do not matter


def test_not_an_rtstruct(series: dict[str, CtSeries], tmp_path: Path) -> None:
    ct_slice = next(ct for ct in series.values()).folder / "ct00.dcm"
    assert kinds(rtstruct_labels(ct_slice, series["HFS"].target, LABELS)) == ["label-unreadable"]


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="DCMTK/dicom3tools dciodvfy not installed")
def test_fixture_rtstruct_is_a_valid_object(series: dict[str, CtSeries], tmp_path: Path) -> None:
    path = write_rtstruct(series["FFP"], tmp_path / "rt.dcm")
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
    assert errors == []
