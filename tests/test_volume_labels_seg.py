"""DICOM SEG → label map on the series' canonical grid (shared/imaging/volume_labels_seg.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from shared.imaging.volume_labels import WHAT_TO_DO, Kind, VolumeLabelReport
from shared.imaging.volume_labels_seg import seg_labels
from tests.volume_label_factory import (
    CtSeries,
    expected_labels,
    phantom,
    segment_description,
    shapes,
    write_ct_series,
    write_seg,
)

LABELS = ["Sphere", "BOX"]  # matched case-insensitively to the SEG's "sphere", "box"
# (position, descending): FFP's slices run head → feet; SAG is a sagittal stack, slices stepping to the right
ACQUISITIONS = [("HFS", False), ("FFP", True), ("FFS", False), ("SAG", True), ("OBL", False)]


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CtSeries]:
    root = tmp_path_factory.mktemp("ct")
    return {pos: write_ct_series(root / pos, pos, descending) for pos, descending in ACQUISITIONS}


def kinds(result) -> list[str]:  # noqa: ANN001 - VolumeLabels
    return [p.kind.value for p in result.problems]


@pytest.mark.parametrize("fractional", [False, True], ids=["binary", "fractional"])
@pytest.mark.parametrize("position", [p for p, _ in ACQUISITIONS])
def test_shuffled_seg_frames_land_on_the_canonical_grid(
    series: dict[str, CtSeries], tmp_path: Path, position: str, fractional: bool
) -> None:
    ct = series[position]
    path = write_seg(ct, tmp_path / "seg.dcm", fractional=fractional)
    groups = pydicom.dcmread(path).PerFrameFunctionalGroupsSequence
    order = [ct.stack.patient_to_index(g.PlanePositionSequence[0].ImagePositionPatient)[0] for g in groups]
    assert order != sorted(order) and order != sorted(order, reverse=True)  # frames really are out of slice order

    result = seg_labels(path, ct.target, LABELS)

    assert result.ok, result.problems
    assert result.problems == []
    assert result.label_map.dtype == np.uint8 and result.label_map.shape == ct.target.geometry.shape
    np.testing.assert_array_equal(result.label_map, expected_labels(ct))
    assert result.overlap_voxels == int(np.count_nonzero(np.logical_and(*shapes(ct.target.geometry).values())))
    assert result.overlap_voxels > 0


def test_overlap_goes_to_the_label_later_in_the_task_list(series: dict[str, CtSeries], tmp_path: Path) -> None:
    ct = series["HFS"]
    result = seg_labels(write_seg(ct, tmp_path / "seg.dcm"), ct.target, ["box", "sphere"])
    masks = shapes(ct.target.geometry)
    expected = np.zeros(ct.target.geometry.shape, np.uint8)
    expected[masks["box"]] = 1
    expected[masks["sphere"]] = 2  # later in the list: the sphere now wins where they overlap
    np.testing.assert_array_equal(result.label_map, expected)


def test_labelmap_seg(series: dict[str, CtSeries], tmp_path: Path) -> None:
    ct = series["FFP"]
    seg = hd.seg.Segmentation(
        source_images=ct.slices,
        pixel_array=phantom(ct.stack),
        segmentation_type="LABELMAP",
        segment_descriptions=[segment_description(1, "sphere"), segment_description(2, "box")],
        series_instance_uid=generate_uid(),
        series_number=900,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="FedRad",
        manufacturer_model_name="tests",
        software_versions="1",
        device_serial_number="1",
    )
    seg.save_as(tmp_path / "labelmap.dcm")
    result = seg_labels(tmp_path / "labelmap.dcm", ct.target, LABELS)
    np.testing.assert_array_equal(result.label_map, expected_labels(ct))


def test_unknown_segments_are_ignored_and_reported(series: dict[str, CtSeries], tmp_path: Path) -> None:
    ct = series["HFS"]
    result = seg_labels(write_seg(ct, tmp_path / "seg.dcm"), ct.target, [" SPHERE "])
    assert result.ok and kinds(result) == ["label-segment-unknown"]
    assert "'box'" in result.problems[0].detail
    np.testing.assert_array_equal(result.label_map, shapes(ct.target.geometry)["sphere"].astype(np.uint8))


def test_missing_segment_name(series: dict[str, CtSeries], tmp_path: Path) -> None:
    ct = series["HFS"]
    result = seg_labels(write_seg(ct, tmp_path / "seg.dcm"), ct.target, ["sphere", "liver"], name="labels/seg.dcm")
    assert not result.ok
    assert kinds(result) == ["label-segment-missing", "label-segment-unknown"]  # box is not wanted here
    problem = result.problems[0].to_dict()
    assert problem["path"] == "labels/seg.dcm" and "'liver'" in problem["detail"] and "'box'" in problem["detail"]
    assert problem["what_to_do"] == WHAT_TO_DO[Kind.SEGMENT_MISSING]


def test_two_segments_with_one_name_are_ambiguous(series: dict[str, CtSeries], tmp_path: Path) -> None:
    ct = series["HFS"]
    result = seg_labels(write_seg(ct, tmp_path / "seg.dcm", names=("Sphere", "sphere")), ct.target, ["sphere"])
    assert not result.ok and kinds(result) == ["label-segment-ambiguous"]


def test_seg_in_another_frame_of_reference(series: dict[str, CtSeries], tmp_path: Path) -> None:
    ct = series["HFS"]
    path = write_seg(ct, tmp_path / "seg.dcm", frame_of_reference_uid=generate_uid())
    result = seg_labels(path, ct.target, LABELS)
    assert not result.ok and kinds(result) == ["label-frame-of-reference"]
    assert ct.frame_of_reference_uid in result.problems[0].detail


def test_frames_between_slices(series: dict[str, CtSeries], tmp_path: Path) -> None:
    ct = series["FFP"]
    result = seg_labels(write_seg(ct, tmp_path / "seg.dcm", z_shift=1.25), ct.target, LABELS)
    assert not result.ok and kinds(result) == ["label-geometry-mismatch"]
    assert "1.25 mm from the nearest slice" in result.problems[0].detail


def test_frames_beyond_the_series(series: dict[str, CtSeries], tmp_path: Path) -> None:
    ct = series["HFS"]
    result = seg_labels(write_seg(ct, tmp_path / "seg.dcm", z_shift=50.0), ct.target, LABELS)
    assert kinds(result) == ["label-geometry-mismatch"] and "outside the series" in result.problems[0].detail


def test_another_in_plane_grid(series: dict[str, CtSeries], tmp_path: Path) -> None:
    ct = series["HFS"]
    path = write_seg(ct, tmp_path / "seg.dcm")
    ds = pydicom.dcmread(path)
    ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing = [1.0, 1.0]
    ds.save_as(path)
    result = seg_labels(path, ct.target, LABELS)
    assert kinds(result) == ["label-geometry-mismatch"]
    assert "in-plane grid differs" in result.problems[0].detail and "0.8 x 0.7" in result.problems[0].detail


def test_seg_of_another_series(series: dict[str, CtSeries], tmp_path: Path) -> None:
    hfs, ffp = series["HFS"], series["FFP"]
    result = seg_labels(write_seg(hfs, tmp_path / "seg.dcm"), ffp.target, LABELS)
    assert kinds(result) == ["label-series-mismatch"] and hfs.series_uid in result.problems[0].detail


def test_unreadable_seg(series: dict[str, CtSeries], tmp_path: Path) -> None:
    path = write_seg(series["HFS"], tmp_path / "seg.dcm")
    path.write_bytes(path.read_bytes()[:1000])
    assert kinds(seg_labels(path, series["HFS"].target, LABELS)) == ["label-unreadable"]
    (tmp_path / "notes.txt").write_text("not DICOM")
    assert kinds(seg_labels(tmp_path / "notes.txt", series["HFS"].target, LABELS)) == ["label-unreadable"]


def test_every_code_says_what_to_do() -> None:
    assert set(WHAT_TO_DO) == set(Kind)
    assert len({k.value for k in Kind}) == len(Kind) and all(k.value.startswith("label-") for k in Kind)
    assert VolumeLabelReport(("a",)).to_json()["series_with_labels"] == 0


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="DCMTK/dicom3tools dciodvfy not installed")
@pytest.mark.parametrize("fractional", [False, True], ids=["binary", "fractional"])
def test_fixture_seg_is_a_valid_object(series: dict[str, CtSeries], tmp_path: Path, fractional: bool) -> None:
    path = write_seg(series["FFP"], tmp_path / "seg.dcm", fractional=fractional)
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
    assert errors == []
