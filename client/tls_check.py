"""Before a site connects: is the server's certificate one this site can trust?

Flower's SuperNode treats a TLS failure like a network outage: it logs
"Connection attempt failed, retrying" forever, so a site given the wrong
bundle, or facing an expired server certificate, would wait without saying
why. ``fedrad-site start`` therefore opens one TLS connection itself, with the
same CA file, and turns a certificate failure into a sentence that says whose
move it is. A server that is simply unreachable is not an error here: the
SuperNode keeps retrying, which is what a hospital wants during maintenance.
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path


def server_certificate_problem(address: str, ca_cert: Path, timeout: float = 5.0) -> str | None:
    """The operator's sentence for a certificate the site cannot trust, or None (trusted, or unreachable)."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    try:
        ctx = ssl.create_default_context(cafile=str(ca_cert))
    except (OSError, ssl.SSLError) as exc:
        return f"ca_cert {ca_cert} is not a readable PEM certificate ({exc}); copy ca.crt from the site bundle"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            with ctx.wrap_socket(sock, server_hostname=host):
                return None
    except ssl.SSLCertVerificationError as exc:
        why = (exc.verify_message or str(exc)).lower()
        if "expired" in why:
            return (
                f"the server's TLS certificate at {address} has expired; ask the coordinator to re-issue it "
                "(docs/runbook.md, 'Server certificate'). "
                "If the certificate is recent, check this machine's clock"
            )
        if "not yet valid" in why:
            return (
                f"the server's TLS certificate at {address} is not valid yet: check this machine's clock (enable NTP)"
            )
        if "hostname" in why or "ip address mismatch" in why:
            return (
                f"the server's TLS certificate does not name {host!r}; use the address from the site bundle "
                "(server_address in site.yaml) or ask the coordinator to add this name"
            )
        return (
            f"the server at {address} presented a certificate not signed by the consortium CA in {ca_cert} "
            f"({exc.verify_message}); this site may hold another consortium's bundle, or the address is wrong"
        )
    except (OSError, ssl.SSLError, ValueError):
        return None  # unreachable or not TLS yet: the SuperNode retries; the server may be in maintenance
