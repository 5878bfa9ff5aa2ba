"""Pairing a site's SEG/RTSTRUCT files with its series (shared/imaging/volume_labels_match.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest

from shared.imaging.volume_geometry import VolumeGeometry
from shared.imaging.volume_labels_match import match_volume_labels, read_volume_labels, volume_label_files
from tests.volume_label_factory import (
    SLICE_STEP,
    CtSeries,
    expected_labels,
    write_ct_series,
    write_rtstruct,
    write_seg,
)

LABELS = ["sphere", "box"]


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CtSeries]:
    root = tmp_path_factory.mktemp("site")
    return {pos: write_ct_series(root / pos, pos, pos == "FFP") for pos in ("HFS", "FFP", "FFS")}


def kinds(report) -> list[str]:  # noqa: ANN001 - VolumeLabelReport
    return [p.kind.value for p in report.problems]


def test_each_series_gets_its_label_object(series: dict[str, CtSeries], tmp_path: Path) -> None:
    hfs, ffp, ffs = series["HFS"], series["FFP"], series["FFS"]
    write_seg(hfs, tmp_path / "labels" / "b-hfs.dcm")
    write_rtstruct(ffp, tmp_path / "labels" / "a-ffp-rt.dcm")
    write_seg(hfs, tmp_path / "labels" / "c-hfs-again.dcm", shuffle_seed=1)
    write_seg(ffs, tmp_path / "labels" / "d-ffs.dcm")  # FFS is not among the site's usable series
    (tmp_path / "labels" / "e-notes.dcm").write_bytes(b"not DICOM")
    paths = sorted((tmp_path / "labels").iterdir(), reverse=True)  # path order decides, not the order given

    report = match_volume_labels([hfs.target, ffp.target], paths, LABELS, data_dir=tmp_path)

    assert sorted(report.label_maps) == sorted([hfs.series_uid, ffp.series_uid])
    for ct in (hfs, ffp):
        np.testing.assert_array_equal(report.label_maps[ct.series_uid], expected_labels(ct))
    assert report.results[hfs.series_uid].source == "labels/b-hfs.dcm"
    assert report.results[ffp.series_uid].source == "labels/a-ffp-rt.dcm"
    by_path = {p.path: p.kind.value for p in report.problems}
    assert by_path == {
        "labels/c-hfs-again.dcm": "label-duplicate",
        "labels/d-ffs.dcm": "label-series-missing",
        "labels/e-notes.dcm": "label-unreadable",
    }
    assert ffs.series_uid in next(p.detail for p in report.problems if p.path == "labels/d-ffs.dcm")


def test_series_without_labels_and_fatal_problems(series: dict[str, CtSeries], tmp_path: Path) -> None:
    hfs, ffp = series["HFS"], series["FFP"]
    write_seg(hfs, tmp_path / "hfs.dcm", z_shift=SLICE_STEP / 2)
    report = match_volume_labels([hfs.target, ffp.target], [tmp_path / "hfs.dcm"], LABELS, data_dir=tmp_path)
    assert report.label_maps == {}
    assert kinds(report) == ["label-geometry-mismatch", "label-missing"]
    assert report.problems[1].series_uid == ffp.series_uid and report.problems[1].path == "FFP"
    assert report.to_json()["problems_by_kind"]["label-geometry-mismatch"]["count"] == 1


def test_seg_referencing_nothing_goes_to_the_series_of_its_frame_of_reference_it_fits(
    series: dict[str, CtSeries], tmp_path: Path
) -> None:
    hfs = series["HFS"]
    path = write_seg(hfs, tmp_path / "bare.dcm")
    ds = pydicom.dcmread(path)
    del ds.ReferencedSeriesSequence
    for group in ds.PerFrameFunctionalGroupsSequence:
        del group.DerivationImageSequence
    ds.save_as(path)
    # another reconstruction in the same Frame of Reference, its slices half a slice away, listed first
    geometry = hfs.target.geometry
    shifted = geometry.affine.copy()
    shifted[2, 3] += SLICE_STEP / 2
    recon = dataclasses.replace(
        hfs.target,
        geometry=VolumeGeometry(geometry.shape, shifted),
        series_instance_uid="1.2.3",
        sop_instance_uids=frozenset({"1.2.3.1"}),
    )

    report = match_volume_labels([recon, hfs.target], [path], LABELS)

    assert list(report.label_maps) == [hfs.series_uid]
    np.testing.assert_array_equal(report.label_maps[hfs.series_uid], expected_labels(hfs))
    assert kinds(report) == ["label-missing"] and report.problems[0].series_uid == "1.2.3"


def test_read_volume_labels_dispatches_on_modality(series: dict[str, CtSeries], tmp_path: Path) -> None:
    ffp = series["FFP"]
    for path in (write_seg(ffp, tmp_path / "s.dcm"), write_rtstruct(ffp, tmp_path / "r.dcm")):
        np.testing.assert_array_equal(read_volume_labels(path, ffp.target, LABELS).label_map, expected_labels(ffp))
    ct_slice = read_volume_labels(ffp.folder / "ct00.dcm", ffp.target, LABELS)
    assert [p.kind.value for p in ct_slice.problems] == ["label-unreadable"] and "'CT'" in ct_slice.problems[0].detail


def test_label_files_among_scan_records(tmp_path: Path) -> None:
    records = [
        SimpleNamespace(path=p, header=SimpleNamespace(modality=m))
        for p, m in [("a", "CT"), ("b", "seg"), ("c", "RTSTRUCT")]
    ]
    assert volume_label_files(records, tmp_path) == [tmp_path / "b", tmp_path / "c"]
