"""Issue 21 finding 6: the CA key under a passphrase, crash-safe key/certificate writes, expiry warnings.

Real files, real certificates, the real `fedrad-server` CLI (typer's runner, in-process: fast and
lets the clock be moved); the crash test kills a real Python process in the middle of a renewal.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from typer.testing import CliRunner

from server import pki
from server.cli import app as server_cli
from server.enrollment import init_consortium
from server.pki import PkiError, issue_server_cert, renew_ca_cert, server_tls

pytestmark = pytest.mark.timeout(60)
runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]
PASSPHRASE = "correct horse battery staple"


def _server(*args: object, input: str | None = None, env: dict[str, str] | None = None):
    return runner.invoke(server_cli, [str(a) for a in args], input=input, env=env)


def _text(res) -> str:  # noqa: ANN001 - click's Result
    return " ".join(res.output.split())


def _secret(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _handshake(pinned_ca: Path, server_cert: Path, server_key: Path) -> str:
    """A real TLS 1.3 handshake on 127.0.0.1, the client pinning ``pinned_ca`` as a site does; returns the SAN it saw."""
    srv_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    srv_ctx.load_cert_chain(server_cert, server_key)
    cli_ctx = ssl.create_default_context(cafile=str(pinned_ca))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            try:
                with srv_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with cli_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                seen = tls.getpeercert()["subjectAltName"]
                tls.sendall(b"x")
        thread.join(timeout=10)
    return str(seen)


def _pair_matches(pki_dir: Path) -> bool:
    key = serialization.load_pem_private_key((pki_dir / "server.key").read_bytes(), password=None)
    return _cert(pki_dir / "server.crt").public_key() == key.public_key()


@pytest.fixture()
def encrypted(tmp_path: Path) -> tuple[Path, Path]:
    """A consortium whose CA key is encrypted, and the passphrase file."""
    pw = _secret(tmp_path / "ca.pass", PASSPHRASE)
    res = _server(
        "init", tmp_path / "c", "--name", "Sec Net", "--address", "gw.example.org:9443", "--ca-passphrase-file", pw
    )
    assert res.exit_code == 0, res.output
    assert "NOT encrypted" not in res.output
    return tmp_path / "c", pw


def test_ca_key_is_encrypted_on_disk_and_every_signing_command_needs_the_passphrase(
    encrypted: tuple[Path, Path], tmp_path: Path
) -> None:
    c, pw = encrypted
    key_path = c / "pki" / "ca.key"
    pem = key_path.read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert stat.S_IMODE(os.stat(key_path).st_mode) == 0o600
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(pem, password=None)
    ca_key = serialization.load_pem_private_key(pem, password=PASSPHRASE.encode())
    assert ca_key.public_key() == _cert(c / "pki" / "ca.crt").public_key()

    # Enrolling needs only ca.crt: the CA key can stay offline (here: moved off the server entirely).
    offline = tmp_path / "usb" / "ca.key"
    offline.parent.mkdir()
    key_path.rename(offline)
    res = _server("enroll", c, "hospital-a")
    assert res.exit_code == 0, res.output
    assert (c / "bundles" / "hospital-a" / "ca.crt").read_bytes() == (c / "pki" / "ca.crt").read_bytes()

    # Signing without the key, without the passphrase, with a wrong one: one clear line each, exit 2.
    old_serial = _cert(c / "pki" / "server.crt").serial_number
    wrong = _secret(tmp_path / "wrong.pass", "not the passphrase at all")
    cases = [
        (("renew-server-cert", c, "--ca-passphrase-file", pw), f"the CA key {c / 'pki' / 'ca.key'} not found"),
        (
            ("renew-server-cert", c, "--ca-key", offline),
            f"the CA key at {offline} is encrypted; pass --ca-passphrase-file FILE",
        ),
        (
            ("renew-server-cert", c, "--ca-key", offline, "--ca-passphrase-file", wrong),
            f"wrong passphrase for the CA key at {offline}",
        ),
        (
            ("renew-ca-cert", c, "--ca-key", offline, "--ca-passphrase-file", wrong),
            f"wrong passphrase for the CA key at {offline}",
        ),
    ]
    for args, words in cases:
        res = _server(*args)
        assert res.exit_code == 2, (args, res.output)
        assert words in _text(res), (args, res.output)
        assert "Traceback" not in res.output and "internal error" not in res.output
    assert _cert(c / "pki" / "server.crt").serial_number == old_serial  # nothing was re-issued

    # The right passphrase, three ways: file, the env var naming the file, the prompt.
    for extra, env, prompt in (
        (["--ca-passphrase-file", pw], None, None),
        ([], {"FEDRAD_CA_PASSPHRASE_FILE": str(pw)}, None),
        (["--ca-passphrase-prompt"], None, PASSPHRASE + "\n"),
    ):
        res = _server(
            "renew-server-cert", c, "--ca-key", offline, "--host", "alt.example.org", *extra, env=env, input=prompt
        )
        assert res.exit_code == 0, (extra, res.output)
        assert "NOT encrypted" not in res.output
        cert = _cert(c / "pki" / "server.crt")
        assert cert.serial_number != old_serial and _pair_matches(c / "pki")
        cert.verify_directly_issued_by(_cert(c / "pki" / "ca.crt"))
        assert {"gw.example.org", "alt.example.org", "127.0.0.1"} <= set(
            pki.certificate_names(c / "pki" / "server.crt")
        )
        old_serial = cert.serial_number


def test_init_without_passphrase_works_for_demos_but_warns_and_can_be_protected_later(tmp_path: Path) -> None:
    c = tmp_path / "demo"
    res = _server("init", c, "--name", "Demo", "--address", "127.0.0.1:9443")
    assert res.exit_code == 0, res.output
    text = _text(res)
    assert "WARNING: the CA private key" in text and "is NOT encrypted" in text and "protect-ca-key" in text
    assert text.count("WARNING") == 1
    assert (c / "pki" / "ca.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    st = json.loads(_server("status", c, "--json").stdout)
    assert st["ca_key"]["encrypted"] is False and st["ca_key"]["level"] == "warning"
    assert "protect-ca-key" in st["ca_key"]["message"]
    assert _server("enroll", c, "s1").exit_code == 0  # demos keep working unchanged

    pw = _secret(tmp_path / "p", PASSPHRASE)
    res = _server("protect-ca-key", c, "--ca-passphrase-file", pw)
    assert res.exit_code == 0, res.output
    assert (c / "pki" / "ca.key").read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert stat.S_IMODE(os.stat(c / "pki" / "ca.key").st_mode) == 0o600
    st = json.loads(_server("status", c, "--json").stdout)
    assert st["ca_key"] == {**st["ca_key"], "encrypted": True, "level": "ok", "message": None}
    res = _server("protect-ca-key", c, "--ca-passphrase-file", pw)
    assert res.exit_code == 2 and "already encrypted" in res.output


def test_passphrase_file_must_be_private_and_strong(tmp_path: Path) -> None:
    cases = [
        (_secret(tmp_path / "loose", PASSPHRASE, 0o644), "readable by other users (mode 0644); run `chmod 600"),
        (_secret(tmp_path / "short", "abc123"), "has 6 characters; use at least 12"),
        (_secret(tmp_path / "empty", ""), "is empty"),
        (tmp_path / "missing", "not found"),
    ]
    for path, words in cases:
        res = _server(
            "init", tmp_path / "c", "--name", "N", "--address", "h.example.org:9443", "--ca-passphrase-file", path
        )
        assert res.exit_code == 2, (path, res.output)
        assert words in _text(res) and str(path) in _text(res), (path, res.output)
        assert "Traceback" not in res.output
        assert not (tmp_path / "c").exists()  # refused before anything is written
    good = _secret(tmp_path / "good", PASSPHRASE)
    res = _server(
        "init",
        tmp_path / "c",
        "--name",
        "N",
        "--address",
        "h:1",
        "--ca-passphrase-file",
        good,
        "--ca-passphrase-prompt",
    )
    assert res.exit_code == 2 and "either --ca-passphrase-file" in _text(res)
    # The prompt asks twice when it creates a key.
    res = _server(
        "init", tmp_path / "c", "--name", "N", "--address", "h:1", "--ca-passphrase-prompt", input=f"{PASSPHRASE}\n" * 2
    )
    assert res.exit_code == 0, res.output
    key = (tmp_path / "c" / "pki" / "ca.key").read_bytes()
    assert serialization.load_pem_private_key(key, password=PASSPHRASE.encode())


CRASH_AT = """
import os, sys
from pathlib import Path
from server.pki import issue_server_cert
calls, real = [0], os.replace
def replace(a, b):
    calls[0] += 1
    if calls[0] == int(sys.argv[2]):
        os._exit(70)  # power cut: no cleanup, no exception handler
    real(a, b)
os.replace = replace
issue_server_cert(Path(sys.argv[1]), ["gw.example.org"])
"""


def test_a_crash_at_any_point_of_a_renewal_leaves_a_matching_pair(tmp_path: Path) -> None:
    """Killed at each of the renewal's four renames, the next read finds the old pair or the new one, whole."""
    c = tmp_path / "c"
    init_consortium(c, "Crash Net", "gw.example.org:9443")
    d = c / "pki"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    seen = set()
    for k in (1, 2, 3, 4):  # killed before: staging the cert, staging the key, the key swap, the cert swap
        before = ((d / "server.key").read_bytes(), (d / "server.crt").read_bytes())
        proc = subprocess.run(
            [sys.executable, "-c", CRASH_AT, str(d), str(k)], env=env, capture_output=True, timeout=60
        )
        assert proc.returncode == 70, proc.stderr.decode()
        if k == 4:
            assert not _pair_matches(d)  # the raw crash state: new key, old certificate ...
        tls = server_tls(d)  # ... which the next start rolls forward
        assert _pair_matches(d) and tls.server_key == d / "server.key"
        after = ((d / "server.key").read_bytes(), (d / "server.crt").read_bytes())
        seen.add("old" if after == before else "new")
        assert after == before if k < 4 else after != before, k  # the key's rename is the commit point
        assert stat.S_IMODE(os.stat(d / "server.key").st_mode) == 0o600
        assert sorted(p.name for p in d.iterdir()) == ["ca.crt", "ca.key", "server.crt", "server.key"], k
    assert seen == {"old", "new"}


def test_a_failed_rename_keeps_the_old_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = tmp_path / "c"
    init_consortium(c, "Fail Net", "gw.example.org:9443")
    d = c / "pki"
    before = ((d / "server.key").read_bytes(), (d / "server.crt").read_bytes())
    real = os.replace
    calls = [0]

    def failing_replace(a: object, b: object) -> None:
        calls[0] += 1
        if calls[0] == 3:  # the key's swap: both new files are written, neither is in place
            raise OSError(28, "No space left on device")
        real(a, b)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        issue_server_cert(d, ["gw.example.org"])
    monkeypatch.undo()
    server_tls(d)
    assert ((d / "server.key").read_bytes(), (d / "server.crt").read_bytes()) == before
    assert not list(d.glob("*.new")) and not list(d.glob(".*.tmp"))


def test_status_warns_30_days_ahead_and_errors_when_expired(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c = tmp_path / "c"
    init_consortium(c, "Expiry Net", "gw.example.org:9443")
    d = c / "pki"
    st = json.loads(_server("status", c, "--json").stdout)
    assert [r["level"] for r in st["certificates"]] == ["ok", "ok"]

    issue_server_cert(d, ["gw.example.org"], days=10)
    expires = _cert(d / "server.crt").not_valid_after_utc.strftime("%Y-%m-%d")
    res = _server("status", c, "--json")
    assert res.exit_code == 0, res.output
    row = next(r for r in json.loads(res.stdout)["certificates"] if r["file"].endswith("server.crt"))
    assert row["level"] == "warning" and row["expires"] == expires and row["days_left"] in (9, 10)
    assert f"{d / 'server.crt'} expires on {expires}" in row["message"]
    assert f"fedrad-server renew-server-cert {c.resolve()}" in row["message"]
    res = _server("status", c)
    assert res.exit_code == 0 and "warning:" in res.output and "renew-server-cert" in _text(res)

    renew_ca_cert(d, days=20)  # the CA too, with its own command
    row = next(
        r for r in json.loads(_server("status", c, "--json").stdout)["certificates"] if r["file"].endswith("ca.crt")
    )
    assert row["level"] == "warning" and "renew-ca-cert" in row["message"] and "new ca.crt" in row["message"]

    real_now = pki._now
    monkeypatch.setattr(pki, "_now", lambda: real_now() + dt.timedelta(days=15))  # the server certificate has lapsed
    res = _server("status", c, "--json")
    assert res.exit_code == 1
    row = next(r for r in json.loads(res.stdout)["certificates"] if r["file"].endswith("server.crt"))
    assert row["level"] == "error" and f"EXPIRED on {expires}" in row["message"]
    res = _server("status", c)
    assert res.exit_code == 1 and "error:" in res.output and "EXPIRED" in res.output
    with pytest.raises(PkiError, match="expired on .*renew-server-cert"):
        server_tls(d)  # and `fedrad-server start` refuses it with that line instead of starting Flower
    monkeypatch.undo()

    old_ca = tmp_path / "site-old-ca.crt"  # what a hospital pinned before the renewals
    old_ca.write_bytes((d / "ca.crt").read_bytes())
    res = _server("renew-ca-cert", c)  # unencrypted demo CA: works, warns
    assert res.exit_code == 0 and "NOT encrypted" in res.output
    st = json.loads(_server("status", c, "--json").stdout)
    assert [r["level"] for r in st["certificates"]] == ["ok", "ok"]
    # Sites that still pin the old ca.crt accept the re-issued server certificate (same CA key and name) ...
    assert "127.0.0.1" in _handshake(old_ca, d / "server.crt", d / "server.key")
    assert "127.0.0.1" in _handshake(d / "ca.crt", d / "server.crt", d / "server.key")
    # ... and a certificate from another CA is still refused by the same check.
    other = tmp_path / "other"
    init_consortium(other, "Other Net", "gw.example.org:9443")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(old_ca, other / "pki" / "server.crt", other / "pki" / "server.key")
