"""The audit log as ``site.yaml`` configures it: the key that checks its heads, and the checks at site start.

Why apart from :mod:`client.audit`: that module is the log itself and runs in
every per-message ClientApp; this one knows site.yaml and the operator's
commands (``fedrad-site start``, ``fedrad-site audit verify``).
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from client.audit import AuditError, AuditSettings, prepare
from client.site_config import SiteFileConfig, site_node_config
from shared.config import ConfigError
from shared.keys import SiteKeyError, load_private_key, load_public_key


def verify_key(cfg: SiteFileConfig, public_key: Path | None = None) -> ec.EllipticCurvePublicKey:
    """The key the heads must be signed with: ``public_key``, else ``site.pub`` beside ``private_key``, else its half.

    An auditor account may read ``site.pub`` but not the private key; compare the
    fingerprint verify prints with the one the coordinator enrolled.
    """
    try:
        if public_key is not None:
            return load_public_key(public_key)
        beside = Path(cfg.private_key).with_name("site.pub")
        if beside.is_file():
            return load_public_key(beside)
        return load_private_key(Path(cfg.private_key)).public_key()
    except SiteKeyError as exc:
        raise ConfigError(
            f"{exc} The audit head is checked with the site's public key: pass --public-key site.pub."
        ) from None


def start_audit(config: Path, cfg: SiteFileConfig) -> list[str]:
    """At ``fedrad-site start``: check the pins' folder, repair a crash's traces, start signing an unsigned log.

    Returns lines for the console. A log that fails its checks stops the start
    (:class:`ConfigError`): every reply would be refused anyway, and the evidence
    is for a person to look at, not for the site to overwrite.
    """
    node = site_node_config(config, cfg)
    settings = AuditSettings.from_node_config(node)
    log = Path(str(node["audit-log"]))
    notes = []
    pin = settings.pins.file
    if pin is not None:
        if not pin.parent.is_dir():
            raise ConfigError(
                f"{config}: audit.pin_file {pin}: folder {pin.parent} does not exist (is its volume mounted?)"
            )
        log.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        if os.stat(pin.parent).st_dev == os.stat(log.parent).st_dev:
            notes.append(
                f"[yellow]warning:[/] audit.pin_file {pin} is on the same volume as the audit log; "
                "a pin protects best on another volume or host"
            )
    if settings.pins.syslog is not None and not Path(settings.pins.syslog).exists():
        notes.append(
            f"[yellow]warning:[/] audit.pin_syslog: no syslog socket at {settings.pins.syslog}; heads are not sent"
        )
    try:
        done = prepare(log, settings)
    except AuditError as exc:
        raise ConfigError(
            f"the audit log fails its checks, not joining the consortium: {exc}. Run `fedrad-site audit verify "
            f"--config {config}`; keep the log as evidence (move {log.parent} aside) before a new one is started."
        ) from None
    if done:
        notes.append(f"audit log {log}: {done}")
    return notes
