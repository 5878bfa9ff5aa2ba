"""A simulated SuperNode's site comes from the simulating machine (FEDRAD_SIMULATED_SITES), never from the server.

The production ClientApp is called directly (no Flower processes, no data):
an unapproved code hash makes the site refuse before any data is read, and
the refusal lands in the audit log of the site the partition was mapped to.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict
from flwr.supercore.task_identity import TaskIdentity

import client.app as client_app
from client.simulated_site import ENV, SimulatedSiteError, site_node_config, write_sites_file
from server.superlink import _toml_value


def _site(root: Path, name: str) -> dict:
    work = root / name / "work"
    return {
        "site-config": str(root / name / "site.yaml"),
        "site-name": name,
        "min-count": 10,
        "audit-log": str(work / "audit" / "outbound.jsonl"),
        "approvals": str(work / "approved-code.json"),
    }


@pytest.fixture
def sites_file(tmp_path: Path) -> Path:
    return write_sites_file(tmp_path / "sites.json", [_site(tmp_path, "site-a"), _site(tmp_path, "site-b")])


@pytest.fixture
def task_identity() -> Iterator[None]:
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 7, 0, 1
    yield
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def _query(node_config: dict, run_config: dict | None = None) -> tuple[Message, Context]:
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
    return msg, Context(run_id=7, node_id=3, node_config=node_config, state=RecordDict(), run_config=run_config or {})


def test_a_simulated_partition_maps_to_its_site_only_through_the_local_file(sites_file: Path, tmp_path: Path) -> None:
    partition = {"partition-id": 1, "num-partitions": 2}
    with pytest.raises(SimulatedSiteError, match=ENV):
        site_node_config(partition, environ={})
    node = site_node_config(partition, environ={ENV: str(sites_file)})
    assert node["site-name"] == "site-b" and node["site-config"] == str(tmp_path / "site-b" / "site.yaml")
    real = _site(tmp_path, "real")  # a real SuperNode's node config is its own, whatever the variable says
    assert site_node_config(real, environ={ENV: str(sites_file)}) == real
    with pytest.raises(SimulatedSiteError, match="no site for partition 2"):
        site_node_config({"partition-id": 2, "num-partitions": 3}, environ={ENV: str(sites_file)})
    with pytest.raises(SimulatedSiteError, match="3 partitions"):
        site_node_config({"partition-id": 0, "num-partitions": 3}, environ={ENV: str(sites_file)})
    with pytest.raises(SimulatedSiteError, match="cannot read"):
        site_node_config(partition, environ={ENV: str(tmp_path / "missing.json")})


def test_client_app_refuses_a_simulated_partition_without_the_variable(
    monkeypatch: pytest.MonkeyPatch, task_identity: None, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv(ENV, raising=False)
    msg, ctx = _query({"partition-id": 0, "num-partitions": 2})
    reply = client_app.query(msg, ctx)
    assert reply.has_error() and reply.error.reason == "site not configured for FedRad runs"
    assert ENV in capsys.readouterr().err  # the details stay in the site's (here: the simulation's) log


def test_client_app_works_as_the_mapped_site_and_ignores_the_run_config(
    monkeypatch: pytest.MonkeyPatch, task_identity: None, sites_file: Path, tmp_path: Path
) -> None:
    monkeypatch.setenv(ENV, str(sites_file))
    chosen_by_server = _site(tmp_path, "site-a")  # a run config must not pick which site's files are used
    msg, ctx = _query({"partition-id": 1, "num-partitions": 2}, run_config=chosen_by_server)
    reply = client_app.query(msg, ctx)
    assert reply.has_error() and "is not approved" in reply.error.reason  # site-b has approved nothing
    audit = tmp_path / "site-b" / "work" / "audit" / "outbound.jsonl"
    entries = [json.loads(line) for line in audit.read_text().splitlines()]
    assert [e["type"] for e in entries] == ["refused"] and entries[0]["run"] == 7
    assert not (tmp_path / "site-a" / "work").exists()
    assert dict(ctx.node_config) == {"partition-id": 1, "num-partitions": 2}  # Flower's context is left as it was


def test_federation_config_values_are_toml_literals() -> None:
    assert [_toml_value(v) for v in (3, 0.0, True, "ray", 'a"b')] == ["3", "0.0", "true", '"ray"', '"a\\"b"']
