"""A fetch of N studies from a real PACS, with its time (issue 25): ``fedrad-bench pacs-fetch``.

``python -m benchmarks.bench_pacs_fetch [--studies 50] [--max-images 3] [--dir DIR] [--json OUT]`` writes N synthetic
DX studies of 1 to ``--max-images`` images each (uncompressed: DCMTK's getscu accepts only uncompressed transfer
syntaxes, so every arm moves the same bytes), uploads them to a local Orthanc (Debian's ``orthanc`` +
``orthanc-dicomweb``, on loopback), and fetches them all by accession number, each arm into an empty folder:

* FedRad C-GET, C-MOVE (to fetch's temporary storage node) and DICOMweb (QIDO-RS + WADO-RS): ``client.pacs_fetch``
  (C-FIND or QIDO-RS per accession, then one retrieval per study, stored in the received tree);
* FedRad C-GET again into the same folder: nothing new to fetch (the C-FINDs and the "already here" check);
* the baseline, DCMTK: ``findscu`` (the same C-FINDs, one process) then ``getscu`` (one C-GET per study, one process
  and association; DCMTK 3.6.7's getscu crashes on exit after several query files, so its exit code is not used:
  the files it stored are counted instead).

It prints one table (seconds, studies/s, images/s, MB/s) and checks that every arm got every instance.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pydicom
import yaml
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def make_studies(out: Path, n_studies: int, max_images: int, seed: int) -> tuple[list[Path], list[dict[str, str]]]:
    """``n_studies`` synthetic DX studies; study k holds 1 + k % max_images images (the first is the synthetic
    radiograph, the others copies with their own SOP Instance UIDs, as a second view would be)."""
    from shared.synth import write_cohort

    sites = write_cohort(out / "cohort", n_sites=1, seed=seed, unseen=0, scale=max(n_studies, 4) / 400 + 0.01)
    rows = list(csv.DictReader(open(sites[0].labels_csv, encoding="utf-8")))[:n_studies]
    if len(rows) < n_studies:
        raise SystemExit(f"the synthetic site has only {len(rows)} studies")
    files: list[Path] = []
    for k, row in enumerate(rows):
        first = sites[0].path / "dicom" / row["path"]
        files.append(first)
        for j in range(1, 1 + k % max_images):
            ds = pydicom.dcmread(first)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.InstanceNumber = j + 1
            copy = out / "extra" / f"{k:04d}-{j}.dcm"
            copy.parent.mkdir(parents=True, exist_ok=True)
            ds.save_as(copy, enforce_file_format=True)
            files.append(copy)
    return files, rows


def _query_file(path: Path, **keys: str) -> Path:
    ds = Dataset()
    for k, v in keys.items():
        setattr(ds, k, v)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Q/R FIND: a query, not an image
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.save_as(path, enforce_file_format=True)
    return path


def dcmtk_fetch(work: Path, port: int, rows: list[dict[str, str]]) -> tuple[float, float]:
    """findscu with one query per accession, then getscu with one C-GET per study; seconds of each."""
    queries = work / "queries"
    queries.mkdir(parents=True)
    find = [
        _query_file(
            queries / f"find-{i}.dcm",
            QueryRetrieveLevel="STUDY",
            AccessionNumber=r["AccessionNumber"],
            StudyInstanceUID="",
        )
        for i, r in enumerate(rows)
    ]
    get = [
        _query_file(queries / f"get-{i}.dcm", QueryRetrieveLevel="STUDY", StudyInstanceUID=r["StudyInstanceUID"])
        for i, r in enumerate(rows)
    ]
    out = work / "out"
    out.mkdir()
    t0 = time.perf_counter()
    common = ["-S", "-aec", "ORTHANC", "127.0.0.1", str(port)]
    subprocess.run(["findscu", *common, *map(str, find)], check=True, capture_output=True, timeout=600)
    t1 = time.perf_counter()
    proc = subprocess.run(["getscu", "-od", str(out), *common, *map(str, get)], capture_output=True, timeout=600)
    t2 = time.perf_counter()
    # DCMTK 3.6.7's getscu crashes (SIGSEGV) after the last of several query files, once everything is stored;
    # the caller counts the files it wrote, so a crash before the end still fails the benchmark
    if proc.returncode not in (0, -11):
        raise SystemExit(f"getscu failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-500:]}")
    return t1 - t0, t2 - t1


def main(argv: list[str] | None = None) -> int | str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=50)
    parser.add_argument("--max-images", type=int, default=3, help="Images per study: 1 .. this (default 3).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=None, help="Scratch folder (default: a temporary one).")
    parser.add_argument("--json", type=Path, default=None, help="Also write the table as JSON here.")
    args = parser.parse_args(argv)
    from tests.orthanc import ENABLE, orthanc_path

    if orthanc_path() is None:
        return f"no Orthanc: {ENABLE}"
    if not (shutil.which("getscu") and shutil.which("findscu")):
        return "no DCMTK (getscu, findscu) for the baseline: apt-get install dcmtk"
    from client.fetch_request import load_fetch_site, read_accession_csv
    from client.pacs_fetch import fetch
    from shared.processes import ProcessSet, free_port
    from tests.orthanc import running_orthanc

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        files, rows = make_studies(root, args.studies, args.max_images, args.seed)
        n_images, n_bytes = len(files), sum(f.stat().st_size for f in files)
        node_port = free_port()
        results = []
        with (
            ProcessSet(root / "logs") as ps,
            running_orthanc(root / "orthanc", ps, {"fedrad": ("FEDRAD", node_port)}) as orthanc,
        ):
            orthanc.upload(files)
            site = root / "site"
            site.mkdir()
            (site / "accessions.csv").write_text(
                "AccessionNumber\n" + "".join(r["AccessionNumber"] + "\n" for r in rows)
            )
            request = read_accession_csv(site / "accessions.csv")

            def fedrad(arm: str, retrieve: str, via: str, folder: str) -> None:
                cfg = {
                    "data": "data",
                    "pacs": {
                        "node": {"ae_title": "FEDRAD", "port": node_port, "allowed_callers": ["ORTHANC"]},
                        "peer": {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port},
                        "dicomweb": {"url": orthanc.dicomweb_url},
                    },
                }
                cfg["pacs"]["peer"]["retrieve"] = retrieve
                cfg["pacs"]["node"]["receive_dir"] = folder
                (site / "site.yaml").write_text(yaml.safe_dump(cfg))
                t0 = time.perf_counter()
                summary = fetch(load_fetch_site(site / "site.yaml"), request, via)
                seconds = time.perf_counter() - t0
                got = sum(1 for _ in (site / folder).glob("*/*/*.dcm"))
                if not summary.ok or got != n_images:
                    raise SystemExit(f"{arm}: {got} of {n_images} instances, {json.dumps(summary.to_json())[:500]}")
                new = summary.totals()
                results.append((arm, seconds, new["instances"], new["bytes"]))

            fedrad("FedRad C-GET", "get", "dimse", "get")
            fedrad("FedRad C-GET again (all here)", "get", "dimse", "get")
            fedrad("FedRad C-MOVE", "move", "dimse", "move")
            fedrad("FedRad DICOMweb", "get", "dicomweb", "dicomweb")
            find_s, get_s = dcmtk_fetch(root / "dcmtk", orthanc.dicom_port, rows)
            seconds = find_s + get_s
            got = list((root / "dcmtk" / "out").iterdir())
            if len(got) != n_images:
                raise SystemExit(f"getscu: {len(got)} of {n_images} instances")
            results.append(("DCMTK findscu + getscu", seconds, len(got), sum(p.stat().st_size for p in got)))
    print(
        f"{args.studies} studies, {n_images} images ({n_bytes / 1e6:.1f} MB, DX uncompressed), Orthanc on loopback; "
        "each arm from an empty folder except 'again'"
    )
    print("| arm | seconds | studies/s | images/s | MB/s | images fetched |")
    print("|---|---:|---:|---:|---:|---:|")
    table = []
    for arm, secs, images, nbytes in results:
        row = {
            "arm": arm,
            "seconds": round(secs, 2),
            "studies_per_s": round(args.studies / secs, 1),
            "images_per_s": round(images / secs, 1),
            "mb_per_s": round(nbytes / 1e6 / secs, 1),
            "images": images,
        }
        table.append(row)
        print(f"| {arm} | {secs:.2f} | {row['studies_per_s']} | {row['images_per_s']} | {row['mb_per_s']} | {images} |")
    print(f"DCMTK: findscu {find_s:.2f} s, getscu {get_s:.2f} s")
    if args.json is not None:
        args.json.write_text(json.dumps({"studies": args.studies, "images": n_images, "arms": table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
