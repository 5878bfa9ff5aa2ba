"""``site.yaml``: everything one hospital's FedRad site needs, in one flat file.

It holds the data settings ``fedrad-site check`` uses (``data``, ``labels``, ``masks``,
``key``, ``label_column``, ``classes``, ``image_size``, ``cache_dir``) plus the
consortium credentials from the site bundle. Why one flat file: hospital IT
edits one thing, and ``check``, ``train-local``, ``evaluate`` and ``start``
all read the same file, so what was checked is what trains. Relative paths are
relative to the file's folder (a bundle can be moved as a whole).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator

from client.pacs_config import PacsSettings
from shared.config import SiteDataConfig, StrictModel, check_host_port, load_yaml_mapping, parse_model

SITE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"


class SitePrivacy(StrictModel):
    """``privacy:`` in site.yaml: what this site lets leave and which runs it accepts."""

    min_count: int = Field(
        10, ge=1, description="Loss/accuracy/AUC over fewer cases than this are withheld from replies."
    )
    require_dp: bool = Field(False, description="Refuse training rounds without differential privacy.")
    max_epsilon: float | None = Field(None, gt=0, description="Refuse a round that would take the run's ε above this.")
    require_secure_aggregation: bool = Field(
        False,
        description="Refuse training rounds without SecAgg+ (the server sees only the sum of the sites' updates).",
    )


class CrossvalConsent(StrictModel):
    """``crossval:`` in site.yaml: what this site lends to `fedrad-server crossval`."""

    share_local_model: Path | None = Field(
        None,
        description="A FedRad model file (e.g. from `fedrad-site train-local`) "
        "this site lets every site evaluate; absent = not shared.",
    )


class SiteAuditPins(StrictModel):
    """``audit:`` in site.yaml: where each new head of the audit log is also pinned (client/audit_pin.py).

    Why: the head is signed with the site key, but someone holding that key could still
    rewrite log and head together; a copy kept where the site cannot rewrite it shows that.
    """

    pin_file: Path | None = Field(
        None,
        description="A file on another volume (append-only for the site's account, e.g. chattr +a or a log "
        "server's mount); one JSON line per head. Replies are withheld while it cannot be written.",
    )
    pin_syslog: bool = Field(
        False, description="Also send each head as one syslog line to /dev/log (facility authpriv), best effort."
    )


class SiteFileConfig(SiteDataConfig):
    """The full ``site.yaml`` schema: the data keys of :class:`SiteDataConfig` plus the credentials."""

    site_name: str = Field(pattern=SITE_NAME_PATTERN, description="Name the coordinator enrolled this site under.")
    server_address: str = Field(description="HOST:PORT of the consortium's fleet proxy.")
    ca_cert: Path = Field(description="Consortium CA certificate from the site bundle (ca.crt).")
    private_key: Path = Field(description="This site's private key from `fedrad-site keygen` (never leaves the site).")
    work_dir: Path | None = Field(
        None, description="Flower's state and the code the consortium ships; default beside site.yaml."
    )
    privacy: SitePrivacy = Field(default_factory=SitePrivacy, description="Outbound limits and run requirements.")
    crossval: CrossvalConsent = Field(default_factory=CrossvalConsent, description="Cross-site evaluation consent.")
    audit: SiteAuditPins = Field(default_factory=SiteAuditPins, description="Pinning the audit log's heads.")
    pacs: PacsSettings = Field(
        default_factory=PacsSettings, description="The site's DICOM node and its PACS (client/pacs_config.py)."
    )

    _host_port = field_validator("server_address")(check_host_port)

    def data_config(self) -> SiteDataConfig:
        """The data part, as ``fedrad-site check``/``train-local`` see it."""
        return SiteDataConfig(**{k: getattr(self, k) for k in SiteDataConfig.model_fields})


SITE_ONLY_KEYS: frozenset[str] = frozenset(SiteFileConfig.model_fields) - frozenset(SiteDataConfig.model_fields)


def load_site_file(path: Path) -> SiteFileConfig:
    """Read and validate ``site.yaml``; relative paths resolve against its folder."""
    path = Path(path)
    cfg = parse_model(SiteFileConfig, load_yaml_mapping(path), str(path), path.resolve().parent)
    if cfg.work_dir is None:
        cfg.work_dir = path.resolve().parent / "work"
    return cfg


REPORTS_FOLDER = "reports"  # WORK_DIR/reports: evaluation reports by default (``fedrad-site evaluate``)


def site_work_dir(config: Path) -> Path:
    """The work dir a site.yaml names (``work_dir``, relative to its folder), else ``work`` beside it.

    Lenient on purpose: a data-only site.yaml (``check``, ``evaluate``) has no credentials to validate.
    """
    config = Path(config)
    value = load_yaml_mapping(config).get("work_dir")
    folder = config.resolve().parent
    return folder / str(value) if value else folder / "work"


def default_report_dir(config: Path, model: Path) -> Path:
    """Where ``fedrad-site evaluate --config site.yaml`` writes without ``--out``: one new folder per report,
    ``WORK_DIR/reports/<model file name>-<UTC time>`` (the site dashboard lists the reports there)."""
    from datetime import UTC, datetime

    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return site_work_dir(config) / REPORTS_FOLDER / f"{Path(model).stem}-{stamp}"


def site_node_config(config: Path, cfg: SiteFileConfig, worker_socket: Path | None = None) -> dict[str, str | int]:
    """Flower node config for this site's SuperNode: what the per-message ClientApp needs, without reading site.yaml.

    ``audit-log`` and ``approvals`` live in the work dir (client/audit.py,
    client/approval.py); ``min-count`` is ``privacy.min_count``; ``audit-key`` (the
    site key, which signs the audit head) and the ``audit-pin-*`` keys come from
    ``private_key`` and ``audit``.
    """
    from client.approval import approvals_path
    from client.audit_pin import DEFAULT_SYSLOG

    work = Path(cfg.work_dir or Path(config).resolve().parent / "work")
    node = {
        "site-config": str(Path(config).resolve()),
        "site-name": cfg.site_name,
        "audit-log": str(work / "audit" / "outbound.jsonl"),
        "approvals": str(approvals_path(work)),
        "min-count": cfg.privacy.min_count,
        "require-dp": int(cfg.privacy.require_dp),
        "max-epsilon": float(cfg.privacy.max_epsilon or 0.0),
        "require-secagg": int(cfg.privacy.require_secure_aggregation),
        "audit-key": str(Path(config).resolve().parent / cfg.private_key),
    }
    if cfg.audit.pin_file is not None:  # relative to site.yaml's folder, like every path in it
        node["audit-pin-file"] = str(Path(config).resolve().parent / cfg.audit.pin_file)
    if cfg.audit.pin_syslog:
        node["audit-pin-syslog"] = DEFAULT_SYSLOG
    if cfg.crossval.share_local_model is not None:
        node["local-model"] = str(Path(cfg.crossval.share_local_model).resolve())
    if worker_socket is not None:
        node["worker-socket"] = str(worker_socket)
    return node


def fill_site_yaml(template: Path, out: Path | None = None, **values: object) -> Path:
    """Write a site.yaml from a bundle's template with ``values`` set (demo and test setup).

    Hospital IT edits the template by hand; scripts use this. Paths are
    written as given (absolute paths stay valid wherever the file moves).
    """
    import yaml

    template = Path(template)
    data = load_yaml_mapping(template)
    data.update({k: str(v) if isinstance(v, Path) else v for k, v in values.items()})
    out = Path(out) if out is not None else template
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    parse_model(SiteFileConfig, data, str(out), out.resolve().parent)  # what we wrote must be valid
    return out
