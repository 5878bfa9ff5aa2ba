"""DIMSE query/retrieve for ``fedrad-site fetch``: C-FIND, then C-GET or C-MOVE (Study Root information model).

C-GET (``pacs.peer.retrieve: get``, the default) brings the instances back on the association that asked: this
node proposes a storage context in the SCP role for each SOP class the study holds (SOPClassesInStudy from the
C-FIND, else a list of common ones), one context per transfer syntax where there is room, so PACS can send each
instance as it stores it (no transcoding: the pixel data arrive byte for byte).

C-MOVE (``retrieve: move``) asks PACS to send the study to ``pacs.node.ae_title``, which PACS must know (its
administrator adds FedRad's AE title, address and port). If nothing listens on ``pacs.node``'s port, fetch runs a
temporary storage node there for the run (accepting ``allowed_callers`` only) and stores what arrives; if
``fedrad-site receive`` is already running there, it stores the instances and fetch counts them in the received tree.
"""

from __future__ import annotations

import errno
import logging
import socket
import ssl
import threading
from pathlib import Path

from pydicom import uid as uids
from pydicom.dataset import Dataset
from pynetdicom import AE, build_context, build_role, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import StoragePresentationContexts
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.status import QR_FIND_SERVICE_CLASS_STATUS, QR_GET_SERVICE_CLASS_STATUS, QR_MOVE_SERVICE_CLASS_STATUS

from client.fetch_request import StudyQuery
from client.pacs_config import NodeSettings, PeerSettings, TlsFiles
from client.pacs_fetch import FoundStudy, PacsUnavailable, Retrieved, StudyRefused, TransientPacsError, local_instances
from client.received_tree import ReceivedInstanceError, StoredInstance, check_uid, store_part10
from shared.config import ConfigError
from shared.tls_policy import harden_tls

PENDING = (0xFF00, 0xFF01)
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


def server_tls(tls: TlsFiles) -> ssl.SSLContext:
    """An ssl context for the temporary storage node (C-MOVE): our certificate; peers must show one if ``ca``."""
    try:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(tls.ca) if tls.ca else None)
        ctx.load_cert_chain(str(tls.cert), str(tls.key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"pacs.node.tls: cannot load the certificate files ({exc})") from None
    ctx.verify_mode = ssl.CERT_REQUIRED if tls.ca else ssl.CERT_NONE
    return harden_tls(ctx)


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


def _first(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
        return str(value)
    return str(value[0]) if len(value) else ""


def _values(ds: Dataset, keyword: str) -> list[str]:
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


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


class DimseBackend:
    """C-FIND + C-GET / C-MOVE to ``pacs.peer``; the associations are kept open across studies."""

    def __init__(self, peer: PeerSettings, node: NodeSettings | None, dest: Path) -> None:
        self.peer, self.node, self.dest = peer, node, Path(dest)
        self.retrieve_mode = "C-GET" if peer.retrieve == "get" else "C-MOVE"
        self.description = f"{peer.ae_title}@{peer.host}:{peer.port}" + (" (TLS)" if peer.tls else "")
        self.calling_ae = node.ae_title if node is not None else "FEDRAD"
        if peer.retrieve == "move" and node is None:
            raise ConfigError(
                "pacs.peer.retrieve: move needs pacs.node (the AE title, address and port PACS sends the studies to); "
                "or set retrieve: get"
            )
        self.tls = client_tls(peer.tls, peer.host) if peer.tls else None
        self.sink = StorageSink(self.dest)
        self._query: Association | None = None
        self._retrieve: Association | None = None
        self._retrieve_classes: frozenset[str] = frozenset()
        self._server = None
        self._external_node = False

    # --- associations -------------------------------------------------------------------------------------------
    def _associate(self, contexts: list, roles: list | None = None, handlers: list | None = None) -> Association:
        ae = AE(ae_title=self.calling_ae)
        t = self.peer.timeout_s
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = ae.connection_timeout = t
        ae.requested_contexts = contexts
        seen: dict[str, object] = {}

        def on_open(event: evt.Event) -> None:
            seen["open"] = True
            no_delay(event)

        def on_acse(event: evt.Event) -> None:
            prim = event.primitive
            if isinstance(prim, A_ASSOCIATE) and prim.result in (1, 2):
                seen["reject"] = (prim.result, prim.source_str, prim.reason_str)

        hs = [(evt.EVT_CONN_OPEN, on_open), (evt.EVT_ACSE_RECV, on_acse), *(handlers or [])]
        with ConnectErrors() as connect_errors:
            assoc = ae.associate(
                self.peer.host,
                self.peer.port,
                ae_title=self.peer.ae_title,
                ext_neg=roles,
                evt_handlers=hs,
                tls_args=self.tls,
            )
        if assoc.is_established:
            return assoc
        where = f"{self.peer.host}:{self.peer.port}"
        if "reject" in seen:
            result, source, reason = seen["reject"]  # type: ignore[misc]
            message = (
                f"PACS {self.peer.ae_title} at {where} rejected the association: {reason} ({source}); "
                f"check pacs.peer.ae_title and that PACS knows this node's AE title {self.calling_ae}"
            )
            if result == 2:  # rejected-transient: busy, try again
                raise TransientPacsError(message)
            raise PacsUnavailable(message)
        if "open" not in seen:
            why = connect_errors.last or f"no answer within {t:g} s"
            if "SSL" in why or "certificate" in why.lower():
                raise PacsUnavailable(
                    f"TLS to PACS at {where} failed: {why}; check pacs.peer.tls (ca: the CA that signed PACS's "
                    f"certificate; host: a name in that certificate)"
                )
            raise TransientPacsError(f"cannot connect to {where} ({why}: nothing listening there, or a firewall?)")
        if assoc.is_aborted and not assoc.accepted_contexts and assoc.rejected_contexts:
            raise PacsUnavailable(f"PACS at {where} accepted none of the presentation contexts asked for")
        hint = "check pacs.peer.tls" if self.tls else "does PACS expect DICOM over TLS? then set pacs.peer.tls"
        raise TransientPacsError(f"PACS at {where} closed the connection without answering the association ({hint})")

    def _query_assoc(self) -> Association:
        if self._query is None or not self._query.is_established:
            contexts = [build_context(StudyRootQueryRetrieveInformationModelFind)]
            self._query = self._associate(contexts)
        return self._query

    def _drop(self, assoc: Association | None) -> None:
        if assoc is not None and assoc.is_established:
            assoc.abort()
        if assoc is self._query:
            self._query = None
        if assoc is self._retrieve:
            self._retrieve = None

    def close(self) -> None:
        for assoc in (self._query, self._retrieve):
            if assoc is not None and assoc.is_established:
                assoc.release()
        self._query = self._retrieve = None
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    # --- C-FIND -------------------------------------------------------------------------------------------------
    def find(self, query: StudyQuery) -> list[FoundStudy]:
        ident = Dataset()
        ident.QueryRetrieveLevel = "STUDY"
        ident.StudyInstanceUID = query.study_uid or ""
        ident.AccessionNumber = query.accession or ""
        ident.StudyDate = query.date_range or ""
        ident.ModalitiesInStudy = query.modality or ""
        ident.SOPClassesInStudy = ""
        ident.NumberOfStudyRelatedInstances = ""
        assoc = self._query_assoc()
        found: list[FoundStudy] = []
        for status, answer in assoc.send_c_find(ident, StudyRootQueryRetrieveInformationModelFind):
            if not status:
                self._drop(assoc)
                raise TransientPacsError("PACS did not answer the C-FIND (timeout or aborted association)")
            code = int(status.Status)
            if code in PENDING and answer is not None:
                study = self._study(answer, query)
                if study is not None:
                    found.append(study)
            elif code != 0x0000:
                raise StudyRefused(f"0x{code:04X}", status_text(code, QR_FIND_SERVICE_CLASS_STATUS))
        return found

    @staticmethod
    def _study(answer: Dataset, query: StudyQuery) -> FoundStudy | None:
        try:
            uid = check_uid(_first(answer, "StudyInstanceUID"), "StudyInstanceUID")
        except ReceivedInstanceError:
            return None
        accession = _first(answer, "AccessionNumber").strip()
        if query.accession is not None and accession != query.accession:
            return None  # PACS matched loosely (case, padding): fetch exactly what was asked
        if query.study_uid is not None and uid != query.study_uid:
            return None
        n = _first(answer, "NumberOfStudyRelatedInstances").strip()
        return FoundStudy(
            study_uid=uid,
            accession=accession,
            study_date=_first(answer, "StudyDate"),
            modalities=_values(answer, "ModalitiesInStudy"),
            sop_classes=_values(answer, "SOPClassesInStudy"),
            instances=int(n) if n.isdigit() else None,
            asked=query.label,
        )

    # --- retrieve -----------------------------------------------------------------------------------------------
    def retrieve(self, study: FoundStudy, dest: Path) -> Retrieved:
        self.sink.dest = Path(dest)
        if self.peer.retrieve == "get":
            return self._get(study)
        return self._move(study)

    def _retrieve_assoc_get(self, classes: list[str]) -> Association:
        wanted = frozenset(classes)
        if self._retrieve is not None and self._retrieve.is_established and wanted <= self._retrieve_classes:
            return self._retrieve
        if self._retrieve is not None and self._retrieve.is_established:
            self._retrieve.release()
        contexts = [build_context(StudyRootQueryRetrieveInformationModelGet)]
        contexts += storage_contexts(classes, MAX_CONTEXTS - len(contexts))
        classes = list(dict.fromkeys(c.abstract_syntax for c in contexts[1:]))
        roles = [build_role(c, scp_role=True) for c in classes]
        self._retrieve = self._associate(contexts, roles, [(evt.EVT_C_STORE, self.sink.on_store)])
        self._retrieve_classes = frozenset(classes)
        return self._retrieve

    def _get(self, study: FoundStudy) -> Retrieved:
        classes = study.sop_classes or COMMON_STORAGE
        assoc = self._retrieve_assoc_get(classes)
        ident = Dataset()
        ident.QueryRetrieveLevel = "STUDY"
        ident.StudyInstanceUID = study.study_uid
        self.sink.take()
        final = None
        for status, _ in assoc.send_c_get(ident, StudyRootQueryRetrieveInformationModelGet):
            if not status:
                self._drop(assoc)
                raise TransientPacsError("PACS stopped answering the C-GET (timeout or aborted association)")
            if int(status.Status) not in PENDING:
                final = status
        return self._result(final, QR_GET_SERVICE_CLASS_STATUS, "C-GET")

    def _result(self, final: Dataset | None, table: dict, what: str) -> Retrieved:
        stored, failed_here, problem = self.sink.take()
        got = Retrieved(
            new=sum(s.new for s in stored),
            kept=sum(not s.new for s in stored),
            bytes=sum(s.bytes for s in stored if s.new),
        )
        code = int(final.Status) if final is not None else 0xC000
        failed = int(final.get("NumberOfFailedSubOperations", 0) or 0) if final is not None else 0
        got.failed = max(failed, failed_here)
        if code == 0x0000 or (code == 0xB000 and got.failed):
            if got.failed:
                got.problem = problem or f"PACS reports {failed} failed {what} sub-operation(s)"
            return got
        if code == 0xB000:  # warnings only
            return got
        raise StudyRefused(f"0x{code:04X}", status_text(code, table) + (f"; {problem}" if problem else ""))

    # --- C-MOVE -------------------------------------------------------------------------------------------------
    def _ensure_node(self) -> None:
        """A storage node on pacs.node's port for the C-MOVE: ours for the run, or the running `receive`."""
        if self._server is not None or self._external_node:
            return
        node = self.node
        assert node is not None
        ae = AE(ae_title=node.ae_title)
        ae.maximum_pdu_size = node.max_pdu
        ae.require_called_aet = True
        ae.require_calling_aet = list(node.allowed_callers)
        ae.network_timeout = ae.dimse_timeout = ae.acse_timeout = self.peer.timeout_s
        for cx in StoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES)
        self.sink.allowed_hosts = set(node.allowed_hosts)
        try:
            self._server = ae.start_server(
                (node.bind, node.port),
                block=False,
                ssl_context=server_tls(node.tls) if node.tls else None,
                evt_handlers=[(evt.EVT_C_STORE, self.sink.on_store), (evt.EVT_CONN_OPEN, no_delay)],
            )
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise PacsUnavailable(
                    f"cannot listen on {node.bind}:{node.port} for the C-MOVE ({exc.strerror})"
                ) from None
            self._external_node = True  # `fedrad-site receive` (or another node) has the port: it stores

    def _move(self, study: FoundStudy) -> Retrieved:
        assert self.node is not None
        self._ensure_node()
        before = local_instances(self.sink.dest, study.study_uid) if self._external_node else 0
        if self._retrieve is None or not self._retrieve.is_established:
            self._retrieve = self._associate([build_context(StudyRootQueryRetrieveInformationModelMove)])
        assoc = self._retrieve
        ident = Dataset()
        ident.QueryRetrieveLevel = "STUDY"
        ident.StudyInstanceUID = study.study_uid
        self.sink.take()
        final = None
        for status, _ in assoc.send_c_move(ident, self.node.ae_title, StudyRootQueryRetrieveInformationModelMove):
            if not status:
                self._drop(assoc)
                raise TransientPacsError("PACS stopped answering the C-MOVE (timeout or aborted association)")
            if int(status.Status) not in PENDING:
                final = status
        if final is not None and int(final.Status) == 0xA801:
            raise StudyRefused(
                "0xA801",
                f"Move destination unknown: PACS does not know the AE title {self.node.ae_title} "
                f"(its administrator adds it with this node's address and port {self.node.port})",
            )
        got = self._result(final, QR_MOVE_SERVICE_CLASS_STATUS, "C-MOVE")
        if self._external_node:  # stored by the running receive: count what is in the tree now
            completed = int(final.get("NumberOfCompletedSubOperations", 0) or 0) if final is not None else 0
            now = local_instances(self.sink.dest, study.study_uid)
            got.new = max(0, now - before)
            got.kept = max(0, completed - got.new)
            folder = self.sink.dest / study.study_uid
            got.bytes = sum(p.stat().st_size for p in folder.glob("*/*.dcm")) if got.new else 0
        return got
