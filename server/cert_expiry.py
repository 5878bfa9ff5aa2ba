"""Certificate and CA-key health for ``fedrad-server status``: expiry dates, and whether the CA key is protected.

Why in status: an expired server certificate stops every hospital at once with a TLS error on their side;
an expired CA certificate needs a new ``ca.crt`` at every site. Both are cheap to renew weeks ahead and
costly the day after, so status names the file, the date and the command a month before.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from cryptography import x509

from server import pki as _pki
from server.pki import CA_CERT, CA_KEY, SERVER_CERT, key_is_encrypted

WARN_DAYS = 30


def _renew_command(name: str, consortium_dir: Path) -> str:
    if name == SERVER_CERT:
        return f"fedrad-server renew-server-cert {consortium_dir}"
    return f"fedrad-server renew-ca-cert {consortium_dir} (then send each site its bundle's new ca.crt)"


def certificate_health(
    pki: Path, consortium_dir: Path, *, now: dt.datetime | None = None, warn_days: int = WARN_DAYS
) -> list[dict[str, Any]]:
    """One row per certificate: file, expiry date, days left, level (ok/warning/error) and, unless ok, a message."""
    now = now or _pki._now()  # through the module: tests move the clock there
    rows: list[dict[str, Any]] = []
    for name in (SERVER_CERT, CA_CERT):
        path = Path(pki) / name
        try:
            not_after = x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc
        except (OSError, ValueError) as exc:
            rows.append(
                {"file": str(path), "expires": None, "days_left": None, "level": "error", "message": f"{path}: {exc}"}
            )
            continue
        days_left = (not_after - now).days
        row: dict[str, Any] = {
            "file": str(path),
            "expires": not_after.strftime("%Y-%m-%d"),
            "days_left": days_left,
            "level": "ok",
            "message": None,
        }
        renew = _renew_command(name, consortium_dir)
        if not_after <= now:
            row["level"] = "error"
            row["message"] = f"{path} EXPIRED on {row['expires']}: sites cannot connect. Renew: {renew}"
        elif not_after - now <= dt.timedelta(days=warn_days):
            row["level"] = "warning"
            row["message"] = f"{path} expires on {row['expires']} (in {days_left} days). Renew: {renew}"
        rows.append(row)
    return rows


def ca_key_health(pki: Path, consortium_dir: Path) -> dict[str, Any]:
    """Where the CA key is and whether it is encrypted; a warning when it sits on this host unencrypted."""
    path = Path(pki) / CA_KEY
    present = path.is_file()
    encrypted = key_is_encrypted(path) if present else None
    message = (
        f"the CA key at {path} is not encrypted: anyone who copies it can impersonate this server to every site. "
        f"Encrypt it with `fedrad-server protect-ca-key {consortium_dir} --ca-passphrase-prompt` "
        "and keep it offline (docs/coordinator.md)."
        if present and not encrypted
        else None
    )
    return {
        "file": str(path),
        "present": present,
        "encrypted": encrypted,
        "level": "warning" if message else "ok",
        "message": message,
    }
