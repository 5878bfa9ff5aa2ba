"""`fedrad-site fetch` against a real Orthanc PACS on loopback: C-GET, C-MOVE and DICOMweb (issue 25).

One Orthanc for the module (it checks the called AE title, like a hospital PACS, and knows FedRad's node as a
C-MOVE destination), holding two synthetic sites' radiographs: DX uncompressed and CR in RLE, one study each.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pydicom
import pytest
import yaml
from pydicom.dataset import Dataset
from pynetdicom import AE, evt
from pynetdicom.presentation import StoragePresentationContexts
from typer.testing import CliRunner

from client.cli import app
from client.dicomweb_fetch import read_bearer_token
from client.dimse_support import TRANSFER_SYNTAXES
from client.fetch_request import date_request, load_fetch_site, read_accession_csv
from client.pacs_fetch import PacsUnavailable, StudyRefused, TransientPacsError, fetch, with_retries
from client.received_tree import ReceivedInstanceError, instance_path, store_part10
from server.pki import create_ca, issue_server_cert
from shared.config import ConfigError
from shared.processes import ProcessSet, free_port
from shared.synth import write_cohort
from tests.orthanc import running_orthanc

pytestmark = pytest.mark.timeout(120)
runner = CliRunner()
ABSENT = "NOPE0000001"


@dataclass
class Pacs:
    http_port: int
    dicom_port: int
    dicomweb_url: str
    node_port: int
    uploaded: dict[str, Path]  # SOPInstanceUID -> the file sent to PACS
    rows: list[dict[str, str]]  # label rows of both sites (AccessionNumber, StudyInstanceUID, label, …)


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pacs]:
    root = tmp_path_factory.mktemp("pacs")
    sites = write_cohort(root / "cohort", n_sites=2, seed=11, unseen=0, scale=0.01)  # 4 + 4 studies
    rows = [r for s in sites for r in csv.DictReader(open(s.labels_csv, encoding="utf-8"))]
    uploaded = {}
    for s in sites:
        for f in (s.path / "dicom").rglob("IMG*"):
            uploaded[str(pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID)] = f
    node_port = free_port()
    with (
        ProcessSet(root / "logs") as ps,
        running_orthanc(
            root / "orthanc", ps, {"fedrad": ("FEDRAD", node_port)}, overrides={"DicomCheckCalledAet": True}
        ) as orthanc,
    ):
        assert orthanc.upload(uploaded.values()) == len(uploaded) == len(rows) == 8
        yield Pacs(orthanc.http_port, orthanc.dicom_port, orthanc.dicomweb_url, node_port, uploaded, rows)


def make_site(tmp: Path, pacs: Pacs, *, retrieve: str = "get", ae_title: str = "ORTHANC", port: int | None = None):
    """A data-only site.yaml (labels keyed on AccessionNumber) with a pacs section, and an accession list."""
    site = tmp / "site"
    site.mkdir(parents=True, exist_ok=True)
    with open(site / "labels.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["AccessionNumber", "label"])
        w.writeheader()
        w.writerows({"AccessionNumber": r["AccessionNumber"], "label": r["label"]} for r in pacs.rows)
    (site / "accessions.csv").write_text(
        "AccessionNumber,comment\n" + "".join(f"{r['AccessionNumber']},x\n" for r in pacs.rows) + f"{ABSENT},gone\n"
    )
    cfg = {
        "data": "data",
        "labels": "labels.csv",
        "key": "AccessionNumber",
        "classes": ["normal", "nodule"],
        "pacs": {
            "node": {"ae_title": "FEDRAD", "port": pacs.node_port, "allowed_callers": ["ORTHANC"]},
            "peer": {"ae_title": ae_title, "host": "127.0.0.1", "port": port or pacs.dicom_port, "retrieve": retrieve},
            "dicomweb": {"url": pacs.dicomweb_url},
        },
    }
    (site / "site.yaml").write_text(yaml.safe_dump(cfg))
    return site


def fetch_json(site: Path, *args: str) -> tuple[int, dict]:
    res = runner.invoke(app, ["fetch", "--config", str(site / "site.yaml"), *args, "--json"])
    assert res.exit_code in (0, 1), res.output
    return res.exit_code, json.loads(res.stdout)


def assert_fetched_as_uploaded(received: Path, pacs: Pacs, only: set[str] | None = None) -> None:
    """Every uploaded instance (or those of the studies ``only``) is in the tree, pixel data byte for byte."""
    files = sorted(received.glob("*/*/*.dcm"))
    want = {
        sop: f
        for sop, f in pacs.uploaded.items()
        if only is None or str(pydicom.dcmread(f, stop_before_pixels=True).StudyInstanceUID) in only
    }
    assert {p.stem for p in files} == set(want)
    for p in files:
        got, sent = pydicom.dcmread(p), pydicom.dcmread(want[p.stem])
        assert p == instance_path(received, sent.StudyInstanceUID, sent.SeriesInstanceUID, sent.SOPInstanceUID)
        assert got.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
        assert got["PixelData"].value == sent["PixelData"].value  # as stored at PACS: not transcoded
        assert oct(p.stat().st_mode & 0o777) == "0o640"


def test_cget_by_accession_list_then_nothing_new_then_check_joins_labels(tmp_path: Path, pacs: Pacs) -> None:
    site = make_site(tmp_path, pacs)
    code, report = fetch_json(site, "--accessions", str(site / "accessions.csv"))
    assert code == 1 and report["ok"] is False  # one accession is not at PACS
    assert report["retrieve"] == "C-GET" and report["asked"] == 9 and report["found"] == 8
    assert report["missing"] == [ABSENT] and report["refused"] == [] and report["unavailable"] is None
    assert report["fetched"]["studies"] == 8 and report["fetched"]["instances"] == 8
    assert report["fetched"]["bytes"] == sum(p.stat().st_size for p in (site / "data/received").rglob("*.dcm"))
    assert_fetched_as_uploaded(site / "data" / "received", pacs)

    code, again = fetch_json(site, "--accessions", str(site / "accessions.csv"))  # kept once
    assert code == 1 and again["fetched"]["instances"] == 0 and again["fetched"]["studies_already_here"] == 8
    log = [json.loads(line) for line in (site / "work/fetch/fetch.jsonl").read_text().splitlines()]
    assert [e["event"] for e in log].count("summary") == 2
    assert {e["study_uid"] for e in log if e["event"] == "study"} == {r["StudyInstanceUID"] for r in pacs.rows}
    assert oct((site / "work/fetch/fetch.jsonl").stat().st_mode & 0o777) == "0o600"

    (site / "present.csv").write_text("AccessionNumber\n" + pacs.rows[0]["AccessionNumber"] + "\n")
    assert fetch_json(site, "--accessions", str(site / "present.csv"))[0] == 0  # everything asked for is here

    res = runner.invoke(app, ["check", "--config", str(site / "site.yaml"), "--json"])
    check = json.loads(res.stdout)
    assert check["images"]["usable"] == 8 and check["labels"]["matched"] == 8, res.output
    assert check["labels"]["problems"] == [] and check["unlabelled_images"] == 0

    table = runner.invoke(app, ["fetch", "--config", str(site / "site.yaml"), "--accessions", str(site / "acc.csv")])
    assert table.exit_code == 2 and "file not found" in table.output


def test_dicomweb_by_accession_and_by_date_and_modality(tmp_path: Path, pacs: Pacs) -> None:
    site = make_site(tmp_path, pacs)
    code, report = fetch_json(site, "--accessions", str(site / "accessions.csv"), "--via", "dicomweb")
    assert code == 1 and report["retrieve"] == "WADO-RS" and report["missing"] == [ABSENT]
    assert report["fetched"]["studies"] == 8 and report["fetched"]["instances"] == 8
    assert_fetched_as_uploaded(site / "data" / "received", pacs)
    assert (
        fetch_json(site, "--accessions", str(site / "accessions.csv"), "--via", "dicomweb")[1]["fetched"]["instances"]
        == 0
    )

    cr = {
        str(pydicom.dcmread(f).StudyInstanceUID) for f in pacs.uploaded.values() if pydicom.dcmread(f).Modality == "CR"
    }
    assert 0 < len(cr) < 8
    for via in ("dicomweb", "dimse"):
        other = make_site(tmp_path / via, pacs)
        code, report = fetch_json(other, "--since", "2000-01-01", "--modality", "CR", "--via", via)
        assert code == 0 and report["missing"] == [] and report["found"] == len(cr), report
        assert_fetched_as_uploaded(other / "data" / "received", pacs, only=cr)


def test_cmove_to_a_temporary_storage_node_or_to_a_running_receive(tmp_path: Path, pacs: Pacs) -> None:
    site = make_site(tmp_path, pacs, retrieve="move")
    code, report = fetch_json(site, "--accessions", str(site / "accessions.csv"))
    assert code == 1 and report["retrieve"] == "C-MOVE" and report["missing"] == [ABSENT], report
    assert report["fetched"]["instances"] == 8
    assert_fetched_as_uploaded(site / "data" / "received", pacs)

    # `fedrad-site receive` holds the node's port: PACS sends there, fetch counts what lands in the tree
    other = make_site(tmp_path / "with-receive", pacs, retrieve="move")
    stand_in = AE(ae_title="FEDRAD")
    for cx in StoragePresentationContexts:
        stand_in.add_supported_context(cx.abstract_syntax, TRANSFER_SYNTAXES)
    received = other / "data" / "received"

    def store(event) -> int:
        store_part10(received, event.encoded_dataset())
        return 0

    server = stand_in.start_server(("127.0.0.1", pacs.node_port), block=False, evt_handlers=[(evt.EVT_C_STORE, store)])
    try:
        code, report = fetch_json(other, "--accessions", str(other / "accessions.csv"))
    finally:
        server.shutdown()
    assert code == 1 and report["fetched"]["instances"] == 8 and report["fetched"]["studies"] == 8, report
    assert_fetched_as_uploaded(received, pacs)


def test_tls_to_pacs(tmp_path: Path, pacs: Pacs) -> None:
    """Orthanc serving DICOM over TLS: fetched with pacs.peer.tls.ca; plain DICOM or the wrong CA say why not."""
    create_ca(tmp_path / "pki", "Hospital")
    issue_server_cert(tmp_path / "pki", ["127.0.0.1"])
    create_ca(tmp_path / "other", "Elsewhere")
    pki = tmp_path / "pki"
    tls = {
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(pki / "server.crt"),
        "DicomTlsPrivateKey": str(pki / "server.key"),
        "DicomTlsTrustedCertificates": str(pki / "ca.crt"),
        "DicomTlsRemoteCertificateRequired": False,
    }
    with ProcessSet(tmp_path / "logs") as ps, running_orthanc(tmp_path / "orthanc", ps, overrides=tls) as orthanc:
        orthanc.upload(pacs.uploaded.values())
        site = make_site(tmp_path, replace(pacs, dicom_port=orthanc.dicom_port))
        request = read_accession_csv(site / "accessions.csv")
        outcomes = {}
        for name, peer_tls in (
            ("plain", None),
            ("other-ca", {"ca": str(tmp_path / "other/ca.crt")}),
            ("ok", {"ca": str(pki / "ca.crt")}),
        ):
            cfg = yaml.safe_load((site / "site.yaml").read_text())
            cfg["pacs"]["peer"]["tls"] = peer_tls
            (site / "site.yaml").write_text(yaml.safe_dump(cfg))
            outcomes[name] = fetch(load_fetch_site(site / "site.yaml"), request, backoff=0.01).to_json()
    assert "does PACS expect DICOM over TLS" in outcomes["plain"]["unavailable"]
    assert "CERTIFICATE_VERIFY_FAILED" in outcomes["other-ca"]["unavailable"]
    assert outcomes["ok"]["unavailable"] is None and outcomes["ok"]["fetched"]["instances"] == 8
    assert_fetched_as_uploaded(site / "data" / "received", pacs)


def test_wrong_ae_title_and_dead_port_are_refused_clearly(tmp_path: Path, pacs: Pacs) -> None:
    site = make_site(tmp_path / "ae", pacs, ae_title="NOT-THE-PACS")
    code, report = fetch_json(site, "--accessions", str(site / "accessions.csv"))
    assert code == 1 and report["found"] == 0 and len(report["not_asked"]) == 9
    assert (
        "rejected the association" in report["unavailable"]
        and "Called AE title not recognised" in (report["unavailable"])
    )
    res = runner.invoke(
        app, ["fetch", "--config", str(site / "site.yaml"), "--accessions", str(site / "accessions.csv")]
    )
    assert res.exit_code == 1 and "PACS unavailable" in res.output and "NOT-THE-PACS" in res.output

    dead = make_site(tmp_path / "dead", pacs, port=free_port())
    code, report = fetch_json(dead, "--accessions", str(dead / "accessions.csv"))
    assert code == 1 and "cannot connect to 127.0.0.1:" in report["unavailable"]
    assert "tried 3 times" in report["unavailable"]
    assert not (dead / "data" / "received").exists()


def test_configuration_and_input_problems_exit_2(tmp_path: Path, pacs: Pacs) -> None:
    site = make_site(tmp_path, pacs)
    (site / "bare.yaml").write_text("data: data\n")
    res = runner.invoke(
        app, ["fetch", "--config", str(site / "bare.yaml"), "--accessions", str(site / "accessions.csv")]
    )
    assert res.exit_code == 2 and "no pacs.peer" in res.output and "docs/pacs.md" in res.output
    res = runner.invoke(
        app, ["fetch", "--config", str(site / "bare.yaml"), "--since", "2020-01-01", "--via", "dicomweb"]
    )
    assert res.exit_code == 2 and "no pacs.dicomweb" in res.output
    (site / "wild.csv").write_text("AccessionNumber\nAB*\n")
    res = runner.invoke(app, ["fetch", "--config", str(site / "site.yaml"), "--accessions", str(site / "wild.csv")])
    assert res.exit_code == 2 and "wildcard" in res.output
    res = runner.invoke(app, ["fetch", "--config", str(site / "site.yaml")])
    assert res.exit_code == 2 and "--accessions" in res.output
    (site / "move.yaml").write_text(
        yaml.safe_dump({"data": "data", "pacs": {"peer": {"ae_title": "P", "host": "h", "retrieve": "move"}}})
    )
    res = runner.invoke(app, ["fetch", "--config", str(site / "move.yaml"), "--since", "2020-01-01"])
    assert res.exit_code == 2 and "move needs pacs.node" in res.output


# --- no PACS needed -------------------------------------------------------------------------------------------


def _part10(study: str, series: str, sop: str) -> bytes:
    from client.received_tree import part10_bytes

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    return part10_bytes(ds)


@pytest.mark.filterwarnings("ignore:.*VR UI:UserWarning")  # pydicom warns about the bad UIDs this test writes
def test_received_tree_checks_uids_and_keeps_an_instance_once(tmp_path: Path) -> None:
    first = store_part10(tmp_path, _part10("1.2.3", "1.2.3.4", "1.2.3.4.5"))
    assert first.new and first.path == tmp_path / "1.2.3" / "1.2.3.4" / "1.2.3.4.5.dcm"
    os.utime(first.path, (1, 1))
    again = store_part10(tmp_path, _part10("1.2.3", "1.2.3.4", "1.2.3.4.5"))
    assert not again.new and first.path.stat().st_mtime == 1  # kept, not rewritten
    for bad in ("../../etc", "1.2/3", "1.02.3", "", "1." + "1" * 70):
        with pytest.raises(ReceivedInstanceError):
            store_part10(tmp_path, _part10(bad, "1.2", "1.2.3"))
    with pytest.raises(ReceivedInstanceError):
        store_part10(tmp_path, b"not dicom at all")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "1.2.3/1.2.3.4/1.2.3.4.5.dcm"
    ]


def test_request_parsing(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("\ufeffStudyInstanceUID;AccessionNumber\n1.2.3;\n;A1\n;A1\n;\n")
    req = read_accession_csv(tmp_path / "a.csv")
    assert [q.label for q in req.queries] == ["1.2.3", "A1"] and req.by_list and req.notes
    for text, needle in (
        ("label\nx\n", "needs a column"),
        ("AccessionNumber\nA?\n", "wildcard"),
        ("AccessionNumber\n", "no accession"),
    ):
        (tmp_path / "b.csv").write_text(text)
        with pytest.raises(ConfigError, match=needle):
            read_accession_csv(tmp_path / "b.csv")
    req = date_request("2024-01-02", "20240131", ["cr", "DX", "CR"])
    assert [q.to_json() for q in req.queries] == [
        {"StudyDate": "20240102-20240131", "ModalitiesInStudy": "CR"},
        {"StudyDate": "20240102-20240131", "ModalitiesInStudy": "DX"},
    ]
    with pytest.raises(ConfigError, match="before"):
        date_request("2024-02-01", "2024-01-01", [])


def test_retries_back_off_then_give_up(tmp_path: Path) -> None:
    calls, sleeps = [], []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise TransientPacsError("busy")
        return "ok"

    assert with_retries(flaky, "x", sleep=sleeps.append) == "ok" and sleeps == [0.5, 1.0]
    with pytest.raises(PacsUnavailable, match="tried 3 times"):
        with_retries(lambda: (_ for _ in ()).throw(TransientPacsError("down")), "query", sleep=lambda s: None)


def test_failure_status_is_reported_with_its_meaning(tmp_path: Path) -> None:
    from pynetdicom.status import QR_GET_SERVICE_CLASS_STATUS

    from client.dimse_fetch import DimseBackend
    from client.pacs_config import PeerSettings

    backend = DimseBackend(PeerSettings(ae_title="P", host="127.0.0.1"), None, tmp_path)
    final = Dataset()
    final.Status = 0xA702
    with pytest.raises(StudyRefused) as err:
        backend._result(final, QR_GET_SERVICE_CLASS_STATUS, "C-GET")
    assert err.value.code == "0xA702" and "unable to perform sub-operations" in err.value.meaning


def test_bearer_token_must_be_private(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("abc.def-ghi\n")
    token.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        read_bearer_token(token)
    token.chmod(0o600)
    assert read_bearer_token(token) == "abc.def-ghi"
