"""Why a file in a site's export cannot be used: short stable codes plus a sentence for people.

The codes are part of ``fedrad-site check --json`` output, so scripts may rely
on them; the sentences say what the file is and, where useful, what to do.
"""

from __future__ import annotations

from enum import Enum


class Reason(str, Enum):
    """Stable reason codes for rejected files."""

    UNREADABLE = "unreadable"
    NOT_DICOM = "not-dicom"
    DICOMDIR = "dicomdir"
    SEGMENTATION = "segmentation-object"
    TRUNCATED = "truncated"
    NO_PIXEL_DATA = "no-pixel-data"
    NOT_GRAYSCALE = "not-grayscale"
    MULTI_FRAME = "multi-frame"
    UNDECODABLE_TRANSFER_SYNTAX = "undecodable-transfer-syntax"
    CORRUPT_PIXEL_DATA = "corrupt-pixel-data"
    TOO_SMALL = "too-small"
    CONSTANT_IMAGE = "constant-image"
    DUPLICATE_FILE = "duplicate-file"
    DUPLICATE_SOP_INSTANCE = "duplicate-sop-instance"
    # CT/MR series (shared/imaging/series_plan.py): one verdict for a whole series, naming its files.
    MISSING_GEOMETRY = "missing-geometry"
    UNSUPPORTED_MULTI_FRAME = "unsupported-multi-frame"
    SERIES_LOCALIZER = "series-localizer"
    SERIES_TOO_FEW_SLICES = "series-too-few-slices"
    SERIES_MISSING_SLICES = "series-missing-slices"
    SERIES_DUPLICATE_POSITION = "series-duplicate-position"
    SERIES_UNEVEN_SPACING = "series-uneven-spacing"
    SERIES_MIXED_ORIENTATION = "series-mixed-orientation"
    SERIES_MIXED_MATRIX = "series-mixed-matrix"
    SERIES_MIXED_PIXEL_SPACING = "series-mixed-pixel-spacing"
    SERIES_GANTRY_TILT = "series-gantry-tilt"
    SERIES_RESCALE = "series-inconsistent-rescale"


EXPLANATIONS: dict[Reason, str] = {
    Reason.UNREADABLE: "The file could not be opened (permissions or I/O error); check its owner and mode.",
    Reason.NOT_DICOM: "Not a DICOM file (no DICOM header could be parsed); stray files can stay, they are skipped.",
    Reason.DICOMDIR: "A DICOMDIR media index, not an image; the images it lists are scanned on their own.",
    Reason.SEGMENTATION: "A DICOM Segmentation (labels drawn on another image), not an image to train on.",
    Reason.TRUNCATED: "The file ends before its pixel data does; re-export it from PACS.",
    Reason.NO_PIXEL_DATA: "A DICOM object without an image (e.g. structured report, RT plan, presentation state).",
    Reason.NOT_GRAYSCALE: "A colour image (e.g. a screenshot or secondary capture); the task needs grayscale radiographs.",
    Reason.MULTI_FRAME: "A multi-frame object (cine, tomosynthesis or volume); the task needs single 2D images.",
    Reason.UNDECODABLE_TRANSFER_SYNTAX: "The pixel data is compressed with a transfer syntax no installed decoder handles.",
    Reason.CORRUPT_PIXEL_DATA: "The pixel data could not be decoded (corrupt or inconsistent with its header).",
    Reason.TOO_SMALL: "The image is too small to be a radiograph for this task.",
    Reason.CONSTANT_IMAGE: "Every pixel has the same value (a blank image).",
    Reason.DUPLICATE_FILE: "A byte-identical copy of another file in the export; the first copy is used.",
    Reason.DUPLICATE_SOP_INSTANCE: "Another file carries the same SOPInstanceUID with different content; the first is used.",
    Reason.MISSING_GEOMETRY: "A CT/MR slice lacks ImagePositionPatient, ImageOrientationPatient or PixelSpacing, so it "
    "cannot be placed in the patient; re-export the series from the scanner or PACS, not from a viewer.",
    Reason.UNSUPPORTED_MULTI_FRAME: "A multi-frame object that is not an Enhanced CT/MR image with per-frame position "
    "and orientation (e.g. cine, a plain multi-frame CT); export the series as one file per slice or as Enhanced CT/MR.",
    Reason.SERIES_LOCALIZER: "The series holds only localizer (scout) images, which are not a volume; nothing to do.",
    Reason.SERIES_TOO_FEW_SLICES: "The series has fewer slices than a volume needs (a key image, a single slice, or a "
    "partial export); export the whole series.",
    Reason.SERIES_MISSING_SLICES: "Slices are missing: the positions have a gap of whole slices; re-send the complete "
    "series from PACS.",
    Reason.SERIES_DUPLICATE_POSITION: "Several different images share one slice position (several echoes, phases, "
    "b-values or a repeated acquisition in one series); export each stack as its own series.",
    Reason.SERIES_UNEVEN_SPACING: "The distance between slices is not constant (variable-thickness reconstruction or "
    "merged acquisitions); use a reconstruction with regular spacing.",
    Reason.SERIES_MIXED_ORIENTATION: "The slices of the series are not all parallel (e.g. a tri-planar localizer or "
    "merged planes); export each plane as its own series.",
    Reason.SERIES_MIXED_MATRIX: "The slices of the series have different matrix sizes (rows x columns); export a "
    "series reconstructed with one matrix.",
    Reason.SERIES_MIXED_PIXEL_SPACING: "The slices of the series have different pixel spacing (field of view changed "
    "within the series); export a series reconstructed with one field of view.",
    Reason.SERIES_GANTRY_TILT: "The series was acquired with a tilted gantry (slices sheared along the table); "
    "use a reconstruction corrected for tilt, or one without tilt.",
    Reason.SERIES_RESCALE: "The slices' rescale (RescaleSlope/Intercept/Type) is unusable or mixes units, so the "
    "slices cannot be put on one intensity scale; re-export the series from the scanner.",
}


class Rejection(Exception):
    """Raised inside ingest for one file; becomes one rejected row, never a crash."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.header = None  # the parsed header, when the file got that far
