"""Which site a simulated SuperNode is: partition *i* → site *i*'s node config, read from a local file.

Flower's simulation runtime (a SuperLink started with ``--simulation``, runs
submitted with ``flwr run``) gives each virtual SuperNode only the node config
``partition-id`` and ``num-partitions``. A real SuperNode always has
``site-config`` (``fedrad-site start`` sets it, :func:`client.site_config.site_node_config`).

A site's identity (its site.yaml, audit log, approvals) must never come from
the run config: the server sets the run config, and it must not choose which
local data a site reads. So the mapping comes from the machine that runs the
simulation: :func:`benchmarks.simulation.run_simulated` writes a JSON file with one
node config per partition and names it in :data:`ENV` in the environment of
the SuperLink it starts; Flower's process chain (SuperLink → SuperExec →
``flwr-simulation`` → Ray workers) inherits that environment. Without the
variable a simulated partition is refused.

Standard library only: imported by the per-message ClientApp.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

ENV = "FEDRAD_SIMULATED_SITES"
PARTITION_ID = "partition-id"
NUM_PARTITIONS = "num-partitions"


class SimulatedSiteError(RuntimeError):
    """A simulated partition could not be mapped to a site (no mapping file, or it does not fit)."""


def is_simulated_partition(node_config: Mapping) -> bool:
    """True for a virtual SuperNode of Flower's simulation runtime (a partition id, no site config)."""
    return PARTITION_ID in node_config and not node_config.get("site-config")


def write_sites_file(path: Path, node_configs: list[Mapping]) -> Path:
    """Write the partition → node config mapping (list index = partition id) that :func:`site_node_config` reads."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"sites": [dict(c) for c in node_configs]}, indent=1))
    return path


def site_node_config(node_config: Mapping, environ: Mapping[str, str] | None = None) -> dict:
    """The node config of the site that a simulated partition stands for; ``node_config`` itself otherwise.

    Raises :class:`SimulatedSiteError` for a simulated partition when ``FEDRAD_SIMULATED_SITES``
    is unset or its file does not have that partition.
    """
    if not is_simulated_partition(node_config):
        return dict(node_config)
    env = os.environ if environ is None else environ
    name = env.get(ENV)
    partition = int(node_config[PARTITION_ID])
    if not name:
        raise SimulatedSiteError(
            f"simulated partition {partition} has no site: {ENV} is not set on this machine. A SuperNode started "
            "by `fedrad-site start` has its site config; simulations go through benchmarks.simulation.run_simulated, "
            "which sets it"
        )
    try:
        sites = json.loads(Path(name).read_text())["sites"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SimulatedSiteError(
            f"{ENV}={name}: cannot read the simulated sites ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(sites, list) or not 0 <= partition < len(sites) or not isinstance(sites[partition], dict):
        raise SimulatedSiteError(f"{ENV}={name} has no site for partition {partition} ({len(sites)} sites)")
    if NUM_PARTITIONS in node_config and int(node_config[NUM_PARTITIONS]) != len(sites):
        raise SimulatedSiteError(
            f"{ENV}={name} lists {len(sites)} sites; the simulation has {node_config[NUM_PARTITIONS]} partitions"
        )
    return {**dict(node_config), **sites[partition]}
