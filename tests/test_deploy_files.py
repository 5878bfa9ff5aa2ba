"""deploy/: what can be validated on a machine without the Docker compose plugin or a systemd boot.

* docker-compose.yml: parses (anchors merged), every build names a Dockerfile
  that exists, the server publishes only the fleet port, site data and bundles
  are mounted read-only; every COPY source of each Dockerfile exists.
* systemd units: ``systemd-analyze verify`` (where installed) finds nothing
  wrong but the install path /opt/fedrad, which only exists on a real host;
  restart policy and the telemetry-off environment are set.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def test_compose_builds_existing_dockerfiles_and_publishes_only_the_fleet_port() -> None:
    doc = _compose()
    services = doc["services"]
    assert set(services) == {"server", "site-1", "site-2", "site-3"}
    for name, svc in services.items():
        context = (DEPLOY / svc["build"]["context"]).resolve()
        assert (context / svc["build"]["dockerfile"]).is_file(), name
        assert svc["restart"] == "on-failure", name
    assert services["server"]["ports"] == ["9443:9443"]
    for name in ("site-1", "site-2", "site-3"):
        svc = services[name]
        assert "ports" not in svc, f"{name} must not listen: sites only connect out"
        ro = [v for v in svc["volumes"] if v.endswith(":ro")]
        assert any(":/data:" in v for v in ro) and any(":/etc/fedrad:" in v for v in ro), svc["volumes"]
        named = [v.split(":")[0] for v in svc["volumes"] if not v.startswith(".")]
        assert all(n in doc["volumes"] for n in named), named


@pytest.mark.parametrize("dockerfile", sorted((DEPLOY / "docker").glob("Dockerfile.*")), ids=lambda p: p.name)
def test_dockerfile_copies_existing_paths_and_turns_telemetry_off(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    root = DEPLOY.parent
    for line in re.findall(r"^COPY\s+(.+)$", text, flags=re.M):
        *sources, _dest = line.split()
        for src in sources:
            assert (root / src).exists(), f"{dockerfile.name}: COPY {src} does not exist"
    for var in (
        "FLWR_TELEMETRY_ENABLED=0",
        "FLWR_DISABLE_UPDATE_CHECK=1",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1",
    ):
        assert var in text, f"{dockerfile.name} lacks {var}"
    assert "torch==2.13.0" in text and re.search(r"^USER\s+fedrad", text, flags=re.M)


@pytest.mark.parametrize("unit", sorted((DEPLOY / "systemd").glob("*.service")), ids=lambda p: p.name)
def test_systemd_unit_is_valid_and_restarts_on_failure(unit: Path) -> None:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string(unit.read_text())
    service = parser["Service"]
    assert service["Restart"] == "on-failure" and service["RestartPreventExitStatus"] == "2"
    assert "FLWR_TELEMETRY_ENABLED=0" in service["Environment"]
    assert re.search(r"fedrad-(server|site) start", service["ExecStart"])
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed")
    res = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [
        ln
        for ln in (res.stdout + res.stderr).splitlines()
        if ln.strip() and "/opt/fedrad/" not in ln  # the install path exists only on a real host
    ]
    assert not problems, problems


def test_the_server_may_open_enough_files_for_the_proxys_connection_limit() -> None:
    """Each proxied connection costs two descriptors (client and upstream); the review ran out at 1,024."""
    from server.fleet_proxy import MAX_CONNECTIONS

    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string((DEPLOY / "systemd" / "fedrad-server.service").read_text())
    assert int(parser["Service"]["LimitNOFILE"]) >= 4 * MAX_CONNECTIONS
    assert _compose()["services"]["server"]["ulimits"]["nofile"]["soft"] >= 4 * MAX_CONNECTIONS
