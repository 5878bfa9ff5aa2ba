"""The whole PACS loop against a real Orthanc: PACS sends, FedRad fetches, trains, and sends results back.

1. A synthetic cohort (radiographs for classification, a few for segmentation) is uploaded to Orthanc.
2. Orthanc sends every classification study to ``fedrad-site receive`` (C-STORE from Orthanc's own REST
   ``/modalities/.../store``), and ``fedrad-site fetch`` retrieves the segmentation studies by accession (C-GET).
3. A model trained on what was received gives the same predictions on the received files as on the originals.
4. ``fedrad-site infer --to pacs`` sends an SR and a SEG back; Orthanc's REST API lists them under the source
   study, referencing the source series and instances.
5. The received studies train one federated round (real SuperLink and SuperNode over TLS), and no identifier of
   theirs (UIDs, accession numbers, patient IDs, file names) is in any file or log on the server side.
"""

from __future__ import annotations

import csv
import json
import subprocess
import time
from pathlib import Path

import pydicom
import pytest
import torch
import yaml

from client.site_config import fill_site_yaml
from client.site_options import site_data_config
from client.train_local import TrainLocalOptions, run_train_local
from server.enrollment import enroll_site, init_consortium
from shared.processes import ProcessSet, executable, free_port
from shared.synth import cohort_profiles, write_site
from shared.tasks import TaskSpec
from tests.integration.cleanup import stop_all_and_check
from tests.orthanc import orthanc_path, running_orthanc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]
REPO = Path(__file__).resolve().parents[2]
SIZE = 32
NODE_AE = "FEDRAD"


def _rows(labels_csv: Path) -> list[dict]:
    with open(labels_csv, newline="") as fh:
        return list(csv.DictReader(fh))


def _site_yaml(root: Path, name: str, data: Path, pacs: dict, **extra: object) -> Path:
    """A site.yaml with its pacs: section (credentials are placeholders: nothing here contacts a consortium)."""
    doc = {
        "site_name": "site-1",
        "server_address": "127.0.0.1:9",
        "ca_cert": "ca.crt",
        "private_key": "site.key",
        "work_dir": str(root / f"work-{name}"),
        "data": str(data),
        "image_size": SIZE,
        "cache_dir": str(root / f"cache-{name}"),
        "threads": 1,
        "pacs": pacs,
        **extra,
    }
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([executable("fedrad-site"), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def _predictions(model: Path, config: Path, data: Path, out: Path) -> dict[str, str]:
    """``fedrad-site evaluate``'s per-case probabilities (predictions.csv), keyed by each case's SOPInstanceUID."""
    res = _cli("evaluate", "--model", str(model), "--config", str(config), "--out", str(out))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    with open(out / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows, "no cases evaluated"
    return {pydicom.dcmread(data / r["case_id"], stop_before_pixels=True).SOPInstanceUID: r["p_nodule"] for r in rows}


def _federate_and_scan(tmp_path: Path, ps: ProcessSet, data: Path, labels: Path) -> None:
    """One round of a one-site consortium over TLS on what the site received, then every server-side file and log
    is searched for the received studies' UIDs, accession numbers, patient IDs and file names."""
    port = free_port()
    c = tmp_path / "consortium"
    init_consortium(c, "PACS Test", f"127.0.0.1:{port}")
    cfg = yaml.safe_load((c / "consortium.yaml").read_text())
    cfg.update(rounds=1, min_sites=1, round_timeout_s=90, wait_for_sites_s=90, local_epochs=1)
    (c / "consortium.yaml").write_text(yaml.safe_dump(cfg))
    bundle = enroll_site(c, "hospital-a").bundle_dir
    config = fill_site_yaml(bundle / "site.yaml", data=data, labels=labels, cache_dir=tmp_path / "fed-cache", threads=1)
    assert _cli("approve", "--config", str(config)).returncode == 0
    server = ps.start(
        "server", [executable("fedrad-server"), "start", str(c), "--listen", f"127.0.0.1:{port}"], cwd=REPO
    )
    ps.start("site", [executable("fedrad-site"), "start", "--config", str(config)], cwd=REPO)
    assert server.wait(timeout=240) == 0, server.log_tail()
    secret: set[str] = set()
    for f in data.rglob("*.dcm"):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        secret |= {ds.SOPInstanceUID, ds.SeriesInstanceUID, ds.StudyInstanceUID, ds.AccessionNumber, ds.PatientID}
        secret |= {f.name, f.relative_to(data).as_posix()}
    secret = {x for x in secret if len(x) >= 6}
    assert len(secret) > 20, secret  # what is searched for is really there
    server_files = [p for p in c.rglob("*") if p.is_file() and "bundles" not in p.relative_to(c).parts]
    server_files += [p for p in (tmp_path / "logs").glob("server*.log")]
    hits = [(str(p), x) for p in server_files for x in secret if x.encode() in p.read_bytes()]
    assert not hits, hits[:5]
    assert any(p.name == "metrics.jsonl" for p in server_files)  # the round did finish and was recorded


def test_pacs_sends_fedrad_fetches_trains_and_answers(tmp_path: Path) -> None:
    if orthanc_path() is None:
        pytest.skip("no Orthanc: install Debian's orthanc and orthanc-dicomweb (.ci/run does)")
    torch.manual_seed(0)
    profile = cohort_profiles(1, 0, seed=11)[0]
    cls = write_site(tmp_path / "orig-cls", profile, 16, seed=11)
    seg = write_site(tmp_path / "orig-seg", profile, 4, seed=12, task="segmentation")
    node_port = free_port()
    ps = ProcessSet(tmp_path / "logs")
    started: set = set()
    try:
        with running_orthanc(tmp_path / "pacs", ps, {"fedrad": (NODE_AE, node_port)}) as pacs:
            pacs.upload(sorted(cls.dicom_dir.rglob("*.dcm")) + sorted(seg.dicom_dir.rglob("*.dcm")))
            node = {"ae_title": NODE_AE, "port": node_port, "allowed_callers": [pacs.ae_title]}
            peer = {"ae_title": pacs.ae_title, "host": "127.0.0.1", "port": pacs.dicom_port, "retrieve": "get"}
            received = tmp_path / "site-data"
            received.mkdir()
            site = _site_yaml(tmp_path, "site", received, {"node": node, "peer": peer}, labels=str(cls.labels_csv))

            # 2a. PACS routes the classification studies to the site's storage node.
            recv = ps.start("receive", [executable("fedrad-site"), "receive", "--config", str(site)], cwd=REPO)
            deadline = time.monotonic() + 60
            while pacs.client.post("/modalities/fedrad/echo", json={}).status_code != 200:
                assert recv.poll() is None and time.monotonic() < deadline, recv.log_tail()
                time.sleep(0.3)
            cls_studies = sorted({r["StudyInstanceUID"] for r in _rows(cls.labels_csv)})
            ids = [pacs.find_study(uid)["ID"] for uid in cls_studies]
            t0 = time.monotonic()
            r = pacs.client.post("/modalities/fedrad/store", json={"Resources": ids, "Synchronous": True}, timeout=120)
            assert r.status_code == 200, r.text
            sent = time.monotonic() - t0
            got = sorted(received.rglob("*.dcm"))
            originals = {pydicom.dcmread(f).SOPInstanceUID: f for f in cls.dicom_dir.rglob("*.dcm")}
            assert len(got) == len(originals), (len(got), len(originals), recv.log_tail())
            for f in got:  # byte-identical pixels, one folder per study
                ds = pydicom.dcmread(f)
                assert ds.PixelData == pydicom.dcmread(originals[ds.SOPInstanceUID]).PixelData
                assert f.parent.parent.name == ds.StudyInstanceUID
            # a second send keeps each instance once
            pacs.client.post("/modalities/fedrad/store", json={"Resources": ids[:2], "Synchronous": True}, timeout=60)
            assert len(sorted(received.rglob("*.dcm"))) == len(originals)

            # 2b. The segmentation studies by accession, C-GET from the PACS.
            accessions = tmp_path / "accessions.csv"
            seg_acc = sorted({r["AccessionNumber"] for r in _rows(seg.labels_csv)})
            accessions.write_text("AccessionNumber\n" + "\n".join(seg_acc) + "\n")
            fetch_site = _site_yaml(tmp_path, "seg-site", tmp_path / "seg-data", {"node": node, "peer": peer})
            (tmp_path / "seg-data").mkdir()
            res = _cli("fetch", "--config", str(fetch_site), "--accessions", str(accessions), "--json")
            assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
            n_seg = len(list(seg.dicom_dir.rglob("*.dcm")))
            assert len(list((tmp_path / "seg-data").rglob("*.dcm"))) == n_seg

            # 3. Trained on what was received: the same predictions on the received and on the original files.
            opts = TrainLocalOptions(epochs=2, threads=1, device="cpu", site_name="site-1")
            model = tmp_path / "cls.pt"
            run_train_local(site_data_config(site), opts, model, show_progress=False)
            orig_site = _site_yaml(tmp_path, "orig", cls.dicom_dir, {}, labels=str(cls.labels_csv))
            on_received = _predictions(model, site, received, tmp_path / "eval-received")
            on_original = _predictions(model, orig_site, cls.dicom_dir, tmp_path / "eval-original")
            assert on_received == on_original and len(on_received) >= 1

            # 4. Results back: an SR for a classification study, a SEG for a segmentation study.
            seg_model = tmp_path / "seg.pt"
            run_train_local(
                site_data_config(fetch_site, task="segmentation"),
                opts,
                seg_model,
                show_progress=False,
                task=TaskSpec("segmentation", ("nodule", "lung"), "unet", SIZE),
            )
            study_sr, study_seg = cls_studies[0], sorted({r["StudyInstanceUID"] for r in _rows(seg.labels_csv)})[0]
            before = {  # the series each study had before FedRad answered (a seg study carries its reference SEG)
                study: {x["MainDicomTags"]["SeriesInstanceUID"] for x in pacs.series_of(pacs.find_study(study)["ID"])}
                for study in (study_sr, study_seg)
            }
            for m, cfg, study in ((model, site, study_sr), (seg_model, fetch_site, study_seg)):
                res = _cli("infer", "--model", str(m), "--config", str(cfg), "--study", study, "--to", "pacs", "--json")
                assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
            for study, modality in ((study_sr, "SR"), (study_seg, "SEG")):
                found = pacs.find_study(study)
                series = pacs.series_of(found["ID"])
                results = [s for s in series if s["MainDicomTags"]["SeriesInstanceUID"] not in before[study]]
                assert [s["MainDicomTags"].get("Modality") for s in results] == [modality], results
                assert "not for diagnosis" in results[0]["MainDicomTags"].get("SeriesDescription", "")
                source_series = {
                    s["MainDicomTags"]["SeriesInstanceUID"]
                    for s in series
                    if s["MainDicomTags"].get("Modality") not in ("SR", "SEG")
                }
                inst = results[0]["Instances"][0]
                ds = pydicom.dcmread(__import__("io").BytesIO(pacs.instance_file(inst)))
                assert ds.StudyInstanceUID == study and ds.SeriesInstanceUID not in source_series
                refs = {
                    s.SeriesInstanceUID
                    for seq in ("CurrentRequestedProcedureEvidenceSequence", "ReferencedSeriesSequence")
                    for item in getattr(ds, seq, [])
                    for s in (getattr(item, "ReferencedSeriesSequence", None) or [item])
                }
                assert refs and refs <= source_series, (refs, source_series)
            log = json.loads(res.stdout)
            print(f"\npacs round trip: Orthanc sent {len(originals)} images in {sent:.1f} s; infer {log}")
        recv_log = (tmp_path / "work-site" / "receive" / "receive.jsonl").read_text()
        assert pacs.ae_title in recv_log

        # 5. The received studies train in a real federation; none of their identifiers reaches the server side.
        _federate_and_scan(tmp_path, ps, received, cls.labels_csv)
    finally:
        started = stop_all_and_check(ps, started)
