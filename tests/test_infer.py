"""``fedrad-site infer``: results back to PACS as DICOM, on real synthetic DICOM at 32 px.

Models: a classification model trained by ``train-local`` (2 epochs; its file has a Youden threshold), a
segmentation UNet trained the same way, and a multi-label model of seeded weights with one threshold per finding
(so the per-finding decision is checked against known cut-offs). Each result object is

* validated with ``dciodvfy`` (dicom3tools): no "Error" line; the only warnings allowed are listed in
  :data:`ALLOWED_WARNINGS` (the private coding scheme 99FEDRAD, which dciodvfy does not know);
* read back with highdicom to exactly the probabilities the model gives for the same images, computed here
  independently the way ``fedrad-site evaluate`` does (the site's dataset from the cache, the task's prediction;
  one image a batch, as infer runs a one-image study), and to exactly the masks on the source image's pixels;
* checked for its references: the source study, evidence / source images pointing at the source SOP instances.

Delivery: a folder; C-STORE to a real pynetdicom storage SCP on a free loopback port (and the SCP's rejection,
and a failure status, each reported per object with exit code 1); STOW-RS to a real Orthanc (skipped without it).
Every run's log is read back. One torch thread, fixed seeds.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
import yaml
from pydicom.uid import generate_uid

from client.infer import InferOptions, run_infer
from client.infer_common import finding_code
from client.infer_log import read_log
from client.infer_seg import read_masks
from client.infer_sr import read_findings
from client.site_options import site_data_config
from client.train_local import TrainLocalOptions, run_train_local
from shared.config import ConfigError, PreprocessConfig
from shared.imaging import scan_site
from shared.imaging.planar import to_native_grid
from shared.imaging.segmentation import align_mask
from shared.modelfile import load_model_file, save_model_file
from shared.packed import from_scan
from shared.processes import free_port
from shared.site_data import load_site_dataset
from shared.synth import cohort_profiles, write_site
from shared.synth.findings import FINDINGS
from shared.tasks import TaskSpec, get_task
from shared.training import batched_logits

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parents[1]
SIZE = 32
SEGMENTS = ("nodule", "lung")
ML_THRESHOLDS = [0.45, 0.5, 0.55, 0.6]
DCIODVFY = shutil.which("dciodvfy")
ALLOWED_WARNINGS = ("Unrecognized defined term <99FEDRAD> for value 1 of attribute <Coding Scheme Designator>",)


# -- fixtures: two synthetic sites, three model files ---------------------------------------------------------
def _site_yaml(root: Path, name: str, data: Path, **extra: object) -> Path:
    """A complete site.yaml (credentials are placeholders: infer never contacts the consortium)."""
    doc = {
        "site_name": "site-1",
        "server_address": "127.0.0.1:9",
        "ca_cert": "ca.crt",
        "private_key": "site.key",
        "work_dir": str(root / f"work-{name}"),
        "data": str(data),
        "image_size": SIZE,
        "cache_dir": str(root / "cache"),
        **extra,
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("infer")
    torch.manual_seed(0)
    profile = cohort_profiles(1, 0, seed=4)[0]
    cls = write_site(root / "cls", profile, 16, seed=4)
    seg = write_site(root / "seg", profile, 6, seed=5, task="segmentation")
    two_views = _add_second_view(cls.dicom_dir, cls.labels_csv)
    cls_yaml = _site_yaml(root, "cls", cls.dicom_dir, labels=str(cls.labels_csv))
    seg_yaml = _site_yaml(root, "seg", seg.dicom_dir)
    opts = TrainLocalOptions(epochs=2, threads=1, device="cpu", site_name="site-1")
    run_train_local(site_data_config(cls_yaml), opts, root / "cls.pt", show_progress=False)
    run_train_local(
        site_data_config(seg_yaml, task="segmentation"),
        opts,
        root / "seg.pt",
        show_progress=False,
        task=TaskSpec("segmentation", SEGMENTS, "unet", SIZE),
    )
    torch.manual_seed(1)
    spec = TaskSpec("multilabel", FINDINGS, "smallcnn", SIZE)
    save_model_file(
        root / "ml.pt",
        spec.build_model(),
        architecture="smallcnn",
        arch_kwargs={},
        preprocess=PreprocessConfig(image_size=SIZE),
        threshold=ML_THRESHOLDS,
        provenance={"trained_by": "demo-consortium", "kind": "federated", "rounds": 3},
        **spec.model_file_outputs(),
    )
    studies = {
        "cls": _studies(cls.labels_csv),
        "seg": _studies(seg.labels_csv),
    }
    return {
        "root": root,
        "cls": cls_yaml,
        "seg": seg_yaml,
        "studies": studies,
        "labels": cls.labels_csv,
        "two_views": two_views,
    }


def _add_second_view(data: Path, labels_csv: Path) -> str:
    """Give the first study a second image (a lateral film: another series, unlabelled) and a text report (no
    image: the scan rejects it); its StudyInstanceUID."""
    from tests.dicom_factory import write_structured_report

    first = sorted(_rows(labels_csv), key=lambda r: r["StudyInstanceUID"])[0]
    path = data / first["path"]
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.ViewPosition = generate_uid(), 2, "LL"
    ds.PixelData = np.ascontiguousarray(np.fliplr(ds.pixel_array)).tobytes()  # another picture of the patient
    ds.save_as(path.parent / "IMG0002.dcm", enforce_file_format=True)
    report = write_structured_report(path.parent / "REPORT.dcm")
    report.StudyInstanceUID, report.AccessionNumber = ds.StudyInstanceUID, ds.AccessionNumber
    report.save_as(path.parent / "REPORT.dcm", enforce_file_format=True)
    return str(ds.StudyInstanceUID)


def _rows(labels_csv: Path) -> list[dict]:
    import csv

    with open(labels_csv, newline="") as fh:
        return list(csv.DictReader(fh))


def _studies(labels_csv: Path) -> list[str]:
    return sorted({row["StudyInstanceUID"] for row in _rows(labels_csv)})


def _single_image_studies(sites: dict) -> list[str]:
    return [u for u in sites["studies"]["cls"] if u != sites["two_views"]]


def _sources(data: Path) -> dict[str, pydicom.Dataset]:
    """SOPInstanceUID → header of every image in an export (SEG labels left out)."""
    out = {}
    for path in sorted(Path(data).rglob("*.dcm")):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.Modality != "SEG":
            out[str(ds.SOPInstanceUID)] = ds
    return out


def _dciodvfy(path: Path) -> list[str]:
    """dciodvfy's warnings for ``path``; fails the test on any error (skips without dicom3tools)."""
    if DCIODVFY is None:
        pytest.skip("dciodvfy (Debian's dicom3tools) is not installed: apt-get install dicom3tools")
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = [line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error")]
    assert not errors, f"{path.name}: {errors}"
    warnings = [line.removeprefix("Warning - ") for line in lines if line.startswith("Warning")]
    assert set(warnings) <= set(ALLOWED_WARNINGS), warnings
    return warnings


def _infer(config: Path, model: Path, **kwargs: object) -> dict:
    return run_infer(InferOptions(model=model, config=config, threads=1, device="cpu", **kwargs))


def _files(out: Path, kind: str) -> list[Path]:
    return sorted(out.rglob(f"{kind}-*.dcm"))


def _expected_findings(config: Path, model_path: Path) -> dict[str, np.ndarray]:
    """SOPInstanceUID → the model's probabilities for every usable image of the export: its cached model input
    (the scan with the model file's preprocessing) through the model and the task's probabilities, one image a
    batch (a convolution's last bits may depend on the batch: infer's batch is one study, here one image each)."""
    loaded = load_model_file(model_path)
    cfg = site_data_config(config, image_size=SIZE)
    scan = scan_site(Path(cfg.data), loaded.preprocess, cfg.resolved_cache_dir())
    task = get_task(loaded.task)
    out = {}
    for rec in scan.usable:
        logits = batched_logits(loaded.model, from_scan(scan, [rec], (SIZE, SIZE)), 1).float()
        out[rec.header.sop_instance_uid] = task.probabilities(logits).numpy()[0]
    return out


def _same_as_evaluate(config: Path, loaded, expected: dict[str, np.ndarray]) -> None:  # noqa: ANN001
    """What ``fedrad-site evaluate`` computes for the labelled images (its dataset, its predict_proba) is the same."""
    from shared.tasks.classification.evaluation import predict_proba

    cfg = site_data_config(config, image_size=SIZE)
    data, _ = load_site_dataset(cfg)
    for i, rel in enumerate(data.paths):
        sop = str(pydicom.dcmread(Path(cfg.data) / rel, stop_before_pixels=True).SOPInstanceUID)
        assert np.array_equal(predict_proba(loaded.model, data.images[i : i + 1], 1)[0], expected[sop])


# -- SR: classification and multilabel ------------------------------------------------------------------------
def test_classification_sr_carries_the_models_probabilities_and_decisions(sites: dict, tmp_path: Path) -> None:
    study = _single_image_studies(sites)[:3]  # one image each
    out = tmp_path / "out"
    summary = _infer(sites["cls"], sites["root"] / "cls.pt", studies=study, to="folder", out=out)
    assert summary["exit_code"] == 0 and summary["failed"] == 0 and not summary["missing"]
    loaded = load_model_file(sites["root"] / "cls.pt")
    assert isinstance(loaded.threshold, float)  # train-local's Youden threshold: the decision rule uses it
    expected = _expected_findings(sites["cls"], sites["root"] / "cls.pt")
    _same_as_evaluate(sites["cls"], loaded, expected)
    sources = _sources(Path(site_data_config(sites["cls"]).data))
    files = _files(out, "SR")
    assert len(files) == 3  # one SR per study
    for path in files:
        assert _dciodvfy(path) == []  # normal and nodule have SCT codes: nothing private, not one warning
        sr = pydicom.dcmread(path)
        assert "CodingSchemeIdentificationSequence" not in sr
        found = read_findings(sr)
        ((sop, per_finding),) = found.items()  # one image per synthetic study, one group per class
        src = sources[sop]
        assert sr.StudyInstanceUID == src.StudyInstanceUID and sr.SeriesInstanceUID != src.SeriesInstanceUID
        assert sr.PatientID == src.PatientID and sr.AccessionNumber == src.AccessionNumber
        assert sr.SeriesDescription == "FedRad AI result (not for diagnosis)"
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
        assert evidence.StudyInstanceUID == src.StudyInstanceUID
        refs = evidence.ReferencedSeriesSequence[0]
        assert refs.SeriesInstanceUID == src.SeriesInstanceUID
        assert refs.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == sop
        assert refs.ReferencedSOPSequence[0].ReferencedSOPClassUID == src.SOPClassUID
        p = expected[sop]
        positive = bool(p[1] >= loaded.threshold)
        for j, name in enumerate(loaded.classes):
            code = finding_code(name)
            got = per_finding[(code.scheme_designator, code.value)]
            assert got["probability"] == float(p[j])  # exactly the model's float32 output
            assert got["unit"] == "1"
            assert got["present"] == (positive if j == 1 else not positive)
        assert per_finding[("SCT", "27925004")]["meaning"] == "Nodule"  # standard code where DICOM has one
        assert per_finding[("SCT", "17621005")]["meaning"] == "Normal"
    # the algorithm is identified by the weights' hash, with the provenance as parameters
    algorithm = _algorithm_items(pydicom.dcmread(files[0]))
    assert algorithm["Algorithm Name"] == ["FedRad"]
    assert algorithm["Algorithm Version"] == [loaded.weights_sha256[:16]]
    assert f"weights_sha256={loaded.weights_sha256}" in algorithm["Algorithm Parameters"]
    assert "trained_by=site-1" in algorithm["Algorithm Parameters"]


def _algorithm_items(sr: pydicom.Dataset) -> dict[str, list[str]]:
    """Concept meaning → text values of the TID 4019 items of the first measurement group."""
    out: dict[str, list[str]] = {}

    def walk(items: pydicom.Sequence) -> None:
        for item in items:
            meaning = item.ConceptNameCodeSequence[0].CodeMeaning if "ConceptNameCodeSequence" in item else ""
            if meaning.startswith("Algorithm") and "TextValue" in item:
                out.setdefault(meaning, []).append(str(item.TextValue))
            if "ContentSequence" in item and not out.get("Algorithm Parameters"):
                walk(item.ContentSequence)

    walk(sr.ContentSequence)
    return out


def test_multilabel_sr_per_finding_threshold_and_private_codes(sites: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    studies = _single_image_studies(sites)[:4]
    summary = _infer(sites["cls"], sites["root"] / "ml.pt", studies=studies, to="folder", out=out)
    assert summary["exit_code"] == 0
    expected = _expected_findings(sites["cls"], sites["root"] / "ml.pt")
    for path in _files(out, "SR"):
        assert _dciodvfy(path) == list(ALLOWED_WARNINGS) * 3  # 'consolidation' is private: declared and used
        sr = pydicom.dcmread(path)
        assert sr.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99FEDRAD"
        ((sop, per_finding),) = read_findings(sr).items()
        assert len(per_finding) == len(FINDINGS)
        for j, name in enumerate(FINDINGS):
            code = finding_code(name)
            got = per_finding[(code.scheme_designator, code.value)]
            assert got["probability"] == float(expected[sop][j])
            assert got["present"] == bool(expected[sop][j] >= ML_THRESHOLDS[j])
        assert per_finding[("99FEDRAD", "consolidation")]["meaning"] == "consolidation"  # no DICOM code: private
        assert per_finding[("SCT", "41699000")]["meaning"] == "Effusion"
    # the summary carries the same numbers (site-local)
    for study in summary["studies"]:
        for sop, values in study["findings"].items():
            assert [values[f]["probability"] for f in FINDINGS] == [float(v) for v in expected[sop]]


def test_long_private_names_stay_apart(sites: dict, tmp_path: Path) -> None:
    """Finding names longer than a CodeValue (16 characters) are LongCodeValues, so two such names never merge."""
    names = ("pleural_thickening_left", "pleural_thickening_right")
    spec = TaskSpec("multilabel", names, "smallcnn", SIZE)
    torch.manual_seed(2)
    save_model_file(
        tmp_path / "long.pt",
        spec.build_model(),
        architecture="smallcnn",
        arch_kwargs={},
        preprocess=PreprocessConfig(image_size=SIZE),
        threshold=None,
        provenance={"trained_by": "demo-consortium", "kind": "federated", "rounds": 1},
        **spec.model_file_outputs(),
    )
    study = _single_image_studies(sites)[:1]
    assert _infer(sites["cls"], tmp_path / "long.pt", studies=study, to="folder", out=tmp_path)["exit_code"] == 0
    (path,) = _files(tmp_path, "SR")
    _dciodvfy(path)
    ((_, per_finding),) = read_findings(pydicom.dcmread(path)).items()
    assert set(per_finding) == {("99FEDRAD", n) for n in names}


def test_explain_writes_a_labelled_grad_cam_secondary_capture(sites: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    study = _single_image_studies(sites)[0]
    summary = _infer(sites["cls"], sites["root"] / "cls.pt", studies=[study], to="folder", out=out, explain=True)
    assert summary["exit_code"] == 0
    (sc_path,) = _files(out, "SC")  # a binary classifier: the positive class's Grad-CAM, one per image
    _dciodvfy(sc_path)
    sc = pydicom.dcmread(sc_path)
    (sr_path,) = _files(out, "SR")
    sr = pydicom.dcmread(sr_path)
    ((sop, _),) = read_findings(sr).items()
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.PhotometricInterpretation == "RGB"
    assert sc.BurnedInAnnotation == "YES" and "NOT FOR DIAGNOSIS" in sc.ImageComments
    assert "Grad-CAM" in sc.DerivationDescription and "not for diagnosis" in sc.SeriesDescription
    assert sc.StudyInstanceUID == sr.StudyInstanceUID == study
    assert sc.SeriesInstanceUID not in (sr.SeriesInstanceUID,)
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == sop
    pixels = sc.pixel_array
    assert pixels.ndim == 3 and pixels.shape[2] == 3
    band = pixels[:10]  # the text band above the image: black with yellow and white letters
    assert (band.reshape(-1, 3) == 0).all(axis=1).mean() > 0.5 and (band[..., 2] < 50).any()


def test_a_study_of_two_views_is_one_sr_referencing_both_and_a_capture_each(sites: dict, tmp_path: Path) -> None:
    """The study has a PA and a lateral film (two series) and a text report the scan rejects: one SR with a group
    per image and class, its evidence both series; one Grad-CAM capture per image; the report logged as skipped."""
    out = tmp_path / "out"
    study = sites["two_views"]
    summary = _infer(sites["cls"], sites["root"] / "ml.pt", studies=[study], to="folder", out=out, explain=True)
    assert summary["exit_code"] == 0 and summary["studies"][0]["images"] == 2
    expected = _expected_findings(sites["cls"], sites["root"] / "ml.pt")
    (sr_path,) = _files(out, "SR")
    _dciodvfy(sr_path)
    sr = pydicom.dcmread(sr_path)
    found = read_findings(sr)
    assert len(found) == 2
    for sop, per_finding in found.items():
        for j, name in enumerate(FINDINGS):
            code = finding_code(name)
            assert per_finding[(code.scheme_designator, code.value)]["probability"] == float(expected[sop][j])
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == study
    referenced = {
        (series.SeriesInstanceUID, ref.ReferencedSOPInstanceUID)
        for series in evidence.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    sources = _sources(Path(site_data_config(sites["cls"]).data))
    assert referenced == {(sources[sop].SeriesInstanceUID, sop) for sop in found}
    assert len({series for series, _ in referenced}) == 2
    captures = [pydicom.dcmread(p) for p in _files(out, "SC")]
    explained = {sc.SourceImageSequence[0].ReferencedSOPInstanceUID for sc in captures}
    assert explained == set(found) and len({sc.SeriesInstanceUID for sc in captures}) == 1
    for path in _files(out, "SC"):
        _dciodvfy(path)
    events = read_log(Path(summary["log"]))
    assert {e["sop_instance_uid"] for e in events if e["event"] == "read"} == set(found)
    (skipped,) = [e for e in events if e["event"] == "skipped"]
    assert skipped["file"].endswith("REPORT.dcm") and skipped["reason"] == "no-pixel-data"


def test_explain_is_refused_for_a_task_without_saliency(sites: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="saliency maps .* not available for segmentation"):
        _infer(
            sites["seg"],
            sites["root"] / "seg.pt",
            studies=sites["studies"]["seg"][:1],
            to="folder",
            out=tmp_path,
            explain=True,
        )


def test_a_task_without_dicom_results_is_refused_in_its_own_words() -> None:
    """3D segmentation writes no DICOM yet (its masks live on a resampled volume): refused before anything runs."""
    from types import SimpleNamespace

    from client.infer import infer_task

    with pytest.raises(ConfigError, match="results back to PACS as DICOM .* not available for segmentation3d"):
        infer_task(SimpleNamespace(task="segmentation3d"), Path("ct.pt"), explain=False)


# -- SEG ------------------------------------------------------------------------------------------------------
def test_segmentation_seg_on_the_source_image_with_the_models_masks(sites: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    studies = sites["studies"]["seg"]
    summary = _infer(sites["seg"], sites["root"] / "seg.pt", studies=studies, to="folder", out=out)
    assert summary["exit_code"] == 0
    loaded = load_model_file(sites["root"] / "seg.pt")
    cfg = site_data_config(sites["seg"], image_size=SIZE, task="segmentation")
    scan = scan_site(Path(cfg.data), loaded.preprocess, cfg.resolved_cache_dir())
    by_sop = {r.header.sop_instance_uid: r for r in scan.usable}
    sources = _sources(Path(cfg.data))
    files = _files(out, "SEG")
    assert len(files) == len(studies)  # one SEG per source image (one image per synthetic study)
    agreement = []
    for path in files:
        assert _dciodvfy(path) == []
        seg = pydicom.dcmread(path)
        sop, masks = read_masks(path)
        src = sources[sop]
        assert seg.StudyInstanceUID == src.StudyInstanceUID
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
        assert seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0].ReferencedSOPInstanceUID == sop
        assert seg.SegmentationType == "BINARY" and "not for diagnosis" in seg.SeriesDescription
        assert [s.SegmentLabel for s in seg.SegmentSequence] == list(SEGMENTS)
        assert seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodeValue == "39607008"  # SCT Lung
        algorithm = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == "FedRad" and algorithm.AlgorithmVersion == loaded.weights_sha256[:16]
        # the masks, recomputed here: the model's sigmoid maps on the cached input, put on the source's pixels
        images = from_scan(scan, [by_sop[sop]], (SIZE, SIZE))
        proba = torch.sigmoid(batched_logits(loaded.model, images, 1).float()).numpy()[0]
        for k, label in enumerate(SEGMENTS):
            expected = to_native_grid(proba[k], int(src.Rows), int(src.Columns)) >= 0.5
            assert masks[label].shape == (src.Rows, src.Columns)
            assert np.array_equal(masks[label], expected)
            agreement.append((align_mask(masks[label], SIZE) == (proba[k] >= 0.5)).mean())
    # back on the model's grid, the SEG is the model's own mask but at its edges (a 2-epoch UNet's masks are ragged)
    assert min(agreement) > 0.85
    assert any(s["segments"] for s in summary["studies"])


@pytest.mark.parametrize("shape", [(90, 120), (120, 90), (64, 64)])
def test_native_grid_is_the_inverse_of_the_preprocessing_geometry(shape: tuple[int, int]) -> None:
    """A mask taken to the model's grid (as training aligns SEG labels) and put back lands where it was: padding
    side, orientation and scale of :func:`to_native_grid` match :func:`shared.imaging.planar.preprocess_image`."""
    rows, columns = shape
    mask = np.zeros(shape, dtype=bool)
    mask[rows // 4 : rows // 2, columns // 3 : columns - 5] = True
    back = to_native_grid(align_mask(mask, SIZE).astype(np.float32), rows, columns) >= 0.5
    assert back.shape == shape and (back == mask).mean() > 0.98


# -- input problems and the CLI -------------------------------------------------------------------------------
def test_accession_csv_and_a_missing_study(sites: dict, tmp_path: Path) -> None:
    import csv

    with open(sites["labels"], newline="") as fh:
        rows = list(csv.DictReader(fh))
    listing = tmp_path / "accessions.csv"
    listing.write_text("AccessionNumber\n" + rows[0]["AccessionNumber"] + "\nNOSUCHACC\n")
    summary = _infer(sites["cls"], sites["root"] / "cls.pt", accessions=listing, to="folder", out=tmp_path / "o")
    assert summary["exit_code"] == 1  # one study done, one missing: named, with what to do
    assert [s["study_uid"] for s in summary["studies"]] == [rows[0]["StudyInstanceUID"]]
    (gone,) = summary["missing"]
    assert "accession NOSUCHACC" in gone["message"] and "fedrad-site fetch" in gone["message"]
    events = read_log(Path(summary["log"]))
    assert [e["event"] for e in events][:2] == ["run", "missing"] and events[-1]["event"] == "end"


def test_cli_json_exit_codes_and_the_log(sites: dict, tmp_path: Path) -> None:
    study = _single_image_studies(sites)[0]
    out = tmp_path / "out"
    proc = _cli(
        "infer", "--model", str(sites["root"] / "cls.pt"), "--config", str(sites["cls"]),
        "--study", study, "--to", "folder", "--out", str(out), "--json",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    (sr,) = summary["objects"]
    assert sr["kind"] == "SR" and sr["ok"] and Path(sr["file"]).is_file()
    assert oct(Path(sr["file"]).stat().st_mode & 0o777) == "0o600"  # a patient's result: owner-only
    log = Path(summary["log"])
    assert log.parent == sites["root"] / "work-cls" / "infer" and oct(log.stat().st_mode & 0o777) == "0o600"
    events = read_log(log)
    read = [e for e in events if e["event"] == "read"]
    assert [e["study"] for e in read] == [study] and read[0]["file"].endswith(".dcm") and read[0]["series"]
    (written,) = [e for e in events if e["event"] == "written"]
    assert written["sop_instance_uid"] == sr["sop_instance_uid"] and written["sources"] == [read[0]["sop_instance_uid"]]
    (delivered,) = [e for e in events if e["event"] == "delivered"]
    assert delivered["ok"] and delivered["status"] == "written"

    proc = _cli(
        "infer", "--model", str(sites["root"] / "cls.pt"), "--config", str(sites["cls"]),
        "--study", "1.2.3.999", "--to", "folder", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 2 and "study 1.2.3.999: not in the export" in proc.stderr
    assert "fedrad-site fetch" in proc.stderr and "Traceback" not in proc.stderr

    with pytest.raises(ConfigError, match="--to folder needs --out"):
        _infer(sites["cls"], sites["root"] / "cls.pt", studies=[study])
    with pytest.raises(ConfigError, match="has no pacs.peer"):
        _infer(sites["cls"], sites["root"] / "cls.pt", studies=[study], to="pacs")
    with pytest.raises(ConfigError, match="has no pacs.dicomweb"):
        _infer(sites["cls"], sites["root"] / "cls.pt", studies=[study], to="pacs", via="dicomweb")
    with pytest.raises(ConfigError, match="name the studies"):
        _infer(sites["cls"], sites["root"] / "cls.pt", to="folder", out=out)


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "client", *args], cwd=REPO, capture_output=True, text=True, timeout=120, env=env
    )


# -- to PACS --------------------------------------------------------------------------------------------------
class StorageSCP:
    """A pynetdicom storage SCP on a free loopback port, keeping what it receives (optionally failing a kind)."""

    def __init__(
        self,
        ae_title: str = "TESTPACS",
        callers: list[str] | None = None,
        fail_modality: str = "",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt

        self.ae_title, self.port = ae_title, free_port()
        self.received: list[pydicom.Dataset] = []
        self.callers: list[str] = []
        self._lock = threading.Lock()
        self.fail_modality = fail_modality
        ae = AE(ae_title=ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        if callers is not None:
            ae.require_calling_aet = callers
        self.server = ae.start_server(
            ("127.0.0.1", self.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._store)],
            ssl_context=ssl_context,
        )

    def _store(self, event) -> int:  # noqa: ANN001 - pynetdicom Event
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self._lock:
            self.callers.append(event.assoc.requestor.ae_title)
            if ds.Modality == self.fail_modality:
                return 0xA700  # out of resources
            self.received.append(ds)
        return 0x0000

    def peer(self) -> dict:
        return {"ae_title": self.ae_title, "host": "127.0.0.1", "port": self.port, "timeout_s": 10}

    def close(self) -> None:
        self.server.shutdown()


def _pacs_yaml(sites: dict, name: str, pacs: dict) -> Path:
    doc = yaml.safe_load(sites["cls"].read_text())
    doc["pacs"] = pacs
    path = sites["root"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_c_store_to_a_storage_scp_and_the_log_lists_every_object(sites: dict, tmp_path: Path) -> None:
    scp = StorageSCP()
    try:
        config = _pacs_yaml(
            sites, "pacs-ok", {"peer": scp.peer(), "node": {"ae_title": "FEDRADSITE", "allowed_callers": ["TESTPACS"]}}
        )
        studies = [sites["two_views"], _single_image_studies(sites)[0]]  # 3 images: 2 SRs, 3 captures
        summary = _infer(config, sites["root"] / "cls.pt", studies=studies, to="pacs", explain=True)
    finally:
        scp.close()
    assert summary["exit_code"] == 0 and summary["failed"] == 0
    assert summary["destination"] == f"C-STORE TESTPACS@127.0.0.1:{scp.port}"
    sent = {d["sop_instance_uid"]: d for d in summary["objects"]}
    assert sorted(d["kind"] for d in sent.values()) == ["SC", "SC", "SC", "SR", "SR"]
    assert all(d["status"] == "0x0000 success" for d in sent.values())
    assert {str(ds.SOPInstanceUID) for ds in scp.received} == set(sent)
    assert set(scp.callers) == {"FEDRADSITE"}  # pacs.node.ae_title is the calling AE
    assert {str(ds.StudyInstanceUID) for ds in scp.received} == set(studies)
    events = read_log(Path(summary["log"]))
    delivered = {e["sop_instance_uid"]: e for e in events if e["event"] == "delivered"}
    assert set(delivered) == set(sent) and all(e["destination"].startswith("TESTPACS@") for e in delivered.values())
    written = {e["sop_instance_uid"] for e in events if e["event"] == "written"}
    assert written == set(sent)


def test_rejected_association_and_failure_status_are_reported_per_object(sites: dict) -> None:
    study = _single_image_studies(sites)[:1]
    scp = StorageSCP(callers=["SOMEONEELSE"])
    try:
        config = _pacs_yaml(sites, "pacs-reject", {"peer": scp.peer()})
        summary = _infer(config, sites["root"] / "cls.pt", studies=study, to="pacs")
    finally:
        scp.close()
    assert summary["exit_code"] == 1 and summary["failed"] == 1 and not scp.received
    (d,) = summary["objects"]
    assert not d["ok"] and "association rejected" in d["status"] and "Calling AE title not recognised" in d["status"]

    scp = StorageSCP(fail_modality="OT")  # the Grad-CAM capture is refused, the SR stored
    try:
        config = _pacs_yaml(sites, "pacs-fail", {"peer": scp.peer()})
        summary = _infer(config, sites["root"] / "cls.pt", studies=study, to="pacs", explain=True)
    finally:
        scp.close()
    assert summary["exit_code"] == 1
    status = {d["kind"]: (d["ok"], d["status"]) for d in summary["objects"]}
    assert status["SR"] == (True, "0x0000 success")
    assert status["SC"][0] is False and status["SC"][1].startswith("0xA700 failure")

    closed = _pacs_yaml(
        sites, "pacs-closed", {"peer": {"ae_title": "NOBODY", "host": "127.0.0.1", "port": free_port(), "timeout_s": 3}}
    )
    summary = _infer(closed, sites["root"] / "cls.pt", studies=study, to="pacs")
    assert summary["exit_code"] == 1 and "no association with NOBODY@" in summary["objects"][0]["status"]


def test_c_store_over_tls_checks_the_pacs_certificate(sites: dict, tmp_path: Path) -> None:
    """pacs.peer.tls: the PACS's certificate must chain to tls.ca (and name 127.0.0.1); a plain association to a TLS
    port fails and says so."""
    from server.pki import create_ca, issue_server_cert

    create_ca(tmp_path / "pki", "Hospital PACS")
    tls = issue_server_cert(tmp_path / "pki", ["127.0.0.1"])
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tls.server_cert, tls.server_key)
    study = _single_image_studies(sites)[:1]
    scp = StorageSCP(ssl_context=server)
    try:
        secure = _pacs_yaml(sites, "pacs-tls", {"peer": {**scp.peer(), "tls": {"ca": str(tls.ca_cert)}}})
        summary = _infer(secure, sites["root"] / "cls.pt", studies=study, to="pacs")
        assert summary["exit_code"] == 0 and summary["destination"].endswith("(TLS)")
        assert [str(ds.StudyInstanceUID) for ds in scp.received] == study
        plain = _pacs_yaml(sites, "pacs-plain", {"peer": {**scp.peer(), "timeout_s": 3}})
        summary = _infer(plain, sites["root"] / "cls.pt", studies=study, to="pacs")
        assert summary["exit_code"] == 1 and "does it expect TLS" in summary["objects"][0]["status"]
        broken = _pacs_yaml(sites, "pacs-noca", {"peer": {**scp.peer(), "tls": {"ca": str(tmp_path / "no.crt")}}})
        with pytest.raises(ConfigError, match="pacs.peer.tls: cannot load the TLS files"):
            _infer(broken, sites["root"] / "cls.pt", studies=study, to="pacs")  # before the model runs
    finally:
        scp.close()


def test_c_store_to_dcmtk_storescp(sites: dict, tmp_path: Path) -> None:
    """Another implementation than ours: DCMTK's storescp receives the SEGs as files; they are the ones written."""
    from shared.processes import processes, wait_for_port

    exe = shutil.which("storescp")
    if exe is None:
        pytest.skip("DCMTK's storescp is not installed: apt-get install dcmtk")
    port, received = free_port(), tmp_path / "received"
    received.mkdir()
    studies = sites["studies"]["seg"][:2]
    with processes(tmp_path / "logs") as ps:
        proc = ps.start("storescp", [exe, "--aetitle", "DCMTKSCP", "--output-directory", str(received), str(port)])
        wait_for_port("127.0.0.1", port, timeout=30, proc=proc)
        config = sites["root"] / "seg-dcmtk.yaml"
        doc = yaml.safe_load(sites["seg"].read_text())
        doc["pacs"] = {"peer": {"ae_title": "DCMTKSCP", "host": "127.0.0.1", "port": port, "timeout_s": 10}}
        config.write_text(yaml.safe_dump(doc))
        summary = _infer(config, sites["root"] / "seg.pt", studies=studies, to="pacs", out=tmp_path / "copies")
    assert summary["exit_code"] == 0
    sent = [d for d in summary["objects"] if d["destination"].startswith("DCMTKSCP@")]
    assert len(sent) == 2 and all(d["status"] == "0x0000 success" for d in sent)
    got = {str(pydicom.dcmread(f).SOPInstanceUID) for f in received.iterdir()}
    assert got == {d["sop_instance_uid"] for d in sent}
    copies = [d for d in summary["objects"] if d["status"] == "written"]  # --out with --to pacs: a local copy each
    assert {d["sop_instance_uid"] for d in copies} == got


def test_stow_rs_to_orthanc(sites: dict, tmp_path: Path) -> None:
    from shared.processes import processes
    from tests.orthanc import running_orthanc

    studies = sites["studies"]["seg"][:2]
    with processes(tmp_path / "logs") as ps, running_orthanc(tmp_path / "orthanc", ps) as pacs:
        config = sites["root"] / "seg-web.yaml"
        doc = yaml.safe_load(sites["seg"].read_text())
        token = tmp_path / "dicomweb.token"
        token.write_text("not-checked-by-this-orthanc\n")
        token.chmod(0o600)
        doc["pacs"] = {"dicomweb": {"url": pacs.dicomweb_url, "token_file": str(token)}}
        config.write_text(yaml.safe_dump(doc))
        summary = _infer(config, sites["root"] / "seg.pt", studies=studies, to="pacs", via="dicomweb")
        assert summary["exit_code"] == 0, summary["objects"]
        assert all(d["status"] == "stored" for d in summary["objects"])
        for study in studies:
            found = pacs.find_study(study)
            assert found is not None
            modalities = {
                pacs.client.get(f"/series/{s}").json()["MainDicomTags"].get("Modality") for s in found["Series"]
            }
            assert "SEG" in modalities
