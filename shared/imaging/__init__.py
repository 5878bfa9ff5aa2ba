"""DICOM ingest: scan a site's export, give every file a verdict, decode and cache usable images."""

from shared.imaging.dicom_reader import ImageHeader
from shared.imaging.modality import read_image
from shared.imaging.reasons import EXPLANATIONS, Reason, Rejection
from shared.imaging.scan import FileRecord, ScanResult, scan_site

__all__ = [
    "EXPLANATIONS",
    "FileRecord",
    "ImageHeader",
    "Reason",
    "Rejection",
    "ScanResult",
    "read_image",
    "scan_site",
]
