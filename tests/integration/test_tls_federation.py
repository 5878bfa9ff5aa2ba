"""Real Flower 1.42 processes on 127.0.0.1: TLS, SuperNode auth, fleet-only proxy, a 2-round run.

The run is the real FedRad app (``server/app.py``/``client/app.py``) on two
tiny synthetic sites at 32×32, so the plumbing is proven with real training.

One consortium is built once for the module (CA + server cert, SuperLink with
auth and a persistent database, fleet proxy, 2 registered sites), the run is
submitted right away, and the refusal checks run while it trains, so the
whole file takes ~70-90 s on 2 cores that other jobs keep busy. Every process is
started through ``shared.processes`` and the fixture proves none is left.
"""

from __future__ import annotations

import datetime as dt
import re
import shutil
import socket
import ssl
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from client.approval import approve_installed
from client.runtime_api import ensure_runtime_credentials
from client.site_config import load_site_file, site_node_config
from client.site_start import explain_exit
from client.site_worker import start_site_worker
from client.supernode import flower_exit_code, start_supernode, supernode_command
from client.tls_check import server_certificate_problem
from server import pki
from server.checkpoints import read_metrics
from server.fleet_proxy import start_fleet_proxy
from server.pki import ServerTls, certificate_names, init_pki, issue_server_cert
from server.superlink import SuperLink, flwr_json, stage_app, start_superlink, submit_run, write_cli_config
from shared.keys import generate_site_keys
from shared.processes import ManagedProcess, ProcessId, ProcessSet, executable, free_port, run_cli
from shared.synth import write_cohort
from tests.integration.cleanup import stop_all_and_check

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

REPO = Path(__file__).resolve().parents[2]
ROUNDS = 2
SITES = ("site-a", "site-b")


@dataclass
class Fed:
    tmp: Path
    tls: ServerTls
    ps: ProcessSet
    link: SuperLink
    proxy_port: int
    keys: dict[str, tuple[Path, Path]]
    supernodes: dict[str, ManagedProcess] = field(default_factory=dict)
    run_id: int = 0
    t_submit: float = 0.0


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fed]:
    tmp = tmp_path_factory.mktemp("fed")
    cohort = {s.name: s.path for s in write_cohort(tmp / "cohort", n_sites=len(SITES), unseen=0, scale=0.05, seed=2)}
    tls = init_pki(tmp / "pki", "TestConsortium", "hospital-gw.example.org:9443")
    keys = {name: generate_site_keys(tmp / "keys" / name) for name in (*SITES, "rogue")}
    ps = ProcessSet(tmp / "logs")
    started: set[ProcessId] = set()
    try:
        link = start_superlink(
            ps, tls=tls, port=free_port(), database=tmp / "state" / "superlink.db", flwr_home=tmp / "server-home"
        )
        proxy_port = free_port()
        enrolled = tmp / "state" / "fleet-keys.pub"  # the rogue key is not in it
        enrolled.write_text("".join(keys[name][1].read_text() for name in SITES))
        start_fleet_proxy(
            ps,
            listen=f"127.0.0.1:{proxy_port}",
            upstream=link.address,
            certfile=tls.server_cert,
            keyfile=tls.server_key,
            ca_certfile=tls.ca_cert,
            enrolled_keys=enrolled,
            cwd=REPO,
        )
        f = Fed(tmp=tmp, tls=tls, ps=ps, link=link, proxy_port=proxy_port, keys=keys)
        with link.control() as control:
            for name in SITES:
                assert control.register(keys[name][1], name) is not None
            assert control.register(keys[SITES[0]][1], SITES[0]) is None  # idempotent: already registered
        for i, name in enumerate(SITES):
            site_yaml = tmp / "sites" / name / "site.yaml"
            site_yaml.parent.mkdir(parents=True, exist_ok=True)
            site_yaml.write_text(
                yaml.safe_dump(
                    {
                        "site_name": name,
                        "server_address": f"127.0.0.1:{proxy_port}",
                        "ca_cert": str(tls.ca_cert),
                        "private_key": str(keys[name][0]),
                        "data": str(cohort[f"site-{i + 1}"] / "dicom"),
                        "labels": str(cohort[f"site-{i + 1}"] / "labels.csv"),
                        "classes": ["normal", "nodule"],
                        "image_size": 32,
                        "work_dir": str(tmp / "sites" / name / "work"),
                        "threads": 1,
                    }
                )
            )
            # site-a has the warm worker; site-b works in each ClientApp process (the fallback path)
            socket_path = start_site_worker(ps, name, site_yaml)[1] if i == 0 else None
            node_config = site_node_config(site_yaml, load_site_file(site_yaml), socket_path)
            approve_installed(Path(node_config["approvals"]).parent)
            f.supernodes[name] = start_supernode(
                ps,
                name,
                superlink=f"127.0.0.1:{proxy_port}",  # through the proxy, as a hospital would
                ca_cert=tls.ca_cert,
                private_key=keys[name][0],
                node_config=node_config,
                work_dir=tmp / "sites" / name,
                runtime_port=free_port(),
            )
        app_dir = stage_app(
            tmp / "app",
            REPO,
            config_defaults={
                "min-sites": len(SITES),
                "round-timeout-s": 180,
                "evaluate-every": ROUNDS,
                "image-size": 32,
                "classes": "normal,nodule",
                "strategy": "fedavg",
                "batch-size": 16,
                "run-dir": str(tmp / "run"),
            },
        )
        f.t_submit = time.monotonic()
        f.run_id = submit_run(link, app_dir, {"num-server-rounds": ROUNDS})
        yield f
    finally:
        started = stop_all_and_check(ps, started)
    assert len(started) >= 6  # superlink, proxy, 2 supernodes, their superexecs: the check is not vacuous


def _tls_ctx(fed: Fed) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(fed.tls.ca_cert))


def _raw_https(fed: Fed, port: int, request: bytes) -> bytes:
    """Send a raw request line (no client-side path normalisation) over verified TLS."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with _tls_ctx(fed).wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            tls.sendall(request)
            return tls.recv(4096)


def _post(fed: Fed, port: int, path: str) -> int:
    import httpx

    with httpx.Client(verify=_tls_ctx(fed), timeout=10) as client:
        return client.post(
            f"https://127.0.0.1:{port}{path}", content=b"", headers={"content-type": "application/protobuf"}
        ).status_code


def test_proxy_policy_matches_flowers_fleet_routes() -> None:
    """Every Fleet route Flower serves passes the proxy policy; Control/Runtime routes do not."""
    from flwr.superlink.routers.control.router import router as control_router
    from flwr.superlink.routers.fleet.router import router as fleet_router

    from server.fleet_proxy import is_fleet_request

    fleet = [r.path for r in fleet_router.routes]
    assert len(fleet) >= 10 and all(is_fleet_request("POST", p.encode()) for p in fleet)
    assert not any(is_fleet_request("POST", r.path.encode()) for r in control_router.routes)
    assert not is_fleet_request("GET", b"/v1/fleet/get-run")


def test_server_certificate_names(fed: Fed) -> None:
    names = certificate_names(fed.tls.server_cert)
    assert {"hospital-gw.example.org", "127.0.0.1", "localhost"} <= set(names)


def test_control_api_not_reachable_through_fleet_proxy(fed: Fed) -> None:
    port, sl_port = fed.proxy_port, int(fed.link.address.rsplit(":", 1)[1])
    # Positive control: the route exists and answers on the loopback SuperLink ...
    assert _post(fed, sl_port, "/v1/control/list-runs") == 200
    # ... but the hospital-facing port refuses Control, Runtime and docs, however spelled.
    for path in ("/v1/control/list-runs", "/v1/control/start-run", "/v1/runtime/acquire-task", "/v1/fleet"):
        assert _post(fed, port, path) == 404, path
    for raw in (
        b"GET /docs HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /v1/fleet/../control/list-runs HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        b"POST /v1/fleet/%2e%2e/control/list-runs HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        b"POST /v1/fleet/pull-messages?x=/v1/control HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
        b"GET /v1/fleet/get-run HTTP/1.1\r\nHost: x\r\n\r\n",
    ):
        assert _raw_https(fed, port, raw).startswith(b"HTTP/1.1 404"), raw
    # The real Flower CLI pointed at the proxy cannot list (or start) runs.
    cfg_home = fed.tmp / "via-proxy-home"
    write_cli_config(cfg_home, f"127.0.0.1:{port}", fed.tls.ca_cert)
    via_proxy = SuperLink(proc=fed.link.proc, address=f"127.0.0.1:{port}", flwr_home=cfg_home, ca_cert=fed.tls.ca_cert)
    assert flwr_json(via_proxy, ["ls", via_proxy.connection])["success"] is False


def test_proxy_refuses_oversized_headers_and_unsigned_requests(fed: Fed) -> None:
    """A 1 MB header is refused by the HTTP parser (64 KiB limit), and a Fleet call without a SuperNode signature
    gets 401 from the proxy itself, its declared 60 MB body unread."""
    port = fed.proxy_port
    huge = (
        b"POST /v1/fleet/get-run HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 1_000_000 + b"\r\nContent-Length: 0\r\n\r\n"
    )
    try:
        answer = _raw_https(fed, port, huge)
    except OSError:  # the proxy may close before the client has sent it all
        answer = b""
    assert not answer.startswith(b"HTTP/1.1 2"), answer[:100]
    unsigned = b"POST /v1/fleet/push-object HTTP/1.1\r\nHost: x\r\nContent-Length: 60000000\r\n\r\n"
    assert _raw_https(fed, port, unsigned).startswith(b"HTTP/1.1 401"), "unsigned Fleet call not refused"


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")
def test_superlink_listens_on_loopback_only(fed: Fed) -> None:
    port = int(fed.link.address.rsplit(":", 1)[1])
    listening = [
        line.split()[1]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if line.split()[3] == "0A" and int(line.split()[1].split(":")[1], 16) == port
    ]
    assert listening == [f"0100007F:{port:04X}"]  # 127.0.0.1 only, no IPv4 wildcard
    v6 = Path("/proc/net/tcp6")
    if v6.exists():
        rows = [ln.split() for ln in v6.read_text().splitlines()[1:]]
        assert not [r for r in rows if r[3] == "0A" and r[1].endswith(f":{port:04X}")]


def test_unregistered_key_is_refused(fed: Fed) -> None:
    rogue = start_supernode(
        fed.ps,
        "rogue",
        superlink=f"127.0.0.1:{fed.proxy_port}",
        ca_cert=fed.tls.ca_cert,
        private_key=fed.keys["rogue"][0],
        node_config={"seed": 99},
        work_dir=fed.tmp / "sites" / "rogue",
        runtime_port=free_port(),
    )
    # The proxy refuses the unenrolled key with the SuperLink's own 401 before reading a body; Flower's
    # SuperNode answers a 401 by stopping itself (exit 0), which `fedrad-site start` explains.
    assert rogue.wait(timeout=60) == 0
    assert "terminated gracefully" in rogue.log_text()
    assert "key is not enrolled" in explain_exit(rogue.log_text(), 0)
    proxy_log = (fed.tmp / "logs" / "fleet-proxy.log").read_text()
    assert "public key not enrolled in this consortium" in proxy_log
    assert "Failed to activate" not in (fed.tmp / "logs" / "superlink.log").read_text()  # it never got that far


def test_wrong_ca_and_expired_certificate_are_refused_and_named(fed: Fed, monkeypatch: pytest.MonkeyPatch) -> None:
    """A site holding another consortium's bundle, or facing an expired server certificate, never connects, and
    ``fedrad-site start`` says which of the two it is instead of retrying silently."""
    proxy = f"127.0.0.1:{fed.proxy_port}"
    assert server_certificate_problem(proxy, fed.tls.ca_cert) is None
    other = init_pki(fed.tmp / "other-pki", "OtherConsortium", "other.example.org:9443")
    problem = server_certificate_problem(proxy, other.ca_cert)
    assert problem and "not signed by the consortium CA" in problem and str(other.ca_cert) in problem

    expired_dir = fed.tmp / "expired-pki"
    shutil.copytree(fed.tmp / "pki", expired_dir)
    real_now = pki._now
    monkeypatch.setattr(pki, "_now", lambda: real_now() - dt.timedelta(days=900))  # issued 900 days ago, for 825
    old = issue_server_cert(expired_dir, ["127.0.0.1"])
    monkeypatch.undo()
    old_port = free_port()
    start_fleet_proxy(
        fed.ps,
        listen=f"127.0.0.1:{old_port}",
        upstream=fed.link.address,
        certfile=old.server_cert,
        keyfile=old.server_key,
        ca_certfile=old.ca_cert,
        cwd=REPO,
    )
    problem = server_certificate_problem(f"127.0.0.1:{old_port}", fed.tls.ca_cert)
    assert problem and "has expired" in problem

    for label, address, ca in (
        ("wrong-ca", proxy, other.ca_cert),
        ("expired", f"127.0.0.1:{old_port}", fed.tls.ca_cert),
    ):
        node = start_supernode(
            fed.ps,
            label,
            superlink=address,
            ca_cert=ca,
            private_key=fed.keys["rogue"][0],
            node_config={"seed": 1},
            work_dir=fed.tmp / "sites" / label,
            runtime_port=free_port(),
            max_wait_time=8,
        )
        assert node.wait(timeout=90) != 0, label
        assert "SuperNode ID" not in node.log_text() and "Connection successful" not in node.log_text(), label


def test_plaintext_client_is_refused(fed: Fed) -> None:
    for port in (fed.proxy_port, int(fed.link.address.rsplit(":", 1)[1])):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /v1/fleet/pull-messages HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
            try:
                reply = sock.recv(4096)
            except (ConnectionResetError, TimeoutError):
                reply = b""
        assert not re.match(rb"HTTP/1\.[01] 2", reply), reply[:80]
    cmd = supernode_command(
        superlink=f"127.0.0.1:{fed.proxy_port}",
        ca_cert=None,
        private_key=None,
        node_config=None,
        runtime_port=free_port(),
        runtime=ensure_runtime_credentials(fed.tmp / "sites" / "plain"),
        max_retries=0,
        max_wait_time=10,
        insecure=True,
    )
    plain = fed.ps.start("supernode-plaintext", cmd, env={"FLWR_HOME": str(fed.tmp / "sites" / "plain")})
    assert plain.wait(timeout=60) != 0
    assert flower_exit_code(plain.log_text()) == 305  # "Server disconnected without sending a response"
    assert "SuperNode ID" not in plain.log_text()


@pytest.mark.timeout(240)  # real training: each message is a fresh process importing torch (20-60 s a round under load)
def test_two_sites_complete_two_rounds(fed: Fed) -> None:
    with fed.link.control() as control:
        info = control.wait_for_run(fed.run_id, timeout=220, poll=1)
        elapsed = time.monotonic() - fed.t_submit
        assert info["status"] == "finished:completed", info
        nodes = {n.name: n.status for n in control.nodes()}
    assert nodes == {"site-a": "online", "site-b": "online"}  # the rogue and plaintext nodes never joined
    for name in SITES:
        log = fed.supernodes[name].log_text()
        assert log.count("Receiving: train message") == ROUNDS, name
        assert log.count("Receiving: evaluate message") == 1, name  # evaluate-every=ROUNDS: last round only
    res = run_cli(
        [executable("flwr"), "log", str(fed.run_id), fed.link.connection, "--show"],
        env={"FLWR_HOME": str(fed.link.flwr_home)},
        cwd=fed.link.flwr_home,
        timeout=60,
    )
    assert f"FEDRAD rounds_completed={ROUNDS} of {ROUNDS}" in res.stdout, res.stdout[-3000:]
    assert (fed.tmp / "run" / f"round-{ROUNDS:04d}.pt").is_file()
    rows = read_metrics(fed.tmp / "run")
    assert all(0.0 < r["train"]["warm-worker"] < 1.0 for r in rows)  # site-a forwarded to its worker, site-b did not
    rounds = re.findall(r"FEDRAD round=(\d+) .*?seconds=([\d.]+)", res.stdout)
    print(
        f"\nrun {fed.run_id}: submit->finished {elapsed:.1f} s, round seconds {[float(s) for _, s in rounds]}, "
        f"clientapp total {info['clientapp-seconds']:.1f} s, bytes sent/recv {info['bytes-sent']}/{info['bytes-recv']}"
    )


# The real flower-supernode, with its clock moved by argv[1] seconds (only the clock Flower's auth reads).
SKEWED_SUPERNODE = """
import datetime, sys
import flwr.supercore.date as date
_real_now, skew = date.now, datetime.timedelta(seconds=float(sys.argv.pop(1)))
date.now = lambda: _real_now() + skew
from flwr.supernode.cli import flower_supernode
sys.exit(flower_supernode())
"""


@pytest.mark.timeout(180)
def test_clock_skew_behind_is_tolerated_ahead_is_refused_and_explained(fed: Fed) -> None:
    """A site clock 1 minute slow still connects; one 2 minutes slow (the proxy accepts signatures up to 90 s
    old: a captured header is good for no longer) or 30 s fast (Flower allows 5 s into the future) is refused,
    and Flower exits 0 without saying why, so FedRad's message is what points at the clock."""
    private, public = generate_site_keys(fed.tmp / "keys" / "skewed")
    with fed.link.control() as control:
        assert control.register(public, "skewed") is not None
    enrolled = fed.tmp / "state" / "fleet-keys.pub"
    enrolled.write_text(enrolled.read_text() + public.read_text())  # the proxy re-reads it within 2 s
    time.sleep(2.5)
    for skew, connects in ((-60, True), (-120, False), (30, False)):
        cmd = supernode_command(
            superlink=f"127.0.0.1:{fed.proxy_port}",
            ca_cert=fed.tls.ca_cert,
            private_key=private,
            node_config=None,
            runtime_port=free_port(),
            runtime=ensure_runtime_credentials(fed.tmp / "sites" / f"skew{skew}"),
            max_wait_time=20,
        )
        cmd = [sys.executable, "-c", SKEWED_SUPERNODE, str(skew), *cmd[1:]]
        node = fed.ps.start(f"supernode-skew{skew}", cmd, env={"FLWR_HOME": str(fed.tmp / "sites" / f"skew{skew}")})
        if connects:
            deadline = time.monotonic() + 90
            while "SuperNode ID" not in node.log_text():
                assert node.poll() is None and time.monotonic() < deadline, node.log_tail(30)
                time.sleep(0.5)
            node.stop()
        else:
            # Flower's answer to "Invalid timestamp": it SIGINTs itself and exits 0 without a word
            assert node.wait(timeout=90) == 0 and "SuperNode ID" not in node.log_text(), node.log_tail(30)
            assert flower_exit_code(node.log_text()) is None
            assert "clock is off" in explain_exit(node.log_text(), node.returncode)
