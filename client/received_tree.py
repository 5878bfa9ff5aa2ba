"""The received tree: where DICOM instances from PACS land at the site, one file per instance.

``RECEIVED/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``, under ``pacs.node.receive_dir``
(default ``DATA/received``, inside the export ``fedrad-site check`` scans). ``fedrad-site fetch`` (C-GET, C-MOVE's
temporary storage node, WADO-RS) and ``fedrad-site receive`` both store through :func:`store_part10`, so an instance
is in the same place whichever way it came.

Why these rules: the UIDs come from the network, so each is checked against DICOM's UID grammar before it becomes
a path part (no ``..``, no ``/``, nothing but digits and dots); a file is written to a temporary name, fsynced and
renamed (a reader or the next start never sees half an instance); an instance already on disk is kept, not
rewritten (a second fetch or a PACS resending costs no writes and changes nothing the cache indexed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import dcmwrite

from shared.atomic import replacing_file

UID_PATTERN = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")  # PS3.5 9.1; at most 64 characters
RECEIVED_FOLDER = "received"  # DATA/received: the default receive_dir
INSTANCE_FILE_MODE = 0o640  # patient data: the site's account and its group, nobody else


class ReceivedInstanceError(ValueError):
    """An instance that cannot go into the received tree (not DICOM, or a UID that is not a UID)."""


@dataclass(frozen=True)
class StoredInstance:
    """One instance stored (or found already there)."""

    path: Path
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    bytes: int
    new: bool  # False: the same SOP instance was already on disk and was kept


def check_uid(value: object, what: str) -> str:
    """``value`` as a UID safe to be a file or folder name, or :class:`ReceivedInstanceError`."""
    uid = str(value or "").strip().rstrip("\x00").strip()
    if not uid or len(uid) > 64 or not UID_PATTERN.match(uid):
        raise ReceivedInstanceError(f"{what} {uid[:80]!r} is not a DICOM UID (digits and dots, at most 64)")
    return uid


def instance_path(root: Path, study_uid: str, series_uid: str, sop_uid: str) -> Path:
    """Where an instance lives in the received tree under ``root`` (UIDs checked)."""
    return (
        Path(root)
        / check_uid(study_uid, "StudyInstanceUID")
        / check_uid(series_uid, "SeriesInstanceUID")
        / f"{check_uid(sop_uid, 'SOPInstanceUID')}.dcm"
    )


def store_part10(root: Path, data: bytes) -> StoredInstance:
    """Store one DICOM Part 10 file (preamble, file meta, dataset: the bytes as they came) in the tree.

    Only the header is parsed (to place it); the bytes written are the bytes given, so pixel data stays exactly
    as PACS sent it. An instance whose file already exists is kept (``new=False``), not rewritten.
    """
    try:
        ds = pydicom.dcmread(
            BytesIO(data),
            stop_before_pixels=True,
            specific_tags=["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"],
        )
    except Exception as exc:  # pydicom raises many kinds for hostile bytes
        raise ReceivedInstanceError(f"not a DICOM file ({type(exc).__name__}: {exc})") from None
    sop_uid = check_uid(ds.get("SOPInstanceUID"), "SOPInstanceUID")
    meta_uid = str(ds.file_meta.get("MediaStorageSOPInstanceUID", sop_uid)).strip().rstrip("\x00")
    if meta_uid != sop_uid:
        raise ReceivedInstanceError(f"file meta names SOP instance {meta_uid[:80]!r} but the dataset {sop_uid!r}")
    path = instance_path(root, ds.get("StudyInstanceUID"), ds.get("SeriesInstanceUID"), sop_uid)
    fields = {
        "study_uid": path.parent.parent.name,
        "series_uid": path.parent.name,
        "sop_uid": sop_uid,
        "sop_class_uid": str(ds.get("SOPClassUID", "")),
    }
    if path.is_file():
        return StoredInstance(path, bytes=path.stat().st_size, new=False, **fields)
    with replacing_file(path, "wb", file_mode=INSTANCE_FILE_MODE) as fh:
        fh.write(data)
    return StoredInstance(path, bytes=len(data), new=True, **fields)


def part10_bytes(ds: Dataset) -> bytes:
    """A decoded dataset (WADO-RS, a C-STORE's dataset) as Part 10 bytes in its own transfer syntax."""
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    ts = meta.get("TransferSyntaxUID")
    if ts is None:
        raise ReceivedInstanceError("the dataset has no transfer syntax (file meta TransferSyntaxUID)")
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", meta.get("MediaStorageSOPClassUID"))
    meta.MediaStorageSOPInstanceUID = ds.get("SOPInstanceUID", meta.get("MediaStorageSOPInstanceUID"))
    ds.file_meta = meta
    buf = DicomBytesIO()
    dcmwrite(buf, ds, enforce_file_format=True)
    return buf.getvalue()


def store_dataset(root: Path, ds: Dataset) -> StoredInstance:
    """Store a decoded dataset (see :func:`part10_bytes`)."""
    return store_part10(root, part10_bytes(ds))
