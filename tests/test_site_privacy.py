"""The site's outbound guard, audit log and code approval, without Flower (the federation tests run them for real)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from client.approval import ApprovalError, approvals_path, approve, approve_installed, is_approved, load_approvals
from client.audit import AuditError, AuditSettings, append_entry, head_path, verify
from client.outbound_guard import guard_reply, spec_of
from server.superlink import stage_app
from shared.code_identity import code_sha256, installed_root
from shared.keys import generate_site_keys
from shared.tasks import TaskSpec

MODEL = {"conv.weight": np.zeros((4, 1, 3, 3), np.float32), "bn.num_batches_tracked": np.array(3, np.int64)}
GOOD_METRICS = {"num-examples": 40, "train-loss": 0.5, "train-acc": 0.75, "train-s": 1.2}
CLS = TaskSpec("classification", ("normal", "nodule"), "smallcnn", 16)  # the run's task: its metric keys pass


def test_guard_passes_model_arrays_and_aggregate_metrics() -> None:
    out = guard_reply(
        "train", task=CLS, incoming=spec_of(MODEL), arrays={k: v + 1 for k, v in MODEL.items()}, metrics=GOOD_METRICS
    )
    assert set(out.arrays) == set(MODEL) and out.metrics == GOOD_METRICS and out.decisions == []


def test_guard_drops_a_per_case_array_and_a_string_metric_but_sends_the_rest() -> None:
    per_case = np.random.default_rng(0).random((40, 2)).astype(np.float32)  # one probability row per patient
    metrics = {**GOOD_METRICS, "worst-case": "RS0160162/STE1E2679A/IMG0001", "case-probs": [0.1, 0.9]}
    out = guard_reply(
        "train", task=CLS, incoming=spec_of(MODEL), arrays={**MODEL, "predictions": per_case}, metrics=metrics
    )
    assert set(out.arrays) == set(MODEL)  # the model still goes out
    assert out.metrics == GOOD_METRICS
    dropped = {d.item for d in out.violations}
    assert dropped == {"array:predictions", "metric:worst-case", "metric:case-probs"}


def test_guard_sends_no_partial_model_and_no_arrays_with_evaluate() -> None:
    bad = {**MODEL, "conv.weight": np.zeros((4, 1, 5, 5), np.float32)}
    out = guard_reply("train", task=CLS, incoming=spec_of(MODEL), arrays=bad, metrics=GOOD_METRICS)
    assert out.arrays is None and {d.item for d in out.violations} == {"array:conv.weight", "arrays"}
    out = guard_reply(
        "evaluate", task=CLS, incoming=spec_of(MODEL), arrays=MODEL, metrics={"num-examples": 30, "auc": 0.8}
    )
    assert out.arrays is None and [d.item for d in out.violations] == ["arrays"]


def test_guard_withholds_patient_metrics_below_min_count() -> None:
    metrics = {
        "num-examples": 6,
        "loss": 0.4,
        "accuracy": 0.5,
        "auc": 0.9,
        "auc-examples": 6,
        "handler-s": 0.3,
        "auc-ci-low": 0.7,
        "auc-ci-high": 1.0,
        "bad": float("nan"),
    }
    out = guard_reply("evaluate", task=CLS, incoming={}, arrays=None, metrics=metrics, min_count=10)
    assert out.metrics == {"num-examples": 6, "auc-examples": 6, "handler-s": 0.3}
    assert {d.item for d in out.decisions if d.action == "withhold"} == {
        "metric:loss",
        "metric:accuracy",
        "metric:auc",
        "metric:auc-ci-low",
        "metric:auc-ci-high",
    }
    assert [d.item for d in out.violations] == ["metric:bad"]
    wide = guard_reply("evaluate", task=CLS, incoming={}, arrays=None, metrics=metrics, min_count=5).metrics
    assert wide.get("auc") == 0.9 and (wide["auc-ci-low"], wide["auc-ci-high"]) == (0.7, 1.0)


def _fill(log: Path, n: int = 3, settings: AuditSettings | None = None) -> None:
    for rnd in range(1, n + 1):
        append_entry(
            log,
            {
                "run": 7,
                "round": rnd,
                "type": "train",
                "bytes": 100,
                "arrays": {"w": "ab" * 32},
                "metrics": {"num-examples": 40},
                "guard": [],
            },
            settings,
        )


def test_audit_chain_verifies_and_detects_a_one_byte_edit(tmp_path: Path) -> None:
    log = tmp_path / "audit" / "outbound.jsonl"
    _fill(log)
    s = verify(log)
    assert (s.entries, s.bytes, s.rounds, s.runs, s.violations) == (3, 300, 3, 1, 0)
    data = bytearray(log.read_bytes())
    i = data.index(b'"bytes":100') + len(b'"bytes":')
    data[i] = ord("9")  # claim 900 bytes instead of 100 in the first entry
    log.write_bytes(bytes(data))
    with pytest.raises(AuditError, match="line 2 does not chain"):
        verify(log)


@pytest.mark.parametrize("edit", ["drop-last", "edit-last", "swap"])
def test_audit_detects_removed_edited_or_reordered_lines(tmp_path: Path, edit: str) -> None:
    log = tmp_path / "outbound.jsonl"
    _fill(log)
    lines = log.read_bytes().splitlines(keepends=True)
    if edit == "drop-last":
        lines = lines[:-1]
    elif edit == "edit-last":
        lines[-1] = lines[-1].replace(b'"round":3', b'"round":4')
    else:
        lines[0], lines[1] = lines[1], lines[0]
    log.write_bytes(b"".join(lines))
    with pytest.raises(AuditError):
        verify(log)


def test_audit_head_is_written_atomically_beside_the_log(tmp_path: Path) -> None:
    log = tmp_path / "outbound.jsonl"
    _fill(log, 2)
    head = json.loads(head_path(log).read_text())
    assert head["entries"] == 2 and len(head["last"]) == 64


def test_code_fingerprint_of_a_staged_app_equals_the_installation(tmp_path: Path) -> None:
    staged = stage_app(tmp_path / "app", installed_root())
    assert code_sha256(staged) == code_sha256(installed_root())
    (staged / "client" / "app.py").write_text((staged / "client" / "app.py").read_text() + "\n# changed\n")
    assert code_sha256(staged) != code_sha256(installed_root())  # any edit is a different fingerprint


def test_approvals_are_kept_and_checked(tmp_path: Path) -> None:
    path = approvals_path(tmp_path)
    assert not is_approved(path, "a" * 64)
    assert approve(path, "A" * 64, note="reviewed by IT") is True and approve(path, "a" * 64) is False
    assert is_approved(path, "a" * 64) and load_approvals(path)[0]["note"] == "reviewed by IT"
    sha = approve_installed(tmp_path)
    assert is_approved(path, sha) and len(load_approvals(path)) == 2
    with pytest.raises(ApprovalError, match="not a sha256"):
        approve(path, "xyz")
    path.write_text("{broken")
    with pytest.raises(ApprovalError, match="not a FedRad approvals file"):
        load_approvals(path)


def _site_yaml(tmp_path: Path) -> Path:
    generate_site_keys(tmp_path)  # site.key signs the audit head; verify checks it with site.pub
    doc = {
        "site_name": "site-1",
        "server_address": "127.0.0.1:9443",
        "ca_cert": "ca.crt",
        "private_key": "site.key",
        "data": "dicom",
        "labels": "labels.csv",
        "classes": ["normal", "nodule"],
        "privacy": {"min_count": 5},
    }
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "client", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_cli_approve_and_audit_verify_show(tmp_path: Path) -> None:
    site = _site_yaml(tmp_path)
    res = _cli("approve", "--config", str(site), "--json")
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["added"] is True and info["approved"][0]["sha256"] == code_sha256(installed_root())
    assert _cli("audit", "verify", "--config", str(site)).returncode == 2  # no log yet: a clear usage error
    _fill(tmp_path / "work" / "audit" / "outbound.jsonl", settings=AuditSettings(key=tmp_path / "site.key"))
    res = _cli("audit", "verify", "--config", str(site), "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["entries"] == 3, res.stderr
    assert json.loads(res.stdout)["signature"].startswith("valid"), res.stdout
    res = _cli("audit", "show", "--config", str(site))
    assert res.returncode == 0 and "Outbound messages" in res.stdout and "num-examples=40" in res.stdout
    log = tmp_path / "work" / "audit" / "outbound.jsonl"
    log.write_bytes(log.read_bytes().replace(b'"round":2', b'"round":5'))
    res = _cli("audit", "verify", "--config", str(site))
    assert res.returncode == 1 and "does not verify" in res.stderr and "line 3" in " ".join(res.stderr.split())


def test_guard_lets_only_suppressed_counts_through_a_statistics_reply() -> None:
    metrics = {
        "images": 40,
        "class:normal": 31,
        "class:nodule": 9,
        "manufacturer:GE MEDICAL": 40,
        "intensity-bin:3": 12,
        "intensity-bin:4": 2,
        "patient:RS0160162": 1,
        "mean-age": 61.5,
    }
    out = guard_reply("query", incoming={}, arrays=None, metrics=metrics, min_count=10)
    assert out.metrics == {"images": 40, "class:normal": 31, "manufacturer:GE MEDICAL": 40, "intensity-bin:3": 12}
    assert {d.item for d in out.decisions if d.action == "withhold"} == {
        "metric:class:nodule",
        "metric:intensity-bin:4",
    }
    assert {d.item for d in out.violations} == {"metric:patient:RS0160162", "metric:mean-age"}


def test_site_statistics_counts_classes_manufacturers_and_intensity() -> None:
    import torch

    from client.site_stats import site_statistics
    from shared.tasks.classification.dataset import SiteDataset

    images = torch.cat([torch.full((3, 1, 4, 4), 0.15), torch.full((2, 1, 4, 4), 0.95)])
    data = SiteDataset(images=images, labels=torch.tensor([0, 0, 1, 1, 1]), classes=["normal", "nodule"])
    stats = site_statistics([data], {"GE MEDICAL": 4, "Siemens/Healthineers<script>": 1})
    assert stats["images"] == 5 and stats["class:normal"] == 2 and stats["class:nodule"] == 3
    assert stats["manufacturer:GE MEDICAL"] == 4 and stats["manufacturer:Siemens_Healthineers_script_"] == 1
    assert (
        stats["intensity-bin:1"] == 3
        and stats["intensity-bin:9"] == 2
        and sum(v for k, v in stats.items() if k.startswith("intensity-bin:")) == 5
    )


def test_audit_verify_counts_a_line_whose_run_is_a_list(tmp_path: Path) -> None:
    """A chained line with an odd run id (not one FedRad writes) is counted, not a crash of `audit verify`."""
    from client.audit import append_entry, verify

    log = tmp_path / "outbound.jsonl"
    append_entry(log, {"run": [1, 2], "round": {"a": 1}, "type": "train", "bytes": 10})
    append_entry(log, {"run": 3, "round": 1, "type": "train", "bytes": 5})
    summary = verify(log)
    assert (summary.entries, summary.runs, summary.rounds, summary.bytes) == (2, 2, 2, 15)
