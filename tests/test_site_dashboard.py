"""The site dashboard's page model (``fedrad-site dashboard``), from real site folders.

Real DICOM (one file truncated), a real site key signing a real audit log written through
``client.audit.append_entry``, real approvals, a real report written by the classification task's report
writer, and the real ``fedrad-site check --json`` child process for the data check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from client.approval import approvals_path, approve, approve_installed
from client.audit import AuditSettings, append_entry, verify
from client.dashboard import SitePage
from client.dashboard_check import CheckResult
from shared.keys import generate_site_keys, load_public_key
from tests import dicom_factory as f

HOSTILE = "<script>alert(1)</script>"
OTHER_CODE = "ab" * 32


def _site(tmp_path: Path, corrupt: bool = True) -> Path:
    """A site folder: 6 labelled images (one truncated when ``corrupt``), a label problem, keys, site.yaml."""
    site = tmp_path / "site"
    rows = ["SOPInstanceUID,label"]
    for i in range(6):
        ds = f.write_image(site / "dicom" / f"P{i}" / f"IM{i}", f.phantom(32, 32, seed=i), patient_id=f"P{i}")
        rows.append(f"{ds.SOPInstanceUID},{'nodule' if i % 2 else 'normal'}")
    if corrupt:
        f.truncate(site / "dicom" / "P5" / "IM5")
    rows.append("1.2.3.4.5.6,normal")  # a label without an image
    (site / "labels.csv").write_text("\n".join(rows) + "\n")
    generate_site_keys(site)
    doc = {
        "site_name": "site-1",
        "server_address": "127.0.0.1:9443",
        "ca_cert": "ca.crt",
        "private_key": "site.key",
        "data": "dicom",
        "labels": "labels.csv",
        "classes": ["normal", "nodule"],
        "image_size": 32,
        "privacy": {"min_count": 5, "max_epsilon": 8.0},
    }
    (site / "site.yaml").write_text(yaml.safe_dump(doc))
    return site / "site.yaml"


def _log(config: Path) -> Path:
    return config.parent / "work" / "audit" / "outbound.jsonl"


def _settings(config: Path) -> AuditSettings:
    return AuditSettings(key=config.parent / "site.key")


def _send(config: Path) -> None:
    """What a site's ClientApp writes: two train rounds, an evaluation with a withheld metric, a refusal."""
    log, settings = _log(config), _settings(config)
    for rnd in (1, 2):
        append_entry(
            log,
            {
                "run": 7,
                "round": rnd,
                "type": "train",
                "bytes": 1000 * rnd,
                "arrays": {"w": "ab" * 32},
                "metrics": {"num-examples": 40, "train-loss": 0.5, "dp-epsilon": 1.5 * rnd},
                "guard": [],
            },
            settings,
        )
    append_entry(
        log,
        {
            "run": 7,
            "round": 2,
            "type": "evaluate",
            "bytes": 0,
            "arrays": {},
            "metrics": {"num-examples": 4, HOSTILE: 1},
            "guard": [
                {"item": "metric:auc", "action": "withhold", "reason": "computed over 4 case(s) < min_count=5"},
                {"item": "metric:worst-case", "action": "drop", "reason": "not an allowed aggregate metric"},
            ],
        },
        settings,
    )
    reason = f"run refused by the site: FedRad code sha256 {OTHER_CODE} is not approved there"
    append_entry(log, {"run": 8, "round": 1, "type": "refused", "reason": reason, "bytes": len(reason)}, settings)
    append_entry(log, {"run": 9, "round": 1, "type": "refused", "reason": HOSTILE, "bytes": len(HOSTILE)}, settings)


def _no_check(config: Path) -> CheckResult:
    return CheckResult("2026-01-01T00:00:00+00:00", 0.0, 0, {"ok": True, "verdict": "not checked in this test"})


def _widget(page: dict[str, Any], widget_id: str) -> dict[str, Any]:
    found = [wd for s in page["sections"] for wd in s["widgets"] if wd["id"] == widget_id]
    assert len(found) == 1, f"{widget_id}: {len(found)} widgets"
    return found[0]


def _tile(page: dict[str, Any], widget_id: str, label: str) -> dict[str, Any]:
    return next(t for t in _widget(page, widget_id)["items"] if t["label"] == label)


def _page(config: Path, **kw: Any) -> tuple[SitePage, dict[str, Any]]:
    source = SitePage(config, check_runner=kw.pop("check_runner", _no_check), **kw)
    source.wait_for_check(60)
    return source, source.page()


def test_sent_section_totals_are_verify_s_and_the_log_table_shows_guard_and_refusals(tmp_path: Path) -> None:
    config = _site(tmp_path, corrupt=False)
    _send(config)
    summary = verify(_log(config), load_public_key(config.parent / "site.pub"))
    _, page = _page(config)
    assert [s["id"] for s in page["sections"]] == ["audit", "data", "code", "privacy", "reports"]
    json.dumps(page, allow_nan=False)  # plain JSON
    banner = _widget(page, "audit-status")
    assert banner["level"] == "ok"
    assert banner["text"] == f"verified: 5 messages, {summary.bytes} bytes, signature ok"
    assert _tile(page, "audit-totals", "bytes")["value"] == str(summary.bytes)
    assert _tile(page, "audit-totals", "messages")["value"] == "5"
    assert _tile(page, "audit-totals", "refusals")["value"] == "2"
    assert _tile(page, "audit-totals", "withheld metrics")["value"] == "1"
    assert _tile(page, "audit-totals", "guard violations")["value"] == "1"
    table = _widget(page, "audit-entries")
    rows = [dict(zip(table["columns"], r)) for r in table["rows"]]
    assert [r["#"] for r in rows] == [5, 4, 3, 2, 1]  # newest first
    assert rows[0]["reason"] == {"text": HOSTILE, "level": "error"}  # a plain string, never markup
    assert "is not approved there" in rows[1]["reason"]["text"]
    assert "metric:auc" in rows[2]["withheld"]["text"] and "metric:worst-case" in rows[2]["dropped"]["text"]
    assert f"{HOSTILE}=1" in rows[2]["metrics sent"]
    bars = _widget(page, "audit-bytes")
    assert bars["groups"] == ["round 1", "round 2"]
    assert {s["name"]: s["values"] for s in bars["series"]}["run 7"] == [1000, 2000]
    messages = _widget(page, "audit-messages")
    assert messages["groups"] == ["run 7", "run 8", "run 9"] and messages["stacked"] is True
    eps = _widget(page, "audit-epsilon")
    assert eps["series"] == [{"name": "run 7", "points": [[1, 1.5], [2, 3.0]]}]
    # the refusal for unapproved code is waiting for approval, with its fingerprint
    waiting = _widget(page, "code-waiting")
    assert waiting["rows"][0][0] == OTHER_CODE and waiting["rows"][0][-1]["text"] == "waiting for approval"
    approve(approvals_path(config.parent / "work"), OTHER_CODE, note=HOSTILE)
    page = SitePage(config, check_runner=_no_check).page()
    assert _widget(page, "code-waiting")["rows"][0][-1]["text"] == "approved since"
    assert [a[0] for a in _widget(page, "code-approved")["rows"]] == [OTHER_CODE]
    assert _widget(page, "code-approved")["rows"][0][2] == HOSTILE
    assert _widget(page, "code-status")["level"] == "warn"  # the installed code itself is not approved


def test_a_tampered_log_shows_the_verify_error_and_no_totals(tmp_path: Path) -> None:
    config = _site(tmp_path, corrupt=False)
    _send(config)
    log = _log(config)
    source, page = _page(config)
    assert _widget(page, "audit-status")["level"] == "ok"
    log.write_bytes(log.read_bytes().replace(b'"round":2', b'"round":5', 1))  # one line edited
    with pytest.raises(Exception) as exc:
        verify(log, load_public_key(config.parent / "site.pub"))
    page = source.page()  # the edit is seen at the next poll, not after a cache's age
    banner = _widget(page, "audit-status")
    assert banner["level"] == "error" and str(exc.value) in banner["text"]
    assert _tile(page, "audit-totals", "bytes")["value"] == "?"
    assert "UNVERIFIED" in _widget(page, "audit-entries")["title"]  # the lines are still shown as evidence


def test_odd_log_values_still_give_plain_json(tmp_path: Path) -> None:
    """A line can hold what the guard never lets out (NaN, a nested value): the page stays strict JSON."""
    config = _site(tmp_path, corrupt=False)
    odd = {"run": 1, "round": float("nan"), "type": HOSTILE, "bytes": 5, "metrics": {"x": float("inf")}}
    append_entry(_log(config), odd, _settings(config))
    source, page = _page(config)
    assert HOSTILE in json.dumps(page, allow_nan=False) and _widget(page, "audit-status")["level"] == "ok"
    row = dict(zip(_widget(page, "audit-entries")["columns"], _widget(page, "audit-entries")["rows"][0]))
    assert row["round"] == "nan" and row["type"] == HOSTILE and row["metrics sent"] == "x=inf"
    append_entry(_log(config), {**odd, "run": [1]}, _settings(config))  # a run id FedRad never writes
    page = source.page()
    json.dumps(page, allow_nan=False)
    assert _widget(page, "audit-status")["level"] == "ok"  # verify() counts it by its JSON text
    assert _widget(page, "audit-entries")["rows"][0][2] == "[1]"
    assert _tile(page, "audit-totals", "runs")["value"] == "2"


def test_a_site_that_never_sent_anything_renders(tmp_path: Path) -> None:
    config = _site(tmp_path, corrupt=False)
    approve_installed(config.parent / "work")
    _, page = _page(config)
    banner = _widget(page, "audit-status")
    assert banner["level"] == "info" and "nothing has left this hospital" in banner["text"]
    assert _tile(page, "audit-totals", "bytes")["value"] == "0"
    assert _widget(page, "audit-entries")["rows"] == []
    assert _widget(page, "audit-bytes")["groups"] == []
    assert _widget(page, "code-status")["level"] == "ok"
    assert _widget(page, "code-waiting")["rows"] == []
    assert _widget(page, "reports-list")["rows"] == [] and _widget(page, "reports-links")["items"] == []
    privacy = dict(_widget(page, "privacy-settings")["items"])
    assert privacy["min_count (metrics over fewer cases are withheld)"] == "5"
    assert privacy["max epsilon (per-image DP)"] == "8.0"
    connection = dict(_widget(page, "privacy-connection")["items"])
    assert connection["site key fingerprint"].startswith("SHA256:")
    key = (config.parent / "site.key").read_text()
    assert key.strip().splitlines()[1] not in json.dumps(page)  # the key itself is never on the page
    json.dumps(page, allow_nan=False)


def test_reports_are_listed_with_document_links_to_their_files(tmp_path: Path) -> None:
    from shared.metrics import evaluate_predictions
    from shared.tasks.classification.report import write_report

    config = _site(tmp_path, corrupt=False)
    y = np.array([0, 1] * 10)
    proba = np.stack([1 - (0.2 + 0.6 * y), 0.2 + 0.6 * y], axis=1)
    out = config.parent / "work" / "reports" / "global-r10"
    classes = ["normal", "nodule"]
    write_report(out, evaluate_predictions(y, proba, classes, n_bootstrap=0), y, proba, classes)
    source, page = _page(config)
    rows = _widget(page, "reports-list")["rows"]
    assert len(rows) == 1 and rows[0][0] == "global-r10" and rows[0][1] == "classification"
    assert rows[0][3].startswith("AUC 1.000")
    links = _widget(page, "reports-links")["items"]
    assert links[0]["href"] == f"/doc/{rows[0][-1]}" and links[0]["href"].startswith("/doc/report-")
    docs = source.documents()
    doc = docs[links[0]["href"].removeprefix("/doc/")]
    assert doc.path == out / "report.html" and doc.media_type == "text/html"
    assert docs[f"{rows[0][-1]}-metrics"].path == out / "metrics.json"
    assert all(str(tmp_path) not in link["href"] for link in links)  # ids, never paths


def test_the_data_check_is_the_check_command_s_json_with_rejection_reasons(tmp_path: Path) -> None:
    config = _site(tmp_path, corrupt=True)
    source = SitePage(config)  # the real `fedrad-site check --json`, in its child process
    first = source.page()
    assert _widget(first, "data-status")["text"].startswith(("checking", "ready to train"))
    source.wait_for_check(120)
    report = source.check.result.report
    assert report["images"] == {"files": 6, "usable": 5, "rejected": 1} and "hardware" in report
    page = source.page()
    status = _widget(page, "data-status")
    assert status["level"] == "ok" and status["text"].startswith(report["verdict"]) and "checked" in status["text"]
    rejected = _widget(page, "data-rejected")
    assert [r[0] for r in rejected["rows"]] == ["truncated"] and rejected["rows"][0][3].startswith("P5/IM5")
    assert _widget(page, "data-rejected-bars")["groups"] == ["truncated"]
    assert _tile(page, "data-totals", "usable images")["value"] == "5"
    problems = _widget(page, "data-label-problems")["rows"]
    assert ["1.2.3.4.5.6", "image-missing"] in [p[:2] for p in problems]


def test_a_failed_check_is_a_banner_not_an_exception(tmp_path: Path) -> None:
    config = _site(tmp_path, corrupt=False)

    def broken(_: Path) -> CheckResult:
        raise RuntimeError(HOSTILE)

    _, page = _page(config, check_runner=broken)
    status = _widget(page, "data-status")
    assert status["level"] == "error" and HOSTILE in status["text"]


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "client", *args], capture_output=True, text=True, env=env, timeout=120)


def test_cli_json_prints_the_page_after_the_check_with_verify_s_bytes(tmp_path: Path) -> None:
    config = _site(tmp_path, corrupt=True)
    _send(config)
    verified = _cli("audit", "verify", "--config", str(config), "--json")
    assert verified.returncode == 0, verified.stderr
    res = _cli("dashboard", "--config", str(config), "--json")
    assert res.returncode == 0, res.stderr
    page = json.loads(res.stdout)
    assert _tile(page, "audit-totals", "bytes")["value"] == str(json.loads(verified.stdout)["bytes"])
    assert _widget(page, "data-status")["level"] == "ok"  # waited for the check
    assert _widget(page, "data-rejected")["rows"][0][0] == "truncated"
    refused = _cli("dashboard", "--config", str(config), "--host", "0.0.0.0")
    assert refused.returncode == 2 and "refusing to serve" in refused.stderr, refused.stderr


def test_evaluate_writes_into_the_work_dir_s_reports_by_default(tmp_path: Path) -> None:
    from client.site_config import default_report_dir

    config = _site(tmp_path, corrupt=False)
    folder = default_report_dir(config, Path("/models/global-r10.pt"))
    assert folder.parent == config.parent / "work" / "reports" and folder.name.startswith("global-r10-")
    res = _cli("evaluate", "--model", str(tmp_path / "m.pt"), "--data", str(tmp_path))
    assert res.returncode == 2 and "--out" in res.stderr
