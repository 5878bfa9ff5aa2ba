"""What DIMSE retrieval needs besides the queries: presentation contexts, TLS contexts, connection details, and the
C-STORE sink that puts arriving instances into the received tree (C-GET's sub-operations, the C-MOVE node).
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from pathlib import Path

from pydicom import uid as uids
from pynetdicom import build_context, evt

from client.pacs_config import TlsFiles
from client.received_tree import ReceivedInstanceError, StoredInstance, store_part10
from shared.config import ConfigError
from shared.tls_policy import harden_tls

MAX_CONTEXTS = 128  # DICOM's limit on presentation contexts in one association (odd IDs 1..255)

# As stored, first: each in its own context where there is room, so PACS never has to transcode.
TRANSFER_SYNTAXES = [
    uids.ExplicitVRLittleEndian,
    uids.ImplicitVRLittleEndian,
    uids.JPEG2000Lossless,
    uids.JPEGLSLossless,
    uids.RLELossless,
    uids.JPEGLosslessSV1,
    uids.JPEGLossless,
    uids.JPEGBaseline8Bit,
    uids.JPEGExtended12Bit,
    uids.JPEG2000,
    uids.JPEGLSNearLossless,
    uids.DeflatedExplicitVRLittleEndian,
]

# When PACS does not say which SOP classes a study holds: the radiology ones first.
COMMON_STORAGE = [
    "1.2.840.10008.5.1.4.1.1.1",  # CR
    "1.2.840.10008.5.1.4.1.1.1.1",  # DX for presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # DX for processing
    "1.2.840.10008.5.1.4.1.1.1.2",  # MG for presentation
    "1.2.840.10008.5.1.4.1.1.1.2.1",  # MG for processing
    "1.2.840.10008.5.1.4.1.1.2",  # CT
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT
    "1.2.840.10008.5.1.4.1.1.4",  # MR
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.2",  # Multi-frame grayscale byte SC
    "1.2.840.10008.5.1.4.1.1.7.3",  # Multi-frame grayscale word SC
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame true colour SC
    "1.2.840.10008.5.1.4.1.1.6.1",  # US
    "1.2.840.10008.5.1.4.1.1.3.1",  # US multi-frame
    "1.2.840.10008.5.1.4.1.1.12.1",  # XA
    "1.2.840.10008.5.1.4.1.1.12.2",  # RF
    "1.2.840.10008.5.1.4.1.1.20",  # NM
    "1.2.840.10008.5.1.4.1.1.128",  # PET
    "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT Structure Set
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
]


def status_text(code: int, table: dict) -> str:
    meaning = table.get(code, (None, "unknown status"))[1]
    return meaning


def client_tls(tls: TlsFiles, host: str) -> tuple[ssl.SSLContext, str]:
    """An ssl context for an association to PACS: its certificate checked against ``tls.ca`` (else the system's
    CAs) and its host name, ours shown when ``tls.cert`` is set; TLS 1.2+ with FedRad's suites."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca) if tls.ca else None)
        if tls.cert is not None:
            ctx.load_cert_chain(str(tls.cert), str(tls.key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"pacs.peer.tls: cannot load the certificate files ({exc})") from None
    return harden_tls(ctx), host


def no_delay(event: evt.Event) -> None:
    """TCP_NODELAY on a new DICOM connection: a DIMSE message is a command PDU then a dataset PDU, and Nagle's
    algorithm would hold the second until the peer's delayed ACK (40 ms on Linux) for every query and instance."""
    try:
        event.assoc.dul.socket.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (AttributeError, OSError):
        pass


def storage_contexts(sop_classes: list[str], room: int) -> list:
    """Storage contexts for ``sop_classes`` within ``room``: one per transfer syntax while there is space, the
    rest of the syntaxes together in a class's last context (PACS then picks one and may transcode)."""
    classes = list(dict.fromkeys(sop_classes))[:room]
    per = max(1, min(len(TRANSFER_SYNTAXES), room // max(1, len(classes))))
    contexts = []
    for cls in classes:
        for k in range(per - 1):
            contexts.append(build_context(cls, [TRANSFER_SYNTAXES[k]]))
        contexts.append(build_context(cls, TRANSFER_SYNTAXES[per - 1 :]))
    return contexts


class ConnectErrors(logging.Handler):
    """While in use, the reason pynetdicom logs for a failed connection (refused, TLS), which it does not raise."""

    PREFIX = "TCP Initialisation Error:"

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.last: str | None = None
        self.logger = logging.getLogger("pynetdicom.transport")

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(self.PREFIX):
            self.last = message[len(self.PREFIX) :].strip()

    def __enter__(self) -> ConnectErrors:
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)


class StorageSink:
    """Stores instances arriving by C-STORE (C-GET's sub-operations or the temporary C-MOVE node) in the tree."""

    def __init__(self, dest: Path, allowed_hosts: list[str] | None = None) -> None:
        self.dest = Path(dest)
        self.allowed_hosts = set(allowed_hosts or [])
        self.lock = threading.Lock()
        self.stored: list[StoredInstance] = []
        self.failed = 0
        self.problem: str | None = None

    def take(self) -> tuple[list[StoredInstance], int, str | None]:
        with self.lock:
            got, failed, problem = self.stored, self.failed, self.problem
            self.stored, self.failed, self.problem = [], 0, None
        return got, failed, problem

    def _fail(self, problem: str, code: int) -> int:
        with self.lock:
            self.failed += 1
            self.problem = problem
        return code

    def on_store(self, event: evt.Event) -> int:
        if self.allowed_hosts and event.assoc.requestor.address not in self.allowed_hosts:
            return self._fail(f"a C-STORE from {event.assoc.requestor.address}, not in allowed_hosts", 0xA700)
        try:
            stored = store_part10(self.dest, event.encoded_dataset(include_meta=True))
        except ReceivedInstanceError as exc:
            return self._fail(f"an instance could not be stored: {exc}", 0xC000)
        except OSError as exc:
            return self._fail(f"cannot write to {self.dest}: {exc.strerror}", 0xA700)
        with self.lock:
            self.stored.append(stored)
        return 0x0000
