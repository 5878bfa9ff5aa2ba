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
import threading
from pathlib import Path

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

from client.dicom_net import HandshakeInThreadServer, server_ssl_context
from client.dimse_support import (
    COMMON_STORAGE,
    MAX_CONTEXTS,
    TRANSFER_SYNTAXES,
    ConnectErrors,
    StorageSink,
    client_tls,
    no_delay,
    status_text,
    storage_contexts,
)
from client.fetch_request import StudyQuery
from client.pacs_config import NodeSettings, PeerSettings
from client.pacs_fetch import FoundStudy, PacsUnavailable, Retrieved, StudyRefused, TransientPacsError, local_instances
from client.received_tree import ReceivedInstanceError, check_uid
from shared.config import ConfigError

PENDING = (0xFF00, 0xFF01)


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
        try:  # the same server as `receive`: each peer's TLS handshake in its own thread, with a time limit
            server = ae.make_server(
                (node.bind, node.port),
                ssl_context=server_ssl_context(node.tls) if node.tls else None,
                evt_handlers=[(evt.EVT_C_STORE, self.sink.on_store), (evt.EVT_CONN_OPEN, no_delay)],
                server_class=HandshakeInThreadServer,
            )
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise PacsUnavailable(
                    f"cannot listen on {node.bind}:{node.port} for the C-MOVE ({exc.strerror})"
                ) from None
            self._external_node = True  # `fedrad-site receive` (or another node) has the port: it stores
            return
        self._server = server
        threading.Thread(target=server.serve_forever, name="fedrad-fetch-node", daemon=True).start()

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
