"""Consortium PKI: a private CA and the server's TLS certificate.

Why a private CA: hospitals pin exactly one root (shipped in their site bundle)
instead of trusting the public web PKI, and the coordinator can re-issue the
server certificate (new host name, expiry) without touching any site.

The server certificate carries SANs for the public host name *and* for
``127.0.0.1``/``localhost``: the same certificate serves the hospital-facing
fleet proxy and the loopback SuperLink that the proxy, the SuperExec and the
coordinator's ``flwr`` CLI talk to.
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

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
LOOPBACK_NAMES: tuple[str, ...] = ("127.0.0.1", "localhost")


class PkiError(Exception):
    """A certificate problem the user must fix; the message names the file."""


@dataclass(frozen=True)
class ServerTls:
    """Paths of the files Flower's ``--ssl-*`` flags and the fleet proxy need."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def _write_private(path: Path, data: bytes) -> None:
    """Write a private key readable by the owner only (created 0600, never world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


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


def create_ca(directory: Path, name: str, *, days: int = 3650) -> tuple[Path, Path]:
    """Create ``ca.crt``/``ca.key`` in ``directory``; refuse to overwrite an existing CA.

    Overwriting would silently orphan every site bundle already handed out.
    """
    directory = Path(directory)
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if cert_path.exists() or key_path.exists():
        raise PkiError(f"{cert_path} already exists; a consortium has exactly one CA (delete it to start over).")
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, name),
            x509.NameAttribute(NameOID.COMMON_NAME, f"{name} FedRad CA"),
        ]
    )
    now = _now()
    cert = (
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
    directory.mkdir(parents=True, exist_ok=True)
    _write_private(key_path, _pem_key(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = Path(directory) / CA_CERT, Path(directory) / CA_KEY
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise PkiError(f"{exc.filename} not found: create the CA first (fedrad-server init).") from exc
    except ValueError as exc:
        raise PkiError(f"{cert_path} or {key_path} is not a valid PEM certificate/key: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{key_path} is not an EC private key.")
    return cert, key


def issue_server_cert(directory: Path, hosts: list[str] | tuple[str, ...], *, days: int = 825) -> ServerTls:
    """Issue (or re-issue) ``server.crt``/``server.key`` signed by the CA in ``directory``.

    ``hosts`` are the public names/IPs hospitals dial; loopback names are always
    added. 825 days is the longest lifetime common TLS clients accept.
    """
    directory = Path(directory)
    ca_cert, ca_key = _load_ca(directory)
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
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA384())
    )
    _write_private(directory / SERVER_KEY, _pem_key(key))
    (directory / SERVER_CERT).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return server_tls(directory)


def server_tls(directory: Path) -> ServerTls:
    """The TLS file paths in ``directory`` (checked to exist)."""
    directory = Path(directory)
    tls = ServerTls(directory / CA_CERT, directory / SERVER_CERT, directory / SERVER_KEY)
    for path in (tls.ca_cert, tls.server_cert, tls.server_key):
        if not path.is_file():
            raise PkiError(f"{path} not found: run `fedrad-server init` (or re-issue the server certificate).")
    return tls


def certificate_names(cert_path: Path) -> list[str]:
    """The SAN names in a certificate (for `status` output and tests)."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in san.get_values_for_type(x509.DNSName)] + [
        str(v) for v in san.get_values_for_type(x509.IPAddress)
    ]


def init_pki(directory: Path, consortium: str, public_host: str) -> ServerTls:
    """CA plus server certificate for ``public_host`` in one call (``fedrad-server init``)."""
    create_ca(directory, consortium)
    return issue_server_cert(directory, [public_host])
