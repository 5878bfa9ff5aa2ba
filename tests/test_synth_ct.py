"""Synthetic CT: the phantom, the acquisition grids, and headers that tell the truth about the voxels and labels."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from matplotlib.path import Path as PolyPath

from shared.imaging.volume_geometry import to_canonical
from shared.synth.ct_acquisition import ORIENTATION, axial_grid, reconstruct
from shared.synth.ct_cohort import read_manifest, write_ct_cohort, write_ct_site
from shared.synth.ct_phantom import LABELS, SEGMENT_NAMES, CTPhantom, LesionTraits, sample_ct_patient
from shared.synth.ct_profiles import CT_PROFILES, CT_UNSEEN_1, Kernel
from shared.synth.rtstruct_writer import trace_mask
from tests.ct_header_math import Frame, read_frames, series_paths

SIZE = 40


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, dict]:
    """3 training sites + 1 unseen, 2 patients each: HFS, FFS, HFP and FFP all occur; every encoding and label kind."""
    out = tmp_path_factory.mktemp("ct")
    write_ct_cohort(out, n_sites=3, seed=11, unseen=1, patients_per_site=2, size=SIZE)
    # the unseen scanner's Enhanced CT labelled by RTSTRUCT instead (frame references in ContourImageSequence)
    profile = replace(CT_UNSEEN_1, name="enhanced-rt", id_prefix="ERT", label_format="RTSTRUCT")
    write_ct_site(out / "enhanced-rt", profile, 2, seed=11, size=SIZE)
    manifest, extra = read_manifest(out), read_manifest(out / "enhanced-rt")
    for key in ("sites", "patients", "series"):
        manifest[key] += extra[key]
    return out, manifest


def _good(manifest: dict) -> list[dict]:
    return [s for s in manifest["series"] if s["junk"] is None]


def _phantom(manifest: dict, patient_id: str) -> CTPhantom:
    return CTPhantom.from_dict(next(p["phantom"] for p in manifest["patients"] if p["patient_id"] == patient_id))


# ----------------------------------------------------------------------------- phantom


def test_phantom_is_a_function_of_the_seed_and_survives_the_manifest():
    a = sample_ct_patient(np.random.default_rng(5), LesionTraits(prevalence=1.0))
    b = sample_ct_patient(np.random.default_rng(5), LesionTraits(prevalence=1.0))
    c = sample_ct_patient(np.random.default_rng(6), LesionTraits(prevalence=1.0))
    assert a == b and a != c
    assert CTPhantom.from_dict(a.to_dict()) == a
    pts = np.random.default_rng(0).uniform(-200, 200, size=(5000, 3))
    np.testing.assert_array_equal(CTPhantom.from_dict(a.to_dict()).hu(pts), a.hu(pts))


def test_phantom_labels_are_numbered_and_nested_as_documented():
    assert LABELS == {"liver": 1, "lung": 2, "spine": 3, "lesion": 4} and SEGMENT_NAMES == tuple(LABELS)
    rng = np.random.default_rng(1)
    counts = []
    for _ in range(12):
        ph = sample_ct_patient(rng, LesionTraits(prevalence=0.7), z_window=(-40.0, 40.0))
        counts.append(len(ph.lesions))
        g = np.stack(np.meshgrid(*[np.linspace(-200, 200, 40)] * 2, np.linspace(-60, 60, 24), indexing="ij"), -1)
        m = ph.masks(g)
        labels = ph.label_map(g)
        assert set(np.unique(labels)) <= {0, 1, 2, 3, 4}
        assert m["liver"].any() and m["lung"].any() and m["spine"].any()
        assert not (m["lesion"] & ~(m["liver"] | m["lung"])).any()  # lesions lie inside their organ
        assert not (m["liver"] & m["lung"]).any() and not (m["spine"] & (m["liver"] | m["lung"])).any()
        np.testing.assert_array_equal(labels == LABELS["lesion"], m["lesion"])  # the nested structure wins
        hu = ph.hu(g)
        assert np.median(hu[m["lung"] & ~m["lesion"]]) < -800 and np.median(hu[m["spine"]]) > 600
    assert len(set(counts)) > 1 and 0 in counts  # patients differ, some have no lesion


def test_sampling_a_phantom_is_cheap():
    ph = sample_ct_patient(np.random.default_rng(2))
    grid = axial_grid("HFS", (64, 64, 64), 380.0, 2.5, 2.5, (0.0, 0.0, 0.0))
    import time

    t0 = time.perf_counter()
    reconstruct(ph, grid, Kernel("K", "STANDARD", 15.0, 1.0, 0.5), np.random.default_rng(0))
    ph.masks(grid.points())
    assert time.perf_counter() - t0 < 5.0  # 64^3 with partial volume, kernel, noise and labels


# ----------------------------------------------------------------------------- acquisition grid


@pytest.mark.parametrize("position", ["HFS", "FFS", "HFP", "FFP"])
@pytest.mark.parametrize("reverse", [False, True])
def test_grid_matches_the_shared_geometry_contract(position, reverse):
    grid = axial_grid(position, (10, 12, 14), 350.0, 3.0, 3.0, (5.0, -7.0, -200.0), reverse)
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in (10, 12, 14)], indexing="ij"), -1)
    np.testing.assert_allclose(grid.geometry().index_to_patient(idx), grid.points(), atol=1e-9)
    assert grid.orientation == ORIENTATION[position]
    dz = np.diff(grid.positions[:, 2])
    falls = position.startswith("HF") != reverse  # head-first scans run superior → inferior unless reversed
    assert np.allclose(dz, -3.0 if falls else 3.0)
    assert np.allclose(grid.positions[:, :2], grid.positions[0, :2])
    # canonical order (S, P, L) puts the patient's anatomy the same way whatever the position
    vol = grid.points()[..., 0]  # x (towards Left) of each voxel
    can, geo = to_canonical(vol, grid.geometry())
    assert np.all(np.diff(can, axis=2) > 0)  # axis 2 runs towards Left
    assert np.all(np.diff(to_canonical(grid.points()[..., 2], grid.geometry())[0], axis=0) > 0)  # axis 0 → S


# ----------------------------------------------------------------------------- headers vs voxels


def _deep(phantom: CTPhantom, frame: Frame, margin_px: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free HU at each pixel centre, and where the tissue is the same within ``margin_px`` and half a slice.

    The phantom is sampled on a grid 4x finer than the frame's, across the slice thickness; a pixel is deep
    where the finest samples in its window all agree."""
    from scipy import ndimage

    sub = 4
    rows, cols = frame.hu.shape
    offsets = (np.arange(-2 * sub, (rows + 2) * sub) / sub, np.arange(-2 * sub, (cols + 2) * sub) / sub)
    r, c = np.meshgrid(*offsets, indexing="ij")
    x, y = frame.iop[:3], frame.iop[3:]
    plane = frame.ipp + c[..., None] * frame.spacing[1] * x + r[..., None] * frame.spacing[0] * y
    size = int(2 * margin_px * sub) + 1
    lo = hi = None
    for t in (-0.5, 0.0, 0.5):
        fine = phantom.hu(plane + t * frame.thickness * frame.normal)
        mn, mx = ndimage.minimum_filter(fine, size), ndimage.maximum_filter(fine, size)
        lo = mn if lo is None else np.minimum(lo, mn)
        hi = mx if hi is None else np.maximum(hi, mx)
    centre = (slice(2 * sub, (rows + 2) * sub, sub), slice(2 * sub, (cols + 2) * sub, sub))
    hu = phantom.hu(frame.centres())
    return hu, (lo[centre] == hi[centre]) & (lo[centre] == hu) & np.isfinite(frame.hu)


def test_every_patient_position_and_encoding_is_in_the_fixture(cohort):
    _, manifest = cohort
    good = _good(manifest)
    assert {s["position"] for s in good} == {"HFS", "FFS", "HFP", "FFP"}
    assert {s["encoding"] for s in good} == {"classic", "rle", "jpegls", "enhanced"}
    assert {s["label"]["format"] for s in good} == {"SEG", "RTSTRUCT"}


def test_header_geometry_places_each_voxel_on_the_phantom(cohort):
    """For every labelled series (4 positions, enhanced too): a voxel's patient position from IPP/IOP/PixelSpacing
    alone finds, in the phantom, the HU the voxel stores (deep inside a tissue, within the noise)."""
    root, manifest = cohort
    for rec in _good(manifest):
        phantom = _phantom(manifest, rec["patient_id"])
        profile = next(s["profile"] for s in manifest["sites"] if s["name"] == rec["site"])
        tol = 6 * profile["kernel"]["noise_hu"] + 30
        frames = read_frames(series_paths(root, rec))
        assert len(frames) == rec["n_frames"] == rec["geometry"]["shape"][0]
        tissues = set()
        for frame in frames[len(frames) // 4 :: max(1, len(frames) // 4)]:
            truth, deep = _deep(phantom, frame, margin_px=2.5)
            err = np.abs(frame.hu - truth)[deep]
            assert deep.sum() > 50 and err.max() < tol, (rec["site"], rec["position"], err.max())
            tissues |= {int(v) for v in np.unique(truth[deep])}
        assert -1000 in tissues and len(tissues) >= 3, tissues  # air and two tissues at least, deep and matching


def test_one_voxel_by_hand(cohort):
    """The brief's check, spelled out: the deepest lung and bone voxels of an FFP Enhanced CT and an HFP JPEG-LS
    series, placed in the patient with IPP + column x spacing x row direction + row x spacing x column direction."""
    root, manifest = cohort
    for position in ("FFP", "HFP"):
        rec = next(s for s in _good(manifest) if s["position"] == position)
        phantom = _phantom(manifest, rec["patient_id"])
        frames = read_frames(series_paths(root, rec))
        for tissue, lo, hi in (("lung", -1000, -650), ("spine", 250, 1300)):
            found = None
            for margin in (2.0, 1.5, 1.0, 0.5):
                for frame in frames[::3]:
                    _, deep = _deep(phantom, frame, margin)
                    mask = phantom.masks(frame.centres())[tissue] & deep
                    if mask.any():
                        found = frame, *np.argwhere(mask)[len(np.argwhere(mask)) // 2]
                        break
                if found:
                    break
            assert found, f"{position}: no {tissue} voxel"
            frame, r, c = found
            x, y = frame.iop[:3], frame.iop[3:]
            point = frame.ipp + c * frame.spacing[1] * x + r * frame.spacing[0] * y
            assert phantom.label_map(point[None])[0] == LABELS[tissue]
            assert lo < frame.hu[r, c] < hi, (position, tissue, frame.hu[r, c])


# ----------------------------------------------------------------------------- SEG


def test_seg_reads_back_with_the_segments_and_references_of_its_series(cohort):
    import highdicom as hd

    root, manifest = cohort
    segs = [s for s in _good(manifest) if s["label"]["format"] == "SEG"]
    assert {s["encoding"] for s in segs} >= {"classic", "enhanced"}
    for rec in segs:
        seg = hd.seg.segread(root / rec["site"] / "dicom" / rec["label"]["path"])
        assert (
            seg.SeriesInstanceUID == rec["label"]["series_uid"]
            and seg.FrameOfReferenceUID == rec["frame_of_reference_uid"]
        )
        assert [seg.get_segment_description(n).segment_label for n in seg.segment_numbers] == list(SEGMENT_NAMES)
        assert list(seg.segment_numbers) == [LABELS[n] for n in SEGMENT_NAMES]
        frames = read_frames(series_paths(root, rec))
        sop_uids = [f.sop_uid for f in frames]
        refs = {(series, sop) for _, series, sop in seg.get_source_image_uids()}
        assert refs == {(rec["series_uid"], uid) for uid in set(sop_uids)}
        if rec["encoding"] == "enhanced":
            pixels = seg.get_pixels_by_source_frame(sop_uids[0], source_frame_numbers=list(range(1, len(frames) + 1)))
        else:
            pixels = seg.get_pixels_by_source_instance(sop_uids)
        phantom = _phantom(manifest, rec["patient_id"])
        truth = np.stack([np.stack(list(phantom.masks(f.centres()).values()), -1) for f in frames])
        assert pixels.shape == truth.shape
        assert np.mean(pixels.astype(bool) != truth) < 1e-3  # the SEG is the phantom, sampled where the header says
        mirrored = truth[:, :, ::-1]  # teeth: a reader that mirrored the image would fail this comparison
        assert np.sum(pixels.astype(bool) != mirrored) > 20 * max(1, np.sum(pixels.astype(bool) != truth))
        assert rec["label"]["present"] == {n: bool(truth[..., i].any()) for i, n in enumerate(SEGMENT_NAMES)}


# ----------------------------------------------------------------------------- RTSTRUCT


def _rasterise(frame: Frame, contours: list[np.ndarray]) -> np.ndarray:
    """Even-odd fill of a slice's contours (patient mm) at the pixel centres of ``frame``."""
    rows, cols = frame.hu.shape
    rr, cc = np.mgrid[0:rows, 0:cols]
    centres = np.column_stack([cc.ravel(), rr.ravel()]).astype(np.float64)
    inside = np.zeros(rows * cols, dtype=bool)
    for pts in contours:
        assert np.allclose((pts - frame.ipp) @ frame.normal, 0.0, atol=1e-3)  # on the slice's plane
        inside ^= PolyPath(frame.to_pixel(pts)).contains_points(centres)
    return inside.reshape(rows, cols)


def test_rtstruct_contours_enclose_the_labels(cohort):
    import pydicom

    root, manifest = cohort
    rts = [s for s in _good(manifest) if s["label"]["format"] == "RTSTRUCT"]
    assert {s["encoding"] for s in rts} == {"rle", "enhanced"}
    for rec in rts:
        ds = pydicom.dcmread(root / rec["site"] / "dicom" / rec["label"]["path"])
        assert ds.Modality == "RTSTRUCT" and ds.FrameOfReferenceUID == rec["frame_of_reference_uid"]
        rois = {int(r.ROINumber): r.ROIName for r in ds.StructureSetROISequence}
        assert rois == {v: k for k, v in LABELS.items()}
        frames = read_frames(series_paths(root, rec))
        by_ref = {(f.sop_uid, f.frame_number): f for f in frames}
        listed = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
        assert listed.SeriesInstanceUID == rec["series_uid"] and len(listed.ContourImageSequence) == len(frames)
        phantom = _phantom(manifest, rec["patient_id"])
        for roi in ds.ROIContourSequence:
            name = rois[int(roi.ReferencedROINumber)]
            per_frame: dict[tuple, list[np.ndarray]] = {}
            for contour in getattr(roi, "ContourSequence", []):
                assert contour.ContourGeometricType == "CLOSED_PLANAR"
                ref = contour.ContourImageSequence[0]
                key = (
                    ref.ReferencedSOPInstanceUID,
                    int(ref.ReferencedFrameNumber) if "ReferencedFrameNumber" in ref else None,
                )
                assert key in by_ref
                pts = np.array([float(v) for v in contour.ContourData]).reshape(-1, 3)
                assert len(pts) == int(contour.NumberOfContourPoints)
                per_frame.setdefault(key, []).append(pts)
            area_mask = area_contour = disagree = 0
            for key, frame in by_ref.items():
                truth = phantom.masks(frame.centres())[name]
                drawn = _rasterise(frame, per_frame.get(key, []))
                assert truth.any() == (key in per_frame), (name, key)
                area_mask += int(truth.sum())
                area_contour += int(drawn.sum())
                disagree += int((truth ^ drawn).sum())
            if area_mask:
                assert abs(area_contour - area_mask) <= 0.01 * area_mask + 2, (name, area_contour, area_mask)
                assert disagree <= 0.01 * area_mask + 2, (name, disagree, area_mask)
            else:
                assert not per_frame  # an empty ROI has no contours


def test_tracing_keeps_holes_as_inner_contours():
    mask = np.zeros((12, 12), dtype=bool)
    mask[2:10, 2:10] = True
    mask[5:7, 5:7] = False
    lines = trace_mask(mask)
    assert len(lines) == 2
    frame = Frame("x", None, np.zeros(3), np.array([1.0, 0, 0, 0, 1, 0]), (1.0, 1.0), 1.0, np.zeros((12, 12)))
    np.testing.assert_array_equal(_rasterise(frame, [np.column_stack([ln, np.zeros(len(ln))]) for ln in lines]), mask)


# ----------------------------------------------------------------------------- dciodvfy


def _dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian package dicom3tools) is not installed")
def test_dciodvfy_finds_no_errors(cohort):
    root, manifest = cohort
    picked: dict[str, Path] = {}
    for rec in manifest["series"]:
        site_dir = root / rec["site"] / "dicom"
        key = "localizer" if rec["junk"] == "localizer" else rec["encoding"]
        picked.setdefault(key, site_dir / rec["files"][len(rec["files"]) // 2])
        if rec["label"]:
            picked.setdefault(f"{rec['label']['format']}-{rec['encoding']}", site_dir / rec["label"]["path"])
    kinds = {"classic", "rle", "jpegls", "enhanced", "localizer"}
    assert kinds | {"SEG-classic", "SEG-jpegls", "SEG-enhanced", "RTSTRUCT-rle", "RTSTRUCT-enhanced"} <= set(picked)
    errors = {k: e for k, p in picked.items() if (e := _dciodvfy_errors(p))}
    assert not errors, errors


def test_profiles_cover_what_the_reader_must_undo():
    p = CT_PROFILES
    assert {pos for prof in p.values() for pos in prof.positions} == {"HFS", "FFS", "HFP", "FFP"}
    assert {prof.encoding for prof in p.values()} == {"classic", "rle", "jpegls", "enhanced"}
    assert {prof.signed for prof in p.values()} == {True, False}
    assert {prof.rescale_intercept for prof in p.values()} == {-1024.0, 0.0}
    assert any(prof.circular_fov for prof in p.values()) and any(prof.reverse_scan for prof in p.values())
    assert all(1.0 <= prof.slice_spacing_mm <= 5.0 for prof in p.values())
    assert len({prof.kernel.name for prof in p.values()}) == len(p)
