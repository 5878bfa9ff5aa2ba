"""The synthetic cohort: real, decodable, self-consistent DICOM; labels that join; a learnable signal."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
import torch.nn.functional as F
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRLittleEndian
from typer.testing import CliRunner

from client.cli import app as site_cli
from shared.synth import (
    CLASSES,
    DEFAULT_DIFFICULTY,
    PROFILES,
    TRAINING_PROFILES,
    UNSEEN_PROFILES,
    render_image,
    write_cohort,
    write_site,
)
from shared.synth.anatomy import NODULE_RADIUS, _inside, _pick_in_lung, expose, sample_patient
from shared.synth.cohort import MIN_SITE_IMAGES
from shared.synth.dicom_writer import SOP_CLASS, ImageMeta, build_dataset, encode_pixels
from shared.synth.profiles import REFERENCE_LOOK

SCALE = 0.1


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    return out, write_cohort(out, n_sites=3, seed=0, unseen=1, scale=SCALE)


def _read_labels(site: Path) -> list[dict]:
    with open(site / "labels.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _files(site: Path) -> list[Path]:
    return sorted(p for p in (site / "dicom").rglob("*") if p.is_file())


def _down64(img: np.ndarray) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(64, 64), mode="area")[0, 0].numpy()


def _meta(uid: str = "1.2.3.4") -> ImageMeta:
    return ImageMeta(
        "P1",
        "SYNTHETIC^P1",
        "19600101",
        "F",
        uid + ".1",
        uid + ".2",
        uid + ".3",
        "A1",
        "20240101",
        "101010",
        "1",
        120.0,
    )


# ----------------------------------------------------------------------------- profiles


def test_builtin_profiles_cover_the_scanner_zoo():
    assert len(TRAINING_PROFILES) >= 3 and len(UNSEEN_PROFILES) >= 1
    profiles = list(PROFILES.values())
    assert {p.photometric for p in profiles} == {"MONOCHROME1", "MONOCHROME2"}
    assert {p.bits_stored for p in profiles} >= {8, 10, 12, 16}
    assert any(p.signed for p in profiles) and any(not p.signed for p in profiles)
    assert len({p.transfer_syntax for p in profiles}) >= 3
    assert any(p.transfer_syntax != ExplicitVRLittleEndian for p in TRAINING_PROFILES[:3])
    assert all(p.matrix <= 384 for p in profiles)
    assert min(p.default_size for p in TRAINING_PROFILES[:3]) <= 60  # a small site
    assert len({p.id_prefix for p in profiles}) == len(profiles)


def test_shift_zero_makes_every_site_look_the_same():
    for p in PROFILES.values():
        look = p.look(0.0)
        assert look.gamma == pytest.approx(1.0) and look.sigmoid_gain == 0.0 and look.bias == 0.0
        assert look.noise == REFERENCE_LOOK.noise and look.blur_px == REFERENCE_LOOK.blur_px
    a, b = PROFILES["site-1"], PROFILES["unseen-1"]

    def diff(shift):
        x = _down64(render_image(np.random.default_rng(1), a, False, shift=shift))
        y = _down64(render_image(np.random.default_rng(1), b, False, shift=shift))
        return float(np.abs(x - y).mean())

    assert diff(0.0) < 0.01  # same anatomy, same look: only grain differs
    assert diff(1.0) > 3 * diff(0.0) + 0.02
    assert diff(2.0) > diff(1.0)
    with pytest.raises(ValueError):
        a.look(-1.0)


# ----------------------------------------------------------------------------- DICOM encoding


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_each_profile_encodes_and_decodes_losslessly(name):
    profile = PROFILES[name]
    img = render_image(np.random.default_rng(0), profile, True)
    assert img.shape == (profile.matrix, profile.matrix) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0
    stored = encode_pixels(img, profile)
    buf = io.BytesIO()
    build_dataset(stored, profile, _meta()).save_as(buf, enforce_file_format=True)
    ds = pydicom.dcmread(io.BytesIO(buf.getvalue()))
    assert ds.file_meta.TransferSyntaxUID == profile.transfer_syntax
    arr = ds.pixel_array
    assert np.array_equal(arr, stored)
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (
        profile.bits_allocated,
        profile.bits_stored,
        profile.bits_stored - 1,
    )
    assert ds.PixelRepresentation == int(profile.signed)
    assert ds.PhotometricInterpretation == profile.photometric
    values = apply_modality_lut(arr, ds)
    assert np.allclose(values, stored * profile.rescale_slope + profile.rescale_intercept)


def test_cohort_files_are_valid_dicom_consistent_with_their_profile(cohort):
    out, summaries = cohort
    for s in summaries:
        profile = PROFILES[s.profile]
        files = _files(s.path)
        assert len(files) == s.n_images
        for f in files:
            ds = pydicom.dcmread(f)
            assert ds.file_meta.TransferSyntaxUID == profile.transfer_syntax
            assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
            assert ds.SOPClassUID == ds.file_meta.MediaStorageSOPClassUID == SOP_CLASS[ds.Modality]
            assert ds.Modality == profile.modality and ds.Manufacturer == profile.manufacturer
            for kw in ("PatientID", "PatientName", "StudyInstanceUID", "SeriesInstanceUID", "AccessionNumber"):
                assert str(ds.get(kw, "")).strip(), f"{f}: {kw} empty"
            arr = ds.pixel_array
            assert arr.shape == (ds.Rows, ds.Columns) == (profile.matrix, profile.matrix)
            assert arr.dtype.itemsize * 8 == ds.BitsAllocated
            assert (arr.dtype.kind == "i") == (ds.PixelRepresentation == 1)
            lo = -(2 ** (ds.BitsStored - 1)) if ds.PixelRepresentation else 0
            hi = 2 ** (ds.BitsStored - 1) - 1 if ds.PixelRepresentation else 2**ds.BitsStored - 1
            assert lo <= arr.min() and arr.max() <= hi
            assert arr.std() > 0


def test_monochrome1_site_stores_dense_as_low_values(cohort):
    out, summaries = cohort
    mono1 = [s for s in summaries if PROFILES[s.profile].photometric == "MONOCHROME1"]
    mono2 = [s for s in summaries if PROFILES[s.profile].photometric == "MONOCHROME2"]
    assert mono1 and mono2
    for s, dense_high in [(mono1[0], False), (mono2[0], True)]:
        ds = pydicom.dcmread(_files(s.path)[0])
        v = apply_modality_lut(ds.pixel_array, ds)
        n = v.shape[0]
        spine = v[n // 3 : 2 * n // 3, n // 2 - n // 40 : n // 2 + n // 40].mean()  # mediastinum: dense
        lung = v[n // 3 : n // 2, n // 5 : n // 3].mean()  # right lung field: air
        assert (spine > lung) == dense_high, s.name


# ----------------------------------------------------------------------------- layout and labels


def test_labels_csv_matches_the_files(cohort):
    out, summaries = cohort
    all_patients: set[str] = set()
    for s in summaries:
        rows = _read_labels(s.path)
        assert list(rows[0]) == ["SOPInstanceUID", "label", "AccessionNumber", "StudyInstanceUID", "path"]
        assert len(rows) == s.n_images == sum(s.class_counts.values())
        assert {r["path"] for r in rows} == {f.relative_to(s.path / "dicom").as_posix() for f in _files(s.path)}
        for key in ("SOPInstanceUID", "AccessionNumber", "StudyInstanceUID", "path"):
            assert len({r[key] for r in rows}) == len(rows), f"{s.name}: {key} not unique"
        by_patient = defaultdict(set)
        for r in rows:
            assert r["label"] in CLASSES
            ds = pydicom.dcmread(s.path / "dicom" / r["path"], stop_before_pixels=True)
            assert ds.SOPInstanceUID == r["SOPInstanceUID"]
            assert ds.AccessionNumber == r["AccessionNumber"]
            assert ds.StudyInstanceUID == r["StudyInstanceUID"]
            assert Path(r["path"]).parts[0] == ds.PatientID  # dicom/<PatientID>/<study>/...
            by_patient[ds.PatientID].add(r["label"])
        assert all(len(labels) == 1 for labels in by_patient.values())  # a patient's label is stable
        assert s.n_patients == len(by_patient)
        assert not (all_patients & set(by_patient)), "patient IDs must not repeat across sites"
        all_patients |= set(by_patient)
    assert sum(s.n_patients for s in summaries) < 0.8 * sum(s.n_images for s in summaries)  # follow-ups
    names = [f.name for s in summaries for f in _files(s.path)]
    assert any(n.endswith(".dcm") for n in names) and any(not n.endswith(".dcm") for n in names)


def test_site_sizes_and_prevalence_follow_the_profiles(cohort):
    out, summaries = cohort
    assert [s.name for s in summaries] == ["site-1", "site-2", "site-3", "unseen-1"]
    for s in summaries:
        profile = PROFILES[s.profile]
        assert s.path == out / s.name
        assert s.n_images == max(MIN_SITE_IMAGES, round(profile.default_size * SCALE))
        assert min(s.class_counts.values()) >= 1
        frac = s.class_counts["nodule"] / s.n_images
        assert abs(frac - profile.prevalence) <= 3 / s.n_images + 0.01  # greedy fill misses by < 1 patient


def test_prevalence_on_a_larger_site(tmp_path):
    profile = PROFILES["site-2"]
    s = write_site(tmp_path / "s", profile, 120, seed=3)
    assert abs(s.class_counts["nodule"] / 120 - profile.prevalence) < 0.03
    assert s.n_patients < 100  # several studies per patient


# ----------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("name", ["site-3", "unseen-1"])  # JPEG-LS and JPEG 2000
def test_same_seed_writes_identical_files(tmp_path, name):
    profile = PROFILES[name]
    a = write_site(tmp_path / "a", profile, 5, seed=11)
    b = write_site(tmp_path / "b", profile, 5, seed=11)
    c = write_site(tmp_path / "c", profile, 5, seed=12)
    fa, fb = _files(a.path), _files(b.path)
    assert [f.relative_to(a.path) for f in fa] == [f.relative_to(b.path) for f in fb]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(fa, fb))
    assert (a.path / "labels.csv").read_bytes() == (b.path / "labels.csv").read_bytes()
    pix = lambda s: sorted(pydicom.dcmread(f).pixel_array.tobytes() for f in _files(s.path))  # noqa: E731
    assert pix(a) != pix(c)


def test_write_site_refuses_to_mix_into_an_existing_export(tmp_path):
    write_site(tmp_path / "s", PROFILES["site-1"], 4, seed=0)
    with pytest.raises(FileExistsError, match="already holds files"):
        write_site(tmp_path / "s", PROFILES["site-1"], 4, seed=0)
    s = write_site(tmp_path / "s", PROFILES["site-1"], 5, seed=1, overwrite=True)
    assert len(_files(s.path)) == 5 and len(_read_labels(s.path)) == 5


def test_command_line_writes_a_cohort(tmp_path):
    args = ["synth", str(tmp_path / "c"), "--sites", "1", "--unseen", "0", "--scale", "0.01"]
    first = CliRunner().invoke(site_cli, args)
    assert first.exit_code == 0 and "site-1" in first.output
    assert len(_read_labels(tmp_path / "c" / "site-1")) == MIN_SITE_IMAGES
    again = CliRunner().invoke(site_cli, args)  # the cohort exists: a clear error, exit 2
    assert again.exit_code == 2 and "--overwrite" in again.output and "Traceback" not in again.output
    assert CliRunner().invoke(site_cli, [*args, "--overwrite"]).exit_code == 0


def test_test_export_holds_other_patients_of_the_same_scanner(tmp_path):
    """`--test-images N`: site-<k>/test/ has N images of patients the site's own export does not hold; unseen sites get none."""
    args = [
        "synth",
        str(tmp_path / "c"),
        "--sites",
        "2",
        "--unseen",
        "1",
        "--scale",
        "0.05",
        "--test-images",
        "12",
        "--json",
    ]
    result = CliRunner().invoke(site_cli, args)
    assert result.exit_code == 0, result.output
    names = [s["name"] for s in json.loads(result.output)["sites"]]
    assert names == ["site-1", "site-1/test", "site-2", "site-2/test", "unseen-1"]
    for site in ("site-1", "site-2"):
        test_rows, own_rows = _read_labels(tmp_path / "c" / site / "test"), _read_labels(tmp_path / "c" / site)
        assert len(test_rows) == 12
        patients = {
            pydicom.dcmread(tmp_path / "c" / site / folder / "dicom" / r["path"], stop_before_pixels=True).PatientID
            for folder, rows in (("test", test_rows), (".", own_rows))
            for r in rows[:1] + rows[-1:]
        }
        assert len(patients) == 4  # first and last patient of each: none shared
        header = pydicom.dcmread(
            tmp_path / "c" / site / "test" / "dicom" / test_rows[0]["path"], stop_before_pixels=True
        )
        assert (
            header.InstitutionName
            == pydicom.dcmread(
                tmp_path / "c" / site / "dicom" / own_rows[0]["path"], stop_before_pixels=True
            ).InstitutionName
        )
    assert not (tmp_path / "c" / "unseen-1" / "test").exists()
    bad = CliRunner().invoke(site_cli, [*args[:-2], "2", "--overwrite"])
    assert bad.exit_code == 2 and "test_images must be 0 (none) or at least 4" in bad.output


# ----------------------------------------------------------------------------- learnable signal


def _local_response(img64: np.ndarray, y: float, x: float) -> float:
    """Difference-of-Gaussians (a matched blob filter at nodule scale) at normalised (x, y)."""
    n = img64.shape[0]
    fy, fx = np.fft.fftfreq(n)[:, None], np.fft.rfftfreq(n)[None, :]
    f2 = fy * fy + fx * fx
    tf = np.exp(-2 * np.pi**2 * 1.2**2 * f2) - np.exp(-2 * np.pi**2 * 4.0**2 * f2)
    r = np.fft.irfft2(np.fft.rfft2(img64) * tf, s=img64.shape)
    return float(r[int((y + 1) / 2 * n), int((x + 1) / 2 * n)])


def _nodule_vs_lung(difficulty: float, n: int = 16) -> tuple[list[float], list[float]]:
    profile = PROFILES["site-1"]
    look = profile.look(1.0)
    pos, neg = [], []
    for i in range(2 * n):
        rng = np.random.default_rng([3, i])
        patient = sample_patient(rng, i % 2 == 1, difficulty, look)
        img = _down64(expose(patient, rng, look, profile.matrix))
        lo, hi = np.percentile(img, [0.5, 99.5])
        img = (img - lo) / (hi - lo)
        if patient.has_nodule:
            pos += [_local_response(img, nd.y, nd.x) for nd in patient.nodules[:1]]
        else:
            x, y = _pick_in_lung(rng, _inside(patient.lung, 0.97))
            neg.append(_local_response(img, y, x))
    return pos, neg


def test_nodules_are_inside_the_lungs_and_big_enough_at_64px():
    for i in range(20):
        patient = sample_patient(np.random.default_rng(i), True)
        assert 1 <= len(patient.nodules) <= 2
        for nd in patient.nodules:
            r, c = int((nd.y + 1) / 2 * patient.lung.shape[0]), int((nd.x + 1) / 2 * patient.lung.shape[1])
            assert patient.lung[r, c] > 0.9
            assert np.sqrt(nd.rx * nd.ry) * 32 >= 2.5  # mean radius in pixels of a 64×64 input
            assert NODULE_RADIUS[0] <= max(nd.rx, nd.ry) <= NODULE_RADIUS[1]
    assert not sample_patient(np.random.default_rng(0), False).nodules


def test_nodules_stand_out_locally_and_difficulty_dims_them():
    """A matched filter at the nodule separates nodule from lung clutter; higher difficulty, weaker."""
    pos, neg = _nodule_vs_lung(DEFAULT_DIFFICULTY)
    auc = np.mean([p > q for p in pos for q in neg])
    assert auc > 0.9
    hard, _ = _nodule_vs_lung(1.0, n=8)
    easy, _ = _nodule_vs_lung(0.0, n=8)
    assert np.mean(easy) > np.mean(pos[:8]) > np.mean(hard)
