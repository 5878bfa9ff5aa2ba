"""CT series → canonical volume (shared/imaging/volume.py): every acquisition gives back the same patient volume."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from shared.imaging.reasons import EXPLANATIONS, Reason, Rejection
from shared.imaging.series_plan import PlanParams, SeriesPlan, SeriesRejection, plan_series
from shared.imaging.slice_records import read_slice_records
from shared.imaging.volume import VOLUME, Volume, assemble, iter_volumes
from tests import volume_factory as vf

PH = vf.phantom()


def _only(verdicts: list) -> Volume:
    assert len(verdicts) == 1, verdicts
    (v,) = verdicts
    assert isinstance(v, Volume), v
    return v


def _records(paths: list[Path]) -> list:
    return [r for p in paths for r in read_slice_records(p)]


@pytest.mark.parametrize("position", sorted(vf.POSITIONS))
@pytest.mark.parametrize("descending", [False, True], ids=["ascending", "descending"])
def test_every_patient_position_and_slice_order_gives_the_same_canonical_volume(
    tmp_path: Path, position: str, descending: bool
) -> None:
    paths = vf.write_classic(tmp_path, vf.acquire(PH, position, descending), patient_position=position)
    vol = _only(list(iter_volumes(paths)))
    assert vol.array.dtype == np.float32 and vol.dicom_modality == "CT"
    np.testing.assert_array_equal(vol.array, PH.hu)  # HU, axis 0 → S, 1 → P, 2 → L
    np.testing.assert_allclose(vol.geometry.affine, PH.geometry.affine, atol=1e-6)
    found = tuple(int(i) for i in np.argwhere(vol.array == vf.MARKER_HU)[0])
    assert found == PH.marker
    np.testing.assert_allclose(vol.geometry.index_to_patient(found), PH.marker_lps, atol=1e-6)
    assert vol.geometry.spacing == pytest.approx(PH.spacing)  # from the positions, not SliceThickness (5 mm)


def test_the_plan_orders_slices_by_position_and_names_every_file(tmp_path: Path) -> None:
    acq = vf.acquire(PH, "FFS", descending=True)
    paths = vf.write_classic(tmp_path, acq)
    (plan,) = plan_series(_records(paths))
    assert isinstance(plan, SeriesPlan) and plan.usable and not plan.notes
    along = [np.dot(s.position, (0, 0, -1)) for s in plan.slices]  # FFS: normal = row x col = -z
    assert along == sorted(along)
    assert sorted(plan.files) == sorted(str(p) for p in paths)
    assert plan.canonical_geometry.shape == PH.hu.shape


def test_assembly_writes_into_a_memory_map_in_canonical_order(tmp_path: Path) -> None:
    paths = vf.write_classic(tmp_path / "dcm", vf.acquire(PH, "HFP", descending=True))
    (plan,) = plan_series(_records(paths))
    vol = assemble(plan, out=tmp_path / "vol.npy")
    assert isinstance(vol.array, np.memmap)
    on_disk = np.load(tmp_path / "vol.npy", mmap_mode="r")
    np.testing.assert_array_equal(on_disk, PH.hu)  # the file itself is canonical, C-ordered
    preallocated = np.zeros(PH.hu.shape, np.float32)
    assert assemble(plan, out=preallocated).array is preallocated
    np.testing.assert_array_equal(preallocated, PH.hu)
    with pytest.raises(ValueError, match="float32"):
        assemble(plan, out=np.zeros((2, 2, 2), np.float32))


def test_per_slice_rescale_is_applied_per_slice_and_noted(tmp_path: Path) -> None:
    slopes = [0.5 if k % 3 == 0 else 1.0 for k in range(PH.hu.shape[0])]
    paths = vf.write_classic(tmp_path, vf.acquire(PH), slope=slopes)
    vol = _only(list(iter_volumes(paths)))
    np.testing.assert_array_equal(vol.array, PH.hu)
    assert any("each slice's own is applied" in n for n in vol.notes)


def test_a_repeated_copy_of_one_sop_instance_is_dropped_with_a_note(tmp_path: Path) -> None:
    paths = vf.write_classic(tmp_path, vf.acquire(PH))
    copy = tmp_path / "zz-copy.dcm"
    shutil.copy(paths[0], copy)
    vol = _only(list(iter_volumes([*paths, copy])))
    np.testing.assert_array_equal(vol.array, PH.hu)
    assert any("repeated copy" in n and "zz-copy.dcm" in n for n in vol.notes)


def test_a_scout_inside_the_series_is_dropped_with_a_note(tmp_path: Path) -> None:
    acq = vf.acquire(PH)
    series = vf.new_series()
    paths = vf.write_classic(tmp_path / "axial", acq, series=series)

    def scout(k: int, ds: pydicom.Dataset) -> None:
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]  # a coronal topogram

    (scout_path,) = vf.write_classic(
        tmp_path / "scout", vf.acquire(vf.phantom(shape=(1, 12, 14), marker=(0, 0, 0))), series=series, tweak=scout
    )
    vol = _only(list(iter_volumes([scout_path, *paths])))
    np.testing.assert_array_equal(vol.array, PH.hu)
    assert any("localizer" in n and str(scout_path) in n for n in vol.notes)
    assert str(scout_path) not in vol.files


@pytest.mark.parametrize("frame_order", ["in order", "shuffled"])
def test_an_enhanced_ct_object_assembles_to_the_same_volume_as_the_classic_series(
    tmp_path: Path, frame_order: str
) -> None:
    acq = vf.acquire(PH, "FFP", descending=True)
    classic = _only(list(iter_volumes(vf.write_classic(tmp_path / "classic", acq))))
    order = np.random.default_rng(3).permutation(PH.hu.shape[0]) if frame_order == "shuffled" else None
    path = vf.write_enhanced(tmp_path / "enhanced.dcm", acq, frame_order=order)
    records = read_slice_records(path)
    assert [r.frame for r in records] == list(range(PH.hu.shape[0]))
    enhanced = _only(list(iter_volumes([path])))
    np.testing.assert_array_equal(enhanced.array, classic.array)
    np.testing.assert_allclose(enhanced.geometry.affine, classic.geometry.affine, atol=1e-9)
    assert enhanced.key.sop_instance_uid  # one multi-frame object is one volume


def test_enhanced_per_frame_rescale_overrides_nothing_shared(tmp_path: Path) -> None:
    path = vf.write_enhanced(tmp_path / "e.dcm", vf.acquire(PH), per_frame_rescale=True)
    np.testing.assert_array_equal(_only(list(iter_volumes([path]))).array, PH.hu)


def test_the_volume_modality_decodes_one_enhanced_object(tmp_path: Path) -> None:
    from shared.imaging.dicom_reader import read_header

    path = vf.write_enhanced(tmp_path / "e.dcm", vf.acquire(PH, "HFP"))
    ds = pydicom.dcmread(path)
    vol = VOLUME.decode(ds, read_header(ds))
    np.testing.assert_array_equal(vol.array, PH.hu)
    assert VOLUME.name == "volume" and VOLUME.rank == 3 and VOLUME.reasons <= set(EXPLANATIONS)
    one_slice = pydicom.dcmread(vf.write_classic(tmp_path / "c", vf.acquire(PH))[0])
    with pytest.raises(Rejection) as rej:
        VOLUME.check(one_slice, read_header(one_slice))
    assert rej.value.reason == Reason.SERIES_TOO_FEW_SLICES


def test_a_slice_whose_pixels_cannot_be_decoded_rejects_the_series_with_the_file_reason(tmp_path: Path) -> None:
    def cut(k: int, ds: pydicom.Dataset) -> None:
        if k == 4:
            ds.PixelData = ds.PixelData[:-50]

    paths = vf.write_classic(tmp_path, vf.acquire(PH), tweak=cut)
    (verdict,) = iter_volumes(paths)
    assert isinstance(verdict, SeriesRejection)
    assert verdict.reason == Reason.TRUNCATED
    assert "IM" in verdict.detail.split(":")[0] and len(verdict.files) == len(paths)


def test_unreadable_and_non_dicom_files_are_one_file_rejections(tmp_path: Path) -> None:
    stray = tmp_path / "notes.txt"
    stray.write_text("not a DICOM file\n" * 20)
    (verdict,) = iter_volumes([stray])
    assert isinstance(verdict, SeriesRejection) and verdict.reason == Reason.NOT_DICOM
    assert verdict.files == (str(stray),)


# +tb writes explicit VR big endian (+te is explicit little endian)
DCMTK = {"jpeg-ls": ["dcmcjpls"], "rle": ["dcmcrle"], "big-endian": ["dcmconv", "+tb"]}


@pytest.mark.parametrize("encoding", sorted(DCMTK))
def test_dcmtk_re_encoded_series_assemble_to_the_same_array(tmp_path: Path, encoding: str) -> None:
    tool = DCMTK[encoding]
    if shutil.which(tool[0]) is None:
        pytest.skip(f"{tool[0]} not found: `apt-get install dcmtk` enables the re-encoding checks")
    paths = vf.write_classic(tmp_path / "plain", vf.acquire(PH, "FFS", descending=True))
    out = tmp_path / encoding
    out.mkdir()
    encoded = []
    for p in paths:
        target = out / p.name
        subprocess.run([*tool, str(p), str(target)], check=True, capture_output=True, timeout=60)
        encoded.append(target)
    ts = pydicom.dcmread(encoded[0], stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert {"jpeg-ls": ts.is_compressed, "rle": ts.is_compressed, "big-endian": not ts.is_little_endian}[encoding]
    vol = _only(list(iter_volumes(encoded)))
    np.testing.assert_array_equal(vol.array, PH.hu)
    # the same for one Enhanced CT object: its frames are decoded one by one
    enhanced = vf.write_enhanced(
        tmp_path / "enhanced.dcm", vf.acquire(PH, "HFP"), frame_order=[3, 1, 0, 2, 9, 8, 4, 5, 7, 6]
    )
    subprocess.run([*tool, str(enhanced), str(out / "enhanced.dcm")], check=True, capture_output=True, timeout=60)
    np.testing.assert_array_equal(_only(list(iter_volumes([out / "enhanced.dcm"]))).array, PH.hu)


def test_min_slices_is_configurable() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        PlanParams(min_slices=1)
