"""DICOM networking pieces FedRad's storage node uses: what it accepts, TLS, and a listener that cannot be stalled.

* :data:`STORAGE_SOP_CLASSES`: the storage SOP classes FedRad reads (projection radiographs, mammography, CT/MR,
  secondary capture, and SEG/RTSTRUCT labels); :func:`transfer_syntaxes`: the encodings FedRad can decode (the
  uncompressed ones, deflate, and each compressed syntax whose pydicom decoder is installed), so a PACS that can
  transcode sends what the site can read.
* :func:`server_ssl_context` / :func:`client_ssl_context`: DICOM TLS (PS3.15 Annex B) under FedRad's TLS policy
  (:func:`shared.tls_policy.harden_tls`); with a CA, the node requires the peer's certificate.
* :class:`HandshakeInThreadServer`: pynetdicom's threaded server wraps each accepted socket in TLS on its one
  accepting thread, so a peer that connects and never speaks stalls every other peer; here the handshake runs in
  the connection's own thread, with a deadline, and a failed handshake is reported, not silently dropped.
"""

from __future__ import annotations

import socket
import socketserver
import ssl
from collections.abc import Callable
from pathlib import Path

from pydicom import uid
from pydicom.pixels import get_decoder
from pynetdicom import sop_class
from pynetdicom.transport import ThreadedAssociationServer

from client.pacs_config import TlsFiles
from shared.config import ConfigError
from shared.tls_policy import harden_tls

STORAGE_SOP_CLASSES: dict[str, str] = {
    "CR": sop_class.ComputedRadiographyImageStorage,
    "DX for presentation": sop_class.DigitalXRayImageStorageForPresentation,
    "DX for processing": sop_class.DigitalXRayImageStorageForProcessing,
    "MG for presentation": sop_class.DigitalMammographyXRayImageStorageForPresentation,
    "MG for processing": sop_class.DigitalMammographyXRayImageStorageForProcessing,
    "CT": sop_class.CTImageStorage,
    "Enhanced CT": sop_class.EnhancedCTImageStorage,
    "Legacy Converted Enhanced CT": sop_class.LegacyConvertedEnhancedCTImageStorage,
    "MR": sop_class.MRImageStorage,
    "Enhanced MR": sop_class.EnhancedMRImageStorage,
    "Legacy Converted Enhanced MR": sop_class.LegacyConvertedEnhancedMRImageStorage,
    "Secondary Capture": sop_class.SecondaryCaptureImageStorage,
    "Segmentation": sop_class.SegmentationStorage,
    "RT Structure Set": sop_class.RTStructureSetStorage,
}
VERIFICATION = sop_class.Verification

UNCOMPRESSED = (uid.ExplicitVRLittleEndian, uid.ImplicitVRLittleEndian, uid.DeflatedExplicitVRLittleEndian)
COMPRESSED = (
    uid.JPEG2000Lossless,
    uid.JPEG2000,
    uid.HTJ2KLossless,
    uid.HTJ2KLosslessRPCL,
    uid.HTJ2K,
    uid.JPEGLSLossless,
    uid.JPEGLSNearLossless,
    uid.JPEGLossless,
    uid.JPEGLosslessSV1,
    uid.JPEGBaseline8Bit,
    uid.JPEGExtended12Bit,
    uid.RLELossless,
)
HANDSHAKE_TIMEOUT_S = 15.0


def _decodable(syntax: str) -> bool:
    try:
        return get_decoder(syntax).is_available
    except NotImplementedError:
        return False


def transfer_syntaxes() -> list[str]:
    """The transfer syntaxes the node accepts: uncompressed first, then every compressed one FedRad can decode."""
    return [*UNCOMPRESSED, *(s for s in COMPRESSED if _decodable(s))]


def _tls_file(path: Path | None, what: str) -> str:
    if path is None or not Path(path).is_file():
        raise ConfigError(f"pacs.node.tls.{what}: {path} is not a file")
    return str(path)


def server_ssl_context(tls: TlsFiles) -> ssl.SSLContext:
    """The node's TLS context: its certificate and key; with ``tls.ca``, peers must show a certificate from it."""
    context = harden_tls(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
    try:
        context.load_cert_chain(_tls_file(tls.cert, "cert"), _tls_file(tls.key, "key"))
        if tls.ca is not None:
            context.load_verify_locations(_tls_file(tls.ca, "ca"))
            context.verify_mode = ssl.CERT_REQUIRED
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"pacs.node.tls: cannot load the certificate, key or CA ({exc})") from None
    return context


def client_ssl_context(tls: TlsFiles, server_name_check: bool = False) -> ssl.SSLContext:
    """A requestor's TLS context (a PACS peer, tests): trusts ``tls.ca``, shows ``tls.cert`` when given.

    DICOM peers are addressed by IP more often than by a name in their certificate, so the host name is not
    checked unless asked; the certificate must still chain to ``tls.ca``."""
    context = harden_tls(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
    context.check_hostname = server_name_check
    if tls.ca is not None:
        context.load_verify_locations(str(tls.ca))
    if tls.cert is not None and tls.key is not None:
        context.load_cert_chain(str(tls.cert), str(tls.key))
    return context


class HandshakeInThreadServer(ThreadedAssociationServer):
    """pynetdicom's threaded server, with the TLS handshake in each connection's thread (module docstring).

    ``on_handshake_failure(peer_address, error)`` is called for a peer whose handshake failed or timed out."""

    on_handshake_failure: Callable[[tuple[str, int], str], None] | None = None

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        assert self.socket is not None
        return self.socket.accept()  # plain: the handshake happens in process_request_thread

    def process_request_thread(self, request, client_address) -> None:  # type: ignore[override]
        if self.ssl_context is not None:
            try:
                request.settimeout(HANDSHAKE_TIMEOUT_S)
                request = self.ssl_context.wrap_socket(request, server_side=True)
                request.settimeout(None)
            except (OSError, ValueError) as exc:
                if self.on_handshake_failure is not None:
                    self.on_handshake_failure(client_address, _handshake_error(exc))
                try:
                    request.close()
                except OSError:
                    pass
                return
        super().process_request_thread(request, client_address)

    def shutdown(self) -> None:
        """Stop accepting and close the listening socket (without touching the AE's list of servers)."""
        socketserver.BaseServer.shutdown(self)
        self.server_close()


def _handshake_error(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"TLS handshake timed out after {HANDSHAKE_TIMEOUT_S:g} s"
    reason = getattr(exc, "reason", None) or str(exc)
    return f"TLS handshake failed ({str(reason)[:160]})"
