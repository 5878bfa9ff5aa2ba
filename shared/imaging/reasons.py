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
}


class Rejection(Exception):
    """Raised inside ingest for one file; becomes one rejected row, never a crash."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason.value}: {detail}")
        self.reason = reason
        self.detail = detail
        self.header = None  # the parsed header, when the file got that far
