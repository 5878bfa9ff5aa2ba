"""Label manifests as hospitals produce them, joined to real scanned DICOM."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.config import ConfigError, PreprocessConfig
from shared.imaging import scan_site
from shared.labels import join_labels, read_labels
from tests import dicom_factory as f


@pytest.fixture()
def scanned(tmp_path: Path):
    data = tmp_path / "data"
    uids = {}
    for i in range(6):
        ds = f.write_image(
            data / f"p{i // 2}" / f"img{i}.dcm",
            f.phantom(64, 64, seed=i),
            patient_id=f"P{i // 2}",
            accession=f"ACC{i}",
            study_uid=f"1.2.3.{i // 2}",
        )
        uids[i] = ds.SOPInstanceUID
    f.write_rgb(data / "colour.dcm")
    return scan_site(data, PreprocessConfig(image_size=32), tmp_path / "cache"), uids


def write_csv(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def test_join_reports_every_kind_of_problem(scanned, tmp_path: Path) -> None:
    result, uids = scanned
    colour_uid = next(r for r in result.records if r.path == "colour.dcm").header.sop_instance_uid
    csv_text = (
        "SOPInstanceUID,label\n"
        + "\n".join(
            [
                f"{uids[0]},normal",
                f"{uids[1]},nodule",
                f"{uids[2]},normal",
                f"{uids[2]},normal",  # consistent duplicate: fine
                f"{uids[3]},normal",
                f"{uids[3]},nodule",  # conflicting duplicate: excluded
                f"{uids[4]},pneumonia",  # not a task class
                "1.2.999.404,normal",  # image missing
                f"{colour_uid},normal",  # image rejected
            ]
        )
        + "\n"
    )
    rows = read_labels(write_csv(tmp_path / "labels.csv", csv_text), "SOPInstanceUID")
    join = join_labels(result.records, rows, "SOPInstanceUID", ["normal", "nodule"])
    assert sorted(rec.path for rec, _ in join.matched) == ["p0/img0.dcm", "p0/img1.dcm", "p1/img2.dcm"]
    problems = {(p.key, p.reason) for p in join.problems}
    assert (uids[3], "conflicting-labels") in problems
    assert (uids[4], "unknown-class") in problems
    assert ("1.2.999.404", "image-missing") in problems
    assert (colour_uid, "image-rejected") in problems
    assert join.unlabelled == ["p2/img5.dcm"]


@pytest.mark.parametrize(
    "key,column_of",
    [
        ("path", lambda i: f"p{i // 2}/img{i}.dcm"),
        ("AccessionNumber", lambda i: f"ACC{i}"),
    ],
)
def test_other_key_columns(scanned, tmp_path: Path, key: str, column_of) -> None:
    result, _ = scanned
    text = f"{key},label\n" + "".join(f"{column_of(i)},{'nodule' if i % 2 else 'normal'}\n" for i in range(6))
    join = join_labels(result.records, read_labels(write_csv(tmp_path / "l.csv", text), key), key, ["normal", "nodule"])
    assert len(join.matched) == 6 and not join.problems


def test_study_key_labels_every_image_of_the_study(scanned, tmp_path: Path) -> None:
    result, _ = scanned
    text = "StudyInstanceUID,label\n1.2.3.0,normal\n1.2.3.1,nodule\n"
    join = join_labels(
        result.records,
        read_labels(write_csv(tmp_path / "l.csv", text), "StudyInstanceUID"),
        "StudyInstanceUID",
        ["normal", "nodule"],
    )
    assert len(join.matched) == 4 and len(join.unlabelled) == 2


def test_excel_style_csv_with_bom_semicolons_and_latin1(scanned, tmp_path: Path) -> None:
    result, uids = scanned
    text = "\ufeffSOPInstanceUID;label;comment\n" + f"{uids[0]};normal;Befund unauffällig\n{uids[1]};nodule;x\n"
    rows = read_labels(write_csv(tmp_path / "bom.csv", text, "utf-8"), "SOPInstanceUID")
    assert [r.label for r in rows] == ["normal", "nodule"]
    rows = read_labels(write_csv(tmp_path / "latin.csv", text.lstrip("\ufeff"), "latin-1"), "SOPInstanceUID")
    assert [r.key for r in rows] == [uids[0], uids[1]]


def test_tab_delimited(tmp_path: Path) -> None:
    rows = read_labels(write_csv(tmp_path / "t.tsv", "path\tlabel\na.dcm\tnormal\n"), "path")
    assert rows[0].key == "a.dcm" and rows[0].line == 2


@pytest.mark.parametrize(
    "text,expected",
    [
        ("SOPInstanceUID,diagnosis\n1.2,normal\n", "missing column(s) 'label'"),
        ("", "empty"),
    ],
)
def test_bad_label_files_name_the_file_and_the_problem(tmp_path: Path, text: str, expected: str) -> None:
    path = write_csv(tmp_path / "bad.csv", text)
    with pytest.raises(ConfigError, match=re.escape(expected)) as info:
        read_labels(path, "SOPInstanceUID")
    assert str(path) in str(info.value)


def test_missing_label_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        read_labels(tmp_path / "nope.csv", "path")
