"""DICOM SEG ingest over real files: masks line up with the model input, problems are data, synth SEGs round-trip."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from shared.config import PreprocessConfig
from shared.imaging import scan_site
from shared.imaging.segmentation import (
    align_mask,
    match_segmentations,
    read_segmentation,
    seg_files,
)
from shared.synth import PROFILES, write_site
from shared.synth.anatomy import (
    RENDER,
    Exposure,
    Patient,
    _add_blob,
    collimation_field,
    expose_with_geometry,
    sample_patient,
    upsample,
)
from shared.synth.masks import anatomy_masks
from shared.synth.profiles import ScannerLook
from shared.synth.seg_writer import build_segmentation
from tests import dicom_factory as f

LABELS = ["nodule", "lung"]
SIZE = 32


# ----------------------------------------------------------------------------- helpers


def _image(path: Path, image: np.ndarray, **kw) -> pydicom.Dataset:
    """A factory image plus the Type 2 header elements highdicom copies into a SEG."""
    ds = f.write_image(path, image, **kw)
    for keyword in ("PatientBirthDate", "PatientSex", "StudyID", "StudyDate", "StudyTime", "ReferringPhysicianName"):
        setattr(ds, keyword, "")
    ds.save_as(path, enforce_file_format=True)
    return ds


def _disc(rows: int, cols: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:rows, 0:cols]
    return (yy - cy) ** 2 + (xx - cx) ** 2 < r * r


def _seg(path: Path, sources: list[pydicom.Dataset], masks: dict[str, np.ndarray], omit_empty: bool = False) -> Path:
    """A BINARY SEG of ``sources`` (all one series) with one segment per label; ``masks[label]`` is (n, R, C)."""
    alg = hd.AlgorithmIdentificationSequence(name="test", version="1", family=codes.cid7162.ArtificialIntelligence)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=label,
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=alg,
        )
        for i, label in enumerate(masks)
    ]
    pixels = np.stack([np.asarray(m, dtype=np.uint8) for m in masks.values()], axis=-1)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixels,
        segmentation_type="BINARY",
        segment_descriptions=descriptions,
        series_instance_uid=generate_uid(),
        series_number=99,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="Test",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="1",
        omit_empty_frames=omit_empty,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return path


# ----------------------------------------------------------------------------- alignment


def test_masks_line_up_with_the_preprocessed_image(tmp_path):
    """A bright disc in the image is exactly the aligned mask, for both resampling paths and MONOCHROME1."""
    data = tmp_path / "data"
    # name: (rows, cols, disc centre and radius, writer options); 120→32 is Pillow's box filter, 128→32 an exact mean
    cases = {
        "wide.dcm": (80, 120, (28.0, 90.0, 12.0), {}),
        "tall-mono1.dcm": (128, 64, (40.0, 30.0, 10.0), dict(photometric="MONOCHROME1", slope=2.0, intercept=-100.0)),
    }
    uids, lungs = {}, {}
    for name, (rows, cols, (cy, cx, r), kw) in cases.items():
        disc = _disc(rows, cols, cy, cx, r)
        lung = np.zeros((rows, cols), bool)
        lung[rows // 4 : rows // 2, : cols // 2] = True
        ds = _image(data / name, np.where(disc, 0.9, 0.2), **kw)
        uids[name], lungs[name] = ds.SOPInstanceUID, lung
        _seg(data / "seg" / name, [ds], {"nodule": disc[None], "lung": lung[None]})

    scan = scan_site(data, PreprocessConfig(image_size=SIZE), cache_dir=tmp_path / "cache", workers=1)
    segs = seg_files(scan.records, data)
    assert sorted(p.name for p in segs) == sorted(cases)  # two-segment SEGs: found, and not taken for images
    assert {r.path for r in scan.usable} == set(cases)
    report = match_segmentations(scan.usable, segs, LABELS, SIZE, data)
    assert report.problems == []
    for name in cases:
        record = next(r for r in scan.usable if r.path == name)
        image = scan.load_image(record)  # exactly preprocess_image's output
        nodule, lung = report.masks[uids[name]]
        assert report.image_paths[uids[name]] == name
        # a noise-free disc: box-resampled intensity ≥ halfway ⇔ covered area ≥ half ⇔ in the aligned mask
        assert np.count_nonzero((image >= 0.5) != nodule) <= 2, name
        assert np.count_nonzero((image >= 0.5) != np.roll(nodule, 1, axis=1)) > 6, name  # one pixel off is caught
        assert lung.any() and np.array_equal(lung, align_mask(lungs[name], SIZE))  # channels in task-label order


def test_align_mask_pads_like_the_image():
    mask = np.zeros((40, 80), bool)
    mask[:, :8] = True  # the left tenth of a wide image
    out = align_mask(mask, 16)
    assert out.shape == (16, 16) and out.dtype == bool
    rows = np.nonzero(out.any(axis=1))[0]
    assert (rows.min(), rows.max()) == (4, 11)  # 20 rows of padding above and below → 4 output rows each
    assert out[4:12, :2].all() and not out[:, 2:].any()


def test_seg_that_omits_empty_frames_and_carries_pixel_spacing(tmp_path):
    """An empty segment whose frame was left out reads as an all-zero mask, not as an error.

    highdicom copies the image's PixelSpacing into Pixel Measures without SliceThickness and its
    own reader then refuses the file; :func:`read_segmentation` drops that item and reads it.
    """
    ds = _image(tmp_path / "a.dcm", f.phantom(64, 64))
    disc = _disc(64, 64, 20, 20, 6)
    seg_path = _seg(tmp_path / "a-seg.dcm", [ds], {"nodule": 0 * disc[None], "lung": disc[None]}, omit_empty=True)
    raw = pydicom.dcmread(seg_path)
    measures = raw.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert "PixelSpacing" in measures and "SliceThickness" not in measures
    assert raw.NumberOfFrames == 1  # the empty nodule frame was left out

    seg = read_segmentation(seg_path)
    assert seg.labels == {1: "nodule", 2: "lung"} and (seg.rows, seg.columns) == (64, 64)
    assert not seg.masks[ds.SOPInstanceUID]["nodule"].any()
    assert np.array_equal(seg.masks[ds.SOPInstanceUID]["lung"], disc)


# ----------------------------------------------------------------------------- problems


def test_every_problem_is_reported_with_its_file(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "elsewhere"
    img = f.phantom(64, 64)
    disc = _disc(64, 64, 32, 32, 8)[None]
    both = {"nodule": disc, "lung": disc}
    ok = _image(data / "ok.dcm", img)
    _image(data / "no-seg.dcm", img)
    extra = _image(data / "extra.dcm", img)
    partial = _image(data / "partial.dcm", img)
    gone = _image(outside / "gone.dcm", img)  # annotated, but not in the export
    small = _image(outside / "small.dcm", f.phantom(48, 48))  # the SEG was drawn on a 48x48 copy ...
    _image(data / "resized.dcm", img, sop_uid=small.SOPInstanceUID)  # ... of this 64x64 image

    segs = data / "seg"
    _seg(segs / "1-ok.dcm", [ok], both)
    _seg(segs / "2-duplicate.dcm", [ok], both)
    _seg(segs / "extra-label.dcm", [extra], {**both, "effusion": disc})
    _seg(segs / "lung-missing.dcm", [partial], {"Nodule": disc})  # labels match case-insensitively
    _seg(segs / "orphan.dcm", [gone], both)
    small_disc = _disc(48, 48, 24, 24, 6)[None]
    _seg(segs / "resized-seg.dcm", [small], {"nodule": small_disc, "lung": small_disc})
    raw = (segs / "1-ok.dcm").read_bytes()
    (segs / "truncated.dcm").write_bytes(raw[: len(raw) * 2 // 3])
    (segs / "an-image.dcm").write_bytes((data / "ok.dcm").read_bytes())
    (segs / "notes.txt").write_text("not DICOM")

    scan = scan_site(data, PreprocessConfig(image_size=SIZE), cache_dir=tmp_path / "cache", workers=1)
    report = match_segmentations(scan.usable, sorted(segs.iterdir()), LABELS, SIZE, data)

    got = sorted((p.kind.value, p.path) for p in report.problems)
    assert got == sorted(
        [
            ("duplicate-seg", "seg/2-duplicate.dcm"),
            ("unknown-segment", "seg/extra-label.dcm"),
            ("missing-segment", "seg/lung-missing.dcm"),
            ("seg-source-missing", "seg/orphan.dcm"),
            ("geometry-mismatch", "seg/resized-seg.dcm"),
            ("unreadable-seg", "seg/truncated.dcm"),
            ("unreadable-seg", "seg/an-image.dcm"),
            ("unreadable-seg", "seg/notes.txt"),
            ("image-without-seg", "no-seg.dcm"),
        ]
    ), got
    by_path = {p.path: p for p in report.problems}
    assert "'effusion'" in by_path["seg/extra-label.dcm"].detail
    assert "['lung']" in by_path["seg/lung-missing.dcm"].detail
    assert "48x48" in by_path["seg/resized-seg.dcm"].detail and "resized.dcm" in by_path["seg/resized-seg.dcm"].detail
    assert gone.SOPInstanceUID in by_path["seg/orphan.dcm"].detail
    assert "1-ok.dcm" in by_path["seg/2-duplicate.dcm"].detail
    # usable pairs still come through: the first SEG of ok.dcm, and extra.dcm without its unknown segment
    assert set(report.masks) == {ok.SOPInstanceUID, extra.SOPInstanceUID}
    assert report.masks[extra.SOPInstanceUID].shape == (2, SIZE, SIZE)

    doc = json.loads(json.dumps(report.to_json()))
    assert doc["images_with_masks"] == 2 and len(doc["problems"]) == 9
    assert doc["problems_by_kind"]["unreadable-seg"]["count"] == 3
    assert all(p["what_to_do"] for p in doc["problems"])


# ----------------------------------------------------------------------------- synthetic SEGs


def _blob_patient(seed: int) -> Patient:
    """A patient whose image is only its nodules (no anatomy), to see exactly where expose() puts them."""
    patient = sample_patient(np.random.default_rng(seed), True, difficulty=0.0)
    blobs = np.zeros((RENDER, RENDER), np.float32)
    for nod in patient.nodules:
        _add_blob(blobs, nod.x, nod.y, nod.rx, nod.ry, nod.theta, 0.5)
    return Patient(image=blobs, lung=patient.lung, nodules=patient.nodules)


def test_synthetic_masks_follow_positioning_and_collimation():
    patient = _blob_patient(3)
    look = ScannerLook(noise=0.0, grain=0.0, blur_px=0.0, collimation=0.06)
    img, exposure = expose_with_geometry(patient, np.random.default_rng(11), look, 256, jitter_px=3)
    assert (exposure.dy, exposure.dx) != (0, 0) and exposure.margins is not None
    masks = anatomy_masks(patient, exposure, 256)
    exposed = upsample(collimation_field(exposure.margins), 256) > 0.999  # away from the soft collimator edge

    def iou(a: np.ndarray, b: np.ndarray) -> float:
        return float((a & b).sum() / (a | b).sum())

    assert not (masks["nodule"] & ~(img > 0.01)).any()  # never marks a pixel the blob does not reach
    shown = (img > 0.05) & exposed  # the blobs (above the bilinear smear of their edge); the border is 0.97
    assert iou(masks["nodule"], shown) > 0.9
    unshifted = anatomy_masks(patient, Exposure(0, 0, exposure.margins), 256)["nodule"]
    assert iou(unshifted, shown) < 0.6  # ignoring the positioning shift would be caught
    border = img >= 0.9
    assert border.any() and not (masks["lung"] & border).any() and not (masks["nodule"] & border).any()

    # the SEG of a synthetic image is reproducible byte for byte (pinned times and UIDs)
    src = f.base_dataset()
    for keyword in ("PatientBirthDate", "PatientSex", "StudyID", "ReferringPhysicianName"):
        setattr(src, keyword, "")
    src.StudyDate, src.StudyTime = "20240101", "101010"
    src.Rows = src.Columns = 256
    src.PixelSpacing = [0.5, 0.5]

    def encoded() -> bytes:
        buf = io.BytesIO()
        build_segmentation(src, masks, "1.2.3.1", "1.2.3.2", "1.2.3.3").save_as(buf, enforce_file_format=True)
        return buf.getvalue()

    assert encoded() == encoded()


def test_synthetic_site_round_trip(tmp_path):
    """unseen-1: collimation, MONOCHROME1, JPEG 2000. SEGs read back, line up, and change nothing else."""
    profile, n = PROFILES["unseen-1"], 6
    with pytest.raises(ValueError, match="task"):
        write_site(tmp_path / "bad", profile, n, seed=2, task="detection")
    plain = write_site(tmp_path / "plain", profile, n, seed=2, difficulty=0.0)
    site = write_site(tmp_path / "seg", profile, n, seed=2, difficulty=0.0, task="segmentation")
    plain_files = sorted(p.relative_to(plain.path) for p in plain.path.rglob("*") if p.is_file())
    seg_site_files = sorted(p.relative_to(site.path) for p in site.path.rglob("*") if p.is_file())
    assert [p for p in seg_site_files if not p.name.startswith("SEG")] == plain_files
    assert len(seg_site_files) - len(plain_files) == n
    assert all((plain.path / rel).read_bytes() == (site.path / rel).read_bytes() for rel in plain_files)

    scan = scan_site(site.dicom_dir, PreprocessConfig(image_size=64), cache_dir=tmp_path / "cache", workers=1)
    assert len(scan.usable) == n  # the SEGs are rejected as segmentation objects, never taken for radiographs
    assert sorted(r.reason for r in scan.rejected) == ["segmentation-object"] * n
    segs = seg_files(scan.records, site.dicom_dir)
    assert len(segs) == n and all(p.name.startswith("SEG0001") for p in segs)
    report = match_segmentations(scan.usable, segs, LABELS, 64, site.dicom_dir)
    assert report.problems == [] and len(report.masks) == n

    with open(site.labels_csv, newline="", encoding="utf-8") as fh:
        label_of = {row["SOPInstanceUID"]: row["label"] for row in csv.DictReader(fh)}
    assert set(label_of.values()) == {"normal", "nodule"}
    for record in scan.usable:
        uid = record.header.sop_instance_uid
        nodule, lung = report.masks[uid]
        assert nodule.any() == (label_of[uid] == "nodule"), record.path
        assert 0.15 < lung.mean() < 0.5
        image = scan.load_image(record)
        assert image[lung].mean() < image[~lung].mean() - 0.15  # the lung fields are the dark part of the film
        if nodule.any():
            # centred deep in a lung; may overhang the heart or mediastinum border, as real nodules do
            cy, cx = (int(round(v)) for v in np.argwhere(nodule).mean(axis=0))
            assert lung[cy, cx] and (nodule & lung).sum() >= 0.75 * nodule.sum()
            assert image[nodule].mean() > image[lung & ~nodule].mean() + 0.05  # the nodule is where it is brighter

    seg = read_segmentation(segs[0])
    assert seg.labels == {1: "nodule", 2: "lung"} and (seg.rows, seg.columns) == (profile.matrix, profile.matrix)
    assert hd.seg.segread(segs[0]).NumberOfFrames == 2  # stock highdicom reads the synthetic SEGs as they are


def test_model_input_spacing_follows_the_pad_and_resample():
    """HD95 in mm needs the mm per pixel of the (S, S) model input: native spacing x longer side / S."""
    from shared.imaging.dicom_reader import ImageHeader, read_header
    from shared.imaging.planar import model_input_spacing

    header = ImageHeader(rows=2000, columns=1500, pixel_spacing=[0.2, 0.15])
    assert model_input_spacing(header, 64) == pytest.approx((0.2 * 2000 / 64, 0.15 * 2000 / 64))
    for bad in ([], [0.2], [0.0, 0.2], [float("nan"), 0.2], [-0.1, 0.1]):
        assert model_input_spacing(ImageHeader(rows=64, columns=64, pixel_spacing=bad), 64) is None, bad
    ds = pydicom.Dataset()  # a projection radiograph with only the detector's ImagerPixelSpacing
    ds.Rows, ds.Columns, ds.ImagerPixelSpacing = 512, 512, [0.143, 0.143]
    assert model_input_spacing(read_header(ds), 32) == pytest.approx((0.143 * 16, 0.143 * 16))


def test_synthetic_images_carry_a_pixel_spacing_into_the_seg_dataset(tmp_path):
    """Demos report HD95 in mm: the synthetic writer sets PixelSpacing and the loader keeps it per case."""
    from shared.config import SiteDataConfig
    from shared.tasks.segmentation.data import load_seg_dataset

    profile = PROFILES["unseen-1"]
    site = write_site(tmp_path / "seg", profile, 4, seed=2, difficulty=0.0, task="segmentation")
    cfg = SiteDataConfig(data=site.dicom_dir, image_size=SIZE, cache_dir=tmp_path / "cache")
    data, _ = load_seg_dataset(cfg, LABELS, workers=1)
    expected = profile.pixel_spacing_mm * profile.matrix / SIZE  # square synthetic films
    assert len(data.spacing) == len(data) == 4
    assert all(s == pytest.approx((expected, expected), rel=1e-3) for s in data.spacing)
