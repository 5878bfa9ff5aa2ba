"""Benchmark runs on Flower's deployment engine: one loopback consortium, many ``flwr run`` submissions.

Why: the simulation engine (Ray) is the fast way to compare strategies, but
it is not what hospitals run. This runs the same run configs through the
real thing on 127.0.0.1 (:mod:`deploy.loopback`: TLS CA and server
certificate, SuperLink with SuperNode auth, the fleet proxy, per site a
registered key, a full site.yaml, approved code, a warm worker and a
SuperNode). The consortium starts once, on the first run, and serves every
strategy × seed; every process it starts stops when the context exits,
also on failure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

from deploy.loopback import REPO, LoopbackConsortium, SiteFiles, start_loopback_consortium
from server.superlink import run_wait_s, stage_app, submit_run
from shared.processes import ProcessSet

ONLINE_TIMEOUT_S = 180.0


class DeploymentError(RuntimeError):
    """The deployment-engine consortium or one of its runs failed; the message names the run and the logs."""


class SiteData(Protocol):
    """What the runner needs of a site (``benchmarks.generalization.BenchSite`` has it)."""

    name: str
    data: Path
    labels: Path | None


class DeploymentEngine:
    """Context manager: a loopback consortium for ``sites``, started lazily, that runs one run config at a time.

    ``cache_dirs`` (site name → folder) lets the site workers reuse the
    images the benchmark already ingested instead of decoding them again.
    """

    def __init__(
        self,
        root: Path,
        sites: Sequence[SiteData],
        *,
        classes: list[str],
        image_size: int,
        cache_dirs: Mapping[str, Path] | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.sites = {s.name: SiteFiles(Path(s.data), s.labels, (cache_dirs or {}).get(s.name)) for s in sites}
        self.classes, self.image_size = list(classes), image_size
        self._ps: ProcessSet | None = None
        self._lc: LoopbackConsortium | None = None
        self._runs = 0

    @property
    def description(self) -> str:
        return (
            f"Flower deployment engine (SuperLink + {len(self.sites)} SuperNodes over TLS on 127.0.0.1, "
            "`flwr run`), FedRad's production ServerApp/ClientApp"
        )

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def work_dir(self, site: str) -> Path:
        """The site's work dir (audit log, approvals, FedBN's own normalisation layers), as its site.yaml says."""
        return self.root / "sites" / site / "work"

    def __enter__(self) -> DeploymentEngine:
        self._ps = ProcessSet(self.logs)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ps is not None:
            self._ps.stop_all()
        self._ps, self._lc = None, None

    def run(self, run_config: Mapping, *, label: str = "") -> None:
        """Stage the app with ``run_config``, submit it with ``flwr run``, wait until it is ``finished:completed``."""
        lc = self._consortium()
        self._runs += 1
        label = label or f"run-{self._runs}"
        app = stage_app(self.root / "apps" / label, REPO, dict(run_config))
        run_id = submit_run(lc.link, app)
        with lc.link.control() as control:
            info = control.wait_for_run(run_id, timeout=run_wait_s(run_config), poll=1.0)
        if info["status"] != "finished:completed":
            raise DeploymentError(
                f"deployment-engine run {label} (Flower run {run_id}) ended {info['status']}: "
                f"{info.get('details') or 'no details'}; logs under {self.logs}"
            )

    def _consortium(self) -> LoopbackConsortium:
        if self._ps is None:
            raise DeploymentError("DeploymentEngine.run outside its `with` block")
        if self._lc is None:
            self._lc = start_loopback_consortium(
                self._ps, self.root, self.sites, image_size=self.image_size, classes=self.classes, name="Benchmark"
            )
            self._wait_online(self._lc)
        return self._lc

    def _wait_online(self, lc: LoopbackConsortium) -> None:
        """Every SuperNode online before the first run: ``min-sites`` is all of them."""
        try:
            lc.wait_until_online(ONLINE_TIMEOUT_S)
        except RuntimeError as exc:
            raise DeploymentError(f"{exc} (the site logs: {self.logs})") from None
