"""A CT/MR export scanned as series (shared/imaging/series_scan.py): volumes cached once, labels on their grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shared.imaging.series_scan import attach_labels, scan_series
from shared.imaging.volume_preprocess import VolumeParams
from tests.volume_label_factory import NAMES, expected_labels, write_ct_series, write_seg


def _export(tmp_path: Path) -> tuple[Path, list]:
    data = tmp_path / "export"
    series = [write_ct_series(data / "hfs", "HFS"), write_ct_series(data / "ffp", "FFP", descending=True)]
    for s in series:
        write_seg(s, data / f"{s.folder.name}-seg.dcm")
    (data / "notes.txt").write_text("not DICOM")
    return data, series


def test_series_are_assembled_once_and_labels_land_on_their_grid(tmp_path: Path) -> None:
    data, series = _export(tmp_path)
    params = VolumeParams()  # native spacing: the label map must equal the phantom exactly
    scan = scan_series(data, params, tmp_path / "cache")
    assert [s.usable for s in scan.series] == [True, True] and scan.assembled == 2
    assert sorted(scan.label_files) == ["ffp-seg.dcm", "hfs-seg.dcm"]
    assert [p.reason for p in scan.problems] == ["not-dicom"]
    labels = attach_labels(scan, list(NAMES))
    for s in series:
        entry = next(e for e in scan.usable if e.series_uid == s.series_uid)
        assert entry.image is not None and entry.image.shape == s.target.geometry.shape
        np.testing.assert_array_equal(labels.maps[s.series_uid].read(), expected_labels(s))
        assert entry.patient_id == "PV1" and entry.plane == "axial"

    again = scan_series(data, params, tmp_path / "cache")  # nothing decoded the second time
    assert again.assembled == 0 and again.cached == 2
    first = {e.series_uid: e.image.read() for e in scan.usable}
    for e in again.usable:
        np.testing.assert_array_equal(e.image.read(), first[e.series_uid])


def test_resampling_keeps_image_and_labels_on_one_grid(tmp_path: Path) -> None:
    data, series = _export(tmp_path)
    scan = scan_series(data, VolumeParams(target_spacing_mm=(1.25, 1.4, 1.4)), tmp_path / "cache")
    labels = attach_labels(scan, list(NAMES))
    for entry in scan.usable:
        assert labels.maps[entry.series_uid].shape == entry.image.shape == entry.geometry.shape
        np.testing.assert_allclose(entry.geometry.spacing, (1.25, 1.4, 1.4))
        assert set(np.unique(labels.maps[entry.series_uid].read())) <= {0, 1, 2}


def test_a_series_without_labels_and_a_broken_one_are_reported(tmp_path: Path) -> None:
    data, series = _export(tmp_path)
    (data / "hfs-seg.dcm").unlink()
    (series[1].folder / "ct04.dcm").unlink()  # a gap in the FFP series
    scan = scan_series(data, VolumeParams(), None)
    verdicts = {e.series_uid: (e.usable, e.reason) for e in scan.series}
    assert verdicts[series[0].series_uid] == (True, "")
    assert verdicts[series[1].series_uid] == (False, "series-missing-slices")
    report = attach_labels(scan, list(NAMES)).report
    kinds = [p["kind"] for p in report["problems"]]
    assert "label-missing" in kinds and "label-series-missing" in kinds
    assert scan.to_json()["series"] == {"found": 2, "usable": 1, "rejected": 1}


def test_check_volumes_lists_series_labels_and_problems(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from client.cli import app

    data, series = _export(tmp_path)
    (series[1].folder / "ct04.dcm").unlink()
    args = ["check", "--data", str(data), "--volumes", "--segments", "sphere,box", "--cache-dir", str(tmp_path / "c")]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 1, result.output  # one labelled series: not enough to train
    report = json.loads(result.output)
    assert report["series"] == {"found": 2, "usable": 1, "rejected": 1}
    rows = {r["first_file"].split("/")[0]: r for r in report["series_list"]}
    assert rows["hfs"]["labels"] == "hfs-seg.dcm" and rows["hfs"]["spacing_mm"] == [2.5, 0.8, 0.7]
    assert rows["ffp"]["reason"] == "series-missing-slices" and "ffp/ct03.dcm" in rows["ffp"]["detail"]
    assert "cannot train 3D segmentation" in report["verdict"]
    text = CliRunner().invoke(app, args, env={"COLUMNS": "160"})
    assert "series-missing-slices" in text.output and "hfs-seg.dcm" in text.output


def test_worker_processes_assemble_the_same_volumes(tmp_path: Path) -> None:
    data, _ = _export(tmp_path)
    params = VolumeParams(target_spacing_mm=(2.0, 1.0, 1.0))
    one = scan_series(data, params, None, workers=1)
    two = scan_series(data, params, tmp_path / "cache", workers=2)
    assert two.assembled == 2
    by_uid = {e.series_uid: e.image.read() for e in one.usable}
    for entry in two.usable:
        np.testing.assert_array_equal(entry.image.read(), by_uid[entry.series_uid])
