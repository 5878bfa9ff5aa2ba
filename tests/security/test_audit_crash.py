"""Issue 21, finding 5: the site's audit log survives a crash, and a rewrite of log and head is caught.

Real files, real child processes (killed with SIGKILL between a line's fsync
and its head, through the ``FEDRAD_AUDIT_CRASH_AFTER_LINE`` hook), a real site
key (OpenSSH EC, as ``fedrad-site keygen`` makes it), a real syslog datagram
socket, and the production ClientApp functions for the refusal path.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict
from flwr.supercore.task_identity import TaskIdentity

import client.app as client_app
from client.audit import (
    CRASH_ENV,
    RECOVERY,
    TORN_SUFFIX,
    AuditError,
    AuditSettings,
    SiteAuditLog,
    append_entry,
    prepare,
    verify,
)
from client.audit_head import FILE_MODE, Head, head_path, new_head, read_head, write_head
from client.audit_pin import PinSettings
from shared.keys import generate_site_keys, load_public_key

ROOT = Path(__file__).resolve().parents[2]
CHILD = """
import sys
from pathlib import Path
from client.audit import AuditSettings, append_entry
from client.audit_pin import PinSettings
log, key, pins, n = sys.argv[1:5]
settings = AuditSettings(key=Path(key), pins=PinSettings(file=Path(pins)))
for i in range(int(n)):
    print(append_entry(Path(log), {"run": 1, "round": i + 1, "type": "train", "bytes": 10}, settings)["seq"], flush=True)
"""


@pytest.fixture
def site(tmp_path: Path) -> tuple[Path, AuditSettings, ec.EllipticCurvePublicKey]:
    """(log, signing + pinning settings, the site's public key); the pins live in another folder."""
    priv, pub = generate_site_keys(tmp_path / "keys")
    (tmp_path / "pins").mkdir()
    settings = AuditSettings(key=priv, pins=PinSettings(file=tmp_path / "pins" / "heads.jsonl"))
    return tmp_path / "work" / "audit" / "outbound.jsonl", settings, load_public_key(pub)


def _child(log: Path, settings: AuditSettings, n: int, crash: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop(CRASH_ENV, None)
    if crash:
        env[CRASH_ENV] = "1"
    args = [str(log), str(settings.key), str(settings.pins.file), str(n)]
    return subprocess.run(
        [sys.executable, "-c", CHILD, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def _entry(rnd: int) -> dict:
    return {"run": 1, "round": rnd, "type": "evaluate", "bytes": 0, "metrics": {"auc": 0.9}}


def test_a_kill_between_line_and_head_verifies_after_restart_and_keeps_chaining(site) -> None:
    log, settings, public = site
    assert _child(log, settings, 3).stdout.split() == ["1", "2", "3"]
    killed = _child(log, settings, 1, crash=True)  # dies right after line 4's fsync, before its head
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert len(log.read_bytes().splitlines()) == 4 and read_head(log).entries == 3  # the crash's trace

    summary = verify(log, public, settings.pins.file)  # read-only: the trace verifies, with a note
    assert summary.entries == 4 and summary.signature.startswith("valid") and summary.pins_checked == 3
    assert any("line 4 is not covered by the head yet" in n for n in summary.notes)

    restarted = _child(log, settings, 2)  # the next writer rolls the head forward, records it, continues
    assert restarted.returncode == 0 and restarted.stdout.split() == ["6", "7"], restarted.stderr
    entries = [json.loads(line) for line in log.read_bytes().splitlines()]
    assert [e["seq"] for e in entries] == list(range(1, 8))  # never a repeated sequence number
    assert entries[4]["type"] == RECOVERY and entries[4]["covered"] == 4 and "stopped between" in entries[4]["reason"]
    summary = verify(log, public, settings.pins.file)
    assert (summary.entries, summary.recoveries, summary.pins_checked, summary.by_type) == (6, 1, 7, {"train": 6})
    assert read_head(log).entries == 7 and read_head(log).signed


def test_b_a_torn_last_line_is_cut_off_and_kept(site) -> None:
    log, settings, public = site
    for rnd in (1, 2):
        append_entry(log, _entry(rnd), settings)
    torn = b'{"arrays":{},"bytes":0,"guard":[],"metrics":{"auc":0.9'  # a crash mid-write: no newline
    with log.open("ab") as fh:
        fh.write(torn)
    summary = verify(log, public)
    assert summary.entries == 2 and any("incomplete last line (54 bytes)" in n for n in summary.notes)

    assert append_entry(log, _entry(3), settings)["seq"] == 4  # line 3 records the cut
    lines = log.read_bytes().splitlines(keepends=True)
    assert all(line.endswith(b"\n") for line in lines) and torn not in log.read_bytes()
    note = json.loads(lines[2])
    assert note["type"] == RECOVERY and note["torn_bytes"] == len(torn) and note["torn_file"] == log.name + TORN_SUFFIX
    kept = json.loads(log.with_name(log.name + TORN_SUFFIX).read_text())
    assert base64.b64decode(kept["base64"]) == torn and kept["offset"] == sum(len(x) for x in lines[:2])
    summary = verify(log, public)
    assert (summary.entries, summary.recoveries, summary.notes[0].startswith("line 3: recovered")) == (3, 1, True)


def _rewrite(log: Path) -> tuple[int, str, int]:
    """What someone without the key can do: change line 1, re-chain every line; (lines, last hash, size)."""
    import hashlib

    prev, out = "0" * 64, []
    for raw in log.read_bytes().splitlines():
        entry = json.loads(raw)
        if entry["seq"] == 1:
            entry["bytes"] = 0  # hide what the first message sent
        entry["prev"] = prev
        line = json.dumps(entry, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        prev = hashlib.sha256(line).hexdigest()
        out.append(line)
    log.write_bytes(b"".join(out))
    return len(out), prev, log.stat().st_size


def test_c_rewriting_log_and_head_without_the_key_fails_signed_verification(site) -> None:
    log, settings, public = site
    for rnd in (1, 2, 3):
        append_entry(log, {**_entry(rnd), "bytes": 4096}, settings)
    signed = read_head(log)
    n, last, size = _rewrite(log)
    forged = {
        "unsigned": Head(n, last, size, signed.time),
        "another key": new_head(n, last, size, ec.generate_private_key(ec.SECP384R1())),
        "copied signature": Head(n, last, size, signed.time, signed.key, signed.sig),
    }
    expect = {
        "unsigned": "is not signed",
        "another key": "names key",
        "copied signature": "signature does not match",
    }
    for name, head in forged.items():
        write_head(log, head)
        assert verify(log).bytes == 8192  # the chain alone cannot tell: it is consistent
        with pytest.raises(AuditError, match=expect[name]):
            verify(log, public)
        before = (log.read_bytes(), head_path(log).read_bytes())
        with pytest.raises(AuditError, match=expect[name].replace("is not signed", "not signed")):
            append_entry(log, _entry(9), settings)  # the site's writer will not continue a forged chain
        assert (log.read_bytes(), head_path(log).read_bytes()) == before  # nor rewrite the evidence


def test_d_pinned_heads_detect_a_rewrite_even_with_the_key(site, tmp_path: Path) -> None:
    log, settings, public = site
    short = tempfile.mkdtemp(prefix="fa", dir="/tmp")  # a Unix socket path must stay under 108 bytes
    sock_path = Path(short) / "log.sock"
    syslog = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    syslog.bind(str(sock_path))
    syslog.settimeout(5)
    try:
        pins = PinSettings(file=settings.pins.file, syslog=str(sock_path))
        for rnd in (1, 2, 3, 4):
            append_entry(log, {**_entry(rnd), "bytes": 4096}, AuditSettings(settings.key, pins))
        datagrams = [syslog.recv(65536).decode() for _ in range(4)]
    finally:
        syslog.close()
        sock_path.unlink()
        os.rmdir(short)
    assert all("fedrad-audit: " in d and str(log.resolve()) in d for d in datagrams)
    assert f'"entries": 4, "key": "{read_head(log).key}"' in datagrams[-1]
    assert len(settings.pins.file.read_text().splitlines()) == 4 and settings.pins.file.stat().st_mode & 0o777 == 0o640

    from shared.keys import load_private_key

    n, last, size = _rewrite(log)  # an insider with the site key re-signs the head
    write_head(log, new_head(n, last, size, load_private_key(settings.key)))
    assert verify(log, public).signature.startswith("valid")  # the signature alone cannot tell now
    with pytest.raises(AuditError, match="rewritten after it was pinned"):
        verify(log, public, settings.pins.file)

    res = _cli_verify(tmp_path, settings, "--pinned", str(settings.pins.file))  # the same through the CLI
    assert res.returncode == 1 and "rewritten after it was pinned" in " ".join(res.stderr.split()), res.stderr


def _cli_verify(tmp_path: Path, settings: AuditSettings, *args: str) -> subprocess.CompletedProcess:
    doc = {
        "site_name": "site-t",
        "server_address": "127.0.0.1:9443",
        "ca_cert": "ca.crt",
        "private_key": str(settings.key),
        "data": "dicom",
        "labels": "labels.csv",
        "audit": {"pin_file": str(settings.pins.file)},
    }
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(doc))
    return subprocess.run(
        [sys.executable, "-m", "client", "audit", "verify", "--config", str(tmp_path / "site.yaml"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )


def test_only_the_crash_pattern_is_repaired_anything_else_is_refused_untouched(site) -> None:
    log, settings, public = site
    for rnd in (1, 2):
        append_entry(log, _entry(rnd), settings)
    lines = log.read_bytes().splitlines(keepends=True)
    extra = [json.dumps({"seq": 3, "prev": "0" * 64}).encode() + b"\n"]  # a line that does not chain
    cases = {
        "does not chain": b"".join(lines) + extra[0],
        "at the end were removed": lines[0],
        "is not the line its head": lines[0] + lines[0],
    }
    for reason, content in cases.items():
        log.write_bytes(content)
        before = head_path(log).read_bytes()
        with pytest.raises(AuditError, match=reason):
            append_entry(log, _entry(3), settings)
        assert (log.read_bytes(), head_path(log).read_bytes()) == (content, before)
    assert log.stat().st_mode & 0o777 == FILE_MODE and head_path(log).stat().st_mode & 0o777 == FILE_MODE


def test_an_unsigned_log_is_signed_only_at_site_start_and_that_is_recorded(tmp_path: Path, site) -> None:
    _, settings, public = site
    log = tmp_path / "old" / "outbound.jsonl"
    for rnd in (1, 2):
        append_entry(log, _entry(rnd), AuditSettings())  # written before the site signed its heads
    head = read_head(log)
    head_path(log).write_text(json.dumps({"entries": head.entries, "last": head.last}))  # the pre-v2 head format
    with pytest.raises(AuditError, match="not signed"):
        append_entry(log, _entry(3), settings)  # a message never adopts it: that would bless a forgery
    with pytest.raises(AuditError, match="not signed"):
        verify(log, public)
    assert "signed with the site key" in str(prepare(log, settings))  # `fedrad-site start` does, and says so
    assert append_entry(log, _entry(3), settings)["seq"] == 4
    summary = verify(log, public)
    assert summary.signature.startswith("valid") and summary.recoveries == 1 and summary.entries == 3


@pytest.fixture
def task_identity() -> Iterator[None]:
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def _query(node_config: dict) -> tuple[Message, Context]:
    meta = Metadata(
        run_id=7,
        message_id="m1",
        src_node_id=0,
        dst_node_id=3,
        reply_to_message_id="",
        group_id="",
        created_at=time.time(),
        ttl=60.0,
        message_type="query",
    )
    msg = Message(content=RecordDict({"config": ConfigRecord({"server-round": 1})}), metadata=meta)
    return msg, Context(run_id=7, node_id=3, node_config=node_config, state=RecordDict(), run_config={})


def test_e_a_corrupt_head_makes_every_reply_a_clear_error_not_a_crash(site, task_identity: None) -> None:
    log, settings, _ = site
    node = {
        "site-config": str(log.parents[2] / "site.yaml"),
        "site-name": "site-t",
        "audit-log": str(log),
        "approvals": str(log.parents[1] / "approved-code.json"),
        "audit-key": str(settings.key),
    }
    append_entry(log, _entry(1), settings)
    head_path(log).write_bytes(b'{"entries": 1, "last": ')  # damaged or edited
    evidence = (log.read_bytes(), head_path(log).read_bytes())
    for _ in range(2):  # every later message: the same refusal, never an exception
        msg, ctx = _query(node)
        reply = client_app.query(msg, ctx)
        assert reply.has_error()
        reason = reply.error.reason
        assert reason.startswith(f"site site-t: audit log at {log} failed verification: ") and reason.endswith(
            "run fedrad-site audit verify"
        )
        assert "not valid JSON" in reason
    audit = SiteAuditLog.from_node_config(node)
    sent = client_app._send(msg, Message(RecordDict(), reply_to=msg), audit, {"run": 7, "round": 1, "type": "query"})
    assert sent.has_error() and "failed verification" in sent.error.reason  # the path app.py takes for a reply
    assert (log.read_bytes(), head_path(log).read_bytes()) == evidence  # nothing was rewritten


def test_e_after_a_crash_the_client_app_repairs_and_records_as_usual(site, task_identity: None) -> None:
    log, settings, public = site
    assert _child(log, settings, 1, crash=True).returncode == -signal.SIGKILL
    node = {
        "site-config": str(log.parents[2] / "site.yaml"),
        "site-name": "site-t",
        "audit-log": str(log),
        "approvals": str(log.parents[1] / "approved-code.json"),
        "audit-key": str(settings.key),
    }
    msg, ctx = _query(node)
    reply = client_app.query(msg, ctx)
    assert reply.has_error() and "is not approved" in reply.error.reason  # the usual refusal, not an audit one
    entries = [json.loads(line) for line in log.read_bytes().splitlines()]
    assert [e["type"] for e in entries] == ["train", RECOVERY, "refused"] and verify(log, public).recoveries == 1


def test_site_start_repairs_a_crash_warns_on_a_same_volume_pin_and_stops_on_tampering(site, tmp_path: Path) -> None:
    from client.audit_site import start_audit
    from client.site_config import load_site_file, site_node_config
    from shared.config import ConfigError

    log, settings, _ = site
    _cli_verify(tmp_path, settings)  # writes site.yaml (work dir beside it, pins in tmp_path/pins)
    config = tmp_path / "site.yaml"
    cfg = load_site_file(config)
    node = site_node_config(config, cfg)
    assert (node["audit-log"], node["audit-key"], node["audit-pin-file"]) == (
        str(log),
        str(settings.key),
        str(settings.pins.file),
    )
    assert not log.exists() and all("same volume" in n for n in start_audit(config, cfg))  # nothing to repair yet
    assert _child(log, settings, 1, crash=True).returncode == -signal.SIGKILL
    notes = start_audit(config, cfg)
    assert "same volume" in notes[0] and "stopped between writing line 1" in notes[1]
    head_path(log).write_text("{}")
    with pytest.raises(ConfigError, match="fails its checks, not joining"):
        start_audit(config, cfg)
    cfg.audit.pin_file = tmp_path / "unmounted" / "heads.jsonl"
    with pytest.raises(ConfigError, match="audit.pin_file .* does not exist"):
        start_audit(config, cfg)


def test_a_pin_file_that_cannot_be_written_withholds_the_reply_with_a_reason(site, task_identity: None) -> None:
    log, settings, _ = site
    missing = log.parents[2] / "unmounted" / "heads.jsonl"
    node = {
        "audit-log": str(log),
        "site-name": "site-t",
        "audit-key": str(settings.key),
        "audit-pin-file": str(missing),
    }
    msg, _ = _query(node)
    audit = SiteAuditLog.from_node_config(node)
    sent = client_app._send(msg, Message(RecordDict(), reply_to=msg), audit, {"run": 7, "round": 1, "type": "query"})
    assert sent.has_error() and sent.error.reason.startswith(
        "site site-t: reply withheld, the audit head was not pinned"
    )
    assert str(missing) in sent.error.reason and "audit.pin_file" in sent.error.reason
