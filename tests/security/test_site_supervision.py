"""`fedrad-site start` when the server cannot be reached, and when its worker keeps dying (issue 21, findings 7-8).

Real commands and processes: the `fedrad-site start` CLI with a real SuperNode
against a port where nothing listens, a real TLS server with another
consortium's certificate, real probes on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from client.connection_watch import ConnectionWatch
from client.site_config import fill_site_yaml
from client.tls_check import CERT, NAME, NOT_TLS, OK, REFUSED, TIMEOUT, probe_server
from server.cli import app as server_cli
from shared.processes import ProcessId, executable, free_port, is_running

pytestmark = pytest.mark.timeout(120)
RETRY_LINE = "Connection attempt failed"


def _init(directory: Path, name: str) -> Path:
    res = CliRunner().invoke(server_cli, ["init", str(directory), "--name", name, "--address", "127.0.0.1:9443"])
    assert res.exit_code == 0, res.output
    return directory / "pki"


def _site_yaml(tmp_path: Path, server_address: str) -> Path:
    consortium = tmp_path / "c"
    _init(consortium, "Test Net")
    res = CliRunner().invoke(server_cli, ["enroll", str(consortium), "s1"])
    assert res.exit_code == 0, res.output
    bundle = consortium / "bundles" / "s1"
    (tmp_path / "dicom").mkdir()
    (tmp_path / "labels.csv").write_text("SOPInstanceUID,label\n")
    return fill_site_yaml(
        bundle / "site.yaml",
        tmp_path / "site.yaml",
        data=tmp_path / "dicom",
        labels=tmp_path / "labels.csv",
        private_key=bundle / "site.key",
        ca_cert=bundle / "ca.crt",
        work_dir=tmp_path / "work",
        server_address=server_address,
        threads=1,
    )


class SiteRun:
    """`fedrad-site start --skip-check` as a child; its console lines collected by a thread."""

    def __init__(self, site_yaml: Path) -> None:
        env = {**os.environ, "COLUMNS": "400"}  # rich wraps at 80 columns without a terminal
        self.proc = subprocess.Popen(
            [executable("fedrad-site"), "start", "--config", str(site_yaml), "--skip-check"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        self.lines: list[str] = []
        self.seen: set[ProcessId] = set()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def text(self) -> str:
        """The console so far, whitespace collapsed (rich wraps long lines)."""
        return " ".join(" ".join(self.lines).split())

    def workers(self) -> list[psutil.Process]:
        """Live site workers under the command (and every descendant seen, for the leak check)."""
        try:
            kids = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            return []
        out = []
        for kid in kids:
            with contextlib.suppress(psutil.Error):
                self.seen.add((kid.pid, round(kid.create_time() * 1000)))
                if "client.site_worker" in kid.cmdline() and kid.status() != psutil.STATUS_ZOMBIE:
                    out.append(kid)
        return out

    def wait_for(self, pattern: str, timeout: float = 60.0, *, count: int = 1) -> float:
        """Seconds until ``pattern`` (a regex) is on the console ``count`` times; watches the worker count meanwhile."""
        t0 = time.monotonic()
        while len(re.findall(pattern, self.text)) < count:
            assert self.proc.poll() is None, f"fedrad-site exited {self.proc.returncode}:\n{self.text}"
            assert time.monotonic() - t0 < timeout, f"no {pattern!r} after {timeout} s:\n{self.text}"
            assert len(self.workers()) <= 1, "more than one site worker at once"
            time.sleep(0.05)
        return time.monotonic() - t0

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


def _kill_worker(run: SiteRun, killed: set[int]) -> None:
    """SIGKILL the live site worker that was not killed before (wait for the restarted one)."""
    deadline = time.monotonic() + 60
    while True:
        fresh = [w for w in run.workers() if w.pid not in killed]
        if fresh:
            break
        assert time.monotonic() < deadline, f"no new site worker:\n{run.text}"
        time.sleep(0.05)
    killed.add(fresh[0].pid)
    fresh[0].kill()


def test_closed_port_is_named_once_and_a_dying_worker_is_restarted_with_growing_delays(tmp_path: Path) -> None:
    """Nothing listens at server_address: one sentence with the cause and the file to fix, not Flower's retry
    lines; a worker killed again and again comes back after 0.5, 1, 2 s, one at a time; a broken site.yaml
    turns into "keeps stopping" with the worker's own error; stopping the command leaves no process behind."""
    address = f"127.0.0.1:{free_port()}"  # handed out, never bound: connections are refused
    site_yaml = _site_yaml(tmp_path, address)
    run = SiteRun(site_yaml)
    try:
        said_s = run.wait_for("connection refused", timeout=60)
        assert said_s < 30  # before the first retry line; a few seconds on an idle machine
        killed: set[int] = set()
        _kill_worker(run, killed)
        run.wait_for(r"site worker stopped \(status -9\) after [\d.]+ s; restarting it in 0\.5 s")
        _kill_worker(run, killed)
        run.wait_for(r"restarting it in 1\.0 s")
        text = site_yaml.read_text()
        site_yaml.write_text(text.replace("image_size: 64", "image_size: big"))  # edited while running
        _kill_worker(run, killed)
        run.wait_for(r"keeps stopping .*next try in 2\.0 s")
        run.wait_for(r"keeps stopping .*site worker not started: .*image_size.*next try in 4\.0 s", timeout=60)
        node_log = tmp_path / "work" / "logs" / "supernode-s1.log"
        deadline = time.monotonic() + 60
        while node_log.read_text().count(RETRY_LINE) < 2:  # Flower went on retrying meanwhile ...
            assert time.monotonic() < deadline, node_log.read_text()
            time.sleep(0.2)
        run.workers()
    finally:
        rc = run.stop()
    console = run.text
    assert rc != 0 and "Traceback" not in console, console
    assert console.count("connection refused") == 1, console  # ... and the console said it once
    assert RETRY_LINE not in console and "retrying in" not in console
    assert f"connection refused by {address}" in console and f"check server_address in {site_yaml}" in console
    assert str(tmp_path / "work" / "logs" / "worker-s1.log") in console
    assert len(killed) == 3
    time.sleep(1)
    assert run.seen and not [p for p in run.seen if is_running(p)], "processes left behind"


@contextlib.contextmanager
def tls_server(pki: Path) -> Iterator[str]:
    """A TLS server on 127.0.0.1 with ``pki``'s server certificate; completes handshakes, then hangs up."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki / "server.crt", pki / "server.key")
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with contextlib.suppress(OSError), ctx.wrap_socket(conn, server_side=True):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)
        srv.close()


def test_a_server_with_another_consortiums_certificate_is_named_and_nothing_starts(tmp_path: Path) -> None:
    other = _init(tmp_path / "other", "Other Net")
    with tls_server(other) as address:
        site_yaml = _site_yaml(tmp_path, address)
        res = subprocess.run(
            [executable("fedrad-site"), "start", "--config", str(site_yaml), "--skip-check"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "COLUMNS": "400"},
            check=False,
        )
    out = " ".join((res.stdout + res.stderr).split())
    assert res.returncode == 1, out
    assert "not connecting" in out and "not signed by the consortium CA" in out and "Traceback" not in out
    assert f"check ca_cert and server_address in {site_yaml}" in out
    assert not (tmp_path / "work" / "logs").exists()  # no SuperNode, no worker


def test_a_server_that_goes_away_after_the_check_is_named_from_the_supernodes_retries(tmp_path: Path) -> None:
    """The server answers the pre-start check, then is gone when the SuperNode connects: the cause is found
    from Flower's first retry line (probing again), said once, and the retry lines stay in the log."""
    ca_dir = tmp_path / "c" / "pki"
    site_yaml = _site_yaml(tmp_path, "127.0.0.1:9")  # replaced below by the live server's address
    with tls_server(ca_dir) as address:
        fill_site_yaml(site_yaml, server_address=address)
        run = SiteRun(site_yaml)
        try:
            run.wait_for("connecting to")
        except AssertionError:
            run.stop()
            raise
    try:  # the server is gone now: the SuperNode's attempts are refused
        run.wait_for("cannot connect")
        node_log = tmp_path / "work" / "logs" / "supernode-s1.log"
        deadline = time.monotonic() + 60
        while node_log.read_text().count(RETRY_LINE) < 3:
            assert time.monotonic() < deadline, node_log.read_text()
            time.sleep(0.2)
    finally:
        run.stop()
    console = run.text
    assert console.count("cannot connect") == 1 and RETRY_LINE not in console, console
    assert f"server_address in {site_yaml}" in console


@contextlib.contextmanager
def raw_server(reply: bytes | None) -> Iterator[str]:
    """Accepts TCP; sends ``reply`` and hangs up, or (None) holds the connection silent."""
    srv = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = srv.accept()
                if reply is None:
                    held.append(conn)
                else:
                    with conn:
                        conn.recv(1024)
                        conn.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"127.0.0.1:{srv.getsockname()[1]}"
    finally:
        srv.close()
        for conn in held:
            conn.close()


def test_probe_names_each_cause(tmp_path: Path) -> None:
    ours, other = _init(tmp_path / "ours", "Ours"), _init(tmp_path / "other", "Other")
    ca = ours / "ca.crt"
    closed = f"127.0.0.1:{free_port()}"
    assert probe_server(closed, ca).kind == REFUSED
    assert probe_server("fedrad.example.invalid:9443", ca).kind == NAME  # .invalid never resolves (RFC 2606)
    with raw_server(None) as silent:
        t0 = time.monotonic()
        probe = probe_server(silent, ca, timeout=0.5)
        assert probe.kind == TIMEOUT and time.monotonic() - t0 < 5
    with raw_server(b"HTTP/1.1 400 Bad Request\r\n\r\n") as plain:
        assert probe_server(plain, ca).kind == NOT_TLS
    with tls_server(other) as wrong:
        probe = probe_server(wrong, ca)
        assert probe.kind == CERT and "not signed by the consortium CA" in probe.detail
    with tls_server(ours) as right:
        assert probe_server(right, ca).kind == OK
    advice = probe_server(closed, ca).advice(tmp_path / "site.yaml")
    assert "server is down or the port is wrong" in advice and f"server_address in {tmp_path / 'site.yaml'}" in advice


def test_watch_says_the_cause_once_per_outage_then_reminds_rarely(tmp_path: Path) -> None:
    now = [0.0]
    said: list[str] = []
    ca = _init(tmp_path / "c", "C") / "ca.crt"
    address = f"127.0.0.1:{free_port()}"
    watch = ConnectionWatch(address, ca, tmp_path / "site.yaml", said.append, remind_every_s=300, clock=lambda: now[0])
    retry = "WARNING :   Connection attempt failed, retrying in 3.21 seconds"
    for _ in range(20):  # 20 retry lines in 100 s: hidden, one sentence
        assert watch.on_line(retry) is True
        now[0] += 5
    assert len(said) == 1 and "connection refused" in said[0] and said[0].startswith("cannot connect")
    now[0] += 300
    assert watch.on_line(retry) and len(said) == 2 and "still not connected after 7 min" in said[1]
    assert watch.on_line("INFO : Connection successful after 410.00 seconds and 30 tries.") is False
    assert watch.on_line(retry) and len(said) == 3 and said[2].startswith("cannot connect")  # a new outage
    assert watch.on_line("INFO : Receiving: train message") is False and len(said) == 3
