"""DICOM ingest over real files in every odd variant a PACS export contains."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom.data
import pytest
from pydicom.uid import ImplicitVRLittleEndian, JPEG2000Lossless, JPEGLSLossless, RLELossless

from shared.config import PreprocessConfig
from shared.imaging import Reason, scan_site
from tests import dicom_factory as f

PARAMS = PreprocessConfig(image_size=32)

GRAYSCALE_VARIANTS = {
    "u8.dcm": dict(bits_stored=8),
    "u10": dict(bits_stored=10),
    "u12.dcm": dict(bits_stored=12),
    "u16.dcm": dict(bits_stored=16),
    "s12.dcm": dict(bits_stored=12, signed=True),
    "s16.dcm": dict(bits_stored=16, signed=True),
    "mono1.dcm": dict(photometric="MONOCHROME1"),
    "rescaled.dcm": dict(slope=2.5, intercept=-1024.0),
    "rle.dcm": dict(transfer_syntax=RLELossless),
    "jpegls.dcm": dict(transfer_syntax=JPEGLSLossless),
    "j2k.dcm": dict(transfer_syntax=JPEG2000Lossless),
    "implicit.dcm": dict(transfer_syntax=ImplicitVRLittleEndian),
    "no-preamble.dcm": dict(preamble=False),
    "deep/nested/folder/IMG0001": dict(),
}


@pytest.fixture()
def export(tmp_path: Path) -> Path:
    data = tmp_path / "export"
    img = f.phantom(96, 96)
    for name, kwargs in GRAYSCALE_VARIANTS.items():
        f.write_image(data / name, img, **kwargs)
    f.write_image(data / "wide.dcm", f.phantom(80, 120))  # non-square matrix
    (data / "README.txt").write_text("exported by PACS\n")
    (data / "thumbs.db").write_bytes(b"\x00\x01binary junk" * 50)
    f.write_rgb(data / "screenshot.dcm")
    f.write_multiframe(data / "cine.dcm")
    f.write_structured_report(data / "report-sr.dcm")
    f.write_image(data / "tiny.dcm", f.phantom(16, 16))
    f.write_image(data / "blank.dcm", np.zeros((64, 64)))
    f.write_image(data / "cut.dcm", img)
    f.truncate(data / "cut.dcm", 0.6)
    shutil.copy(data / "u12.dcm", data / "z-copy-of-u12.dcm")
    shutil.copy(Path(pydicom.data.get_testdata_file("DICOMDIR")), data / "DICOMDIR")
    return data


def test_every_file_gets_a_verdict_with_the_right_reason(export: Path, tmp_path: Path) -> None:
    result = scan_site(export, PARAMS, tmp_path / "cache")
    by_path = {r.path: r for r in result.records}
    assert len(by_path) == len(list(p for p in export.rglob("*") if p.is_file()))
    for name in GRAYSCALE_VARIANTS:
        assert by_path[name].usable, (name, by_path[name].reason, by_path[name].detail)
    assert by_path["wide.dcm"].usable
    expected = {
        "README.txt": Reason.NOT_DICOM,
        "thumbs.db": Reason.NOT_DICOM,
        "screenshot.dcm": Reason.NOT_GRAYSCALE,
        "cine.dcm": Reason.MULTI_FRAME,
        "report-sr.dcm": Reason.NO_PIXEL_DATA,
        "tiny.dcm": Reason.TOO_SMALL,
        "blank.dcm": Reason.CONSTANT_IMAGE,
        "cut.dcm": Reason.TRUNCATED,
        "z-copy-of-u12.dcm": Reason.DUPLICATE_FILE,
        "DICOMDIR": Reason.DICOMDIR,
    }
    got = {name: by_path[name].reason for name in expected}
    assert got == {name: reason.value for name, reason in expected.items()}
    assert all(by_path[n].detail for n in expected), "every rejection carries a human detail"


def test_all_encodings_decode_to_the_same_model_input(export: Path, tmp_path: Path) -> None:
    """MONOCHROME1 inversion, rescale, signedness, bit depth and compression must not change the picture."""
    result = scan_site(export, PARAMS, tmp_path / "cache")
    by_path = {r.path: r for r in result.records}
    reference = result.load_image(by_path["u16.dcm"])
    assert reference.shape == (32, 32) and reference.dtype == np.float32
    assert 0.0 <= reference.min() and reference.max() <= 1.0
    assert reference[:, -4:].mean() > reference[:, :4].mean() + 0.3, "bright side stays bright"
    for name in GRAYSCALE_VARIANTS:
        img = result.load_image(by_path[name])
        tolerance = 0.03 if name.startswith("u8") else 0.01
        assert np.abs(img - reference).mean() < tolerance, name


def test_header_fields_are_read_for_reports_and_joins(export: Path, tmp_path: Path) -> None:
    result = scan_site(export, PARAMS, tmp_path / "cache")
    rec = next(r for r in result.records if r.path == "mono1.dcm")
    assert rec.header.photometric == "MONOCHROME1"
    assert rec.header.modality == "DX" and rec.header.manufacturer == "TestVendor"
    assert rec.header.rows == 96 and rec.header.sop_instance_uid
    rle = next(r for r in result.records if r.path == "rle.dcm")
    assert rle.header.transfer_syntax == "RLE Lossless"


def test_second_scan_and_fresh_cache_object_do_not_decode_again(export: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = scan_site(export, PARAMS, cache)
    assert first.cache.decoded == len(first.records)
    second = scan_site(export, PARAMS, cache)  # new IngestCache reading the on-disk indexes, like a new process
    assert second.cache.decoded == 0
    assert [(r.path, r.usable, r.reason) for r in second.records] == [
        (r.path, r.usable, r.reason) for r in first.records
    ]
    other = scan_site(export, PreprocessConfig(image_size=48), cache)  # new preprocessing -> new tensors
    assert other.cache.decoded == len(other.usable) + 1  # usable images (and the duplicate copy) only


def test_changed_file_is_decoded_again(export: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    scan_site(export, PARAMS, cache)
    f.write_image(export / "u12.dcm", f.phantom(96, 96, seed=5))
    again = scan_site(export, PARAMS, cache)
    assert again.cache.decoded == 1


@pytest.mark.parametrize("damage", ["shard", "index", "both"])
def test_corrupt_cache_is_rebuilt_not_trusted(export: Path, tmp_path: Path, damage: str) -> None:
    cache = tmp_path / "cache"
    first = scan_site(export, PARAMS, cache)
    rec = next(r for r in first.usable if r.path == "u12.dcm")
    good = first.load_image(rec).copy()
    (shard,) = (cache / "packs").rglob("*.npy")
    if damage in ("shard", "both"):
        shard.write_bytes(b"garbage")
    if damage in ("index", "both"):
        (cache / "index.sqlite").write_bytes(b"{not a database" * 100)
    again = scan_site(export, PARAMS, cache)
    assert again.cache.decoded == (len(again.usable) + 1 if damage == "shard" else len(again.records))
    rec2 = next(r for r in again.usable if r.path == "u12.dcm")
    np.testing.assert_array_equal(again.load_image(rec2), good)
    third = scan_site(export, PARAMS, cache)  # and the rebuilt cache is whole again
    assert third.cache.decoded == 0


def test_a_damaged_row_in_a_shard_is_decoded_again(export: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = scan_site(export, PARAMS, cache)
    good = {r.path: first.load_image(r).copy() for r in first.usable}
    (shard,) = (cache / "packs").rglob("*.npy")
    arr = np.load(shard, mmap_mode="r+")
    arr[0, 0, 0] ^= 0x0100  # a bit flip on disk: still a valid uint16, caught by the row's CRC
    arr.flush()
    del arr
    again = scan_site(export, PARAMS, cache)
    for rec in again.usable:
        np.testing.assert_array_equal(again.load_image(rec), good[rec.path])
    assert again.cache.decoded == 1


def test_parallel_workers_give_the_same_result(export: Path, tmp_path: Path) -> None:
    serial = scan_site(export, PARAMS, tmp_path / "c1", workers=1)
    parallel = scan_site(export, PARAMS, tmp_path / "c2", workers=2)
    assert [(r.path, r.usable, r.reason, r.sha256) for r in serial.records] == [
        (r.path, r.usable, r.reason, r.sha256) for r in parallel.records
    ]
    for a, b in zip(serial.usable, parallel.usable):
        np.testing.assert_array_equal(serial.load_image(a), parallel.load_image(b))


def test_unwritable_cache_degrades_to_memory_with_a_warning(export: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(RuntimeWarning, match="not writable"):
        result = scan_site(export, PARAMS, blocker / "cache")
    rec = result.usable[0]
    assert result.load_image(rec).shape == (32, 32)
    assert result.cache.warning and "not writable" in result.cache.warning


def test_pydicom_bundled_files_never_crash_and_every_rejection_has_a_reason(tmp_path: Path) -> None:
    folder = Path(pydicom.data.__file__).parent / "test_files"
    result = scan_site(folder, PARAMS, tmp_path / "cache")
    codes = {r.value for r in Reason}
    assert len(result.records) > 100
    assert result.usable, "some bundled images are plain grayscale and must be usable"
    for rec in result.rejected:
        assert rec.reason in codes and rec.detail, rec
    reasons = {r.reason for r in result.rejected}
    assert {"not-grayscale", "no-pixel-data", "multi-frame", "dicomdir"} <= reasons


def test_pydicom_data_real_world_encodings(tmp_path: Path) -> None:
    """pydicom-data: JPEG lossless process 14, JPEG 2000, MONOCHROME1 CR, palette colour, big endian."""
    data_store = pytest.importorskip("data_store")
    folder = Path(data_store.__file__).parent / "data"
    result = scan_site(folder, PARAMS, tmp_path / "cache")
    by_path = {r.path: r for r in result.records}
    for name in ("JPEG-LL.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm", "MR2_J2KR.dcm", "RG1_UNCR.dcm", "RG3_J2KR.dcm"):
        assert by_path[name].usable, (name, by_path[name].reason, by_path[name].detail)
    assert by_path["OBXXXX1A.dcm"].reason == "not-grayscale"
    # Lossless JPEG 2000 and uncompressed copies of the same MONOCHROME1 radiograph give the same input.
    a = result.load_image(by_path["RG3_J2KR.dcm"])
    b = result.load_image(by_path["RG3_UNCR.dcm"])
    np.testing.assert_allclose(a, b, atol=1e-5)
