"""`fedrad-server start` and `fedrad-site start` as real processes over TLS on 127.0.0.1.

One consortium (2 enrolled sites, real synthetic DICOM data):

1. the server is started with no site running: it must give up after
   ``wait_for_sites_s`` with an error naming the missing sites, exit code 1
   (``test_wait_names_only_missing_sites`` checks a partial set in-process);
2. the server is started again and both sites join (``fedrad-site start``:
   data check, SuperNode), the run trains a round (train + evaluate) and
   the command exits 0 reporting ``finished:completed``; checkpoints,
   ``status --json`` and ``export`` agree.

Every process goes through ``shared.processes.ProcessSet`` and none is left behind.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml

from client.site_config import fill_site_yaml
from server.enrollment import enroll_site, init_consortium
from shared.modelfile import load_model_file
from server.export import export_model
from server.status import collect_status
from shared.processes import ProcessSet, executable, free_port
from tests.integration.cleanup import stop_all_and_check
from shared.synth import SiteSummary

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]  # measured 117 s at load ~5 on 2 cores
REPO = Path(__file__).resolve().parents[2]
ROUNDS = 1  # one round (train + evaluate) keeps the file under 150 s on 2 loaded cores
WAIT = 5
WIDE = {"COLUMNS": "250"}  # rich wraps at 80 columns when not on a terminal


def _text(s: str) -> str:
    return " ".join(s.split())


def test_start_waits_names_missing_site_then_completes(tmp_path: Path, small_cohort: list[SiteSummary]) -> None:
    t_start = time.monotonic()
    port = free_port()
    c = tmp_path / "consortium"
    init_consortium(c, "Coord Test", f"127.0.0.1:{port}")
    cfg_path = c / "consortium.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg.update(rounds=ROUNDS, evaluate_every=1, min_sites=2, round_timeout_s=60, wait_for_sites_s=WAIT, local_epochs=1)
    cfg_path.write_text(yaml.safe_dump(cfg))
    site_yaml = {}
    for name, data in zip(("site-a", "site-b"), small_cohort[:2], strict=True):
        bundle = enroll_site(c, name).bundle_dir  # demo key generation
        site_yaml[name] = fill_site_yaml(
            bundle / "site.yaml", data=data.dicom_dir, labels=data.labels_csv, cache_dir=tmp_path / "cache" / name
        )

    server_cmd = [executable("fedrad-server"), "start", str(c), "--listen", f"127.0.0.1:{port}"]
    site_cmd = {n: [executable("fedrad-site"), "start", "--config", str(p)] for n, p in site_yaml.items()}
    ps = ProcessSet(tmp_path / "logs")
    started = set()
    try:
        # 1. No site comes: a clear error naming the missing sites after wait_for_sites_s, exit 1.
        t0 = time.monotonic()
        first = ps.start("server-1", server_cmd, env=WIDE, cwd=REPO)
        assert first.wait(timeout=60) == 1
        waited = time.monotonic() - t0
        log = _text(first.log_text())
        assert "Missing: site-a, site-b." in log and f"wait_for_sites_s={WAIT}" in log, log[-1500:]
        assert "Traceback" not in log
        assert waited < WAIT + 40, waited  # server start-up + the wait, not forever
        started |= ps.all_procs()

        # 2. Both sites join once the server listens (before that they would back off for up to ~15 s).
        cfg["wait_for_sites_s"] = 60
        cfg_path.write_text(yaml.safe_dump(cfg))
        second = ps.start("server-2", server_cmd, env=WIDE, cwd=REPO)
        deadline = time.monotonic() + 40
        while "listening for sites" not in second.log_text():
            assert second.poll() is None and time.monotonic() < deadline, second.log_tail()
            time.sleep(0.2)
        sites = {n: ps.start(n, cmd, env=WIDE, cwd=REPO) for n, cmd in site_cmd.items()}
        started |= ps.all_procs()
        rc = second.wait(timeout=180 - (time.monotonic() - t_start) - 15)
        log = _text(second.log_text())
        assert rc == 0, log[-3000:]
        assert "finished:completed" in log
        assert re.search(rf"round {ROUNDS}/{ROUNDS}: sites 2", log), log[-2000:]
        for name, proc in sites.items():
            assert proc.poll() is None, f"{name} stopped: {proc.log_tail()}"  # sites stay up between runs

        run_dir = next((c / "runs").iterdir())
        assert json.loads((run_dir / "state.json").read_text())["last_round"] == ROUNDS
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
        assert [r["round"] for r in rows] == list(range(1, ROUNDS + 1))
        st = collect_status(c)  # in-process: a CLI call costs seconds of imports on a loaded box
        assert st["server_running"] is False and st["run"]["status"] == "finished:completed"
        assert st["run"]["last_round"] == ROUNDS and {s["name"] for s in st["sites"]} == {"site-a", "site-b"}
        exported = tmp_path / "global.pt"
        info = export_model(c, exported)
        assert Path(info["source"]).name == "latest.pt"
        model = load_model_file(exported)
        assert model.provenance["kind"] == "federated" and model.provenance["rounds"] == ROUNDS
        assert model.provenance["trained_by"] == "Coord Test"
        print(f"\ncoordinator test: missing-site wait {waited:.1f} s, total {time.monotonic() - t_start:.1f} s")
    finally:
        started = stop_all_and_check(ps, started)


class _FakeControl:
    """Stands in for the Control API's node list (the real one is exercised above)."""

    def __init__(self, statuses: dict[str, str]) -> None:
        self.statuses = statuses

    def nodes(self) -> list:
        from server.superlink import NodeStatus

        return [NodeStatus(i, n, st, "", "") for i, (n, st) in enumerate(self.statuses.items())]


@pytest.mark.timeout(30)
def test_wait_names_only_missing_sites() -> None:
    from rich.console import Console

    from server.coordinator import CoordinatorError, wait_for_sites

    console = Console(file=__import__("io").StringIO(), width=200)
    control = _FakeControl({"site-a": "online", "site-b": "offline", "site-c": "online"})
    with pytest.raises(CoordinatorError) as exc:
        wait_for_sites(control, ["site-a", "site-b", "site-c", "site-d"], 4, 0.3, console, live=False, poll_s=0.1)
    assert "only 2 of the 4" in str(exc.value) and "Missing: site-b, site-d." in str(exc.value)
    assert wait_for_sites(control, ["site-a", "site-b", "site-c"], 2, 5, console, live=True, poll_s=0.1) == ["site-a", "site-c"]
