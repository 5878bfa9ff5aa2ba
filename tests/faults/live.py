"""A live two-site consortium built from the real commands, for the fault tests.

``fedrad-server start`` and ``fedrad-site start`` as processes over TLS on
127.0.0.1, plus the waits and signals the fault tests share.
"""

from __future__ import annotations

import signal
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from client.approval import approve_installed
from client.site_config import fill_site_yaml, load_site_file
from server.checkpoints import read_metrics
from server.enrollment import enroll_site, init_consortium
from shared.processes import ManagedProcess, executable, free_port
from shared.synth import SiteSummary

REPO = Path(__file__).resolve().parents[2]
WIDE = {"COLUMNS": "250"}


@dataclass
class LiveConsortium:
    folder: Path
    server_cmd: list[str]
    site_cmd: dict[str, list[str]]

    @property
    def runs(self) -> Path:
        return self.folder / "runs"


def make_consortium(
    tmp_path: Path, cohort: list[SiteSummary], *, rounds: int, round_timeout: int, tracking: dict | None = None
) -> LiveConsortium:
    """Two enrolled, approved sites (site-a, site-b) and the commands that start everything (``tracking:`` if given)."""
    port = free_port()
    c = tmp_path / "consortium"
    init_consortium(c, "Fault Test", f"127.0.0.1:{port}")
    cfg_path = c / "consortium.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg.update(
        rounds=rounds,
        evaluate_every=rounds,
        min_sites=2,
        round_timeout_s=round_timeout,
        wait_for_sites_s=90,
        local_epochs=1,
    )
    if tracking is not None:
        cfg["tracking"] = tracking
    cfg_path.write_text(yaml.safe_dump(cfg))
    site_cmd = {}
    for name, data in zip(("site-a", "site-b"), cohort[:2], strict=True):
        bundle = enroll_site(c, name).bundle_dir
        path = fill_site_yaml(
            bundle / "site.yaml",
            data=data.dicom_dir,
            labels=data.labels_csv,
            cache_dir=tmp_path / "cache" / name,
            threads=1,
        )
        approve_installed(load_site_file(path).work_dir)
        site_cmd[name] = [executable("fedrad-site"), "start", "--config", str(path)]
    server_cmd = [executable("fedrad-server"), "start", str(c), "--listen", f"127.0.0.1:{port}"]
    return LiveConsortium(c, server_cmd, site_cmd)


def signal_tree(proc: ManagedProcess, sig: signal.Signals) -> None:
    """Send ``sig`` to the process and every descendant at once."""
    proc.signal(sig, proc.tree())


def kill_tree(proc: ManagedProcess) -> None:
    """SIGKILL the process and every descendant at once: nothing gets to clean up."""
    signal_tree(proc, signal.SIGKILL)
    proc.wait(timeout=10)


def wait_rounds(run_root: Path, n: int, timeout: float, watch: ManagedProcess) -> list[dict]:
    """The metrics rows once ``n`` rounds are done; fails if the server exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        runs = sorted(run_root.iterdir()) if run_root.is_dir() else []
        rows = read_metrics(runs[-1]) if runs else []
        if len(rows) >= n:
            return rows
        assert watch.poll() is None, f"server exited early:\n{watch.log_tail(60)}"
        assert time.monotonic() < deadline, f"no round {n} within {timeout} s:\n{watch.log_tail(60)}"
        time.sleep(0.3)


def wait_for(proc: ManagedProcess, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in proc.log_text():
        assert proc.poll() is None and time.monotonic() < deadline, proc.log_tail(60)
        time.sleep(0.2)
