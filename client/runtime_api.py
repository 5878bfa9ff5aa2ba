"""The site's local Runtime API credentials: a SuperExec secret and a loopback TLS certificate.

Why: the SuperNode serves a Runtime API on 127.0.0.1 from which a SuperExec
claims each task (``acquire-task``) and gets the task token that reads the
server's message and pushes the site's reply. In Flower's default
``--isolation subprocess`` that API answers anyone on the host (measured: uid
``nobody`` claimed a real training task and read the server's 0.7 MB message,
and the run failed). FedRad therefore runs the SuperNode with ``--isolation
process`` and starts ``flower-superexec`` itself, both given

* ``secret``: 32 random bytes; Flower signs every ``acquire-task`` with an HMAC
  of it (flwr/supercore/auth/superexec.py; other routes need the task token
  that only ``acquire-task`` hands out), so a local user without the file is
  refused with HTTP 401;
* ``tls.crt``/``tls.key``: a self-signed certificate for 127.0.0.1 that the
  SuperExec and each ClientApp verify, so a local user who binds the port
  first (while the SuperNode starts) cannot pose as the SuperNode and feed the
  SuperExec tasks or code of their own.

All three live in ``WORK_DIR/runtime-api/`` (0700), files 0600, created once
and reused across restarts; a file that others could read is refused, because
a copy may already exist elsewhere. The SuperExec hands each ClientApp its task
token through ``tokens/`` there, not on a command line (client/superexec.py).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

FOLDER = "runtime-api"
SECRET_BYTES = 32
CERT_DAYS = 3650  # loopback only; renewed automatically when fewer than RENEW_DAYS remain
RENEW_DAYS = 30
TOKEN_DIR_ENV = "FEDRAD_TOKEN_DIR"  # tells client/superexec.py where the token files go


class RuntimeApiError(RuntimeError):
    """A Runtime API credential file is unsafe or unreadable; the message names it and what to do."""


@dataclass(frozen=True)
class RuntimeCredentials:
    """Paths Flower's ``--superexec-auth-secret-file`` and ``--ssl-*``/``--root-certificates`` flags take."""

    secret: Path
    cert: Path
    key: Path

    @property
    def tokens(self) -> Path:
        """Where the SuperExec hands each ClientApp its task token (client/superexec.py)."""
        return self.secret.parent / "tokens"


def runtime_credentials(work_dir: Path) -> RuntimeCredentials:
    """Where a site's credentials live (nothing is created)."""
    folder = Path(work_dir) / FOLDER
    return RuntimeCredentials(folder / "secret", folder / "tls.crt", folder / "tls.key")


def ensure_runtime_credentials(work_dir: Path) -> RuntimeCredentials:
    """The site's credentials, created on first use; raises :class:`RuntimeApiError` if a file is unsafe."""
    creds = runtime_credentials(work_dir)
    folder = creds.secret.parent
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    check_private(folder, kind="folder")
    if not creds.secret.exists():
        _create_once(creds.secret, secrets.token_bytes(SECRET_BYTES))
    check_private(creds.secret, min_size=SECRET_BYTES)
    if _needs_certificate(creds):
        key = ec.generate_private_key(ec.SECP256R1())
        _replace_private(
            creds.key,
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )
        _replace_private(creds.cert, _self_signed(key).public_bytes(serialization.Encoding.PEM))
    check_private(creds.key)
    return creds


def check_private(path: Path, *, kind: str = "file", min_size: int = 1) -> None:
    """Refuse ``path`` unless it is this account's own regular file (or folder) that no one else can read."""
    path = Path(path)
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise RuntimeApiError(f"{path}: cannot read the site's Runtime API {kind} ({exc.strerror}).") from None
    if kind == "folder" and not stat.S_ISDIR(st.st_mode) or kind == "file" and not stat.S_ISREG(st.st_mode):
        raise RuntimeApiError(f"{path} is not a plain {kind} (a link?): delete it; FedRad recreates it at start.")
    if st.st_uid != os.getuid():
        raise RuntimeApiError(
            f"{path} belongs to uid {st.st_uid}, not to the account running FedRad (uid {os.getuid()}): run the site "
            f"as that account, or delete {path.parent if kind == 'file' else path} and start again."
        )
    if st.st_mode & 0o077:
        raise RuntimeApiError(
            f"{path} has mode {stat.S_IMODE(st.st_mode):04o}, so other local users may have read it and could use "
            f"this site's Runtime API: delete {path} (FedRad makes a new one, mode 0600/0700, at the next start)."
        )
    if kind == "file" and st.st_size < min_size:
        raise RuntimeApiError(f"{path} is shorter than {min_size} bytes: delete it; FedRad makes a new one at start.")


def _create_once(path: Path, data: bytes) -> None:
    """Create ``path`` (0600) with ``data`` atomically, unless another start created it first (that one wins)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    _write_new(tmp, data)
    try:
        os.link(tmp, path)  # all-or-nothing and never replaces an existing secret
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    _fsync_dir(path.parent)


def _replace_private(path: Path, data: bytes) -> None:
    """Write ``path`` (0600) atomically, replacing any old version."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    _write_new(tmp, data)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform can open a directory
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _needs_certificate(creds: RuntimeCredentials) -> bool:
    """True when the key or certificate is missing, unreadable, or expires within RENEW_DAYS."""
    if not (creds.cert.is_file() and creds.key.is_file()):
        return True
    try:
        cert = x509.load_pem_x509_certificate(creds.cert.read_bytes())
    except ValueError:
        return True
    return cert.not_valid_after_utc - dt.datetime.now(dt.UTC) < dt.timedelta(days=RENEW_DAYS)


def _self_signed(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    """A certificate for 127.0.0.1 only (the Runtime API never listens anywhere else)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "FedRad site Runtime API (127.0.0.1)")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=CERT_DAYS))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, False, False, False), critical=True
        )  # digital_signature (TLS) and key_cert_sign (it is its own trust anchor)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
