"""Header-only slice records: what planning a CT/MR volume needs from one DICOM object, read without its pixels.

Why: a series is grouped, ordered and checked before any pixel is decoded, so a site's thousands of slice files
cost one header read each and a broken series is rejected without decoding it. Every field is parsed defensively:
a malformed or missing value becomes ``None`` (or the stated default), never an exception; the planner
(:mod:`shared.imaging.series_plan`) turns what is missing into a reason code. An Enhanced CT/MR object gives one
record per frame (:mod:`shared.imaging.enhanced`); any other multi-frame object gives one record whose
``unsupported`` says why it cannot be a volume.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from shared.imaging.dicom_reader import _floats, _int, _number, _optional_int, _strings, _text
from shared.imaging.enhanced import ENHANCED_SOP_CLASSES, frame_records
from shared.imaging.reasons import Reason, Rejection

LOCALIZER = "LOCALIZER"  # ImageType value 3 of CT/MR scout images


@dataclass(frozen=True)
class SliceRecord:
    """One slice (a single-frame file, or one frame of an enhanced object) as the planner sees it.

    ``path`` is whatever the caller names the file by (the scan's relative path); ``frame`` is the 0-based frame
    index in a multi-frame object, ``None`` for a single-frame file. Geometry fields are ``None`` when absent or
    malformed; ``rescale_slope``/``rescale_intercept`` default to 1/0 when absent and are ``None`` when malformed."""

    path: str
    sop_instance_uid: str = ""
    series_instance_uid: str = ""
    study_instance_uid: str = ""
    frame_of_reference_uid: str = ""
    sop_class_uid: str = ""
    modality: str = ""
    image_type: tuple[str, ...] = ()
    position: tuple[float, float, float] | None = None  # ImagePositionPatient, LPS mm
    orientation: tuple[float, float, float, float, float, float] | None = None  # ImageOrientationPatient
    pixel_spacing: tuple[float, float] | None = None  # (row spacing, column spacing) mm
    rows: int = 0
    columns: int = 0
    samples_per_pixel: int = 1
    rescale_slope: float | None = 1.0
    rescale_intercept: float | None = 0.0
    rescale_type: str = ""
    has_modality_lut: bool = False
    gantry_tilt: float | None = 0.0  # GantryDetectorTilt, degrees
    number_of_frames: int = 1
    frame: int | None = None
    instance_number: int | None = None
    acquisition_number: int | None = None
    unsupported: str = ""  # why this multi-frame object cannot be planned ("" when it can)

    @property
    def is_localizer(self) -> bool:
        return LOCALIZER in self.image_type

    @property
    def label(self) -> str:
        """How a detail names this slice: the path, plus the frame for a multi-frame object."""
        return self.path if self.frame is None else f"{self.path} frame {self.frame + 1}"


def _sop_class(ds: pydicom.Dataset) -> str:
    return _text(ds, "SOPClassUID") or _text(getattr(ds, "file_meta", pydicom.Dataset()), "MediaStorageSOPClassUID")


def file_record(ds: pydicom.Dataset, path: str) -> SliceRecord:
    """The file-level record of ``ds`` (for a multi-frame object: before its frames are expanded)."""
    return SliceRecord(
        path=str(path),
        sop_instance_uid=_text(ds, "SOPInstanceUID"),
        series_instance_uid=_text(ds, "SeriesInstanceUID"),
        study_instance_uid=_text(ds, "StudyInstanceUID"),
        frame_of_reference_uid=_text(ds, "FrameOfReferenceUID"),
        sop_class_uid=_sop_class(ds),
        modality=_text(ds, "Modality").upper(),
        image_type=_strings(ds, "ImageType"),
        position=_floats(ds, "ImagePositionPatient", 3),  # type: ignore[arg-type]
        orientation=_floats(ds, "ImageOrientationPatient", 6),  # type: ignore[arg-type]
        pixel_spacing=_floats(ds, "PixelSpacing", 2),  # type: ignore[arg-type]
        rows=_int(ds, "Rows"),
        columns=_int(ds, "Columns"),
        samples_per_pixel=_int(ds, "SamplesPerPixel", 1),
        rescale_slope=_number(ds, "RescaleSlope", 1.0),
        rescale_intercept=_number(ds, "RescaleIntercept", 0.0),
        rescale_type=_text(ds, "RescaleType").upper(),
        has_modality_lut="ModalityLUTSequence" in ds,
        gantry_tilt=_number(ds, "GantryDetectorTilt", 0.0),
        number_of_frames=max(_int(ds, "NumberOfFrames", 1), 1),
        instance_number=_optional_int(ds, "InstanceNumber"),
        acquisition_number=_optional_int(ds, "AcquisitionNumber"),
    )


def slice_records(ds: pydicom.Dataset, path: str) -> list[SliceRecord]:
    """Every slice ``ds`` holds: one record for a single-frame file, one per frame for an Enhanced CT/MR object."""
    record = file_record(ds, path)
    if record.number_of_frames > 1 or record.sop_class_uid in ENHANCED_SOP_CLASSES:
        return frame_records(ds, record)
    return [record]


def read_slice_records(path: str | Path, name: str | None = None) -> list[SliceRecord]:
    """Read ``path``'s header, stopping before its pixel data, and return its slices; ``name`` names the file.

    Raises the file-level :class:`Rejection` (unreadable, not DICOM, truncated) for a file with no usable header."""
    label = str(path) if name is None else name
    try:
        with open(path, "rb") as fh:
            try:
                ds = pydicom.dcmread(fh, stop_before_pixels=True)
            except InvalidDicomError:  # old exports omit the preamble: accept what parses into image elements
                fh.seek(0)
                try:
                    ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
                except Exception:
                    ds = pydicom.Dataset()
                if not any(k in ds for k in ("SOPClassUID", "Modality", "Rows", "StudyInstanceUID")):
                    raise Rejection(Reason.NOT_DICOM, "no DICOM preamble and no recognisable DICOM elements") from None
    except Rejection:
        raise
    except (EOFError, ValueError) as exc:
        raise Rejection(Reason.TRUNCATED, f"header ends early ({str(exc)[:160]})") from None
    except OSError as exc:
        raise Rejection(Reason.UNREADABLE, f"cannot read file: {exc.strerror or exc}") from None
    except Exception as exc:
        raise Rejection(Reason.NOT_DICOM, f"header could not be parsed ({type(exc).__name__})") from None
    return slice_records(ds, label)
