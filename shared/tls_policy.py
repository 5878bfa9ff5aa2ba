"""FedRad's TLS policy for the HTTP servers it runs itself (the fleet proxy, the dashboards).

TLS 1.2 only with forward-secret AEAD suites (no CBC), and TLS 1.3; no compression, no renegotiation.
"""

from __future__ import annotations

import ssl

TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"  # forward secrecy, AEAD only; TLS 1.3 suites are all AEAD


def harden_tls(context: ssl.SSLContext) -> ssl.SSLContext:
    """TLS 1.2 with ECDHE + AEAD suites only, or TLS 1.3; no compression, no renegotiation."""
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    return context
