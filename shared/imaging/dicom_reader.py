"""Read one DICOM file, whatever its modality: parse it, take its header, reject what is no image, decode pixels.

Every failure is turned into a :class:`Rejection` with a stable reason code;
nothing a file contains can crash a scan. Decoding uses pydicom's pixel
backend with the pylibjpeg / pyjpegls plugins, so every transfer syntax those
support works without code here. Which objects are usable, and how their
pixels become a model input, is a modality's business (:mod:`shared.imaging.modality`,
:mod:`shared.imaging.planar`); :func:`shared.imaging.modality.read_image` puts the two together.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import get_decoder, iter_pixels
from pydicom.uid import UID

from shared.imaging.reasons import Reason, Rejection

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


@dataclass
class ImageHeader:
    """The header fields FedRad uses; they stay at the site (QC summaries, splits, label joins)."""

    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    accession_number: str = ""
    patient_id: str = ""
    modality: str = ""
    manufacturer: str = ""
    rows: int = 0
    columns: int = 0
    bits_stored: int = 0
    pixel_representation: int = 0
    photometric: str = ""
    transfer_syntax: str = ""
    pixel_spacing: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    try:
        value = ds.get(keyword, "")
    except Exception:  # a malformed element must not stop the scan
        return ""
    return "" if value is None else str(value).strip()


def _int(ds: pydicom.Dataset, keyword: str, default: int = 0) -> int:
    try:
        value = ds.get(keyword, default)
        return int(value) if value not in (None, "") else default
    except Exception:
        return default


def _floats(ds: pydicom.Dataset, keyword: str, count: int) -> tuple[float, ...] | None:
    """``count`` finite numbers from a (multi-valued) element; ``None`` when absent or malformed, never an exception."""
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return None
        items = [value] if isinstance(value, (str, bytes, int, float)) else list(value)
        out = tuple(float(v) for v in items)
    except Exception:  # malformed DS/IS strings, wrong VR, odd containers
        return None
    if len(out) != count or not all(math.isfinite(v) for v in out):
        return None
    return out


def _number(ds: pydicom.Dataset, keyword: str, default: float | None) -> float | None:
    """One finite number; ``default`` when the element is absent or empty, ``None`` when it is malformed."""
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return default
        out = float(value)
    except Exception:
        return None
    return out if math.isfinite(out) else None


def _optional_int(ds: pydicom.Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return None if value is None or value == "" else int(value)
    except Exception:
        return None


def _strings(ds: pydicom.Dataset, keyword: str) -> tuple[str, ...]:
    """A multi-valued code string (ImageType, FrameType) as upper-case values; ``()`` when absent or malformed."""
    try:
        value = ds.get(keyword)
        if value is None:
            return ()
        items = [value] if isinstance(value, str) else list(value)
        return tuple(str(v).strip().upper() for v in items)
    except Exception:
        return ()


def parse_dataset(raw: bytes) -> pydicom.Dataset:
    """Parse bytes as DICOM; files without the 128-byte preamble are accepted when they parse as DICOM."""
    try:
        return pydicom.dcmread(io.BytesIO(raw))
    except InvalidDicomError:
        pass
    except (EOFError, OSError) as exc:
        raise Rejection(Reason.TRUNCATED, f"header ends early ({exc})") from None
    except Exception as exc:
        raise Rejection(Reason.NOT_DICOM, f"header could not be parsed ({type(exc).__name__})") from None
    # No 'DICM' preamble: old exports omit it. Accept only if it parses into recognisable image tags.
    try:
        ds = pydicom.dcmread(io.BytesIO(raw), force=True)
        known = [k for k in ("SOPClassUID", "Modality", "Rows", "PixelData", "StudyInstanceUID") if k in ds]
    except Exception:
        known = []
    if not known:
        raise Rejection(Reason.NOT_DICOM, "no DICOM preamble and no recognisable DICOM elements")
    return ds


def read_header(ds: pydicom.Dataset) -> ImageHeader:
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    spacing = []
    try:
        spacing = [float(v) for v in (ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing") or [])]
    except Exception:
        spacing = []
    return ImageHeader(
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        accession_number=_text(ds, "AccessionNumber"),
        patient_id=_text(ds, "PatientID"),
        modality=_text(ds, "Modality"),
        manufacturer=_text(ds, "Manufacturer"),
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        bits_stored=_int(ds, "BitsStored"),
        pixel_representation=_int(ds, "PixelRepresentation"),
        photometric=_text(ds, "PhotometricInterpretation").upper(),
        transfer_syntax=UID(str(ts)).name if ts else "",
        pixel_spacing=spacing,
    )


def check_image_object(ds: pydicom.Dataset, header: ImageHeader) -> None:
    """Reject what is no image at all (DICOMDIR, SEG, no pixel data), whatever the modality, before decoding.

    What a modality accepts among the rest (grey-scale, frames, size) is its own ``check``
    (:mod:`shared.imaging.modality`)."""
    sop_class = _text(ds, "SOPClassUID") or _text(
        getattr(ds, "file_meta", pydicom.Dataset()), "MediaStorageSOPClassUID"
    )
    if sop_class == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds:
        raise Rejection(Reason.DICOMDIR, "media storage directory (DICOMDIR)")
    if sop_class == SEGMENTATION_STORAGE or _text(ds, "Modality") == "SEG":
        raise Rejection(Reason.SEGMENTATION, "DICOM Segmentation object (labels for an image, not an image)")
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if "Rows" in ds and "Columns" in ds and "BitsAllocated" in ds:
            raise Rejection(Reason.TRUNCATED, "image header present but the file ends before its pixel data")
        what = _text(ds, "Modality") or "unknown modality"
        raise Rejection(Reason.NO_PIXEL_DATA, f"no pixel data ({what})")


def _check_decodable(ds: pydicom.Dataset) -> None:
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None:
        return
    uid = UID(str(ts))
    if not uid.is_transfer_syntax:  # e.g. a damaged file meta header
        raise Rejection(
            Reason.UNDECODABLE_TRANSFER_SYNTAX, f"TransferSyntaxUID {str(ts)[:64]!r} is not a transfer syntax"
        )
    if not uid.is_compressed:
        return
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        decoder = None
    if decoder is None or not decoder.is_available:
        raise Rejection(Reason.UNDECODABLE_TRANSFER_SYNTAX, f"{uid.name} ({ts}): no installed decoder")


def _decode_error(exc: BaseException, header: ImageHeader) -> Rejection:
    """The :class:`Rejection` for a decoder failure (shared by whole-object and frame-by-frame decoding)."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
        raise exc
    msg = str(exc)
    lowered = msg.lower()
    if (
        "less than expected" in lowered
        or "truncat" in lowered
        or "insufficient" in lowered
        or isinstance(exc, EOFError)
    ):
        return Rejection(Reason.TRUNCATED, f"pixel data shorter than its header says ({msg[:160]})")
    if isinstance(exc, (NotImplementedError, RuntimeError)) and "plugin" in lowered:
        return Rejection(Reason.UNDECODABLE_TRANSFER_SYNTAX, f"{header.transfer_syntax}: {msg[:160]}")
    return Rejection(Reason.CORRUPT_PIXEL_DATA, f"{type(exc).__name__}: {msg[:160]}")


def pixel_array(ds: pydicom.Dataset, header: ImageHeader) -> np.ndarray:
    """The stored pixel values, decoded; any decoder failure becomes a :class:`Rejection` (any modality)."""
    _check_decodable(ds)
    try:
        arr = ds.pixel_array
    except BaseException as exc:  # Rust decoders (pylibjpeg-rle) raise pyo3's PanicException, a BaseException
        raise _decode_error(exc, header) from None
    return arr


def iter_frames(ds: pydicom.Dataset, header: ImageHeader) -> Iterator[np.ndarray]:
    """The stored values of each frame in turn (a multi-frame volume never needs all its frames decoded at once).

    Failures become the same :class:`Rejection` codes as :func:`pixel_array`."""
    _check_decodable(ds)
    frames = iter_pixels(ds)
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            return
        except BaseException as exc:  # as in pixel_array
            raise _decode_error(exc, header) from None
        yield frame
