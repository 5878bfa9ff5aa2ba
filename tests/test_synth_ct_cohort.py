"""Synthetic CT cohort: layout, manifest, junk series a reader must reject, determinism, the command line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from client.cli import app as site_cli
from client.synth_command import run_ct_synth
from shared.synth.ct_cohort import MANIFEST, MANIFEST_FORMAT, phantom_of, read_manifest, write_ct_cohort, write_ct_site
from shared.synth.ct_junk import JUNK_REASONS, junk_order
from shared.synth.ct_profiles import CT_PROFILES, ct_cohort_profiles
from tests.ct_header_math import read_frames, series_paths

SIZE = 24


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ct-cohort")
    write_ct_cohort(out, n_sites=3, seed=4, unseen=1, patients_per_site=3, size=SIZE)
    return out, read_manifest(out)


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in root.rglob("*")
        if p.is_file()
    }


def test_layout_and_manifest(cohort):
    root, manifest = cohort
    assert manifest["format"] == MANIFEST_FORMAT and manifest["modality"] == "CT" and manifest["seed"] == 4
    assert manifest["labels"] == {"liver": 1, "lung": 2, "spine": 3, "lesion": 4}
    assert [s["name"] for s in manifest["sites"]] == ["site-1", "site-2", "site-3", "unseen-1"]
    assert [s["unseen"] for s in manifest["sites"]] == [False, False, False, True]
    assert len(manifest["patients"]) == 12
    for site in manifest["sites"]:
        own = read_manifest(root / site["name"])  # each site folder describes itself
        assert own["series"] == [s for s in manifest["series"] if s["site"] == site["name"]]
    keys = set(manifest["series"][0])
    for rec in manifest["series"]:
        assert set(rec) == keys  # every record has the same fields, junk or not
        for f in rec["files"]:
            assert (root / rec["site"] / "dicom" / f).is_file()
            assert Path(f).parent.as_posix() == rec["dir"]
        head = pydicom.dcmread(root / rec["site"] / "dicom" / rec["files"][0], stop_before_pixels=True)
        assert head.SeriesInstanceUID == rec["series_uid"] and head.PatientID == rec["patient_id"]
        assert head.StudyInstanceUID == rec["study_uid"] and head.FrameOfReferenceUID == rec["frame_of_reference_uid"]
        assert head.PatientPosition == rec["position"] and head.PatientName.family_name == "SYNTHETIC"
        assert head.file_meta.TransferSyntaxUID == rec["transfer_syntax"]
        if rec["junk"] is None:
            label = rec["label"]
            assert label["format"] == CT_PROFILES[rec["site"]].label_format
            lab = pydicom.dcmread(root / rec["site"] / "dicom" / label["path"], stop_before_pixels=True)
            assert lab.SeriesInstanceUID == label["series_uid"] and lab.SOPInstanceUID == label["sop_uid"]
            assert lab.Modality == ("SEG" if label["format"] == "SEG" else "RTSTRUCT")
            assert lab.StudyInstanceUID == rec["study_uid"]
            assert rec["encoding"] == CT_PROFILES[rec["site"]].encoding
    good = [s for s in manifest["series"] if s["junk"] is None]
    assert len(good) == 12 and len({s["series_uid"] for s in manifest["series"]}) == len(manifest["series"])
    assert any(s["label"]["present"]["lesion"] for s in good)


def test_classic_series_headers(cohort):
    root, manifest = cohort
    for rec in (s for s in manifest["series"] if s["junk"] is None and s["encoding"] != "enhanced"):
        dss = [pydicom.dcmread(p, stop_before_pixels=True) for p in series_paths(root, rec)]
        profile = CT_PROFILES[rec["site"]]
        assert [int(d.InstanceNumber) for d in dss] == list(range(1, len(dss) + 1))
        assert len({d.SOPInstanceUID for d in dss}) == len(dss)
        for d in dss:
            assert d.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2" and d.Modality == "CT"
            assert list(d.ImageType) == ["ORIGINAL", "PRIMARY", "AXIAL"]
            assert float(d.RescaleIntercept) == profile.rescale_intercept and d.RescaleType == "HU"
            assert d.ConvolutionKernel == profile.kernel.name and d.Manufacturer == profile.manufacturer
            assert d.PixelRepresentation == int(profile.signed) and d.BitsStored == profile.bits_stored
            assert float(d.SliceLocation) == float(d.ImagePositionPatient[2])
            assert float(d.KVP) == profile.kvp and float(d.SliceThickness) == profile.slice_thickness_mm
        z = np.array([float(d.ImagePositionPatient[2]) for d in dss])
        assert np.allclose(np.abs(np.diff(z)), profile.slice_spacing_mm)
        assert rec["geometry"]["shape"] == [len(dss), int(dss[0].Rows), int(dss[0].Columns)]


def test_enhanced_ct_functional_groups(cohort):
    root, manifest = cohort
    rec = next(s for s in manifest["series"] if s["junk"] is None and s["encoding"] == "enhanced")
    ds = pydicom.dcmread(root / rec["site"] / "dicom" / rec["files"][0])
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.2.1" and len(rec["files"]) == 1
    shared = ds.SharedFunctionalGroupsSequence[0]
    for kw in (
        "PlaneOrientationSequence",
        "PixelMeasuresSequence",
        "PixelValueTransformationSequence",
        "CTImageFrameTypeSequence",
        "CTReconstructionSequence",
    ):
        assert kw in shared, kw
    n = int(ds.NumberOfFrames)
    assert n == rec["n_frames"] == len(ds.PerFrameFunctionalGroupsSequence) == ds.pixel_array.shape[0]
    content = [f.FrameContentSequence[0] for f in ds.PerFrameFunctionalGroupsSequence]
    assert [int(c.InStackPositionNumber) for c in content] == list(range(1, n + 1))
    assert [int(c.DimensionIndexValues) for c in content] == list(range(1, n + 1))  # one dimension: a single value
    index = ds.DimensionIndexSequence[0]
    assert index.DimensionIndexPointer == 0x00209057 and index.FunctionalGroupPointer == 0x00209111
    assert index.DimensionOrganizationUID == ds.DimensionOrganizationSequence[0].DimensionOrganizationUID
    assert ds.PatientPosition == rec["position"]
    assert float(shared.PixelValueTransformationSequence[0].RescaleIntercept) == -1024.0


def test_junk_series_are_there_and_recorded(cohort):
    root, manifest = cohort
    for site in manifest["sites"]:
        profile = CT_PROFILES[site["name"]]
        junk = [s for s in manifest["series"] if s["site"] == site["name"] and s["junk"]]
        reasons = sorted(s["junk"] for s in junk)
        expected = ["duplicate-slice", "missing-slice"] + (["localizer"] * 3 if profile.localizers else [])
        assert reasons == sorted(expected), (site["name"], reasons)
        for rec in junk:
            assert rec["junk"] in JUNK_REASONS and rec["label"] is None
            frames = read_frames(series_paths(root, rec))
            if rec["junk"] == "localizer":
                heads = [pydicom.dcmread(p, stop_before_pixels=True) for p in series_paths(root, rec)]
                assert all("LOCALIZER" in h.ImageType for h in heads) and len(heads) == 2
                iops = {tuple(f.iop) for f in frames}
                assert len(iops) == 2 and (1.0, 0.0, 0.0, 0.0, 1.0, 0.0) not in iops  # not axial, not one stack
                continue
            good = next(s for s in manifest["series"] if s["patient_id"] == rec["patient_id"] and s["junk"] is None)
            full = read_frames(series_paths(root, good))
            positions = [tuple(f.ipp) for f in frames]
            n = len(full)
            if rec["junk"] == "missing-slice":
                assert len(frames) == n - 1 and len(set(positions)) == n - 1
                assert tuple(full[n // 2].ipp) not in positions
                gaps = np.abs(np.diff([p[2] for p in positions]))
                assert np.isclose(gaps.max(), 2 * gaps.min())
            else:
                assert len(frames) == n + 1 and len(set(positions)) == n
                twins = [f for f in frames if tuple(f.ipp) == tuple(full[n // 2].ipp)]
                assert len(twins) == 2 and np.array_equal(twins[0].hu, twins[1].hu, equal_nan=True)
                if rec["encoding"] != "enhanced":
                    assert twins[0].sop_uid != twins[1].sop_uid
            assert rec["series_uid"] != good["series_uid"] and rec["series_number"] != good["series_number"]


def test_junk_order():
    assert junk_order("missing-slice", 5) == [0, 1, 3, 4]
    assert junk_order("duplicate-slice", 5) == [0, 1, 2, 2, 3, 4]
    with pytest.raises(ValueError):
        junk_order("localizer", 5)


def test_same_seed_same_bytes_other_seed_other_patients(tmp_path):
    profile = CT_PROFILES["unseen-1"]  # enhanced + SEG: highdicom's clock and UIDs are pinned too
    write_ct_site(tmp_path / "a" / "unseen-1", profile, 2, seed=9, size=16)
    write_ct_site(tmp_path / "b" / "unseen-1", profile, 2, seed=9, size=16)
    assert _tree_digest(tmp_path / "a") == _tree_digest(tmp_path / "b")
    site2 = CT_PROFILES["site-2"]  # RLE + RTSTRUCT
    write_ct_site(tmp_path / "c" / "s", site2, 2, seed=9, size=16)
    write_ct_site(tmp_path / "d" / "s", site2, 2, seed=9, size=16)
    assert _tree_digest(tmp_path / "c") == _tree_digest(tmp_path / "d")
    write_ct_site(tmp_path / "e" / "unseen-1", profile, 2, seed=10, size=16)
    a, e = read_manifest(tmp_path / "a" / "unseen-1"), read_manifest(tmp_path / "e" / "unseen-1")
    assert a["patients"][0]["phantom"] != e["patients"][0]["phantom"]
    assert {p["patient_id"] for p in a["patients"]} != {p["patient_id"] for p in e["patients"]}


def test_ground_truth_regenerates_from_the_manifest(cohort):
    _, manifest = cohort
    pid = manifest["patients"][0]["patient_id"]
    phantom = phantom_of(manifest, pid)
    assert json.loads(json.dumps(phantom.to_dict())) == manifest["patients"][0]["phantom"]
    with pytest.raises(KeyError):
        phantom_of(manifest, "nobody")


def test_write_ct_site_refuses_to_mix_into_an_existing_export(tmp_path):
    write_ct_site(tmp_path / "s", CT_PROFILES["site-1"], 2, seed=0, size=16)
    with pytest.raises(FileExistsError, match="already holds files"):
        write_ct_site(tmp_path / "s", CT_PROFILES["site-1"], 2, seed=0, size=16)
    s = write_ct_site(tmp_path / "s", CT_PROFILES["site-1"], 3, seed=1, size=16, overwrite=True)
    assert s.n_patients == 3 and len(read_manifest(tmp_path / "s")["patients"]) == 3
    with pytest.raises(ValueError, match="n_patients"):
        write_ct_site(tmp_path / "t", CT_PROFILES["site-1"], 1, seed=0)
    with pytest.raises(ValueError, match="size"):
        write_ct_site(tmp_path / "t", CT_PROFILES["site-1"], 2, seed=0, size=8)


def test_more_sites_than_built_in_profiles():
    profiles = ct_cohort_profiles(5, 2, seed=3)
    assert [p.name for p in profiles] == ["site-1", "site-2", "site-3", "site-4", "site-5", "unseen-1", "unseen-2"]
    assert len({p.id_prefix for p in profiles}) == 7
    assert profiles[3].encoding == profiles[0].encoding and profiles[3].kernel != profiles[0].kernel


def test_run_ct_synth_is_what_the_command_line_calls(tmp_path):
    summary = run_ct_synth(tmp_path / "c", sites=1, unseen=1, seed=2, scale=0.34, size=16)
    assert [s["name"] for s in summary["sites"]] == ["site-1", "unseen-1"]
    assert all(s["patients"] == 2 for s in summary["sites"]) and summary["modality"] == "ct"
    assert read_manifest(tmp_path / "c")["format"] == MANIFEST_FORMAT


def test_command_line_writes_a_ct_cohort(tmp_path):
    args = ["synth", str(tmp_path / "c"), "--modality", "ct", "--sites", "1", "--scale", "0.3", "--size", "16"]
    first = CliRunner().invoke(site_cli, [*args, "--json"])
    assert first.exit_code == 0, first.output
    summary = json.loads(first.output)
    assert [s["name"] for s in summary["sites"]] == ["site-1", "unseen-1"]  # CT's default: one unseen site
    assert (tmp_path / "c" / MANIFEST).is_file()
    again = CliRunner().invoke(site_cli, args)
    assert again.exit_code == 2 and "--overwrite" in again.output and "Traceback" not in again.output
    table = CliRunner().invoke(site_cli, [*args, "--overwrite"])
    assert table.exit_code == 0 and "unseen-1" in table.output and "manifest" in table.output


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--task", "classification"], "segmentation"),
        (["--task", "multilabel"], "segmentation"),
        (["--test-images", "8"], "not available with --modality ct"),
        (["--modality", "mr"], "--modality must be one of"),
        (["--modality", "xr"], "--size: a CT option"),
    ],
)
def test_command_line_refuses_what_ct_does_not_do(tmp_path, extra, message):
    args = ["synth", str(tmp_path / "c"), "--modality", "ct", "--size", "16", *extra]
    result = CliRunner().invoke(site_cli, args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "c").exists()


def test_cli_default_size_is_the_cohort_default():
    from client.synth_command import CT_DEFAULT_SIZE
    from shared.synth.ct_cohort import DEFAULT_SIZE

    assert CT_DEFAULT_SIZE == DEFAULT_SIZE
