"""FedRad's own ServerApp and ClientApp on Flower's simulation engine (Ray), many sites on one machine.

For benchmarks and scale studies, not for hospitals: every simulated site's
data is on this machine. The apps are the production ones (``server.app``,
``client.app``, loaded by the references in ``pyproject.toml``), so a
simulated round runs the same code approval, training, outbound guard, audit
log, reply validation, strategy and checkpoints as a real one. What differs:

* Flower's simulation engine gives each virtual SuperNode only
  ``partition-id``; :func:`simulation_apps` wraps the ClientApp so that
  partition *i* sees site *i*'s node config (site.yaml, audit log,
  approvals), as ``fedrad-site start`` would set it;
* ``run_simulation`` has no run config; the wrapper ServerApp sets it;
* no warm worker: each Ray actor loads the site's cached tensors per message
  (the in-process path of ``client.app``) and keeps torch imported;
* one torch thread per actor and one CPU per actor, so ``cpus`` actors train at once.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import sys
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from client.approval import approve_installed
from shared.processes import child_env

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class SimulatedSite:
    """One virtual hospital: its data config (site.yaml) and the node config its SuperNode would get."""

    name: str
    site_yaml: Path
    work_dir: Path

    def node_config(self, min_count: int = 10) -> dict[str, str | int]:
        return {"site-config": str(self.site_yaml), "site-name": self.name, "min-count": min_count,
                "audit-log": str(self.work_dir / "audit" / "outbound.jsonl"),
                "approvals": str(self.work_dir / "approved-code.json")}  # fmt: skip


def prepare_site(root: Path, name: str, data: Path, labels: Path | None, classes: list[str], image_size: int,
                 cache_dir: Path | None = None) -> SimulatedSite:  # fmt: skip
    """Write a data-only site.yaml under ``root/name`` and approve this checkout's code there
    (``labels`` None: a segmentation-only site, no label CSV)."""
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"data": str(data), "classes": list(classes), "image_size": image_size,
           "cache_dir": str(cache_dir or folder / "cache")}  # fmt: skip
    if labels is not None:
        doc["labels"] = str(labels)
    (folder / "site.yaml").write_text(yaml.safe_dump(doc))
    approve_installed(folder / "work", note="simulation")
    return SimulatedSite(name, folder / "site.yaml", folder / "work")


@functools.cache
def _flower_app() -> dict:
    """``[tool.flwr.app]`` of ``pyproject.toml``: the app's components and run-config defaults."""
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]


def _component(kind: str) -> object:
    """The ServerApp / ClientApp object ``pyproject.toml`` names (``[tool.flwr.app.components]``)."""
    module, attr = _flower_app()["components"][kind].split(":")
    return getattr(importlib.import_module(module), attr)


def app_defaults() -> dict:
    """The run config defaults of ``[tool.flwr.app.config]``."""
    return dict(_flower_app()["config"])


def simulation_apps(run_config: Mapping, sites: list[SimulatedSite]) -> tuple[ServerApp, ClientApp]:
    """Wrappers that give FedRad's apps the run config and each partition its site's node config."""
    server_app, client_app = _component("serverapp"), _component("clientapp")
    config = {**app_defaults(), **dict(run_config)}
    server, client = ServerApp(), ClientApp()

    @server.main()
    def _main(grid: Grid, context: Context) -> None:
        context.run_config = dict(config)
        server_app(grid, context)

    def as_site(context: Context) -> Context:
        site = sites[int(context.node_config["partition-id"])]
        return Context(run_id=context.run_id, node_id=context.node_id, node_config=site.node_config(),
                       state=context.state, run_config=dict(config))  # fmt: skip

    def forward(msg: Message, context: Context) -> Message:
        return client_app(msg, as_site(context))

    client.train()(forward)
    client.evaluate()(forward)
    client.query()(forward)
    return server, client


def run_simulated(run_config: Mapping, sites: list[SimulatedSite], *, cpus: int = 2, verbose: bool = False) -> None:
    """Run one FedRad run over ``sites`` on Flower's simulation engine; results land in ``run-dir``."""
    from flwr.simulation import run_simulation

    os.environ.update(child_env())  # telemetry off, one torch thread: Ray's actors inherit this environment
    server, client = simulation_apps(run_config, sites)
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}, "init_args": {"num_cpus": cpus,
               "include_dashboard": False, "log_to_driver": verbose}}  # fmt: skip
    with contextlib.redirect_stdout(sys.stderr):  # the ServerApp's progress lines; stdout stays the caller's (--json)
        run_simulation(server_app=server, client_app=client, num_supernodes=len(sites), backend_config=backend,
                       verbose_logging=verbose)  # fmt: skip
