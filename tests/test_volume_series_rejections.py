"""Every series-level rejection (shared/imaging/series_plan.py), each triggered by a crafted series, headers only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag

from shared.imaging.reasons import EXPLANATIONS, Reason
from shared.imaging.series_plan import REASONS, PlanParams, SeriesPlan, SeriesRejection, plan_series
from shared.imaging.slice_records import file_record, read_slice_records
from tests import volume_factory as vf

PH = vf.phantom()
N = PH.hu.shape[0]


def _plan(paths: list[Path], params: PlanParams | None = None) -> SeriesPlan | SeriesRejection:
    verdicts = plan_series([r for p in paths for r in read_slice_records(p)], params)
    assert len(verdicts) == 1, verdicts
    return verdicts[0]


def _rejected(paths: list[Path], reason: Reason, params: PlanParams | None = None) -> SeriesRejection:
    verdict = _plan(paths, params)
    assert isinstance(verdict, SeriesRejection), verdict
    assert verdict.reason == reason, verdict
    assert verdict.detail and verdict.explanation == EXPLANATIONS[reason]
    assert set(verdict.files) >= {str(p) for p in paths}, "every file of the series is named"
    return verdict


def _series(tmp_path: Path, tweak: Callable[[int, Dataset], None] | None = None, acq=None) -> list[Path]:
    return vf.write_classic(tmp_path, acq or vf.acquire(PH), tweak=tweak)


def _name_of(paths: list[Path], k: int) -> str:
    """The file holding slice ``k`` (the writer shuffles names)."""
    return next(str(p) for p in paths if pydicom.dcmread(p, stop_before_pixels=True).ImageComments == f"slice {k}")


def test_every_series_reason_has_an_explanation() -> None:
    assert REASONS <= set(EXPLANATIONS)


def test_a_missing_slice_is_a_gap_named_by_its_position(tmp_path: Path) -> None:
    paths = _series(tmp_path)
    missing = vf.acquire(PH).position(4)
    removed = _name_of(paths, 4)
    kept = [p for p in paths if str(p) != removed]
    rej = _rejected(kept, Reason.SERIES_MISSING_SLICES)
    assert "1 slice(s) missing" in rej.detail
    assert "(" + ", ".join(f"{v:.2f}" for v in missing) + ")" in rej.detail


def test_two_different_images_at_one_position_are_duplicates(tmp_path: Path) -> None:
    series = vf.new_series()
    paths = vf.write_classic(tmp_path / "a", vf.acquire(PH), series=series)

    def at_slice_4(k: int, ds: Dataset) -> None:
        ds.ImagePositionPatient = [f"{v:.4f}" for v in vf.acquire(PH).position(4)]

    one = vf.acquire(vf.phantom(shape=(1, 12, 14), marker=(0, 0, 0)))
    extra = vf.write_classic(tmp_path / "b", one, series=series, tweak=at_slice_4)
    rej = _rejected(paths + extra, Reason.SERIES_DUPLICATE_POSITION)
    assert "different SOP instance" in rej.detail and str(extra[0]) in rej.detail and _name_of(paths, 4) in rej.detail


def test_two_stacks_in_one_series_are_named_as_such(tmp_path: Path) -> None:
    series = vf.new_series()
    echo1 = vf.write_classic(tmp_path / "e1", vf.acquire(PH), series=series)
    echo2 = vf.write_classic(tmp_path / "e2", vf.acquire(PH), series=series, seed=1)
    rej = _rejected(echo1 + echo2, Reason.SERIES_DUPLICATE_POSITION)
    assert f"{N} slice position(s)" in rej.detail and "every position holds 2 images" in rej.detail


def test_uneven_spacing_names_the_odd_step_and_the_tolerance(tmp_path: Path) -> None:
    def stretch(k: int, ds: Dataset) -> None:
        if k >= 6:
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [x, y, z + 0.7]

    rej = _rejected(_series(tmp_path, stretch), Reason.SERIES_UNEVEN_SPACING)
    assert "3.20 mm between" in rej.detail and "2.50 mm apart" in rej.detail and "tolerance" in rej.detail


def test_positions_rounded_or_jittered_by_a_hundredth_of_a_mm_are_regular(tmp_path: Path) -> None:
    def jitter(k: int, ds: Dataset) -> None:
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, round(z + (0.01 if k % 2 else -0.01), 2)]

    assert isinstance(_plan(_series(tmp_path, jitter)), SeriesPlan)


def test_mixed_orientation(tmp_path: Path) -> None:
    def sagittal(k: int, ds: Dataset) -> None:
        if k == 3:
            ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]

    paths = _series(tmp_path, sagittal)
    rej = _rejected(paths, Reason.SERIES_MIXED_ORIENTATION)
    assert "2 orientations" in rej.detail and _name_of(paths, 3) in rej.detail


def test_mixed_matrix_size(tmp_path: Path) -> None:
    def smaller(k: int, ds: Dataset) -> None:
        if k == 2:
            ds.Rows, ds.Columns = 6, 7
            ds.PixelData = np.zeros((6, 7), np.uint16).tobytes()

    paths = _series(tmp_path, smaller)
    rej = _rejected(paths, Reason.SERIES_MIXED_MATRIX)
    assert "12x14" in rej.detail and "6x7" in rej.detail and _name_of(paths, 2) in rej.detail


def test_mixed_pixel_spacing(tmp_path: Path) -> None:
    def zoomed(k: int, ds: Dataset) -> None:
        if k == 2:
            ds.PixelSpacing = [0.9, 0.7]

    rej = _rejected(_series(tmp_path, zoomed), Reason.SERIES_MIXED_PIXEL_SPACING)
    assert "0.9 x 0.7 mm" in rej.detail


def test_gantry_tilt_in_the_header(tmp_path: Path) -> None:
    def tilted(k: int, ds: Dataset) -> None:
        ds.GantryDetectorTilt = 15.0

    rej = _rejected(_series(tmp_path, tilted), Reason.SERIES_GANTRY_TILT)
    assert "GantryDetectorTilt 15°" in rej.detail


def test_gantry_tilt_from_a_sheared_stack(tmp_path: Path) -> None:
    def sheared(k: int, ds: Dataset) -> None:  # axial images, but each slice shifted 1 mm posterior: a tilted gantry
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + k * 1.0, z]

    rej = _rejected(_series(tmp_path, sheared), Reason.SERIES_GANTRY_TILT)
    assert "21.80° from the slice normal" in rej.detail


def test_one_slice_displaced_in_plane(tmp_path: Path) -> None:
    def shifted(k: int, ds: Dataset) -> None:
        if k == 5:
            x, y, z = (float(v) for v in ds.ImagePositionPatient)
            ds.ImagePositionPatient = [x + 2.0, y, z]

    paths = _series(tmp_path, shifted)
    rej = _rejected(paths, Reason.SERIES_GANTRY_TILT)
    assert _name_of(paths, 5) in rej.detail and "in-plane" in rej.detail


def test_a_series_of_only_localizers(tmp_path: Path) -> None:
    def scout(k: int, ds: Dataset) -> None:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]

    rej = _rejected(_series(tmp_path, scout), Reason.SERIES_LOCALIZER)
    assert f"all {N} image(s) are localizers" in rej.detail


def test_too_few_slices_and_the_configurable_minimum(tmp_path: Path) -> None:
    paths = _series(tmp_path, acq=vf.acquire(vf.phantom(shape=(5, 12, 14), marker=(1, 1, 1))))
    rej = _rejected(paths, Reason.SERIES_TOO_FEW_SLICES)
    assert "5 slices" in rej.detail and "at least 8" in rej.detail
    assert isinstance(_plan(paths, PlanParams(min_slices=5)), SeriesPlan)


def test_rescale_types_that_mix_units(tmp_path: Path) -> None:
    def units(k: int, ds: Dataset) -> None:
        ds.RescaleType = "HU" if k < 5 else "US"

    rej = _rejected(_series(tmp_path, units), Reason.SERIES_RESCALE)
    assert "mixed units" in rej.detail and "HU" in rej.detail and "US" in rej.detail


def test_a_malformed_or_zero_rescale_slope(tmp_path: Path) -> None:
    def junk(k: int, ds: Dataset) -> None:
        if k == 1:
            del ds.RescaleSlope
            ds.add_new(0x00281053, "LO", "x.y")  # not a number
        if k == 2:
            ds.RescaleSlope = 0

    paths = _series(tmp_path, junk)
    rej = _rejected(paths, Reason.SERIES_RESCALE)
    assert "2 slice(s)" in rej.detail and _name_of(paths, 1) in rej.detail


def test_a_plain_multi_frame_ct_is_unsupported(tmp_path: Path) -> None:
    def frames(k: int, ds: Dataset) -> None:
        ds.NumberOfFrames = 3
        ds.PixelData = np.zeros((3, 12, 14), np.uint16).tobytes()

    path = _series(tmp_path, frames, acq=vf.acquire(vf.phantom(shape=(1, 12, 14), marker=(0, 0, 0))))
    rej = _rejected(path, Reason.UNSUPPORTED_MULTI_FRAME)
    assert "3 frames in one CT Image Storage object" in rej.detail


def test_an_enhanced_object_without_per_frame_groups_is_unsupported(tmp_path: Path) -> None:
    path = vf.write_enhanced(tmp_path / "e.dcm", vf.acquire(PH))
    ds = pydicom.dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence
    ds.save_as(path)
    rej = _rejected([path], Reason.UNSUPPORTED_MULTI_FRAME)
    assert "no per-frame functional group items" in rej.detail


def test_an_enhanced_object_with_two_frames_at_one_position_is_not_split(tmp_path: Path) -> None:
    path = vf.write_enhanced(tmp_path / "e.dcm", vf.acquire(PH), extra_frames=[(4, PH.hu[4] + 10)])
    rej = _rejected([path], Reason.SERIES_DUPLICATE_POSITION)
    assert f"{path} frame 5" in rej.detail and f"{path} frame {N + 1}" in rej.detail


def test_an_enhanced_object_with_two_orientations_is_not_split(tmp_path: Path) -> None:
    path = vf.write_enhanced(tmp_path / "e.dcm", vf.acquire(PH))
    ds = pydicom.dcmread(path)
    item = Dataset()
    item.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]
    ds.PerFrameFunctionalGroupsSequence[2].PlaneOrientationSequence = DicomSequence([item])
    ds.save_as(path)
    rej = _rejected([path], Reason.SERIES_MIXED_ORIENTATION)
    assert f"{path} frame 3" in rej.detail


@pytest.mark.parametrize(
    ("attribute", "words"),
    [
        ("ImagePositionPatient", "no ImagePositionPatient"),
        ("ImageOrientationPatient", "no ImageOrientationPatient"),
        ("PixelSpacing", "no usable PixelSpacing"),
    ],
)
def test_missing_geometry_names_the_attribute_and_the_file(tmp_path: Path, attribute: str, words: str) -> None:
    def drop(k: int, ds: Dataset) -> None:
        if k == 3:
            delattr(ds, attribute)

    paths = _series(tmp_path, drop)
    rej = _rejected(paths, Reason.MISSING_GEOMETRY)
    assert f"1 of {N} slice(s) have {words}" in rej.detail and _name_of(paths, 3) in rej.detail


def test_an_orientation_that_is_not_orthonormal_is_missing_geometry(tmp_path: Path) -> None:
    def skew(k: int, ds: Dataset) -> None:
        ds.ImageOrientationPatient = [1, 0, 0, 0.5, 0.5, 0]

    rej = _rejected(_series(tmp_path, skew), Reason.MISSING_GEOMETRY)
    assert "not two orthogonal unit vectors" in rej.detail


def test_a_colour_image_in_the_series(tmp_path: Path) -> None:
    def colour(k: int, ds: Dataset) -> None:
        if k == 0:
            ds.SamplesPerPixel, ds.PhotometricInterpretation = 3, "RGB"

    _rejected(_series(tmp_path, colour), Reason.NOT_GRAYSCALE)


def test_malformed_header_values_never_raise() -> None:
    def raw(tag: int, vr: str, value: bytes) -> RawDataElement:
        return RawDataElement(Tag(tag), vr, len(value), value, 0, True, True)

    ds = Dataset(
        {
            Tag(0x00200032): raw(0x00200032, "DS", b"1\\abc\\3 "),
            Tag(0x00200037): raw(0x00200037, "DS", b"1\\0 "),
            Tag(0x00280030): raw(0x00280030, "DS", b"nan\\1 "),
            Tag(0x00281053): raw(0x00281053, "DS", b"x.y "),
            Tag(0x00181120): raw(0x00181120, "DS", b"tilt"),
            Tag(0x00280008): raw(0x00280008, "IS", b"many"),
            Tag(0x00200013): raw(0x00200013, "IS", b"1.5.2 "),
        }
    )
    rec = file_record(ds, "junk.dcm")
    assert rec.position is None and rec.orientation is None and rec.pixel_spacing is None
    assert rec.rescale_slope is None and rec.gantry_tilt is None and rec.instance_number is None
    assert rec.number_of_frames == 1
    (verdict,) = plan_series([rec])
    assert isinstance(verdict, SeriesRejection) and verdict.reason == Reason.MISSING_GEOMETRY


def test_series_split_by_frame_of_reference_and_sorted_by_key(tmp_path: Path) -> None:
    series = vf.new_series()
    a = vf.write_classic(tmp_path / "a", vf.acquire(PH), series=series)
    other = dict(series, **{"for": vf.new_series()["for"]})
    b = vf.write_classic(tmp_path / "b", vf.acquire(PH), series=other)
    verdicts = plan_series([r for p in b + a for r in read_slice_records(p)])
    assert [v.key.frame_of_reference_uid for v in verdicts] == sorted([series["for"], other["for"]])
    assert all(isinstance(v, SeriesPlan) for v in verdicts)


def test_two_spacings_in_equal_numbers_are_uneven_not_a_crash() -> None:
    """Steps 1, 1, 3, 3 mm: the median (2 mm) is no step at all; planned from records alone (no files)."""
    from shared.imaging.slice_records import SliceRecord

    def rec(i: int, z: float) -> SliceRecord:
        return SliceRecord(
            path=f"s{i}.dcm",
            sop_instance_uid=f"1.2.{i}",
            series_instance_uid="1.2.3",
            position=(0.0, 0.0, z),
            orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
            pixel_spacing=(1.0, 1.0),
            rows=4,
            columns=4,
        )

    (verdict,) = plan_series([rec(i, z) for i, z in enumerate([0.0, 1.0, 2.0, 5.0, 8.0])], PlanParams(min_slices=2))
    assert isinstance(verdict, SeriesRejection) and verdict.reason == Reason.SERIES_UNEVEN_SPACING
