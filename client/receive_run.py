"""``fedrad-site receive --config site.yaml``: read ``pacs.node``, run the storage node until SIGINT/SIGTERM.

A thin layer over :class:`client.dicom_receive.ReceiveNode`. The node needs only ``pacs.node``, ``data`` (the
default receive folder is ``DATA/received``) and ``work_dir`` (the log): a site that is not enrolled yet can
already receive; a full site.yaml (with the consortium credentials) is validated as a whole, as ``start`` does.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from pydantic import ConfigDict

from client.pacs_config import NodeSettings, PacsSettings
from client.site_options import FULL_SITE_KEYS
from shared.config import ConfigError, StrictModel, load_yaml_mapping, parse_model

RECEIVE_LOG = Path("receive") / "receive.jsonl"  # under WORK_DIR
NO_NODE = "{config} has no pacs.node: add ae_title, port and allowed_callers (docs/pacs.md)"


class _ReceiveView(StrictModel):
    """The keys of site.yaml the node reads; the others are ``check``'s and ``start``'s to validate."""

    model_config = ConfigDict(extra="ignore", validate_assignment=True)
    data: Path | None = None
    work_dir: Path | None = None
    pacs: PacsSettings = PacsSettings()


@dataclass(frozen=True)
class ReceiveSettings:
    node: NodeSettings
    receive_dir: Path
    log_path: Path


def receive_settings(config: Path) -> ReceiveSettings:
    """The node's settings from site.yaml; a :class:`ConfigError` naming the key when something is missing."""
    config = Path(config)
    values = load_yaml_mapping(config)
    pacs = values.get("pacs")
    if not isinstance(pacs, dict) or not pacs.get("node"):
        raise ConfigError(NO_NODE.format(config=config))
    base = config.resolve().parent
    if FULL_SITE_KEYS & set(values):  # a full site.yaml: validated whole, as `check` and `start` do
        from client.site_config import load_site_file

        full = load_site_file(config)
        view = _ReceiveView(data=full.data, work_dir=full.work_dir, pacs=full.pacs)
    else:
        view = parse_model(_ReceiveView, values, str(config), base)
    node = view.pacs.node
    assert node is not None
    if node.receive_dir is not None:
        receive_dir = node.receive_dir
    elif view.data is not None:
        receive_dir = view.data / "received"
    else:
        raise ConfigError(f"{config}: set pacs.node.receive_dir, or 'data' (studies then land in DATA/received)")
    work = view.work_dir or base / "work"
    return ReceiveSettings(node, Path(receive_dir), Path(work) / RECEIVE_LOG)


def node_from_site_yaml(config: Path, on_entry=None):
    """The :class:`~client.dicom_receive.ReceiveNode` site.yaml describes, not started (tests, integration runs)."""
    from client.dicom_receive import ReceiveNode

    settings = receive_settings(config)
    return ReceiveNode(settings.node, settings.receive_dir, settings.log_path, on_entry=on_entry)


def run_receive(config: Path, console, json_log: bool = False, stop: threading.Event | None = None) -> dict:
    """Serve until ``stop`` is set or SIGINT/SIGTERM arrives; the node's totals. Each log entry is printed as it is
    written: one rich line, or (``json_log``) the JSON line itself on stdout."""
    from client.receive_log import describe

    def show(entry: dict) -> None:
        if json_log:
            sys.stdout.write(json.dumps(entry, default=str) + "\n")
            sys.stdout.flush()
        else:
            console.print(describe(entry), highlight=False, soft_wrap=True)

    stop = stop or threading.Event()
    node = node_from_site_yaml(config, on_entry=show)
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        node.start()
        while not stop.wait(0.5):
            pass
    finally:
        totals = node.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return totals
