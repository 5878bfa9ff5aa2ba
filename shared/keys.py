"""Site identity keys: an EC P-384 key pair in OpenSSH format, made at the hospital.

Why here and in this format: Flower's SuperNode authentication signs every
Fleet request with this key (``--auth-supernode-private-key``), and the
coordinator registers the public half with ``flwr supernode register``; both
read OpenSSH-format NIST EC keys. The private key never leaves the site: only
``site.pub`` is sent to the coordinator, who checks the fingerprint with the
hospital out of band.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

PRIVATE_KEY = "site.key"
PUBLIC_KEY = "site.pub"


class SiteKeyError(Exception):
    """A key problem the user must fix; the message names the file."""


def generate_site_keys(directory: Path, *, comment: str = "fedrad-site", overwrite: bool = False) -> tuple[Path, Path]:
    """Write ``site.key`` (0600) and ``site.pub`` into ``directory``; return their paths.

    Refuses to overwrite: replacing a registered key locks the site out until
    the coordinator registers the new one (that is key rotation, done on purpose).
    """
    directory = Path(directory)
    priv, pub = directory / PRIVATE_KEY, directory / PUBLIC_KEY
    if not overwrite and (priv.exists() or pub.exists()):
        raise SiteKeyError(
            f"{priv} already exists; keep it (it is this site's identity) or pass overwrite to rotate the key."
        )
    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP384R1())
    priv_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    pub_bytes = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    tmp = priv.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(priv_bytes)
    os.replace(tmp, priv)
    pub.write_bytes(pub_bytes + b" " + comment.encode() + b"\n")
    return priv, pub


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    """Load and check an OpenSSH public key the way Flower will (NIST EC curve)."""
    path = Path(path)
    try:
        key = serialization.load_ssh_public_key(path.read_bytes())
    except FileNotFoundError as exc:
        raise SiteKeyError(f"{path} not found: the site creates it with `fedrad-site keygen`.") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise SiteKeyError(
            f"{path} is not an OpenSSH public key ({exc}); send the site.pub made by `fedrad-site keygen`."
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name not in ("secp256r1", "secp384r1", "secp521r1"):
        raise SiteKeyError(f"{path} is not a NIST EC (ecdsa-sha2-nistp*) key; Flower SuperNode auth needs one.")
    return key


def load_private_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """The site's unencrypted OpenSSH EC private key; a clear :class:`SiteKeyError` otherwise."""
    path = Path(path)
    try:
        key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise SiteKeyError(f"{path} not found: create it with `fedrad-site keygen`.") from exc
    except PermissionError as exc:
        raise SiteKeyError(f"{path} is not readable by this user ({exc.strerror}).") from exc
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SiteKeyError(f"{path} is not an unencrypted OpenSSH private key ({exc}).") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise SiteKeyError(f"{path} is not an EC key; Flower SuperNode auth needs one.")
    return key


def check_private_key(path: Path) -> None:
    """Fail with a clear message unless ``path`` is an unencrypted OpenSSH EC private key."""
    load_private_key(path)


def key_fingerprint(key: ec.EllipticCurvePublicKey) -> str:
    """``SHA256:…`` of a public key object, as :func:`fingerprint` and ``ssh-keygen -lf`` print it."""
    blob = base64.b64decode(
        key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).split()[1]
    )
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def fingerprint(path: Path) -> str:
    """``SHA256:…`` fingerprint, identical to ``ssh-keygen -lf site.pub``, for out-of-band checks."""
    load_public_key(path)
    blob = base64.b64decode(Path(path).read_text().split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
