"""Build a validated :class:`SiteDataConfig` from ``--config site.yaml`` and/or command-line flags.

Flags override the file. A full site.yaml (with the consortium credentials of
:class:`client.site_config.SiteFileConfig`) is accepted and validated as a
whole; only its data part is returned. Relative paths in site.yaml are relative to the file's
folder, so a site bundle can be moved as a whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from shared.config import ConfigError, SiteDataConfig, load_yaml_mapping, parse_model

if TYPE_CHECKING:
    from shared.hardware import Hardware

SITE_YAML_DATA_KEYS = set(SiteDataConfig.model_fields)
# Credential keys of a full site.yaml (client.site_config.SiteFileConfig); kept in sync by a test.
SITE_ONLY_KEYS = frozenset(
    {"site_name", "server_address", "ca_cert", "private_key", "work_dir", "privacy", "crossval", "audit", "pacs"}
)
# Keys that make a site.yaml a full one (validated whole); a data-only site.yaml may still hold pacs (receive).
FULL_SITE_KEYS = SITE_ONLY_KEYS - {"pacs"}


def site_data_config(
    config: Path | None = None,
    data: Path | None = None,
    labels: Path | None = None,
    classes: str | None = None,
    key: str | None = None,
    label_column: str | None = None,
    image_size: int | None = None,
    cache_dir: Path | None = None,
    task: str = "classification",
    labelled: bool = True,
) -> SiteDataConfig:
    """The site's data settings for ``task``: a segmentation task reads DICOM SEGs, so it needs no label CSV;
    ``labelled=False``: the command reads no labels at all (``fedrad-site infer``), only the export."""
    values: dict = {}
    source = "command line"
    base_dir = None
    if config is not None:
        values = load_yaml_mapping(config)
        source, base_dir = str(config), Path(config).resolve().parent
    flags = {
        "data": data,
        "labels": labels,
        "key": key,
        "label_column": label_column,
        "image_size": image_size,
        "cache_dir": cache_dir,
        "classes": [c.strip() for c in classes.split(",")] if classes else None,
    }
    for name, value in flags.items():
        if value is not None:
            values[name] = value
    from shared.tasks import get_task

    needs_csv = labelled and get_task(task).label_csv
    required = (("data", "--data"), ("labels", "--labels")) if needs_csv else (("data", "--data"),)
    for name, flag in required:
        if values.get(name) is None:
            hint = (
                f" ({task} needs the label CSV; a segmentation-only site may leave 'labels' out: "
                "`fedrad-site check --segments`, or `--volumes` for CT/MR series, checks it)"
                if name == "labels"
                else ""
            )
            raise ConfigError(f"no {name} folder/file given: pass {flag} or set '{name}' in site.yaml (--config){hint}")
    if (SITE_ONLY_KEYS - {"pacs"}) & set(values):  # a full site.yaml (fedrad-site start): validate all, use the data
        from client.site_config import SiteFileConfig

        parse_model(SiteFileConfig, values, source, base_dir)
    elif values.get("pacs") is not None:  # a data-only site.yaml that fetches from PACS: its pacs part is valid too
        from client.pacs_config import PacsSettings

        if not isinstance(values["pacs"], dict):
            raise ConfigError(f"{source}: 'pacs' must be a mapping (docs/pacs.md)")
        parse_model(PacsSettings, values["pacs"], f"{source} (pacs)", base_dir)
    values = {k: v for k, v in values.items() if k not in SITE_ONLY_KEYS}
    cfg = parse_model(SiteDataConfig, values, source, base_dir)
    for name in ("data", "labels", "cache_dir"):
        if flags.get(name) is not None:  # flags are relative to the working directory, not to site.yaml
            setattr(cfg, name, Path(flags[name]).resolve())
    return cfg


def command_hardware(
    cfg: SiteDataConfig, config: Path | None, device: str | None = None, threads: int | None = None
) -> Hardware:
    """What a site command trains on: ``--device`` / ``--threads`` over site.yaml's ``device`` / ``threads`` over
    ``auto``; activated for this process (:func:`shared.hardware.activate`). Errors name the flag or the file."""
    from pydantic import ValidationError

    from shared.hardware import activate, resolve_hardware

    chosen = cfg.model_copy()
    for flag, name, value in (("--device", "device", device), ("--threads", "threads", threads)):
        if value is not None:
            try:  # validated on assignment: the same rules as the site.yaml key
                setattr(chosen, name, value)
            except ValidationError as exc:
                raise ConfigError(f"{flag}: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
    where = "--device" if device is not None else f"{config if config is not None else 'site.yaml'}: key 'device'"
    return activate(resolve_hardware(chosen.device, chosen.threads, chosen.amp, where=where))
