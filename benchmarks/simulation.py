"""FedRad's own ServerApp and ClientApp on Flower's simulation runtime (Ray), many sites on one machine.

For benchmarks and scale studies, not for hospitals: every simulated site's
data is on this machine. :func:`run_simulated` runs one FedRad run the way
Flower 1.42 wants simulations run, with ``flwr run``: it starts its own
SuperLink in simulation mode (``flower-superlink --simulation``, TLS with a
throw-away CA, on 127.0.0.1, in-memory state), submits the production app
(``server.app`` / ``client.app``, the components in ``pyproject.toml``) staged
with the run config as its defaults (:func:`server.superlink.stage_app`) and
the federation size and Ray resources as ``--federation-config``, waits for
the run through the Control API and stops every process it started, also on
failure. So a simulated round runs the same code approval, training, outbound
guard, audit log, reply validation, strategy and checkpoints as a real one.
What differs from a deployment:

* Flower's simulation runtime gives each virtual SuperNode only
  ``partition-id``. Which site partition *i* is (its site.yaml, audit log,
  approvals) never comes from the run config (the server's): it is written
  here to a local JSON file named by ``FEDRAD_SIMULATED_SITES`` in the
  SuperLink's environment, which SuperExec, ``flwr-simulation`` and Ray's
  workers inherit; the production ClientApp reads it
  (:mod:`client.simulated_site`) and refuses a partition without it;
* no warm worker: each Ray actor loads the site's cached tensors per message
  (the in-process path of ``client.app``) and keeps torch imported;
* one torch thread per actor and one CPU per actor, so ``cpus`` actors train at once;
* the run's log (Flower's simulation and the ServerApp's output, ``flwr log``) goes to
  ``<run-dir>.simulation/logs/run.log``, the SuperLink's to ``superlink.log`` beside it.
"""

from __future__ import annotations

import functools
import re
import shutil
import sys
import tempfile
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

from client.approval import approve_installed
from client.simulated_site import ENV as SITES_ENV
from client.simulated_site import write_sites_file
from server.pki import init_pki
from server.superlink import SuperLink, SuperLinkError, is_finished, run_wait_s, stage_app, start_superlink, submit_run
from shared.processes import ProcessError, ProcessSet, free_port

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class SimulatedSite:
    """One virtual hospital: its data config (site.yaml) and the node config its SuperNode would get."""

    name: str
    site_yaml: Path
    work_dir: Path

    def node_config(self, min_count: int = 10) -> dict[str, str | int]:
        return {
            "site-config": str(self.site_yaml),
            "site-name": self.name,
            "min-count": min_count,
            "audit-log": str(self.work_dir / "audit" / "outbound.jsonl"),
            "approvals": str(self.work_dir / "approved-code.json"),
        }


def prepare_site(
    root: Path,
    name: str,
    data: Path,
    labels: Path | None,
    classes: list[str],
    image_size: int,
    cache_dir: Path | None = None,
) -> SimulatedSite:
    """Write a data-only site.yaml under ``root/name`` and approve this checkout's code there
    (``labels`` None: a segmentation-only site, no label CSV)."""
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    doc = {
        "data": str(Path(data).resolve()),
        "classes": list(classes),
        "image_size": image_size,
        "cache_dir": str(Path(cache_dir or folder / "cache").resolve()),
        "threads": 1,  # simulated sites share this machine's cores
    }
    if labels is not None:
        doc["labels"] = str(Path(labels).resolve())
    (folder / "site.yaml").write_text(yaml.safe_dump(doc))
    approve_installed(folder / "work", note="simulation")
    return SimulatedSite(name, (folder / "site.yaml").resolve(), (folder / "work").resolve())


@functools.cache
def _flower_app() -> dict:
    """``[tool.flwr.app]`` of ``pyproject.toml``: the app's components and run-config defaults."""
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]


def app_defaults() -> dict:
    """The run config defaults of ``[tool.flwr.app.config]``."""
    return dict(_flower_app()["config"])


class SimulationError(RuntimeError):
    """A simulated run did not complete; the message names its Flower status and the log file."""


def run_simulated(run_config: Mapping, sites: list[SimulatedSite], *, cpus: int = 2, verbose: bool = False) -> None:
    """Run one FedRad run over ``sites`` on Flower's simulation runtime (``flwr run``); results land in ``run-dir``.

    ``run_config`` overrides the defaults of ``[tool.flwr.app.config]``; a relative
    ``run-dir`` is taken from the current directory (Flower's processes run elsewhere).
    Flower's files and logs go next to it, in ``<run-dir>.simulation/``.
    """
    config = {**app_defaults(), **dict(run_config)}
    for key in ("run-dir", "init-weights", "crossval-model"):  # server-side files: Flower's processes run elsewhere
        if config.get(key):
            config[key] = str(Path(str(config[key])).resolve())
    if config.get("run-dir"):
        work = Path(config["run-dir"] + ".simulation")
    else:
        work = Path(tempfile.mkdtemp(prefix="fedrad-simulation-"))
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    paths = ("site-config", "audit-log", "approvals")
    sites_file = write_sites_file(
        work / "sites.json",
        [{k: str(Path(v).resolve()) if k in paths else v for k, v in s.node_config().items()} for s in sites],
    )
    timeout = run_wait_s(config)
    federation = {
        "num-supernodes": len(sites),
        "client-resources-num-cpus": 1,
        "client-resources-num-gpus": 0.0,
        "init-args-num-cpus": cpus,
        "init-args-log-to-driver": verbose,
        "verbose": verbose,
    }
    logs = work / "logs"
    if verbose:
        print(f"FedRad simulation: Flower's logs in {logs}", file=sys.stderr, flush=True)
    log, run_log = logs / "superlink.log", logs / "run.log"
    with ProcessSet(logs) as ps:  # stops the SuperLink and everything under it (SuperExec, flwr-simulation, Ray)
        tls = init_pki(
            work / "pki", "Simulation", "127.0.0.1:9443"
        )  # throw-away CA; the SuperLink binds 127.0.0.1 only
        try:
            link = start_superlink(
                ps,
                tls=tls,
                port=free_port(),
                database=None,
                flwr_home=work / "flwr-home",
                simulation=True,
                env={SITES_ENV: str(sites_file)},
            )
            run_id = submit_run(link, stage_app(work / "app", REPO, config), federation_config=federation)
            info = _wait(link, run_id, timeout)
            with link.control() as control:  # the ServerApp's and Flower's output of the run, for the record
                run_log.write_text(re.sub(r"\x1b\[[0-9;]*m", "", control.logs(run_id)))  # no colours
        except (ProcessError, SuperLinkError) as exc:
            raise SimulationError(f"simulated run failed: {exc}; log: {log}") from exc
    if verbose:
        sys.stderr.write(run_log.read_text())
    if info["status"] != "finished:completed":
        tail = "\n".join(run_log.read_text().splitlines()[-15:])
        raise SimulationError(
            f"simulated run (Flower run {run_id}) ended {info['status']}: "
            f"{info.get('details') or 'no details'}; logs: {run_log}, {log}\n{tail}"
        )
    shutil.rmtree(work / "flwr-home" / "apps", ignore_errors=True)  # installed copies of the code; the logs stay


def _wait(link: SuperLink, run_id: int, timeout: float) -> dict:
    """The run's final info (Control API), or its last one marked with why waiting stopped."""
    deadline = time.monotonic() + timeout
    with link.control() as control:
        while not is_finished((info := control.run(run_id))["status"]):
            if link.proc.poll() is not None:  # poll() also records Flower's detached children for the stop
                return {**info, "status": f"{info['status']} (SuperLink exited with code {link.proc.returncode})"}
            if time.monotonic() > deadline:
                return {**info, "status": f"{info['status']} after {timeout:.0f} s (timed out)"}
            time.sleep(1.0)
    return info
