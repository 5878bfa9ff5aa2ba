"""`fedrad-site receive`: a real DICOM storage node on 127.0.0.1, fed by pynetdicom and DCMTK's storescu.

Synthetic radiographs from shared.synth (uncompressed and JPEG 2000), odd objects from tests/dicom_factory.
Covers: study/series folders, identical datasets, duplicates kept once, refused callers and hosts, objects the
site's checks reject (answered with failure, logged with the scan's reason code), a path-traversal UID, a disk
that cannot be written, TLS with client certificates, the CLI, and `check` seeing what arrived, incrementally.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import yaml
from pydicom.dataset import Dataset
from pynetdicom import AE

from client import receive_store
from client.dicom_net import client_ssl_context
from client.dicom_receive import ReceiveNode
from client.pacs_config import NodeSettings, TlsFiles
from client.receive_log import describe, read_log
from shared.config import ConfigError, PreprocessConfig
from shared.imaging.scan import decode_file, scan_site
from shared.processes import free_port
from shared.synth.cohort import cohort_profiles, write_site
from tests import dicom_factory as f
from tests.dicom_certs import make_dicom_pki

STORESCU = shutil.which("storescu") or "/usr/bin/storescu"
HAS_DCMTK = Path(STORESCU).is_file()
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
RTSTRUCT_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"


# -- fixtures and helpers ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def radiographs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Five uncompressed (site-1) and three JPEG 2000 (site-4) synthetic chest films, with their labels."""
    out = tmp_path_factory.mktemp("films")
    profiles = cohort_profiles(4, 0)
    write_site(out / "plain", profiles[0], 5, seed=3)
    write_site(out / "j2k", profiles[3], 3, seed=3)
    return sorted(p for p in out.rglob("*") if p.is_file() and p.parent.name != out.name and p.suffix != ".csv")


def start_node(tmp: Path, **settings) -> ReceiveNode:
    options = {"allowed_callers": ["PACS1"], "port": free_port(), **settings}
    node = ReceiveNode(NodeSettings(**options), tmp / "data" / "received", tmp / "work" / "receive" / "receive.jsonl")
    node.start()
    return node


@pytest.fixture()
def node(tmp_path: Path):
    node = start_node(tmp_path)
    yield node
    node.stop(grace_s=2)


def associate(port: int, datasets: list[Dataset], calling: str = "PACS1", called: str = "FEDRAD", tls=None):
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    if not datasets:
        ae.add_requested_context("1.2.840.10008.1.1")
    return ae.associate("127.0.0.1", port, ae_title=called, tls_args=(tls, None) if tls else None)


def send(port: int, datasets: list[Dataset], **kwargs) -> list[Dataset]:
    """C-STORE each dataset on one association; the response datasets (Status, ErrorComment)."""
    assoc = associate(port, datasets, **kwargs)
    assert assoc.is_established, "association not established"
    try:
        return [assoc.send_c_store(ds) for ds in datasets]
    finally:
        assoc.release()


def entries(node: ReceiveNode, event: str = "association") -> list[dict]:
    assert node.wait_idle(10)
    return [e for e in read_log(node.log.path) if e["event"] == event]


def stored_path(node: ReceiveNode, ds: Dataset) -> Path:
    return node.receive_dir / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"


def everything_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


# -- storing ------------------------------------------------------------------------------------------------
def test_pynetdicom_scu_stores_identical_datasets_in_study_folders_and_duplicates_once(node, radiographs) -> None:
    sources = [pydicom.dcmread(p) for p in radiographs]
    responses = send(node.port, sources + sources[:2])
    assert [r.Status for r in responses] == [0] * (len(sources) + 2)
    for path, src in zip(radiographs, sources):
        stored = pydicom.dcmread(stored_path(node, src))
        assert stored == pydicom.dcmread(path)  # every element, as sent
        assert stored.file_meta.TransferSyntaxUID == src.file_meta.TransferSyntaxUID
        assert stored.file_meta.SourceApplicationEntityTitle == "PACS1"
        assert stored.PixelData == src.PixelData
        assert np.array_equal(stored.pixel_array, src.pixel_array)
    assert len(everything_under(node.receive_dir)) == len(sources)  # the two repeats kept once, no temp files
    (line,) = entries(node)
    assert line["calling_ae"] == "PACS1" and line["peer"] == "127.0.0.1" and line["accepted"] is True
    assert (line["stored"], line["duplicate"], line["rejected"]) == (len(sources), 2, {})
    assert line["bytes"] > sum(len(s.PixelData) for s in sources)
    assert oct(node.log.path.stat().st_mode & 0o777) == "0o600"
    assert f"PACS1 @ 127.0.0.1: {len(sources)} stored, 2 duplicate(s), 0 rejected" in describe(line)


def test_c_echo_and_a_restarted_node_knows_what_it_stored(tmp_path: Path, radiographs) -> None:
    first = start_node(tmp_path)
    ds = pydicom.dcmread(radiographs[0])
    assert send(first.port, [ds])[0].Status == 0
    first.stop(grace_s=2)
    again = start_node(tmp_path)
    try:
        assoc = associate(again.port, [])
        assert assoc.send_c_echo().Status == 0
        assoc.release()
        assert send(again.port, [ds])[0].Status == 0
        assert entries(again)[-1]["duplicate"] == 1
        assert [e["already_stored"] for e in read_log(again.log.path) if e["event"] == "start"] == [0, 1]
    finally:
        again.stop(grace_s=2)


@pytest.mark.skipif(not HAS_DCMTK, reason="DCMTK's storescu is not installed (apt install dcmtk)")
def test_dcmtk_storescu_sends_a_folder(node, radiographs, tmp_path: Path) -> None:
    folder = tmp_path / "outbox"
    for p in radiographs:
        (folder / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, folder / p.parent.name / p.name)
    args = [STORESCU, "-aet", "PACS1", "-aec", "FEDRAD", "-xv", "+sd", "+r", "127.0.0.1", str(node.port), str(folder)]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for p in radiographs:
        src = pydicom.dcmread(p)
        stored = pydicom.dcmread(stored_path(node, src))
        assert stored == src and np.array_equal(stored.pixel_array, src.pixel_array)
    refused = subprocess.run([args[0], "-aet", "STRANGER", *args[3:]], capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0
    lines = entries(node)
    assert lines[0]["stored"] == len(radiographs)
    assert lines[1]["accepted"] is False and lines[1]["calling_ae"] == "STRANGER"


# -- who may send -------------------------------------------------------------------------------------------
def test_unknown_calling_or_called_ae_title_is_refused_and_logged(node, radiographs) -> None:
    ds = pydicom.dcmread(radiographs[0])
    stranger = associate(node.port, [ds], calling="STRANGER")
    assert stranger.is_rejected and not stranger.is_established
    assert stranger.acceptor.primitive.diagnostic == 0x03  # calling AE title not recognised
    wrong_node = associate(node.port, [ds], called="ANY-SCP")
    assert wrong_node.is_rejected and wrong_node.acceptor.primitive.diagnostic == 0x07
    refused = entries(node)
    assert [(e["calling_ae"], e["accepted"]) for e in refused] == [("STRANGER", False), ("PACS1", False)]
    assert "allowed_callers" in refused[0]["refused"] and "ANY-SCP" in refused[1]["refused"]
    assert describe(refused[0]).startswith("[yellow]refused[/] STRANGER @ 127.0.0.1")
    assert everything_under(node.receive_dir) == []


def test_a_peer_address_outside_allowed_hosts_is_refused(tmp_path: Path, radiographs) -> None:
    ds = pydicom.dcmread(radiographs[0])
    node = start_node(tmp_path, allowed_hosts=["10.9.9.0/24"])
    try:
        assoc = associate(node.port, [ds])
        assert assoc.is_rejected
        (line,) = entries(node)
        assert line["accepted"] is False and "allowed_hosts" in line["refused"]
    finally:
        node.stop(grace_s=2)
    settings = NodeSettings(allowed_callers=["PACS1"], allowed_hosts=["127.0.0.0/8", "10.1.2.3"])
    assert settings.host_allowed("127.0.0.1") and settings.host_allowed("::ffff:10.1.2.3")
    assert not settings.host_allowed("10.1.2.4") and not settings.host_allowed("::1")
    with pytest.raises(ValueError, match="not an IP address"):
        NodeSettings(allowed_callers=["PACS1"], allowed_hosts=["pacs.example"])


# -- what is kept -------------------------------------------------------------------------------------------
def _constant(path: Path) -> Dataset:
    return f.write_image(path, np.full((64, 64), 0.5))


def _ct_without_geometry(path: Path) -> Dataset:
    return f.write_image(path, f.phantom(64, 64), modality="CT", sop_class=CT_STORAGE)


def _rtstruct(path: Path) -> Dataset:
    ds = f.base_dataset(sop_class=RTSTRUCT_STORAGE, modality="RTSTRUCT")
    ds.StructureSetLabel = "lungs"
    ds.save_as(path, enforce_file_format=True)
    return ds


def test_objects_the_checks_reject_are_refused_with_their_reason_codes(node, tmp_path: Path) -> None:
    made = {
        "not-grayscale": f.write_rgb(tmp_path / "rgb.dcm"),  # a colour secondary capture
        "constant-image": _constant(tmp_path / "blank.dcm"),
        "too-small": f.write_image(tmp_path / "tiny.dcm", f.phantom(16, 16)),
        "multi-frame": f.write_multiframe(tmp_path / "cine.dcm"),
        "missing-geometry": _ct_without_geometry(tmp_path / "ct.dcm"),
    }
    label = _rtstruct(tmp_path / "rtstruct.dcm")
    good = f.write_image(tmp_path / "good.dcm", f.phantom(64, 64))
    names = ("rgb", "blank", "tiny", "cine", "ct", "rtstruct", "good")
    datasets = [pydicom.dcmread(tmp_path / f"{n}.dcm") for n in names]
    responses = send(node.port, datasets)
    statuses = [r.Status for r in responses]
    assert statuses == [0xC000] * 5 + [0, 0]
    for response, reason in zip(responses, made):
        assert response.ErrorComment.startswith(reason)
    for name, reason in (("rgb", "not-grayscale"), ("blank", "constant-image"), ("tiny", "too-small")):
        _, entry, _ = decode_file(str(tmp_path / f"{name}.dcm"), PreprocessConfig())
        assert entry["reason"] == reason  # what `fedrad-site check` says of the same file
    kept = everything_under(node.receive_dir)
    assert sorted(p.stem for p in kept) == sorted([label.SOPInstanceUID, good.SOPInstanceUID])
    (line,) = entries(node)
    assert line["rejected"] == {reason: 1 for reason in made}
    assert line["stored_by_kind"] == {"label": 1, "image": 1}
    assert {r["reason"] for r in line["rejections"]} == set(made)
    assert {r["sop_instance_uid"] for r in line["rejections"]} == {ds.SOPInstanceUID for ds in made.values()}


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")
def test_a_uid_that_is_no_uid_never_names_a_path(node, tmp_path: Path) -> None:
    traversal = f.write_image(tmp_path / "a.dcm", f.phantom(64, 64), sop_uid="../../x")
    study = f.write_image(tmp_path / "b.dcm", f.phantom(64, 64), study_uid="../../../etc")
    before = everything_under(tmp_path)
    responses = send(node.port, [pydicom.dcmread(tmp_path / "a.dcm"), pydicom.dcmread(tmp_path / "b.dcm")])
    assert [r.Status for r in responses] == [0xA900, 0xA900]
    assert everything_under(tmp_path) == before  # nothing written anywhere (the log was there before)
    (line,) = entries(node)
    assert line["rejected"] == {"invalid-uid": 2}
    assert {r["sop_instance_uid"] for r in line["rejections"]} == {traversal.SOPInstanceUID, study.SOPInstanceUID}


def test_a_failed_write_answers_out_of_resources_and_leaves_nothing(node, radiographs, monkeypatch) -> None:
    ds = pydicom.dcmread(radiographs[0])

    def disk_full(path: Path, data: bytes, *, mode: int) -> Path:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(receive_store, "write_atomic", disk_full)
    assert send(node.port, [ds])[0].Status == 0xA700
    assert not stored_path(node, ds).exists()
    monkeypatch.undo()
    assert send(node.port, [ds])[0].Status == 0  # the PACS retries later, and it lands
    first, second = entries(node)
    assert first["rejected"] == {"out-of-resources": 1} and "No space left" in first["rejections"][0]["detail"]
    assert second["stored"] == 1 and stored_path(node, ds).is_file()


# -- TLS ----------------------------------------------------------------------------------------------------
def test_tls_node_refuses_plain_and_unknown_peers_and_accepts_a_client_certificate(tmp_path: Path, radiographs):
    pki = make_dicom_pki(tmp_path / "pki")
    tls = TlsFiles(cert=pki["node_cert"], key=pki["node_key"], ca=pki["ca"])
    node = start_node(tmp_path, tls=tls)
    ds = pydicom.dcmread(radiographs[0])
    try:
        assert not associate(node.port, [ds]).is_established  # plain DICOM
        no_cert = client_ssl_context(TlsFiles(ca=pki["ca"]))
        assert not associate(node.port, [ds], tls=no_cert).is_established
        rogue = client_ssl_context(TlsFiles(ca=pki["ca"], cert=pki["rogue_cert"], key=pki["rogue_key"]))
        assert not associate(node.port, [ds], tls=rogue).is_established
        pacs = client_ssl_context(TlsFiles(ca=pki["ca"], cert=pki["pacs_cert"], key=pki["pacs_key"]))
        assert [r.Status for r in send(node.port, [ds], tls=pacs)] == [0]
        assert stored_path(node, ds).is_file()
        if HAS_DCMTK:  # DCMTK's TLS (BCP 195 profile) meets FedRad's policy
            other = pydicom.dcmread(radiographs[1])
            proc = subprocess.run(
                [STORESCU, "+tls", str(pki["pacs_key"]), str(pki["pacs_cert"]), "+cf", str(pki["ca"]), "-xv"]
                + ["-aet", "PACS1", "-aec", "FEDRAD", "127.0.0.1", str(node.port), str(radiographs[1])],
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert proc.returncode == 0, proc.stderr
            assert stored_path(node, other).is_file()
        assert node.wait_idle(10)
    finally:
        node.stop(grace_s=2)
    log = read_log(node.log.path)
    failed = [e for e in log if e["event"] == "handshake-failed"]
    assert len(failed) == 3 and all("TLS handshake" in e["refused"] for e in failed)
    accepted = [e for e in log if e["event"] == "association"]
    assert accepted[0]["tls"] is True and accepted[0]["peer_certificate"] == "commonName=PACS1"
    assert log[0]["tls"] == "mutual"


# -- the next check sees it ---------------------------------------------------------------------------------
def test_check_sees_received_images_and_decodes_only_the_new_ones(node, radiographs, tmp_path: Path) -> None:
    params, cache = PreprocessConfig(), tmp_path / "cache"
    data = node.receive_dir.parent
    send(node.port, [pydicom.dcmread(p) for p in radiographs[:3]])
    first = scan_site(data, params, cache, workers=1)
    assert (len(first.usable), first.cache.decoded) == (3, 3)
    send(node.port, [pydicom.dcmread(p) for p in radiographs[3:]])
    second = scan_site(data, params, cache, workers=1)
    assert (len(second.usable), second.cache.decoded, second.cache.hits) == (len(radiographs), len(radiographs) - 3, 3)
    films = radiographs[0].parents[4]  # the films' own label files name the same SOP instances
    rows = [line for site in ("plain", "j2k") for line in (films / site / "labels.csv").read_text().splitlines()]
    labels = tmp_path / "labels.csv"
    labels.write_text("\n".join([rows[0], *(r for r in rows[1:] if r != rows[0])]) + "\n")
    site_yaml = tmp_path / "site.yaml"
    site_yaml.write_text(
        yaml.safe_dump(
            {
                "data": str(data),
                "labels": str(labels),
                "cache_dir": str(cache),
                "pacs": {"node": {"allowed_callers": ["PACS1"], "port": node.port}},
            }
        )
    )
    proc = run_cli("check", "--config", str(site_yaml), "--json", timeout=120)
    assert proc.stdout, proc.stderr
    report = json.loads(proc.stdout)
    assert report["images"]["usable"] == len(radiographs), proc.stderr
    assert report["cache"]["decoded"] == 0 and report["labels"]["matched"] == len(radiographs)


# -- the command --------------------------------------------------------------------------------------------
def run_cli(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-m", "client", *args], capture_output=True, text=True, env=env, **kwargs)


def test_receive_command_explains_a_missing_node_a_missing_key_and_a_busy_port(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from client.cli import app

    runner = CliRunner()
    site_yaml = tmp_path / "site.yaml"
    site_yaml.write_text("data: data\n")
    res = runner.invoke(app, ["receive", "--config", str(site_yaml)])
    assert res.exit_code == 2 and "has no pacs.node: add ae_title, port and allowed_callers" in res.output
    site_yaml.write_text(yaml.safe_dump({"data": "data", "pacs": {"node": {"port": 11112}}}))
    res = runner.invoke(app, ["receive", "--config", str(site_yaml)])
    assert res.exit_code == 2 and "pacs.node.allowed_callers" in res.output
    node = start_node(tmp_path)
    try:
        site_yaml.write_text(yaml.safe_dump({"pacs": {"node": {"port": node.port, "allowed_callers": ["PACS1"]}}}))
        res = runner.invoke(app, ["receive", "--config", str(site_yaml)])
        assert res.exit_code == 2 and "set pacs.node.receive_dir, or 'data'" in res.output
        site_yaml.write_text(
            yaml.safe_dump({"data": "data", "pacs": {"node": {"port": node.port, "allowed_callers": ["PACS1"]}}})
        )
        res = runner.invoke(app, ["receive", "--config", str(site_yaml)])
        assert res.exit_code == 2 and "the port is in use" in res.output
    finally:
        node.stop(grace_s=2)


def test_receive_command_serves_until_sigterm(tmp_path: Path, radiographs) -> None:
    port = free_port()
    site_yaml = tmp_path / "site.yaml"
    site_yaml.write_text(
        yaml.safe_dump({"data": "data", "pacs": {"node": {"port": port, "allowed_callers": ["PACS1"]}}})
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "client", "receive", "--config", str(site_yaml), "--json-log"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    try:
        started = json.loads(server.stdout.readline())
        assert started["event"] == "start" and started["port"] == port
        assert started["receive_dir"] == str(tmp_path / "data" / "received")
        ds = pydicom.dcmread(radiographs[0])
        assert send(port, [ds])[0].Status == 0
        line = json.loads(server.stdout.readline())
        assert line["event"] == "association" and line["stored"] == 1
    finally:
        server.send_signal(signal.SIGTERM)
        stdout, stderr = server.communicate(timeout=30)
    assert server.returncode == 0, stderr
    stop = json.loads(stdout.splitlines()[-1])
    assert stop["event"] == "stop" and stop["stored"] == 1
    assert (tmp_path / "work" / "receive" / "receive.jsonl").is_file()
    assert (tmp_path / "data" / "received" / ds.StudyInstanceUID / ds.SeriesInstanceUID).is_dir()


def test_pixels_are_checked_by_default_and_header_only_checks_are_a_setting(tmp_path: Path) -> None:
    blank = _constant(tmp_path / "blank.dcm")
    node = start_node(tmp_path, check_pixels=False)
    try:
        assert send(node.port, [pydicom.dcmread(tmp_path / "blank.dcm")])[0].Status == 0  # decoding would refuse it
        assert stored_path(node, blank).is_file()
    finally:
        node.stop(grace_s=2)
    assert NodeSettings(allowed_callers=["X"]).check_pixels is True


def test_a_full_site_yaml_gives_the_node_its_folders_relative_to_the_file(tmp_path: Path) -> None:
    from client.receive_run import node_from_site_yaml, receive_settings

    site = {
        "site_name": "hospital-a",
        "server_address": "fedrad.example.org:9443",
        "ca_cert": "ca.crt",
        "private_key": "site.key",
        "data": "dicom",
        "work_dir": "state",
        "pacs": {
            "node": {"allowed_callers": ["PACS1"], "receive_dir": "incoming", "tls": {"cert": "n.crt", "key": "n.key"}}
        },
    }
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(site))
    settings = receive_settings(tmp_path / "site.yaml")
    assert settings.receive_dir == tmp_path / "incoming"
    assert settings.log_path == tmp_path / "state" / "receive" / "receive.jsonl"
    assert settings.node.tls is not None and settings.node.tls.cert == tmp_path / "n.crt"
    del site["pacs"]["node"]["receive_dir"], site["pacs"]["node"]["tls"]
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(site))
    node = node_from_site_yaml(tmp_path / "site.yaml")
    assert node.receive_dir == tmp_path / "dicom" / "received" and node.node.port == 11112
    site["pacs"]["node"]["allowed_callers"] = ["BAD\\AE"]
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(site))
    with pytest.raises(ConfigError, match="pacs.node.allowed_callers"):
        receive_settings(tmp_path / "site.yaml")


def test_fetch_c_move_node_handshakes_in_each_connection_thread(tmp_path: Path, radiographs) -> None:
    """`fetch`'s temporary C-MOVE node is the same server as `receive`: a peer that opens a TLS connection and
    never handshakes does not stop PACS's own connection, and plain DICOM is refused."""
    import socket

    from client.dimse_fetch import DimseBackend
    from client.pacs_config import PeerSettings

    pki = make_dicom_pki(tmp_path / "pki")
    tls = TlsFiles(cert=pki["node_cert"], key=pki["node_key"], ca=pki["ca"])
    node = NodeSettings(allowed_callers=["PACS1"], port=free_port(), tls=tls)
    peer = PeerSettings(ae_title="PACS1", host="127.0.0.1", port=free_port(), retrieve="move")
    fetcher = DimseBackend(peer, node, tmp_path / "received")
    fetcher._ensure_node()  # what the first C-MOVE does
    ds = pydicom.dcmread(radiographs[0])
    stalled = socket.create_connection(("127.0.0.1", node.port))  # connects, sends nothing
    try:
        assert not associate(node.port, [ds]).is_established  # plain DICOM
        pacs = client_ssl_context(TlsFiles(ca=pki["ca"], cert=pki["pacs_cert"], key=pki["pacs_key"]))
        assert [r.Status for r in send(node.port, [ds], tls=pacs)] == [0]
    finally:
        stalled.close()
        fetcher.close()
    study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
    stored = pydicom.dcmread(tmp_path / "received" / study / series / f"{sop}.dcm")
    assert stored.SOPInstanceUID == sop and stored.PixelData == ds.PixelData
