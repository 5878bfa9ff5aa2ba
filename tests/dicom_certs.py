"""A test CA with a DICOM node's server certificate and a PACS's client certificate (DICOM TLS tests only)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return path


def _issue(
    folder: Path, stem: str, cn: str, ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None, usage
) -> tuple[Path, Path, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    issuer, signer = (ca[0].subject, ca[1]) if ca else (_name(cn), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), critical=True)
    )
    if ca is None:
        builder = builder.add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
    else:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False).add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    cert = builder.sign(signer, hashes.SHA256())
    cert_path = folder / f"{stem}.crt"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, _write_key(folder / f"{stem}.key", key), cert, key


def make_dicom_pki(folder: Path) -> dict[str, Path]:
    """ca.crt, node.crt/.key (server), pacs.crt/.key (client, CN PACS1) and other-ca.crt (a CA nobody uses)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_crt, _, ca_cert, ca_key = _issue(folder, "ca", "Test DICOM CA", None, None)
    node_crt, node_key, _, _ = _issue(folder, "node", "fedrad-node", (ca_cert, ca_key), ExtendedKeyUsageOID.SERVER_AUTH)
    pacs_crt, pacs_key, _, _ = _issue(folder, "pacs", "PACS1", (ca_cert, ca_key), ExtendedKeyUsageOID.CLIENT_AUTH)
    other_dir = folder / "other"
    other_dir.mkdir(exist_ok=True)
    other_ca, _, other_cert, other_key = _issue(other_dir, "ca", "Someone else's CA", None, None)
    rogue_crt, rogue_key, _, _ = _issue(
        other_dir, "rogue", "PACS1", (other_cert, other_key), ExtendedKeyUsageOID.CLIENT_AUTH
    )
    return {
        "ca": ca_crt,
        "node_cert": node_crt,
        "node_key": node_key,
        "pacs_cert": pacs_crt,
        "pacs_key": pacs_key,
        "rogue_cert": rogue_crt,
        "rogue_key": rogue_key,
        "other_ca": other_ca,
    }
