"""Read one file: decide whether it is a usable 2D grayscale radiograph and decode it.

Every failure is turned into a :class:`Rejection` with a stable reason code;
nothing a file contains can crash a scan. Decoding uses pydicom's pixel
backend with the pylibjpeg / pyjpegls plugins, so every transfer syntax those
support works without code here.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import UID

from shared.imaging.reasons import Reason, Rejection

MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
MIN_SIDE = 32
COLOUR_PHOTOMETRICS = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR", "YBR_PARTIAL_420"}


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
    """Reject objects FedRad cannot train on before spending time decoding them."""
    sop_class = _text(ds, "SOPClassUID") or _text(getattr(ds, "file_meta", pydicom.Dataset()), "MediaStorageSOPClassUID")
    if sop_class == MEDIA_STORAGE_DIRECTORY or "DirectoryRecordSequence" in ds:
        raise Rejection(Reason.DICOMDIR, "media storage directory (DICOMDIR)")
    if sop_class == SEGMENTATION_STORAGE or _text(ds, "Modality") == "SEG":
        raise Rejection(Reason.SEGMENTATION, "DICOM Segmentation object (labels for an image, not an image)")
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if "Rows" in ds and "Columns" in ds and "BitsAllocated" in ds:
            raise Rejection(Reason.TRUNCATED, "image header present but the file ends before its pixel data")
        what = _text(ds, "Modality") or "unknown modality"
        raise Rejection(Reason.NO_PIXEL_DATA, f"no pixel data ({what})")
    samples = _int(ds, "SamplesPerPixel", 1)
    if samples != 1 or header.photometric in COLOUR_PHOTOMETRICS:
        raise Rejection(Reason.NOT_GRAYSCALE, f"{header.photometric or 'unknown'} with {samples} samples per pixel")
    frames = _int(ds, "NumberOfFrames", 1)
    if frames > 1:
        raise Rejection(Reason.MULTI_FRAME, f"{frames} frames")
    if header.rows < MIN_SIDE or header.columns < MIN_SIDE:
        raise Rejection(Reason.TOO_SMALL, f"{header.rows}x{header.columns} pixels, minimum {MIN_SIDE}x{MIN_SIDE}")


def _check_decodable(ds: pydicom.Dataset) -> None:
    ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if ts is None:
        return
    uid = UID(str(ts))
    if not uid.is_transfer_syntax:  # e.g. a damaged file meta header
        raise Rejection(Reason.UNDECODABLE_TRANSFER_SYNTAX, f"TransferSyntaxUID {str(ts)[:64]!r} is not a transfer syntax")
    if not uid.is_compressed:
        return
    try:
        decoder = get_decoder(uid)
    except NotImplementedError:
        decoder = None
    if decoder is None or not decoder.is_available:
        raise Rejection(Reason.UNDECODABLE_TRANSFER_SYNTAX, f"{uid.name} ({ts}): no installed decoder")


@dataclass
class DecodedImage:
    """Decoded pixels plus the linear modality transform still to apply.

    The linear rescale (slope/intercept) and the MONOCHROME1 inversion commute
    with area resampling, so preprocessing applies them to the small resampled
    image instead of to every full-resolution pixel; only a non-linear
    ModalityLUTSequence is applied here, at full resolution.
    """

    pixels: np.ndarray  # stored values (or modality values when a LUT was applied)
    slope: float = 1.0
    intercept: float = 0.0
    invert: bool = False  # MONOCHROME1

    def modality_values(self) -> np.ndarray:
        """Full-resolution modality values, dense = bright (for inspection and tests)."""
        values = self.pixels.astype(np.float32) * self.slope + self.intercept
        return -values if self.invert else values


def decode_values(ds: pydicom.Dataset, header: ImageHeader) -> DecodedImage:
    """Stored pixels → :class:`DecodedImage`; rejects anything that is not a usable 2D grayscale image."""
    _check_decodable(ds)
    try:
        arr = ds.pixel_array
    except BaseException as exc:  # Rust decoders (pylibjpeg-rle) raise pyo3's PanicException, a BaseException
        if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
            raise
        msg = str(exc)
        lowered = msg.lower()
        if "less than expected" in lowered or "truncat" in lowered or "insufficient" in lowered or isinstance(exc, EOFError):
            raise Rejection(Reason.TRUNCATED, f"pixel data shorter than its header says ({msg[:160]})") from None
        if isinstance(exc, (NotImplementedError, RuntimeError)) and "plugin" in lowered:
            raise Rejection(Reason.UNDECODABLE_TRANSFER_SYNTAX, f"{header.transfer_syntax}: {msg[:160]}") from None
        raise Rejection(Reason.CORRUPT_PIXEL_DATA, f"{type(exc).__name__}: {msg[:160]}") from None
    if arr.ndim != 2:
        raise Rejection(Reason.NOT_GRAYSCALE if arr.ndim == 3 and arr.shape[-1] in (3, 4) else Reason.MULTI_FRAME,
                        f"decoded array has shape {arr.shape}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise Rejection(Reason.CORRUPT_PIXEL_DATA, "pixel values are not finite")
    lo, hi = arr.min(), arr.max()
    if lo == hi:
        raise Rejection(Reason.CONSTANT_IMAGE, f"all pixels equal {float(lo):g}")
    invert = header.photometric == "MONOCHROME1"  # high values are dark; flipped so dense = bright
    if "ModalityLUTSequence" in ds:  # a non-linear LUT must be applied at full resolution
        try:
            values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
        except Exception as exc:
            raise Rejection(Reason.CORRUPT_PIXEL_DATA, f"modality LUT could not be applied ({type(exc).__name__})") from None
        return DecodedImage(values, invert=invert)
    try:
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    except (TypeError, ValueError):
        raise Rejection(Reason.CORRUPT_PIXEL_DATA, "RescaleSlope/RescaleIntercept are not numbers") from None
    if not (np.isfinite(slope) and np.isfinite(intercept)) or slope == 0:
        raise Rejection(Reason.CORRUPT_PIXEL_DATA, f"unusable rescale (slope {slope:g}, intercept {intercept:g})")
    with np.errstate(over="ignore", invalid="ignore"):  # preprocessing runs in float32: the range must survive it
        ends = np.float32(slope) * np.array([lo, hi], dtype=np.float32) + np.float32(intercept)
    if not np.isfinite(ends).all() or ends[0] == ends[1]:
        raise Rejection(Reason.CORRUPT_PIXEL_DATA, f"rescale (slope {slope:g}, intercept {intercept:g}) overflows or "
                        "flattens the pixel values in float32")  # fmt: skip
    return DecodedImage(arr, slope=slope, intercept=intercept, invert=invert)


def read_image(raw: bytes) -> tuple[ImageHeader, DecodedImage]:
    """Bytes of one file → (header, decoded pixels). Raises :class:`Rejection` for anything unusable."""
    ds = parse_dataset(raw)
    header = read_header(ds)
    try:
        check_image_object(ds, header)
        return header, decode_values(ds, header)
    except Rejection as rej:
        rej.header = header  # keeps the keys so a label pointing at this file says "image-rejected"
        raise
