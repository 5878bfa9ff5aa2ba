"""Where the storage node puts what it accepts: one object in, one verdict out, one file at most written.

``RECEIVE_DIR/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``: the encoded dataset exactly as the
sender sent it, after a Part 10 preamble and file meta header (no decode and re-encode), written through a
temporary file in the same folder, fsync and rename (:func:`shared.atomic.write_atomic`). The three UIDs are
validated as DICOM UIDs (digits and dots, at most 64 characters; ``client/received_tree.py``, the layout ``fetch``
writes too) before they name anything, so no UID can make a
path outside the folder. Each object first gets the site scan's verdict
(:func:`shared.imaging.object_check.check_object`). An SOPInstanceUID already stored, by this run or an earlier
one, is kept once. Thread-safe: associations store in parallel.
"""

from __future__ import annotations

import io
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info

from client.receive_log import INVALID_UID, OUT_OF_RESOURCES
from client.received_tree import INSTANCE_FILE_MODE, ReceivedInstanceError, check_uid, instance_path
from shared.atomic import write_atomic
from shared.imaging.dicom_reader import parse_dataset
from shared.imaging.object_check import check_object
from shared.imaging.reasons import Rejection

SUCCESS = 0x0000
OUT_OF_RESOURCES_STATUS = 0xA700  # the sender may retry later
DATASET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
FILE_MODE = INSTANCE_FILE_MODE  # the site's service account and its group (the account that runs check and start)
DUPLICATE = "duplicate"


@dataclass(frozen=True)
class Outcome:
    """One object's fate: the C-STORE status, what it was (``image``/``slice``/``label``, ``duplicate``) or the
    reason code it was refused for, a detail, and its SOPInstanceUID as sent."""

    status: int
    what: str
    detail: str = ""
    sop_instance_uid: str = ""

    @property
    def stored(self) -> bool:
        return self.status == SUCCESS and self.what != DUPLICATE


def valid_uid(value: object) -> str | None:
    """``value`` as a UID safe to use as a file name (the received tree's rule, shared with ``fetch``), else None."""
    try:
        return check_uid(value, "UID")
    except ReceivedInstanceError:
        return None


class ReceiveStore:
    """The receive folder and the SOP instances in it."""

    def __init__(self, root: Path, check_pixels: bool = True) -> None:
        self.root = Path(root)
        self.check_pixels = check_pixels
        self._lock = threading.Lock()
        self._index: dict[str, Path] = {}  # SOPInstanceUID -> stored file
        self._writing: set[str] = set()

    def load_index(self) -> int:
        """Learn what is already stored (file names are the SOPInstanceUIDs); how many objects."""
        index: dict[str, Path] = {}
        for root, _dirs, names in os.walk(self.root):
            for name in names:
                if name.endswith(".dcm") and not name.startswith("."):
                    index.setdefault(name[:-4], Path(root) / name)
        with self._lock:
            self._index = index
        return len(index)

    def path_for(self, study: str, series: str, sop: str) -> Path:
        return instance_path(self.root, study, series, sop)

    def store(self, meta: FileMetaDataset, body: bytes) -> Outcome:
        """Check and store one object (``body``: the dataset as received, ``meta``: its file meta)."""
        head = io.BytesIO()
        head.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(head, meta, enforce_standard=True)
        raw = head.getvalue() + body
        affected = str(meta.get("MediaStorageSOPInstanceUID", ""))
        try:
            ds = parse_dataset(raw)
        except Rejection as rej:
            return Outcome(CANNOT_UNDERSTAND, rej.reason.value, rej.detail, affected)
        try:
            uids = [valid_uid(ds.get(k)) for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")]
            sent = str(ds.get("SOPInstanceUID", "") or affected)
        except Exception:  # an element that does not decode
            return Outcome(DATASET_MISMATCH, INVALID_UID, "the Study/Series/SOP Instance UIDs cannot be read", affected)
        if None in uids:
            bad = "/".join(k for k, v in zip(("Study", "Series", "SOP"), uids) if v is None)
            return Outcome(DATASET_MISMATCH, INVALID_UID, f"{bad}InstanceUID is not a valid UID", sent)
        study, series, sop = uids  # type: ignore[misc]
        if sop != affected:
            return Outcome(DATASET_MISMATCH, INVALID_UID, "SOPInstanceUID differs from the request's", sop)
        path = self.path_for(study, series, sop)
        if self._known(sop) or path.exists():
            return Outcome(SUCCESS, DUPLICATE, "", sop)
        try:
            verdict = check_object(ds, path.name, pixels=self.check_pixels)
        except Rejection as rej:
            return Outcome(CANNOT_UNDERSTAND, rej.reason.value, rej.detail, sop)
        with self._lock:
            if sop in self._index or sop in self._writing:  # the same object from a parallel association
                return Outcome(SUCCESS, DUPLICATE, "", sop)
            self._writing.add(sop)
        try:
            write_atomic(path, raw, mode=FILE_MODE)
        except OSError as exc:
            return Outcome(OUT_OF_RESOURCES_STATUS, OUT_OF_RESOURCES, f"cannot write: {exc.strerror or exc}", sop)
        finally:
            with self._lock:
                self._writing.discard(sop)
        with self._lock:
            self._index[sop] = path
        return Outcome(SUCCESS, verdict.kind, "", sop)

    def _known(self, sop: str) -> bool:
        with self._lock:
            return sop in self._index or sop in self._writing
