"""Real CT/MR files bundled with pydicom and pydicom-data: each becomes a volume or a reason, never an exception."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_files

from shared.imaging.reasons import EXPLANATIONS, Reason
from shared.imaging.series_plan import PlanParams, SeriesRejection
from shared.imaging.volume import Volume, iter_volumes


def _ct_mr_files() -> list[Path]:
    out = []
    for name in get_testdata_files():
        if not os.path.isfile(name):
            continue
        try:
            ds = pydicom.dcmread(name, stop_before_pixels=True, force=True)
            modality = str(ds.get("Modality", ""))
        except Exception:
            continue
        if modality in ("CT", "MR"):
            out.append(Path(name))
    return sorted(out)


FILES = _ct_mr_files()
BY_NAME = {p.name: p for p in FILES}


def _one(paths: list[Path], params: PlanParams | None = None) -> Volume | SeriesRejection:
    verdicts = list(iter_volumes(paths, params))
    assert len(verdicts) == 1, verdicts
    return verdicts[0]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_every_bundled_ct_and_mr_file_is_a_volume_or_a_reason() -> None:
    assert len(FILES) > 40, "pydicom's test files and pydicom-data hold dozens of CT/MR objects"
    for path in FILES:
        for verdict in iter_volumes([path], PlanParams(min_slices=2)):
            if isinstance(verdict, SeriesRejection):
                assert verdict.reason in EXPLANATIONS and verdict.detail, (path, verdict)
            else:
                assert verdict.array.ndim == 3 and np.isfinite(verdict.array).all(), path


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("CT_small.dcm", Reason.SERIES_TOO_FEW_SLICES),  # one slice is no volume
        ("MR_small.dcm", Reason.SERIES_TOO_FEW_SLICES),
        ("693_J2KR.dcm", Reason.SERIES_TOO_FEW_SLICES),
        ("MR2_UNCI.dcm", Reason.SERIES_TOO_FEW_SLICES),
        ("emri_small.dcm", Reason.UNSUPPORTED_MULTI_FRAME),  # Enhanced MR without functional groups
        ("emri_small_jpeg_2k_lossless_too_short.dcm", Reason.UNSUPPORTED_MULTI_FRAME),  # rejected before decoding
        ("eCT_Supplemental.dcm", Reason.SERIES_TOO_FEW_SLICES),  # 2 frames, 10 mm apart
    ],
)
def test_named_files_get_the_expected_reason(name: str, reason: Reason) -> None:
    if name not in BY_NAME:
        pytest.skip(f"{name} is not installed (pydicom-data provides it)")
    verdict = _one([BY_NAME[name]])
    assert isinstance(verdict, SeriesRejection) and verdict.reason == reason, verdict


def test_the_enhanced_ct_supplement_assembles_when_two_frames_are_enough() -> None:
    if "eCT_Supplemental.dcm" not in BY_NAME:
        pytest.skip("eCT_Supplemental.dcm is not installed (pydicom-data provides it)")
    vol = _one([BY_NAME["eCT_Supplemental.dcm"]], PlanParams(min_slices=2))
    assert isinstance(vol, Volume), vol
    assert vol.array.shape == (2, 512, 512) and vol.geometry.spacing == pytest.approx((10.0, 0.388672, 0.388672))
    ds = pydicom.dcmread(BY_NAME["eCT_Supplemental.dcm"])
    stored = ds.pixel_array.astype(np.float32)
    # frame 1 is the lower one (z -159): canonical slice 0; rescale intercept -1024; rows run along -x
    np.testing.assert_array_equal(vol.array[0], (stored[0] - 1024.0)[:, ::-1])
    np.testing.assert_array_equal(vol.array[1], (stored[1] - 1024.0)[:, ::-1])


def _folder(part: str) -> list[Path]:
    return [p for p in FILES if f"dicomdirtests/{part}/" in p.as_posix()]


def test_a_real_five_slice_ct_series_assembles_descending_slices_in_order() -> None:
    paths = _folder("98892001/CT5N")
    if len(paths) != 5:
        pytest.skip("pydicom's dicomdirtests CT5N series is not installed")
    vol = _one(paths, PlanParams(min_slices=5))
    assert isinstance(vol, Volume), vol
    assert vol.array.shape == (5, 16, 16) and vol.geometry.spacing == pytest.approx((2.5, 0.488281, 0.488281))
    assert vol.geometry.affine[2, 3] == pytest.approx(-1.2375)  # canonical slice 0 is the most inferior
    by_z = sorted(paths, key=lambda p: float(pydicom.dcmread(p).ImagePositionPatient[2]))
    for k, p in enumerate(by_z):
        ds = pydicom.dcmread(p)
        np.testing.assert_array_equal(
            vol.array[k], ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        )


@pytest.mark.parametrize(
    ("part", "reason", "words"),
    [
        ("77654033/CT2", Reason.SERIES_MISSING_SLICES, "161 slice(s) missing from a 1.25 mm stack"),
        ("98892003/MR700", Reason.SERIES_MIXED_ORIENTATION, "7 orientations"),
        ("98892001/CT2N", Reason.SERIES_LOCALIZER, "localizers"),
    ],
)
def test_real_broken_series_are_rejected_with_their_reason(part: str, reason: Reason, words: str) -> None:
    paths = _folder(part)
    if not paths:
        pytest.skip(f"pydicom's dicomdirtests {part} is not installed")
    verdicts = list(iter_volumes(paths, PlanParams(min_slices=2)))
    assert any(isinstance(v, SeriesRejection) and v.reason == reason and words in v.detail for v in verdicts), verdicts


def _two_slice_series(path: Path, folder: Path) -> list[Path]:
    """``path`` plus a copy one slice further along its normal (a new SOP instance): a series to decode."""
    ds = pydicom.dcmread(path)
    iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
    copy = folder / f"{path.name}.next.dcm"
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.ImagePositionPatient = [
        float(v) for v in np.asarray(ds.ImagePositionPatient, float) + np.cross(iop[:3], iop[3:])
    ]
    ds.save_as(copy)
    return [path, copy]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_every_bundled_single_frame_slice_decodes_in_a_series_or_gets_a_reason(tmp_path: Path) -> None:
    """Real encodings (JPEG 2000, JPEG lossless, JPEG-LS, RLE, big endian, truncated) through the assembler."""
    outcomes: dict[str, Volume | SeriesRejection] = {}
    for path in FILES:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            usable = "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds and "NumberOfFrames" not in ds
        except Exception:
            usable = False
        if usable and path.name.endswith(".dcm"):
            folder = tmp_path / path.name
            folder.mkdir()
            outcomes[path.name] = _one(_two_slice_series(path, folder), PlanParams(min_slices=2))
    assert len(outcomes) >= 15
    for name, verdict in outcomes.items():
        if isinstance(verdict, SeriesRejection):
            assert verdict.reason in EXPLANATIONS and verdict.detail, (name, verdict)
    assert isinstance(outcomes["MR_truncated.dcm"], SeriesRejection)
    assert outcomes["MR_truncated.dcm"].reason == Reason.TRUNCATED
    reference = outcomes["MR_small.dcm"]
    assert isinstance(reference, Volume)
    for variant in (
        "MR_small_RLE",
        "MR_small_bigendian",
        "MR_small_expb",
        "MR_small_implicit",
        "MR_small_jp2klossless",
        "MR_small_jpeg_ls_lossless",
        "MR_small_padded",
    ):
        got = outcomes[f"{variant}.dcm"]
        assert isinstance(got, Volume), got
        np.testing.assert_array_equal(got.array, reference.array, err_msg=variant)
    for name in ("693_J2KR.dcm", "693_UNCI.dcm", "MR2_J2KR.dcm", "MR2_UNCI.dcm"):
        if name in outcomes:
            assert isinstance(outcomes[name], Volume), outcomes[name]
