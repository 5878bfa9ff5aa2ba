"""Consortium PKI: a private CA and the server's TLS certificate.

Why a private CA: hospitals pin exactly one root (shipped in their site bundle)
instead of trusting the public web PKI, and the coordinator can re-issue the
server certificate (new host name, expiry) without touching any site.

The server certificate carries SANs for the public host name *and* for
``127.0.0.1``/``localhost``: the same certificate serves the hospital-facing
fleet proxy and the loopback SuperLink that the proxy, the SuperExec and the
coordinator's ``flwr`` CLI talk to.

The CA key can be encrypted with a passphrase (PKCS#8, cryptography's
``BestAvailableEncryption``): whoever copies the consortium folder then still
cannot mint a server certificate the hospitals would trust. Every file here is
written atomically, and the server key/certificate pair is staged so that a
crash mid-renewal is rolled forward or back on the next read, never left as a
key that does not match its certificate.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.atomic import fsync_dir, remove_stale_temps, write_atomic
from shared.config import ConfigError

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
LOOPBACK_NAMES: tuple[str, ...] = ("127.0.0.1", "localhost")
STAGED = ".new"  # server.crt.new / server.key.new: a renewal written but not yet swapped in
PASSPHRASE_HINT = "pass --ca-passphrase-file FILE (or --ca-passphrase-prompt, or set FEDRAD_CA_PASSPHRASE_FILE)"


class PkiError(ConfigError):
    """A certificate problem the user must fix; the message names the file (exit code 2 in the CLIs)."""


@dataclass(frozen=True)
class ServerTls:
    """Paths of the files Flower's ``--ssl-*`` flags and the fleet proxy need."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def _write_private(path: Path, data: bytes) -> None:
    """Write a private key readable by the owner only (created 0600, never world-readable), atomically."""
    write_atomic(path, data, mode=0o600)


def _pem_key(key: ec.EllipticCurvePrivateKey, passphrase: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _pem_is_encrypted(pem: bytes) -> bool:
    head = pem[:200]
    return b"ENCRYPTED PRIVATE KEY" in head or b"Proc-Type: 4,ENCRYPTED" in head


def key_is_encrypted(path: Path) -> bool:
    """Whether a PEM private key file is passphrase-protected (PKCS#8 or legacy OpenSSL headers)."""
    return _pem_is_encrypted(Path(path).read_bytes())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _san_entry(name: str) -> x509.GeneralName:
    """An IP SAN for IP literals, a DNS SAN otherwise (TLS clients check the matching kind)."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        return x509.DNSName(name)


def host_of(address: str) -> str:
    """Host part of ``HOST:PORT`` / ``[v6]:PORT`` / ``HOST``."""
    if address.startswith("["):
        return address[1 : address.index("]")]
    if address.count(":") == 1:
        return address.rsplit(":", 1)[0]
    return address


def create_ca(directory: Path, name: str, *, days: int = 3650, passphrase: bytes | None = None) -> tuple[Path, Path]:
    """Create ``ca.crt``/``ca.key`` in ``directory`` (the key encrypted with ``passphrase`` when given);
    refuse to overwrite an existing CA.

    Overwriting would silently orphan every site bundle already handed out.
    """
    directory = Path(directory)
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    for path in (cert_path, key_path):
        if path.exists():
            raise PkiError(f"{path} already exists; a consortium has exactly one CA (delete it to start over).")
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{name} FedRad CA"),
        ]
    )
    cert = _sign_ca_cert(subject, key, days)
    directory.mkdir(parents=True, exist_ok=True)
    _write_private(key_path, _pem_key(key, passphrase))  # key first: a ca.crt never exists without its key
    write_atomic(cert_path, _pem_cert(cert))
    return cert_path, key_path


def _sign_ca_cert(subject: x509.Name, key: ec.EllipticCurvePrivateKey, days: int) -> x509.Certificate:
    """A self-signed CA certificate; the same subject and key on renewal keep every issued certificate valid."""
    now = _now()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )


def _load_ca(
    directory: Path, *, passphrase: bytes | None = None, key_path: Path | None = None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA certificate and private key; ``key_path`` where the key is kept outside ``directory`` (offline)."""
    cert_path = Path(directory) / CA_CERT
    key_path = Path(key_path) if key_path is not None else Path(directory) / CA_KEY
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except FileNotFoundError as exc:
        raise PkiError(f"{cert_path} not found: create the CA first (fedrad-server init).") from exc
    except ValueError as exc:
        raise PkiError(f"{cert_path} is not a valid PEM certificate: {exc}") from exc
    try:
        data = key_path.read_bytes()
    except FileNotFoundError:
        raise PkiError(
            f"the CA key {key_path} not found: bring it back from its offline copy, or give its path with --ca-key."
        ) from None
    encrypted = _pem_is_encrypted(data)
    if encrypted and not passphrase:
        raise PkiError(f"the CA key at {key_path} is encrypted; {PASSPHRASE_HINT}.")
    try:
        key = serialization.load_pem_private_key(data, password=passphrase if encrypted else None)
    except ValueError as exc:
        if encrypted:
            raise PkiError(f"wrong passphrase for the CA key at {key_path}.") from None
        raise PkiError(f"{key_path} is not a valid PEM private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{key_path} is not an EC private key.")
    if key.public_key() != cert.public_key():
        raise PkiError(f"the CA key at {key_path} does not belong to {cert_path}; use this consortium's ca.key.")
    return cert, key


def issue_server_cert(
    directory: Path,
    hosts: list[str] | tuple[str, ...],
    *,
    days: int = 825,
    passphrase: bytes | None = None,
    ca_key: Path | None = None,
) -> ServerTls:
    """Issue (or re-issue) ``server.crt``/``server.key`` signed by the CA in ``directory``.

    ``hosts`` are the public names/IPs hospitals dial; loopback names are always
    added. 825 days is the longest lifetime common TLS clients accept.
    ``passphrase`` unlocks an encrypted CA key; ``ca_key`` is its path when it
    is not ``directory/ca.key``.
    """
    directory = Path(directory)
    recover_server_pair(directory)
    ca_cert, ca_key_obj = _load_ca(directory, passphrase=passphrase, key_path=ca_key)
    names: list[str] = []
    for host in [*hosts, *LOOPBACK_NAMES]:
        host = host_of(host.strip())
        if host and host not in names:
            names.append(host)
    key = ec.generate_private_key(ec.SECP384R1())
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName([_san_entry(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key_obj.public_key()), critical=False)
        .sign(ca_key_obj, hashes.SHA384())
    )
    _swap_server_pair(directory, _pem_key(key), _pem_cert(cert))
    return ServerTls(directory / CA_CERT, directory / SERVER_CERT, directory / SERVER_KEY)


def _staged(path: Path) -> Path:
    return path.with_name(path.name + STAGED)


def _swap_server_pair(directory: Path, key_pem: bytes, cert_pem: bytes) -> None:
    """Replace server.key and server.crt as a pair.

    Both are first written whole beside the live ones (``*.new``), then the key
    and then the certificate are renamed in. A crash before the key's rename
    leaves the old pair; a crash between the renames leaves ``server.crt.new``
    matching ``server.key``, which :func:`recover_server_pair` renames in.
    """
    key_path, cert_path = directory / SERVER_KEY, directory / SERVER_CERT
    staged_key, staged_cert = _staged(key_path), _staged(cert_path)
    try:
        write_atomic(staged_cert, cert_pem)
        write_atomic(staged_key, key_pem, mode=0o600)
    except BaseException:
        staged_key.unlink(missing_ok=True)
        staged_cert.unlink(missing_ok=True)
        raise
    os.replace(staged_key, key_path)
    os.replace(staged_cert, cert_path)
    fsync_dir(directory)


def _cert_matches_key(cert_path: Path, key_path: Path) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return False
    return cert.public_key() == key.public_key()


def recover_server_pair(directory: Path) -> None:
    """Finish or undo a server certificate renewal that a crash interrupted (see :func:`_swap_server_pair`)."""
    directory = Path(directory)
    key_path, cert_path = directory / SERVER_KEY, directory / SERVER_CERT
    staged_key, staged_cert = _staged(key_path), _staged(cert_path)
    if staged_cert.exists() and not staged_key.exists() and _cert_matches_key(staged_cert, key_path):
        os.replace(staged_cert, cert_path)  # the new key is in: roll the certificate forward
        fsync_dir(directory)
    for path in (staged_key, staged_cert):  # anything still staged never went live: roll back
        path.unlink(missing_ok=True)
        remove_stale_temps(path)


def server_tls(directory: Path) -> ServerTls:
    """The TLS file paths in ``directory``, checked: present, key matching certificate, certificate not expired.

    Checked here because Flower and the fleet proxy would otherwise start and
    every site would fail its TLS handshake with a message about neither file.
    """
    directory = Path(directory)
    recover_server_pair(directory)
    tls = ServerTls(directory / CA_CERT, directory / SERVER_CERT, directory / SERVER_KEY)
    for path in (tls.ca_cert, tls.server_cert, tls.server_key):
        if not path.is_file():
            raise PkiError(f"{path} not found: run `fedrad-server init` (or re-issue the server certificate).")
    if not _cert_matches_key(tls.server_cert, tls.server_key):
        raise PkiError(
            f"{tls.server_key} does not match {tls.server_cert}: re-issue the pair with "
            f"`fedrad-server renew-server-cert` on the consortium folder."
        )
    for path in (tls.server_cert, tls.ca_cert):
        not_after = x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc
        if not_after <= _now():
            raise PkiError(
                f"{path} expired on {not_after:%Y-%m-%d}: sites refuse it. "
                f"Renew it with `fedrad-server {'renew-server-cert' if path == tls.server_cert else 'renew-ca-cert'}`"
                " on the consortium folder."
            )
    return tls


def certificate_names(cert_path: Path) -> list[str]:
    """The SAN names in a certificate (for `status` output and tests)."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in san.get_values_for_type(x509.DNSName)] + [
        str(v) for v in san.get_values_for_type(x509.IPAddress)
    ]


def renew_ca_cert(
    directory: Path, *, days: int = 3650, passphrase: bytes | None = None, ca_key: Path | None = None
) -> Path:
    """Re-sign ``ca.crt`` with the same key and subject for ``days`` more.

    Certificates the CA issued stay valid (same issuer name and key); sites need
    the new ``ca.crt`` before the old one expires, since they pin the file.
    """
    directory = Path(directory)
    old, key = _load_ca(directory, passphrase=passphrase, key_path=ca_key)
    return write_atomic(directory / CA_CERT, _pem_cert(_sign_ca_cert(old.subject, key, days)))


def protect_ca_key(directory: Path, passphrase: bytes, *, ca_key: Path | None = None) -> Path:
    """Re-write an unencrypted CA key encrypted with ``passphrase`` (a consortium made before passphrases)."""
    key_path = Path(ca_key) if ca_key is not None else Path(directory) / CA_KEY
    if key_path.is_file() and key_is_encrypted(key_path):
        raise PkiError(f"the CA key at {key_path} is already encrypted.")
    _, key = _load_ca(directory, key_path=key_path)
    _write_private(key_path, _pem_key(key, passphrase))
    return key_path


def init_pki(directory: Path, consortium: str, public_host: str, *, passphrase: bytes | None = None) -> ServerTls:
    """CA plus server certificate for ``public_host`` in one call (``fedrad-server init``)."""
    create_ca(directory, consortium, passphrase=passphrase)
    return issue_server_cert(directory, [public_host], passphrase=passphrase)
