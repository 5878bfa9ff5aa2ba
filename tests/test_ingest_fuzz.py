"""Property-based fuzzing of the DICOM ingest: whatever a hospital export holds, never a crash, always a reason.

Hypothesis mutates real DICOM files written with pydicom (uncompressed in both
VRs, RLE): header values that decide how pixels are decoded (Rows, Columns,
BitsAllocated, PhotometricInterpretation, NumberOfFrames, Rescale…), missing
elements, truncated pixel data, and raw byte flips and cuts anywhere in the
file. Every outcome must be either a usable image (finite, in [0, 1], the
model's size) or a :class:`Rejection` with a known reason and a non-empty
detail. Anything else (an IndexError, a numpy error, a hang) is a bug: the
site's check would blame the wrong thing or stop.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pydicom
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless

from shared.config import PreprocessConfig
from shared.imaging.modality import read_image
from shared.imaging.planar import preprocess_image
from shared.imaging.reasons import Reason, Rejection
from shared.imaging.scan import decode_file
from tests.dicom_factory import phantom, write_image

PARAMS = PreprocessConfig(image_size=32)
# derandomize: CI runs exactly the examples that passed here (a new find is a bug to fix, not a flaky CI)
FUZZ = settings(
    max_examples=120, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
SYNTAXES = {"explicit": ExplicitVRLittleEndian, "implicit": ImplicitVRLittleEndian, "rle": RLELossless}


def _original(syntax: str, tmp: Path) -> bytes:
    path = tmp / f"{syntax}.dcm"
    write_image(path, phantom(48, 40), transfer_syntax=SYNTAXES[syntax], slope=1.0, intercept=0.0)
    return path.read_bytes()


_ORIGINALS: dict[str, bytes] = {}


def original(syntax: str) -> bytes:
    """The unmutated file for ``syntax``, written once per test session (a module cache, not a fixture, so
    Hypothesis does not print 10 kB of bytes with every falsifying example)."""
    if syntax not in _ORIGINALS:
        with tempfile.TemporaryDirectory() as tmp:
            _ORIGINALS[syntax] = _original(syntax, Path(tmp))
    return _ORIGINALS[syntax]


def assert_image_or_reason(raw: bytes) -> str:
    """The ingest contract for one file; returns the reason ("" when usable)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            _, decoded = read_image(raw)
            image = preprocess_image(decoded, PARAMS)
        except Rejection as rej:
            assert isinstance(rej.reason, Reason)
            assert rej.detail.strip(), f"rejection {rej.reason} without a detail"
            return rej.reason.value
    assert image.shape == (PARAMS.image_size, PARAMS.image_size)
    assert np.isfinite(image).all() and image.min() >= 0.0 and image.max() <= 1.0
    return ""


HEADER_VALUES = {
    "Rows": st.integers(0, 70000),
    "Columns": st.integers(0, 70000),
    "BitsAllocated": st.sampled_from([0, 1, 7, 8, 12, 16, 24, 32, 64]),
    "BitsStored": st.integers(0, 65),
    "HighBit": st.integers(0, 65),
    "PixelRepresentation": st.integers(0, 3),
    "SamplesPerPixel": st.integers(0, 4),
    "PhotometricInterpretation": st.sampled_from(
        ["MONOCHROME1", "MONOCHROME2", "RGB", "PALETTE COLOR", "YBR_FULL", "", "X"]
    ),
    "NumberOfFrames": st.sampled_from(["0", "1", "2", "-1", "abc", ""]),
    "RescaleSlope": st.sampled_from(["0", "1", "-1", "1e308", "nan", "abc", ""]),
    "RescaleIntercept": st.sampled_from(["0", "-1024", "1e308", "inf", "x"]),
    "PlanarConfiguration": st.integers(0, 2),
}


def _set_raw(ds: pydicom.Dataset, keyword: str, value: int | str) -> None:
    """Put ``value`` into the header as the bytes an exporter would write, valid for its VR or not."""
    tag = pydicom.datadict.tag_for_keyword(keyword)
    vr = pydicom.datadict.dictionary_VR(tag)
    if vr == "US":
        raw = int(value).to_bytes(4, "little")[:2] if value <= 0xFFFF else int(value & 0xFFFF).to_bytes(2, "little")
    else:
        raw = str(value).encode("ascii")
        raw += b" " * (len(raw) % 2)
    implicit = ds.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
    ds._dict[tag] = RawDataElement(Tag(tag), None if implicit else vr, len(raw), raw, 0, implicit, True)


@FUZZ
@given(
    syntax=st.sampled_from(sorted(SYNTAXES)),
    changes=st.dictionaries(
        st.sampled_from(sorted(HEADER_VALUES)), st.none() | st.just("value"), min_size=1, max_size=4
    ),
    data=st.data(),
)
def test_mutated_headers_give_an_image_or_a_reason(syntax: str, changes: dict, data) -> None:  # noqa: ANN001
    ds = pydicom.dcmread(io.BytesIO(original(syntax)))
    for keyword, action in changes.items():
        if action is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            _set_raw(ds, keyword, data.draw(HEADER_VALUES[keyword], label=keyword))
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.save_as(buf, enforce_file_format=True)
    except Exception:  # noqa: BLE001 - pydicom refused to write this combination; nothing to read
        assume(False)
    assert_image_or_reason(buf.getvalue())


@FUZZ
@given(syntax=st.sampled_from(sorted(SYNTAXES)), keep=st.floats(0.0, 0.99))
def test_truncated_pixel_data_gives_a_reason(syntax: str, keep: float) -> None:
    """The export was cut off somewhere inside the pixel data (a full disk, a broken transfer)."""
    raw = original(syntax)
    start = raw.rindex(b"\xe0\x7f\x10\x00") + 12  # (7FE0,0010) OB/OW header: tag, VR, reserved, length
    reason = assert_image_or_reason(raw[: start + int((len(raw) - start) * keep)])
    assert reason, "a file with part of its pixel data missing was accepted"


@FUZZ
@given(
    syntax=st.sampled_from(sorted(SYNTAXES)),
    flips=st.lists(st.tuples(st.floats(0, 0.9999), st.integers(0, 255)), max_size=8),
    cut=st.none() | st.floats(0, 0.9999),
)
def test_flipped_and_cut_bytes_give_an_image_or_a_reason(syntax: str, flips: list, cut) -> None:  # noqa: ANN001
    raw = bytearray(original(syntax))
    for where, value in flips:
        raw[int(where * len(raw))] = value
    if cut is not None:
        raw = raw[: int(cut * len(raw))]
    assert_image_or_reason(bytes(raw))


def test_the_scan_worker_turns_every_file_into_a_record(tmp_path: Path) -> None:
    """``decode_file`` (what ``fedrad-site check`` runs per file) names a reason for a broken file and keeps going."""
    bad = tmp_path / "cut.dcm"
    bad.write_bytes(original("rle")[:-200])
    sha, entry, image = decode_file(str(bad), PARAMS)
    assert sha and image is None and entry["reason"] and entry["detail"]
    good = tmp_path / "ok.dcm"
    good.write_bytes(original("explicit"))
    _, entry, image = decode_file(str(good), PARAMS)
    assert image is not None and entry.get("reason", "") == ""


def test_regressions_the_fuzzer_found() -> None:
    """Each was a crash (an exception other than Rejection) before it was fixed."""
    rle = bytearray(original("rle"))  # a zeroed byte in the RLE header made the Rust decoder panic (a BaseException)
    rle[rle.rindex(b"\xe0\x7f\x10\x00") + 40] = 0
    assert assert_image_or_reason(bytes(rle)) == Reason.CORRUPT_PIXEL_DATA.value
    meta = bytearray(original("explicit"))  # a damaged TransferSyntaxUID made pydicom raise ValueError
    i = meta.index(b"1.2.840.10008.1.2.1\x00")
    meta[i : i + 20] = b"1.2.840.10008.1.3.1\x00"
    assert assert_image_or_reason(bytes(meta)) == Reason.UNDECODABLE_TRANSFER_SYNTAX.value
    ds = pydicom.dcmread(io.BytesIO(original("explicit")))  # an intercept that overflows float32 gave a NaN image
    _set_raw(ds, "RescaleIntercept", "1e308")
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    assert assert_image_or_reason(buf.getvalue()) == Reason.CORRUPT_PIXEL_DATA.value
