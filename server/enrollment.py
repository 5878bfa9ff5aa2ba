"""Consortium folder, site registry and site bundles (``fedrad-server init`` / ``enroll``).

Layout of a consortium folder ``DIR``::

    consortium.yaml          settings (server/consortium.py)
    pki/ca.crt ca.key        private CA (ca.key: 0600, passphrase-encrypted unless a demo; keep it offline)
    pki/server.crt .key      fleet proxy + loopback SuperLink certificate
    sites/registry.json      enrolled sites: name -> public key file, fingerprint, time
    sites/<SITE>.pub         each site's OpenSSH public key (what the SuperLink registers)
    bundles/<SITE>/          what is sent to the hospital: ca.crt, site.yaml, bundle.json, README.txt
    state/ runs/ logs/       written by `fedrad-server start`

Why a registry file of our own: the SuperLink's database is runtime state
(it can be rebuilt by ``start``, which registers every enrolled key), while
the registry is the coordinator's decision of who is in the consortium,
readable without a running server (``status``) and easy to back up. Every
file here is written atomically (shared/atomic.py): a crash mid-enrollment
leaves the previous registry, never a truncated one.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from server.consortium import CONSORTIUM_YAML, ConsortiumConfig, consortium_yaml_text, load_consortium
from server.pki import CA_CERT, PkiError, init_pki
from shared.atomic import write_atomic
from shared.config import DEFAULT_CLASSES, ConfigError
from shared.keys import PRIVATE_KEY, PUBLIC_KEY, SiteKeyError, fingerprint, generate_site_keys, load_public_key

PKI_DIR = "pki"
SITES_DIR = "sites"
BUNDLES_DIR = "bundles"
REGISTRY = "registry.json"
SITE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")


class EnrollmentError(ConfigError):
    """A consortium-folder problem the coordinator must fix (shown as one line, exit code 2)."""


@dataclass(frozen=True)
class EnrolledSite:
    """One row of the registry."""

    name: str
    public_key: str  # path relative to DIR
    fingerprint: str
    enrolled_at: str
    key_generated_by_server: bool = False


@dataclass(frozen=True)
class EnrollResult:
    site: EnrolledSite
    bundle_dir: Path
    private_key: Path | None  # only when the server generated the key (demo mode)


def pki_dir(directory: Path) -> Path:
    return Path(directory) / PKI_DIR


def init_consortium(
    directory: Path, name: str, address: str, *, ca_passphrase: bytes | None = None
) -> ConsortiumConfig:
    """Create the consortium folder: documented consortium.yaml, CA (its key encrypted with
    ``ca_passphrase`` when given) and server certificate."""
    directory = Path(directory)
    yaml_path = directory / CONSORTIUM_YAML
    if yaml_path.exists() or (pki_dir(directory) / CA_CERT).exists():
        raise EnrollmentError(f"{directory} already holds a consortium ({yaml_path}); choose an empty folder.")
    text = consortium_yaml_text(name, address)  # validates name and address before anything is written
    cfg = ConsortiumConfig(name=name, address=address)  # valid: consortium_yaml_text checked it
    try:
        init_pki(pki_dir(directory), name, cfg.host, passphrase=ca_passphrase)
    except PkiError as exc:
        raise EnrollmentError(str(exc)) from None
    write_atomic(yaml_path, text)
    (directory / SITES_DIR).mkdir(exist_ok=True)
    _write_registry(directory, {})
    return load_consortium(directory)


def _registry_path(directory: Path) -> Path:
    return Path(directory) / SITES_DIR / REGISTRY


def _write_registry(directory: Path, sites: dict[str, EnrolledSite]) -> None:
    doc = {"sites": {n: asdict(s) for n, s in sorted(sites.items())}}
    write_atomic(_registry_path(directory), json.dumps(doc, indent=2) + "\n")


def load_registry(directory: Path) -> dict[str, EnrolledSite]:
    """Enrolled sites by name (empty when none)."""
    path = _registry_path(directory)
    if not path.is_file():
        load_consortium(directory)  # the better error: not a consortium folder at all
        return {}
    try:
        doc = json.loads(path.read_text())
        return {n: EnrolledSite(**row) for n, row in doc.get("sites", {}).items()}
    except (ValueError, TypeError) as exc:
        raise EnrollmentError(f"{path}: unreadable site registry ({exc}); restore it from backup.") from None


def site_public_key(directory: Path, site: EnrolledSite) -> Path:
    return Path(directory) / site.public_key


def write_enrolled_keys(directory: Path, dest: Path) -> Path:
    """Write every enrolled site's OpenSSH public key, one a line, for the fleet proxy (``--enrolled-keys``).

    Written atomically: the proxy re-reads the file when it changes and must never see half of it.
    """
    sites = load_registry(directory)
    lines = [f"# {name}\n{site_public_key(directory, s).read_text().strip()}\n" for name, s in sorted(sites.items())]
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(Path(dest), "".join(lines))


def enroll_site(
    directory: Path,
    name: str,
    public_key: Path | None = None,
    *,
    replace: bool = False,
    on_generate: Callable[[], None] | None = None,
) -> EnrollResult:
    """Register ``name`` with its public key and write ``DIR/bundles/NAME/``.

    Without ``public_key`` a key pair is generated here (demo only: the
    private key should be made at the hospital and never travel). With
    ``replace`` an enrolled site's key is replaced (key rotation).
    """
    directory = Path(directory)
    cfg = load_consortium(directory)
    if not SITE_NAME.match(name):
        raise EnrollmentError(
            f"site name {name!r}: use letters, digits, '.', '_' or '-' (max 63), starting with a letter or digit."
        )
    sites = load_registry(directory)
    if name in sites and not replace:
        raise EnrollmentError(f"site {name!r} is already enrolled; pass --replace to rotate its key.")
    bundle = directory / BUNDLES_DIR / name
    generated = public_key is None
    private: Path | None = None
    if generated:
        if on_generate is not None:
            on_generate()  # the demo-only warning, once the inputs are known to be valid
        if bundle.exists():
            shutil.rmtree(bundle)
        private, public_key = generate_site_keys(bundle, comment=f"fedrad-site {name}")
    try:
        load_public_key(Path(public_key))
        fp = fingerprint(Path(public_key))
    except SiteKeyError as exc:
        raise EnrollmentError(str(exc)) from None
    for other in sites.values():
        if other.fingerprint == fp and other.name != name:
            raise EnrollmentError(
                f"{public_key} is already enrolled for site {other.name!r}; every site needs its own key."
            )
    stored = write_atomic(directory / SITES_DIR / f"{name}.pub", Path(public_key).read_bytes())
    site = EnrolledSite(
        name=name,
        public_key=str(stored.relative_to(directory)),
        fingerprint=fp,
        enrolled_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        key_generated_by_server=generated,
    )
    sites[name] = site
    write_bundle(directory, cfg, site, bundle)
    _write_registry(directory, sites)
    return EnrollResult(site=site, bundle_dir=bundle, private_key=private)


def write_bundle(directory: Path, cfg: ConsortiumConfig, site: EnrolledSite, bundle: Path) -> Path:
    """The folder sent to the hospital: CA, settings, a site.yaml template, instructions. No secrets
    (except site.key in demo mode, which the coordinator then must hand over securely)."""
    write_atomic(bundle / CA_CERT, (pki_dir(directory) / CA_CERT).read_bytes())
    info = {
        "consortium": cfg.name,
        "site_name": site.name,
        "server_address": cfg.address,
        "task": cfg.task.model_dump(mode="json", exclude={"init_weights"}),  # a server-host path: not the site's
        "site_key_fingerprint": site.fingerprint,
    }
    write_atomic(bundle / "bundle.json", json.dumps(info, indent=2) + "\n")
    write_atomic(bundle / "site.yaml", site_yaml_template(cfg, site.name))
    write_atomic(
        bundle / "README.txt",
        f"FedRad site bundle for {site.name!r} in consortium {cfg.name!r}.\n\n"
        f"1. Put this folder on the site machine (e.g. /etc/fedrad/).\n"
        f"2. Key: {PRIVATE_KEY} made by `fedrad-site keygen` must be at the path `private_key` in site.yaml\n"
        f"   (its fingerprint must be {site.fingerprint}).\n"
        f"3. Edit `data` and `labels` in site.yaml, then run `fedrad-site check --config site.yaml`.\n"
        f"4. Allow outbound TCP to {cfg.address} only; run `fedrad-site start --config site.yaml`.\n",
    )
    return bundle


def site_yaml_template(cfg: ConsortiumConfig, site_name: str) -> str:
    """A ``site.yaml`` valid for :class:`client.site_config.SiteFileConfig`; hospital IT edits the data paths.

    A segmentation consortium's template leaves ``labels`` commented out: its labels are the DICOM SEGs in ``data``.
    """
    columns = "one column per finding" if cfg.task.findings else "a label column"
    labels_line = (
        f"labels: /path/to/labels.csv          # CSV with a key column and {columns}"
        if cfg.task.spec().task.label_csv
        else f"# labels: /path/to/labels.csv        # not needed: {cfg.task.type} reads its labels from `data`"
    )
    findings_line = (  # a multi-label CSV: `check` and `start` read these columns (1, 0, -1 uncertain, blank)
        f"findings: {json.dumps(cfg.task.findings)}\n" if cfg.task.findings else ""
    )
    return f"""\
# FedRad site settings for {site_name!r} (consortium {cfg.name!r}).
# Edit `data` and `labels`, then: fedrad-site check --config site.yaml
#                                 fedrad-site start --config site.yaml
# Relative paths are relative to this file's folder.

# --- this site's data (stays here; only model weights and aggregate metrics leave)
data: /path/to/dicom-export          # folder of DICOM files (searched recursively)
{labels_line}
key: SOPInstanceUID                  # SOPInstanceUID, StudyInstanceUID, AccessionNumber or path
label_column: label
# cache_dir: /var/lib/fedrad/cache   # preprocessed tensors (default: beside the data folder)

# --- the consortium's task (set by the coordinator; must match)
classes: {json.dumps(cfg.task.classes or list(DEFAULT_CLASSES))}
{findings_line}image_size: {cfg.task.image_size}

# --- credentials (from the site bundle and `fedrad-site keygen`)
site_name: {site_name}
server_address: {cfg.address}      # the only outbound connection (TLS)
ca_cert: {CA_CERT}                    # consortium CA from the bundle
private_key: {PRIVATE_KEY}                # made by `fedrad-site keygen`; never leaves this machine
# work_dir: /var/lib/fedrad/work     # Flower state and the code the consortium ships (default: ./work)
"""


__all__ = [
    "EnrolledSite",
    "EnrollResult",
    "EnrollmentError",
    "PUBLIC_KEY",
    "enroll_site",
    "init_consortium",
    "load_registry",
    "pki_dir",
    "site_public_key",
    "site_yaml_template",
    "write_bundle",
]
