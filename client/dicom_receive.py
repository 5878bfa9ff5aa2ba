"""``fedrad-site receive``: the site's DICOM storage node (C-STORE SCP) that PACS routes studies to.

:class:`ReceiveNode` (``start()`` / ``stop()``, also used in-process by tests) runs a pynetdicom storage SCP for the
SOP classes FedRad reads (:mod:`client.dicom_net`), with Verification for C-ECHO.

* **Who may send**: an association whose calling AE title is not in ``pacs.node.allowed_callers``, whose peer
  address is not in ``allowed_hosts`` (when set), or that calls another AE title than ours is refused with an
  A-ASSOCIATE-RJ and logged. With ``tls``, the node speaks only TLS; with ``tls.ca`` the peer must also show a
  certificate from that CA.
* **What is kept** (:mod:`client.receive_store`): each object gets the site scan's verdict
  (:func:`shared.imaging.object_check.check_object`: the same checks and reason codes as ``fedrad-site check``;
  SEG and RTSTRUCT are labels and accepted). A refused object is not stored and is answered with failure status
  0xC000 ("cannot understand"), its reason code in the Error Comment; a Study/Series/SOP Instance UID that is no
  valid UID with 0xA900 (a UID is validated before it names a path, so no UID can leave the receive folder).
  Accepted objects are written as sent to ``RECEIVE_DIR/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``
  atomically (temporary file in the same folder, fsync, rename). An SOPInstanceUID already stored is kept once
  (success, counted as a duplicate). A write that fails (disk full, folder not writable) answers 0xA700 (out of
  resources); the sender may retry later; nothing half-written stays.
* **Log**: one line per association in ``WORK_DIR/receive/receive.jsonl`` (:mod:`client.receive_log`), at the site.

The next ``fedrad-site check`` sees the new files (they are under ``data`` by default) and decodes only them: the
ingest cache knows every older file by path, size and modification time (:mod:`shared.imaging.cache`).
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pynetdicom import AE, evt

from client.dicom_net import (
    STORAGE_SOP_CLASSES,
    VERIFICATION,
    HandshakeInThreadServer,
    server_ssl_context,
    transfer_syntaxes,
)
from client.pacs_config import NodeSettings
from client.receive_log import AssociationStats, ReceiveLog, utc_now
from client.receive_store import DUPLICATE, SUCCESS, ReceiveStore
from shared.config import ConfigError

REFUSE_CALLING, REFUSE_CALLED, REFUSE_NO_REASON = 0x03, 0x07, 0x01  # A-ASSOCIATE-RJ diagnostics (source: user)


class ReceiveError(ConfigError):
    """The node cannot start (port in use, address not on this machine, receive folder not writable)."""


@dataclass
class Totals:
    """What the node received since it started."""

    associations: int = 0
    refused: int = 0
    stored: int = 0
    duplicate: int = 0
    bytes: int = 0
    rejected: Counter = field(default_factory=Counter)

    def to_json(self) -> dict:
        return {
            "associations": self.associations,
            "refused": self.refused,
            "stored": self.stored,
            "duplicate": self.duplicate,
            "rejected": dict(self.rejected),
            "bytes": self.bytes,
        }


class ReceiveNode:
    """The storage node: ``start()`` binds and serves in background threads, ``stop()`` ends it and returns totals.

    ``on_entry`` receives every log entry as it is written (the CLI prints them)."""

    def __init__(
        self,
        node: NodeSettings,
        receive_dir: Path,
        log_path: Path,
        on_entry: Callable[[dict], None] | None = None,
    ) -> None:
        self.node = node
        self.receive_dir = Path(receive_dir)
        self.log = ReceiveLog(log_path)
        self.on_entry = on_entry
        self.totals = Totals()
        self.store = ReceiveStore(self.receive_dir, node.check_pixels)
        self._lock = threading.Lock()
        self._active: dict[int, AssociationStats] = {}
        self._server: HandshakeInThreadServer | None = None
        self._thread: threading.Thread | None = None
        self.port = node.port

    # -- life cycle -------------------------------------------------------------------------------------
    def start(self) -> None:
        """Index what is already stored, bind, and serve in the background; raises :class:`ReceiveError`."""
        try:
            self.receive_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ReceiveError(f"receive folder {self.receive_dir} cannot be created ({exc.strerror})") from None
        if not os.access(self.receive_dir, os.W_OK | os.X_OK):
            raise ReceiveError(f"receive folder {self.receive_dir} is not writable by this account")
        already = self.store.load_index()
        ssl_context = server_ssl_context(self.node.tls) if self.node.tls is not None else None
        ae = AE(ae_title=self.node.ae_title)
        ae.maximum_pdu_size = self.node.max_pdu
        ae.require_calling_aet = list(self.node.allowed_callers)  # pynetdicom's own check, behind ours
        ae.require_called_aet = True
        syntaxes = transfer_syntaxes()
        for abstract in STORAGE_SOP_CLASSES.values():
            ae.add_supported_context(abstract, syntaxes)
        ae.add_supported_context(VERIFICATION)
        handlers = [
            (evt.EVT_REQUESTED, self._on_request),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_CONN_CLOSE, self._on_close),
        ]
        try:
            server = ae.make_server(
                (self.node.bind, self.node.port),
                ssl_context=ssl_context,
                evt_handlers=handlers,
                server_class=HandshakeInThreadServer,
            )
        except OSError as exc:
            raise ReceiveError(_bind_error(self.node, exc)) from None
        server.on_handshake_failure = self._on_handshake_failure
        self._server = server
        self.port = int(server.server_address[1])
        self._thread = threading.Thread(target=server.serve_forever, name="fedrad-receive", daemon=True)
        self._thread.start()
        tls = None if self.node.tls is None else "mutual" if self.node.tls.ca is not None else "server"
        self._emit(
            {
                "event": "start",
                "time": utc_now(),
                "ae_title": self.node.ae_title,
                "bind": self.node.bind,
                "port": self.port,
                "tls": tls,
                "allowed_callers": list(self.node.allowed_callers),
                "allowed_hosts": list(self.node.allowed_hosts),
                "receive_dir": str(self.receive_dir),
                "already_stored": already,
            }
        )

    def stop(self, grace_s: float = 10.0) -> dict:
        """Stop accepting, give running associations ``grace_s`` to finish, abort the rest; the node's totals."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            deadline = time.monotonic() + grace_s
            while server.active_associations and time.monotonic() < deadline:
                time.sleep(0.05)
            for assoc in server.active_associations:
                assoc.abort()
            if self._thread is not None:
                self._thread.join(timeout=5)
            with self._lock:
                left = list(self._active)
            for key in left:  # an association whose close event never came
                self._finish(key)
            self._emit({"event": "stop", "time": utc_now(), **self.totals.to_json()})
        return self.totals.to_json()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until no association is open (tests and benchmarks: every log line is written)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                busy = bool(self._active)
            if not busy and (self._server is None or not self._server.active_associations):
                return True
            time.sleep(0.02)
        return False

    def __enter__(self) -> ReceiveNode:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- associations -----------------------------------------------------------------------------------
    def _on_request(self, event: evt.Event) -> None:
        assoc = event.assoc
        rq = assoc.requestor
        calling = str(rq.primitive.calling_ae_title).strip()
        called = str(rq.primitive.called_ae_title).strip()
        peer = str(rq.address_info.address)
        stats = AssociationStats(calling, called, peer)
        sock = getattr(assoc.dul.socket, "socket", None)
        if hasattr(sock, "getpeercert"):
            stats.tls = True
            cert = sock.getpeercert() or {}
            stats.peer_certificate = ", ".join("=".join(pair) for rdn in cert.get("subject", ()) for pair in rdn)
        refusal = self._refusal(calling, called, peer)
        if refusal is not None:
            diagnostic, why = refusal
            assoc.acse.send_reject(0x01, 0x01, diagnostic)  # rejected-permanent, by the service user
            assoc.kill()  # as pynetdicom's own refusal: wait until the A-ASSOCIATE-RJ is out and the peer hung up
            entry = {**stats.to_json(), "accepted": False, "refused": why}
            for key in ("stored", "stored_by_kind", "duplicate", "rejected", "bytes", "seconds"):
                entry.pop(key, None)
            with self._lock:
                self.totals.refused += 1
            self._emit(entry)
            return
        with self._lock:
            self._active[id(assoc)] = stats
            self.totals.associations += 1

    def _refusal(self, calling: str, called: str, peer: str) -> tuple[int, str] | None:
        if not self.node.host_allowed(peer):
            return REFUSE_NO_REASON, f"peer address {peer} is not in pacs.node.allowed_hosts"
        if calling not in self.node.allowed_callers:
            return REFUSE_CALLING, f"calling AE title {calling!r} is not in pacs.node.allowed_callers"
        if called != self.node.ae_title:
            return REFUSE_CALLED, f"called AE title {called!r} is not this node's ({self.node.ae_title!r})"
        return None

    def _on_close(self, event: evt.Event) -> None:
        self._finish(id(event.assoc))

    def _finish(self, key: int) -> None:
        with self._lock:
            stats = self._active.pop(key, None)
        if stats is not None:
            self._emit(stats.to_json())

    def _on_handshake_failure(self, address: tuple[str, int], error: str) -> None:
        with self._lock:
            self.totals.refused += 1
        self._emit(
            {
                "event": "handshake-failed",
                "time": utc_now(),
                "peer": str(address[0]),
                "accepted": False,
                "refused": error,
            }
        )

    def _emit(self, entry: dict) -> None:
        self.log.write(entry)
        if self.on_entry is not None:
            self.on_entry(entry)

    # -- objects ----------------------------------------------------------------------------------------
    def _on_store(self, event: evt.Event):
        with self._lock:
            stats = self._active.get(id(event.assoc))
        if stats is None:  # cannot happen: a refused association sends nothing
            stats = AssociationStats("?", "?", "?")
        meta = event.file_meta
        meta.SourceApplicationEntityTitle = stats.calling_ae
        body = event.encoded_dataset(include_meta=False)
        outcome = self.store.store(meta, body)
        stats.bytes += len(body)
        with self._lock:
            self.totals.bytes += len(body)
            if outcome.stored:
                self.totals.stored += 1
            elif outcome.what == DUPLICATE:
                self.totals.duplicate += 1
            else:
                self.totals.rejected[outcome.what] += 1
        if outcome.stored:
            stats.stored += 1
            stats.stored_by_kind[outcome.what] += 1
        elif outcome.what == DUPLICATE:
            stats.duplicate += 1
        else:
            stats.reject(outcome.what, outcome.detail, outcome.sop_instance_uid)
            return _failure(outcome.status, f"{outcome.what}: {outcome.detail}")
        return SUCCESS


def _failure(status: int, comment: str):
    from pydicom.dataset import Dataset

    rsp = Dataset()
    rsp.Status = status
    rsp.ErrorComment = comment[:64]
    return rsp


def _bind_error(node: NodeSettings, exc: OSError) -> str:
    import errno

    where = f"{node.bind}:{node.port}"
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {where}: the port is in use (another DICOM node or receive is running?)"
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied (ports below 1024 need privileges; use e.g. 11112)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: {node.bind} is not an address of this machine (pacs.node.bind)"
    return f"cannot listen on {where}: {exc.strerror or exc}"
