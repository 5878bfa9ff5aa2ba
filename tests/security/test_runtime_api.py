"""Finding 4: another local user cannot use a site's Runtime API, and the site still trains.

The fast tests check the credential files (client/runtime_api.py) and the
SuperExec's token hand-over (client/superexec.py). The slow one replays the
review's attack (tests/security/runtime_attack.py) against a real SuperNode,
SuperExec and warm worker of a loopback consortium during a real round: as this
uid and, when run as root, as uid ``nobody`` (skipped cleanly otherwise).
Before the fix the same attack got HTTP 200, claimed the training task, read
the server's message and made the run fail.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.runtime_api import RuntimeApiError, ensure_runtime_credentials, runtime_credentials
from client.superexec import TokenFileExecutor
from shared.processes import ProcessId, ProcessSet
from tests.integration.cleanup import stop_all_and_check
from tests.security import runtime_probe as rp
from tests.security.runtime_attack import AttackReport, attack


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_credentials_are_created_private_once_and_reused(tmp_path: Path) -> None:
    creds = ensure_runtime_credentials(tmp_path / "work")
    assert _mode(creds.secret.parent) == 0o700
    assert {p.name: _mode(p) for p in (creds.secret, creds.key, creds.cert)} == {
        "secret": 0o600,
        "tls.key": 0o600,
        "tls.crt": 0o600,
    }
    secret, key = creds.secret.read_bytes(), creds.key.read_bytes()
    assert len(secret) == 32 and secret != ensure_runtime_credentials(tmp_path / "other").secret.read_bytes()
    again = ensure_runtime_credentials(tmp_path / "work")  # a restart reuses them
    assert again.secret.read_bytes() == secret and again.key.read_bytes() == key
    assert not [p for p in creds.secret.parent.iterdir() if p.name.startswith(".")]  # no temp files left


@pytest.mark.parametrize("damage", ["group-readable", "world-readable folder", "symlink", "short"])
def test_unsafe_credentials_are_refused_with_what_to_do(tmp_path: Path, damage: str) -> None:
    creds = ensure_runtime_credentials(tmp_path)
    if damage == "group-readable":
        os.chmod(creds.secret, 0o640)
        named = creds.secret
    elif damage == "world-readable folder":
        os.chmod(creds.secret.parent, 0o755)
        named = creds.secret.parent
    elif damage == "symlink":
        target = tmp_path / "elsewhere"
        target.write_bytes(os.urandom(32))
        os.chmod(target, 0o600)
        creds.secret.unlink()
        creds.secret.symlink_to(target)
        named = creds.secret
    else:
        creds.secret.write_bytes(b"short")
        named = creds.secret
    with pytest.raises(RuntimeApiError) as err:
        ensure_runtime_credentials(tmp_path)
    assert str(named) in str(err.value) and "delete" in str(err.value)


def test_expiring_certificate_is_renewed_and_the_secret_kept(tmp_path: Path) -> None:
    from cryptography import x509

    creds = ensure_runtime_credentials(tmp_path)
    secret = creds.secret.read_bytes()
    creds.cert.write_bytes(b"not a certificate")
    ensure_runtime_credentials(tmp_path)
    cert = x509.load_pem_x509_certificate(creds.cert.read_bytes())
    assert "127.0.0.1" in str(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    assert creds.secret.read_bytes() == secret


def test_superexec_passes_the_token_in_a_private_file_that_outlives_no_clientapp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same command line as Flower's own executor except ``--token TOKEN`` → ``--token-file FILE`` (0600, 0700
    folder), and the file is gone once the process has exited."""
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor import ExecutionSpec, SubprocessExecutor

    spec = ExecutionSpec(
        task_type=TaskType.CLIENT_APP,
        runtime_api_address="127.0.0.1:1234",
        token="ab" * 32,
        insecure=False,
        root_certificates_path="/x/tls.crt",
        runtime_dependency_install=False,
        parent_pid=4321,
        suppress_output=False,
        task_id=7,
    )
    flowers: list[list[str]] = []
    monkeypatch.setattr(subprocess, "Popen", lambda args, *a, **k: flowers.append(list(args)))
    SubprocessExecutor().launch(spec)  # what Flower itself would run
    monkeypatch.undo()
    tokens = tmp_path / "runtime-api" / "tokens"
    ours = TokenFileExecutor(tokens)
    token_file = ours.write_token(spec.token)
    cmd = ours.command(spec, token_file)
    i = flowers[0].index("--token")
    assert cmd == [*flowers[0][:i], "--token-file", str(token_file), *flowers[0][i + 2 :]]
    assert spec.token not in " ".join(cmd) and token_file.read_text() == spec.token
    assert _mode(token_file) == 0o600 and _mode(tokens) == 0o700

    monkeypatch.setattr(ours, "command", lambda spec, path: [sys.executable, "-c", "pass"])
    ours.launch(spec)
    (launched,) = ours.running
    assert launched.read_text() == spec.token
    ours.running[launched].wait(timeout=30)
    ours.reconcile()
    assert not launched.exists() and not ours.running
    ours.close()


# ---------------------------------------------------------------- the attack on a real site


@pytest.fixture(scope="module")
def report() -> Iterator[AttackReport]:
    # Not under pytest's 0700 tmp folder: only the modes FedRad gives its own files may keep uid nobody out.
    root = Path(tempfile.mkdtemp(prefix="fedrad-runtime-api-"))
    os.chmod(root, 0o755)
    nobody_python = rp.interpreter_for(rp.NOBODY) if os.getuid() == 0 and shutil.which("setpriv") else None
    ps = ProcessSet(root / "logs")
    started: set[ProcessId] = set()
    try:
        rep = attack(ps, root, nobody_python=nobody_python)
        print("\n" + "\n".join(rep.lines()))
        yield rep
    finally:
        stop_all_and_check(ps, started)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_unauthenticated_runtime_calls_are_refused_while_the_site_trains(report: AttackReport) -> None:
    assert report.tls and report.secret is not None
    assert report.run_status == "finished:completed", report.lines()  # the real SuperExec got every task
    log = report.log.read_text(errors="replace")
    assert log.count("Receiving: train message") == 1 and log.count("Receiving: evaluate message") == 1
    assert log.count("Start `flwr-clientapp` process") == 2  # ClientApp output stays in the SuperNode's log
    assert "Connection attempt failed" not in log  # the SuperExec waited for the Runtime API instead of retrying
    for who, codes in report.idle.items():  # acquire-task plain and with a forged signature; a guessed task token
        assert codes[:3] == [
            ("/v1/runtime/acquire-task", 401),
            ("/v1/runtime/acquire-task", 401),
            ("/v1/runtime/pull-task-input", 401),
        ], who
    for who, statuses in report.during.items():
        assert set(statuses) == {401} and sum(statuses.values()) >= 10, (who, statuses)
    assert report.stolen == []
    assert "SuperExec authentication failed" in log  # the refusals are on record in the site's log


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_no_task_token_is_readable_by_another_local_user(report: AttackReport) -> None:
    scan = report.scan
    assert scan["processes"] >= 2, scan  # the scan saw the ClientApps of both messages ...
    assert scan["tokens_on_command_lines"] == 0 and scan["pull_with_token"] == [], scan  # ... and no token
    assert len(scan["token_files"]) >= 2, scan
    if "nobody" not in report.idle:
        pytest.skip("not root (or no setpriv): the token files' and the secret's refusal to uid nobody is not checked")
    assert set(scan["token_files"].values()) <= {"PermissionError", "FileNotFoundError"}, scan
    assert report.secret_read_by_nobody == "PermissionError"
    assert not list(runtime_credentials(report.secret.parent.parent).tokens.iterdir())  # all removed after use


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_runtime_api_listens_on_loopback_only(report: AttackReport) -> None:
    # read after the run: the consortium is still up until the module ends
    rows = [ln.split() for ln in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    listening = [r[1] for r in rows if r[3] == "0A" and int(r[1].split(":")[1], 16) == report.port]
    assert listening == [f"0100007F:{report.port:04X}"]


def test_site_umask_only_tightens(tmp_path: Path) -> None:
    """``fedrad-site start`` leaves new logs and audit files 0640 / folders 0750 at most, whatever the shell's umask."""
    from client.site_start import restrict_umask

    before = os.umask(0o022)
    try:
        assert restrict_umask() == 0o027
        (tmp_path / "audit").mkdir()
        (tmp_path / "audit" / "outbound.jsonl").write_text("{}\n")
        assert _mode(tmp_path / "audit") == 0o750 and _mode(tmp_path / "audit" / "outbound.jsonl") == 0o640
        os.umask(0o077)
        assert restrict_umask() == 0o077  # a stricter umask is kept
    finally:
        os.umask(before)


def test_superexec_waits_for_its_supernode_and_not_past_it() -> None:
    """It starts Flower's SuperExec only once the Runtime API listens (no retry noise in the site's log), and gives
    up as soon as the SuperNode it serves is gone."""
    import socket

    from client.superexec import wait_for_runtime_api

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]  # bound, never listening: connections are refused
        assert wait_for_runtime_api(f"127.0.0.1:{closed}", gone.pid) is False
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert wait_for_runtime_api(f"127.0.0.1:{server.getsockname()[1]}", os.getpid()) is True
