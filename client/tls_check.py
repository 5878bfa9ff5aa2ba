"""Can this site reach the server, and trust it? One TCP connect and one TLS handshake, named in words.

Flower's SuperNode treats every failure alike: it logs "Connection attempt
failed, retrying in N seconds" forever, whether nothing listens on the port,
a firewall drops the packets, the name does not resolve, or the server shows
a certificate this site cannot trust. ``fedrad-site start`` therefore opens
one connection itself, with the same CA file, and says which it is and whose
move it is. A certificate problem stops ``start`` (the bundle or the server
must change); an unreachable server does not: the SuperNode keeps retrying,
which is what a hospital wants during maintenance.
"""

from __future__ import annotations

import errno
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

# Probe.kind values. CERT: the handshake worked but the certificate is not one this site trusts.
OK, REFUSED, TIMEOUT, UNREACHABLE, NAME, CERT, NOT_TLS, CA_FILE = (
    "ok",
    "refused",
    "timeout",
    "unreachable",
    "name",
    "cert",
    "not-tls",
    "ca-file",
)


@dataclass(frozen=True)
class Probe:
    """What one connection attempt to ``address`` found; ``detail`` is a sentence without the advice."""

    kind: str
    address: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.kind == OK

    def advice(self, site_yaml: Path | str) -> str:
        """The operator's sentence: what failed and what to check, naming ``site_yaml``."""
        where = f"server_address in {site_yaml}"
        return {
            OK: f"the server at {self.address} answers and its certificate is trusted",
            REFUSED: (
                f"connection refused by {self.address}: nothing listens there (the server is down or the port is "
                f"wrong); check {where} with the coordinator"
            ),
            TIMEOUT: (
                f"no answer from {self.address} ({self.detail}): a firewall drops the connection or the host is down; "
                f"ask the network team to allow this host out to {self.address}, and check {where}"
            ),
            UNREACHABLE: (
                f"no route to {self.address} ({self.detail}): this host's network or a firewall blocks it; "
                f"check the network and {where}"
            ),
            NAME: (
                f"the server name in {self.address} does not resolve ({self.detail}): check {where} "
                "and this host's DNS settings"
            ),
            CERT: f"{self.detail}; check ca_cert and {where}",
            NOT_TLS: (
                f"{self.address} answers but not with a TLS handshake ({self.detail}): the address points at another "
                f"service; check {where}"
            ),
            CA_FILE: f"{self.detail}; check ca_cert in {site_yaml}",
        }[self.kind]


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def _certificate_sentence(exc: ssl.SSLCertVerificationError, address: str, host: str, ca_cert: Path) -> str:
    why = (exc.verify_message or str(exc)).lower()
    if "expired" in why:
        return (
            f"the server's TLS certificate at {address} has expired; ask the coordinator to re-issue it "
            "(docs/runbook.md, 'Server certificate'). "
            "If the certificate is recent, check this machine's clock"
        )
    if "not yet valid" in why:
        return f"the server's TLS certificate at {address} is not valid yet: check this machine's clock (enable NTP)"
    if "hostname" in why or "ip address mismatch" in why:
        return (
            f"the server's TLS certificate does not name {host!r}; use the address from the site bundle "
            "(server_address in site.yaml) or ask the coordinator to add this name"
        )
    return (
        f"the server at {address} presented a certificate not signed by the consortium CA in {ca_cert} "
        f"({exc.verify_message}); this site may hold another consortium's bundle, or the address is wrong"
    )


def probe_server(address: str, ca_cert: Path, timeout: float = 5.0) -> Probe:
    """Resolve, connect and handshake with ``address`` as the SuperNode would (TLS pinned to ``ca_cert``)."""
    try:
        host, port = _split(address)
    except ValueError:
        return Probe(NAME, address, "not HOST:PORT")
    try:
        ctx = ssl.create_default_context(cafile=str(ca_cert))
    except (OSError, ssl.SSLError) as exc:
        return Probe(
            CA_FILE,
            address,
            f"ca_cert {ca_cert} is not a readable PEM certificate ({exc}); copy ca.crt from the bundle",
        )
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        return Probe(NAME, address, getattr(exc, "strerror", None) or str(exc))
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except ConnectionRefusedError:
        return Probe(REFUSED, address)
    except TimeoutError:
        return Probe(TIMEOUT, address, f"no TCP connection within {timeout:.0f} s")
    except OSError as exc:
        if exc.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH, errno.EADDRNOTAVAIL):
            return Probe(UNREACHABLE, address, exc.strerror or str(exc))
        return Probe(UNREACHABLE, address, str(exc))
    with sock:
        try:
            with ctx.wrap_socket(sock, server_hostname=host):
                return Probe(OK, address)
        except ssl.SSLCertVerificationError as exc:
            return Probe(CERT, address, _certificate_sentence(exc, address, host, ca_cert))
        except TimeoutError:
            return Probe(TIMEOUT, address, f"TCP connects, but no TLS answer within {timeout:.0f} s")
        except (ssl.SSLError, OSError) as exc:
            return Probe(NOT_TLS, address, getattr(exc, "reason", None) or str(exc) or type(exc).__name__)


def server_certificate_problem(address: str, ca_cert: Path, timeout: float = 5.0) -> str | None:
    """The operator's sentence for a certificate the site cannot trust, or None (trusted, or unreachable)."""
    probe = probe_server(address, ca_cert, timeout)
    return probe.detail if probe.kind in (CERT, CA_FILE) else None
