"""The real FedRad apps over real Flower processes: TLS, SuperNode auth, fleet proxy, 2 sites.

Sites are synthetic DICOM exports (``shared.synth``) described by a full
site.yaml each, trained with the real ClientApp (SmallCNN at 32×32). One
consortium is started for the module; two runs are submitted one after the
other on the same run folder:

1. a 1-round FedAdam run: checkpoints, metrics, model file = the round's hash;
2. ``resume=true`` with ``num-server-rounds=2``: only round 2 runs, it starts
   from exactly round 1's saved weights (and FedAdam's saved moments), and the
   folder ends up with a 2-round federation's files.

Each message wave costs a fresh ``flwr-clientapp`` process per site (~10 s on
a quiet 2-core box, 20-40 s under load), so the file keeps to 2 rounds in all;
``test_tls_federation.py`` runs a single 2-round run of the same apps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from client.approval import approvals_path
from client.audit import verify
from deploy.loopback import REPO, start_loopback_consortium
from server.checkpoints import read_metrics
from server.superlink import SuperLink, stage_app, submit_run
from shared.code_identity import code_sha256
from shared.modelfile import load_model_file
from shared.processes import ManagedProcess, ProcessId, ProcessSet
from shared.synth import write_cohort
from tests.integration.cleanup import stop_all_and_check

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]  # ~70-110 s per test on a quiet box; 2-3x under load

SITES = ("site-1", "site-2")
RUN_CONFIG = {
    "min-sites": 2,
    "round-timeout-s": 180,
    "evaluate-every": 1,
    "seed": 3,
    "strategy": "fedadam",
    "strategy-params": '{"eta": 0.01}',
    "classes": "normal,nodule",
    "image-size": 32,
    "model": "smallcnn",
    "batch-size": 16,
    "lr": 0.001,
    "augment": 0.5,
    "local-epochs": 1,
    "consortium": "TestConsortium",
}


@dataclass
class Fed:
    tmp: Path
    link: SuperLink
    app_dir: Path
    run_dir: Path
    supernodes: dict[str, ManagedProcess] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)


def _run(fed: Fed, label: str, config: dict, timeout: float) -> dict:
    t0 = time.monotonic()
    run_id = submit_run(fed.link, fed.app_dir, config)
    with fed.link.control() as control:
        info = control.wait_for_run(run_id, timeout=timeout, poll=0.5)
    info["wall-s"] = time.monotonic() - t0
    fed.runs[label] = info
    return info


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    tmp = tmp_path_factory.mktemp("fedtrain")
    cohort = {s.name: s.path for s in write_cohort(tmp / "cohort", n_sites=2, unseen=0, scale=0.08, seed=1)}
    ps = ProcessSet(tmp / "logs")
    started: set[ProcessId] = set()
    try:
        lc = start_loopback_consortium(ps, tmp, {name: cohort[name] for name in SITES}, image_size=32)
        run_dir = tmp / "runs" / "r1"
        app_dir = stage_app(tmp / "app", REPO, {**RUN_CONFIG, "run-dir": str(run_dir)})
        yield Fed(
            tmp=tmp,
            link=lc.link,
            app_dir=app_dir,
            run_dir=run_dir,
            supernodes={n: s.supernode for n, s in lc.sites.items()},
        )
    finally:
        started = stop_all_and_check(ps, started)


def test_one_round_writes_checkpoints(fed: Fed) -> None:
    info = _run(fed, "first", {"num-server-rounds": 1}, timeout=200)
    assert info["status"] == "finished:completed", info
    files = {p.name for p in fed.run_dir.iterdir()}
    assert {"round-0001.pt", "latest.pt", "metrics.jsonl", "state.json", "strategy-state.pt"} <= files
    rows = read_metrics(fed.run_dir)
    assert [r["round"] for r in rows] == [1]
    r = rows[0]
    assert r["sites_answered"] == 2 and r["sites_failed"] == 0 and r["strategy"] == "fedadam"
    assert r["train"]["num-examples"] > 0 and 0.0 <= r["train"]["train-acc"] <= 1.0
    assert r["train"]["warm-worker"] == 1.0 and r["eval"]["warm-worker"] == 1.0  # both sites' workers did the work
    assert r["eval"]["num-examples"] > 0  # the last round is always evaluated
    # each site's own aggregates (the dashboard's per-site curves): they add up to the round's figures
    per_site = r["site_metrics"]
    assert len(per_site) == 2 and all(m["train"] and m["eval"] for m in per_site.values()), per_site
    assert sum(m["train"]["num-examples"] for m in per_site.values()) == r["train"]["num-examples"]
    assert sum(m["eval"]["num-examples"] for m in per_site.values()) == r["eval"]["num-examples"]
    model = load_model_file(fed.run_dir / "round-0001.pt")
    assert model.weights_sha256 == r["weights_sha256"] == load_model_file(fed.run_dir / "latest.pt").weights_sha256
    assert model.provenance["kind"] == "federated" and model.provenance["rounds"] == 1
    assert model.provenance["trained_by"] == "TestConsortium" and model.preprocess.image_size == 32
    if "auc" in r["eval"]:
        assert load_model_file(fed.run_dir / "best.pt").weights_sha256 == r["weights_sha256"]
    state = json.loads((fed.run_dir / "state.json").read_text())
    assert state["last_round"] == 1 and state["weights_sha256"] == r["weights_sha256"]
    _report("first run (round 1)", info, r, sum(p.numel() for p in model.model.parameters()))


def test_resume_continues_from_the_saved_round(fed: Fed) -> None:
    if "first" not in fed.runs or fed.runs["first"]["status"] != "finished:completed":
        pytest.skip("needs the first run")
    before = read_metrics(fed.run_dir)
    info = _run(fed, "resume", {"num-server-rounds": 2, "resume": True}, timeout=200)
    assert info["status"] == "finished:completed", info
    rows = read_metrics(fed.run_dir)
    assert [r["round"] for r in rows] == [1, 2] and rows[:1] == before  # only round 2 ran
    assert {"round-0001.pt", "round-0002.pt", "metrics.jsonl"} <= {p.name for p in fed.run_dir.iterdir()}
    saved = load_model_file(fed.run_dir / "round-0001.pt").weights_sha256
    assert rows[1]["start_weights_sha256"] == saved  # round 2 started from exactly round 1's weights
    last = load_model_file(fed.run_dir / "latest.pt")
    assert last.provenance["rounds"] == 2 and last.weights_sha256 == rows[1]["weights_sha256"]
    assert json.loads((fed.run_dir / "state.json").read_text())["last_round"] == 2
    for name in SITES:  # one training and one evaluation message per run
        log = fed.supernodes[name].log_text()
        assert log.count("Receiving: train message") == 2, name
        assert log.count("Receiving: evaluate message") == 2, name
    _report("resumed run (round 2)", info, rows[1], None)


def _report(label: str, info: dict, r: dict, params: int | None) -> None:
    t = r["train"]
    print(
        f"\n{label}: submit->finished {info['wall-s']:.1f} s; round {r['seconds']} s {r['timing']}; "
        f"slowest site startup/load/train/handler {t.get('startup-s', 0):.2f}/{t.get('load-s', 0):.2f}/"
        f"{t.get('train-s', 0):.2f}/{t.get('handler-s', 0):.2f} s; bytes per site {r['bytes_per_site']}; "
        f"run bytes sent/recv {info['bytes-sent']}/{info['bytes-recv']}"
        + (f"; smallcnn {params} params" if params else "")
    )


def test_dp_run_clips_at_the_sites_and_reports_epsilon_every_round(fed: Fed) -> None:
    run_dir = fed.tmp / "runs" / "dp"
    config = {
        "num-server-rounds": 2,
        "strategy": "fedavg",
        "strategy-params": "{}",
        "dp-noise-multiplier": 1.5,
        "dp-clipping-norm": 0.5,
        "run-dir": str(run_dir),
        "evaluate-every": 5,
    }
    info = _run(fed, "dp", config, timeout=220)
    assert info["status"] == "finished:completed", info
    rows = read_metrics(run_dir)
    eps = [r["privacy"]["epsilon"] for r in rows]
    assert eps[0] == pytest.approx(2.98, abs=0.02) and eps[1] > eps[0], eps  # RDP, z = 1.5, δ = 1e-5
    assert all(r["privacy"]["rounds_released"] == r["round"] for r in rows)
    privacy = load_model_file(run_dir / "latest.pt").provenance["extra"]["privacy"]
    assert privacy["epsilon"] == eps[-1] and privacy["noise_multiplier"] == 1.5
    for name in SITES:
        assert fed.supernodes[name].log_text().count("FedRad DP: update norm") >= 2, name  # every site clipped


def test_image_dp_run_each_site_accounts_its_own_epsilon(fed: Fed) -> None:
    """Per-image DP: DP-SGD at every site, ε from each site's own ledger, reaching the target after the last round."""
    run_dir = fed.tmp / "runs" / "image-dp"
    config = {
        "num-server-rounds": 2,
        "strategy": "fedavg",
        "strategy-params": "{}",
        "model": "smallcnn-gn",
        "dp-level": "image",
        "dp-target-epsilon": 8.0,
        "dp-clipping-norm": 1.0,
        "run-dir": str(run_dir),
        "evaluate-every": 5,
    }
    info = _run(fed, "image-dp", config, timeout=220)
    assert info["status"] == "finished:completed", info
    rows = read_metrics(run_dir)
    eps = [r["privacy"]["epsilon"] for r in rows]
    print(
        f"\nper-image DP, target ε 8: ε after each round (largest site) {eps}; "
        f"noise multipliers {[r['train'].get('dp-noise-multiplier') for r in rows]}"
    )
    assert 0 < eps[0] < eps[1] <= 8.0 and eps[1] > 7.8, eps  # each site calibrated its noise to reach 8 at round 2
    assert all(r["privacy"]["level"] == "image" for r in rows)
    privacy = load_model_file(run_dir / "latest.pt").provenance["extra"]["privacy"]
    assert privacy["epsilon"] == eps[-1] and privacy["target_epsilon"] == 8.0
    ledgers = sorted((fed.tmp / "sites").glob("*/work/privacy/*.json"))
    assert len(ledgers) == 2, ledgers  # one per site, written at the site
    assert all([r["round"] for r in json.loads(p.read_text())["rounds"]] == [1, 2] for p in ledgers)


def test_secure_aggregation_gives_the_plain_mean_without_the_server_seeing_an_update(fed: Fed) -> None:
    """SecAgg+ and plain FedAvg from the same start, seed and data: the same global model (to 1e-4)."""

    base = {"num-server-rounds": 1, "strategy": "fedavg", "strategy-params": "{}", "evaluate-every": 5, "resume": False}
    plain_dir, secure_dir = fed.tmp / "runs" / "plain", fed.tmp / "runs" / "secagg"
    plain = _run(fed, "plain", {**base, "run-dir": str(plain_dir)}, timeout=200)
    secure = _run(
        fed, "secagg", {**base, "run-dir": str(secure_dir), "secagg": '{"threshold_fraction": 1.0}'}, timeout=240
    )
    assert plain["status"] == secure["status"] == "finished:completed", (plain, secure)
    row = read_metrics(secure_dir)[0]
    assert row["sites_answered"] == 2 and row["sites_failed"] == 0, row
    assert row["train"]["num-examples"] == read_metrics(plain_dir)[0]["train"]["num-examples"]  # metrics still arrive
    a = load_model_file(plain_dir / "latest.pt").model.state_dict()
    b = load_model_file(secure_dir / "latest.pt").model.state_dict()
    gaps = {k: float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point()}
    assert max(gaps.values()) < 1e-4, sorted(gaps.items(), key=lambda kv: -kv[1])[:3]
    assert max(gaps.values()) > 0  # (it really went through quantisation and masking)
    model_bytes = sum(t.numel() * 4 for k, t in a.items() if t.is_floating_point())
    for name in SITES:
        log = fed.tmp / "sites" / name / "work" / "audit" / "outbound.jsonl"
        entries = [json.loads(line) for line in log.read_text().splitlines()]
        stages = [e["type"] for e in entries if e["type"].startswith("train/secagg-")]
        assert stages == [
            "train/secagg-setup",
            "train/secagg-share_keys",
            "train/secagg-collect_masked_vectors",
            "train/secagg-unmask",
        ], stages
        masked = next(e for e in entries if e["type"] == "train/secagg-collect_masked_vectors")
        assert 1.9 * model_bytes < masked["bytes"] < 2.2 * model_bytes, (masked["bytes"], model_bytes)  # int64 vectors
        assert set(masked["arrays"]) == {"masked_params"} and masked["metrics"]["num-examples"] > 0
    print(
        f"\nsecure aggregation: round {row['seconds']} s vs plain {read_metrics(plain_dir)[0]['seconds']} s; "
        f"largest weight gap {max(gaps.values()):.2e}; masked upload {masked['bytes']} B vs {model_bytes} B float32"
    )


def test_site_refuses_a_run_whose_code_it_has_not_approved(fed: Fed) -> None:
    if "resume" not in fed.runs or fed.runs["resume"]["status"] != "finished:completed":
        pytest.skip("needs the resumed run")
    work = fed.tmp / "sites" / "site-2" / "work"
    approvals = approvals_path(work)
    approvals.unlink()  # site-2 withdraws its approval: from now on FedRad's code is unknown to it
    worker_log = fed.tmp / "logs" / "worker-site-2.log"
    served_before = worker_log.read_text().count(" train round ")
    info = _run(fed, "refused", {"num-server-rounds": 3, "resume": True, "evaluate-every": 5}, timeout=200)
    assert info["status"] == "finished:completed", info  # FedAdam goes on with site-1's update
    row = read_metrics(fed.run_dir)[-1]
    assert row["round"] == 3 and row["sites_answered"] == 1 and row["sites_failed"] == 1, row
    assert len(row["failures"]) == 2  # its training and (last round) evaluation messages
    assert len(row["site_metrics"]) == 1 and str(row["failures"][0]["node"]) not in row["site_metrics"]
    for failure in row["failures"]:
        assert "not approved" in failure["reason"] and code_sha256(fed.app_dir) in failure["reason"], failure
    assert worker_log.read_text().count(" train round ") == served_before  # refused before any data was read
    summary = verify(work / "audit" / "outbound.jsonl")
    assert summary.refused == 2 and summary.violations == 0
