"""Receiving from PACS: FedRad's storage node against DCMTK's ``storescp`` writing to a folder, then the ingest.

Writes N synthetic radiographs at full size (a synthetic chest film upsampled to 512-2,048 px, 12 bits, with
detector noise; a fraction JPEG 2000 lossless, the rest uncompressed), then sends the same folder with DCMTK's
``storescu`` (one association, JPEG 2000 proposed as well as the uncompressed syntaxes) to

- ``storescp``: DCMTK's storage SCP writing each object to a folder per study (``+xa -su``), no checks, no fsync
  (the baseline: what receiving costs with nothing done on arrival), and with ``+B`` (the bytes as received,
  as FedRad writes them, instead of a re-encoded dataset; one flat folder, as storescp cannot sort then);
- FedRad (``fedrad-site receive``'s :class:`~client.dicom_receive.ReceiveNode`): each object checked as
  ``fedrad-site check`` would check it (pixels decoded), written atomically (temporary file, fsync, rename) to
  STUDY/SERIES/SOP.dcm; and again with ``check_pixels: false`` (header checks only);

and reports images/s and MB/s of each and FedRad's ratio to the baseline (best of ``--repeats``, wall time of
``storescu``). Then it ingests FedRad's received folder as ``check`` does (``scan_site`` into an empty cache, every
core this process may use): images/s, and the re-check of the unchanged folder (every file a cache hit).

Usage: ``fedrad-bench pacs-receive [--n 200] [--sizes 512,1024,2048] [--j2k 0.25] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from pathlib import Path

from benchmarks.bench_ingest_fullsize import allowed_cores, write_fullsize
from shared.config import PreprocessConfig
from shared.processes import free_port

J2K = "1.2.840.10008.1.2.4.90"
UNCOMPRESSED = "1.2.840.10008.1.2.1"
# DCMTK leaves Nagle's algorithm on unless TCP_NODELAY=1: each C-STORE then waits ~40 ms for a delayed ACK, which
# would measure the TCP stack instead of the receivers. Both DCMTK tools run with it set.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}
MAX_PDU = 65536  # both receivers offer the same (pacs.node.max_pdu's default; storescp's own default is 16 KiB)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"{name} not found: install DCMTK (apt install dcmtk)")
    return path


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]


def _wait_listening(port: int, process: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"storescp exited: {process.stderr.read().decode()[-1000:] if process.stderr else ''}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def send(folder: Path, port: int) -> float:
    """Seconds for ``storescu`` to send every file under ``folder`` on one association."""
    args = [_tool("storescu"), "-aet", "BENCH", "-aec", "FEDRAD", "-xv", "+sd", "+r", "127.0.0.1", str(port)]
    start = time.perf_counter()
    proc = subprocess.run([*args, str(folder)], capture_output=True, text=True, timeout=3600, env=DCMTK_ENV)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"storescu failed: {proc.stderr[-2000:]}")
    return elapsed


def baseline(source: Path, out: Path, bit_preserving: bool = False) -> float:
    """storescu → storescp (folder per study; ``bit_preserving``: +B, the bytes as received); seconds."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    port = free_port()
    options = ["+B"] if bit_preserving else ["-su", "ST"]  # storescp sorts into study folders only when decoding
    scp = subprocess.Popen(
        [_tool("storescp"), "-aet", "FEDRAD", "+xa", "-pdu", str(MAX_PDU), *options, "-od", str(out), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=DCMTK_ENV,
    )
    try:
        _wait_listening(port, scp)
        seconds = send(source, port)
    finally:
        scp.terminate()
        scp.wait(timeout=30)
    if len(_files(out)) != len(_files(source)):
        raise SystemExit(f"storescp stored {len(_files(out))} of {len(_files(source))} files")
    return seconds


def fedrad(source: Path, out: Path, check_pixels: bool) -> float:
    """storescu → FedRad's storage node; seconds."""
    from client.dicom_receive import ReceiveNode
    from client.pacs_config import NodeSettings

    shutil.rmtree(out, ignore_errors=True)
    settings = NodeSettings(allowed_callers=["BENCH"], port=free_port(), check_pixels=check_pixels, max_pdu=MAX_PDU)
    node = ReceiveNode(settings, out / "received", out / "receive.jsonl")
    node.start()
    try:
        seconds = send(source, node.port)
        node.wait_idle(30)
    finally:
        totals = node.stop(grace_s=5)
    if totals["rejected"] or totals["stored"] != len(_files(source)):
        raise SystemExit(f"FedRad did not store every file: {totals}")
    return seconds


def ingest(folder: Path, image_size: int, cache: Path) -> tuple[float, float, int]:
    """(seconds of a first ingest, seconds of a re-check, usable images) of ``folder``, as ``check`` scans it."""
    from shared.imaging.scan import scan_site

    shutil.rmtree(cache, ignore_errors=True)
    params = PreprocessConfig(image_size=image_size)
    start = time.perf_counter()
    scan = scan_site(folder, params, cache_dir=cache)
    first = time.perf_counter() - start
    start = time.perf_counter()
    again = scan_site(folder, params, cache_dir=cache)
    second = time.perf_counter() - start
    if again.cache.decoded:
        raise SystemExit(f"the re-check decoded {again.cache.decoded} files")
    return first, second, len(scan.usable)


def measure(args: argparse.Namespace, work: Path) -> dict:
    source = work / "outbox"
    n_j2k = round(args.n * args.j2k)
    size = write_fullsize(source / "uncompressed", args.n - n_j2k, args.sizes, UNCOMPRESSED, 12, args.seed)
    if n_j2k:
        size += write_fullsize(source / "jpeg2000", n_j2k, args.sizes, J2K, 12, args.seed)
    n = len(_files(source))
    mb = size / 1e6
    rows = []
    targets = [
        ("storescp (folder)", lambda: baseline(source, work / "storescp")),
        ("storescp +B", lambda: baseline(source, work / "storescp-B", bit_preserving=True)),
        ("FedRad receive", lambda: fedrad(source, work / "fedrad", True)),
        ("FedRad, header checks", lambda: fedrad(source, work / "fedrad-headers", False)),
    ]
    for name, run in targets:
        seconds = min(run() for _ in range(args.repeats))
        rows.append({"target": name, "seconds": round(seconds, 2), "images_per_s": round(n / seconds, 1)})
        rows[-1]["mb_per_s"] = round(mb / seconds, 1)
    base = rows[0]["seconds"]
    for row in rows:
        row["ratio"] = round(base / row["seconds"], 3)  # throughput relative to storescp
    first, again, usable = ingest(work / "fedrad" / "received", args.image_size, work / "cache")
    return {
        "images": n,
        "jpeg2000": n_j2k,
        "mb": round(mb, 1),
        "sizes": args.sizes,
        "cores": allowed_cores(),
        "receive": rows,
        "ingest": {
            "image_size": args.image_size,
            "usable": usable,
            "seconds": round(first, 2),
            "images_per_s": round(n / first, 1),
            "recheck_seconds": round(again, 2),
            "recheck_images_per_s": round(n / again, 1),
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="images sent")
    parser.add_argument(
        "--sizes", type=lambda s: [int(x) for x in s.split(",")], default=[512, 1024, 2048], help="sides, px (cycled)"
    )
    parser.add_argument("--j2k", type=float, default=0.25, help="fraction sent as JPEG 2000 lossless")
    parser.add_argument("--image-size", type=int, default=256, help="model input side the ingest preprocesses to")
    parser.add_argument("--repeats", type=int, default=2, help="best of R transfers per target")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.n < 1 or not 0 <= args.j2k <= 1 or args.repeats < 1 or any(not 512 <= s <= 4096 for s in args.sizes):
        parser.error("--n and --repeats must be >= 1, --j2k in [0, 1], each of --sizes in [512, 4096]")
    _tool("storescu"), _tool("storescp")
    warnings.simplefilter("ignore")
    work = Path(tempfile.mkdtemp(prefix="fedrad-bench-pacs-receive-"))
    try:
        result = measure(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"PACS receive: {result['images']} radiographs ({result['jpeg2000']} JPEG 2000 lossless, the rest "
        f"uncompressed), sides {args.sizes} px, {result['mb']} MB; storescu on 127.0.0.1, one association; "
        f"best of {args.repeats}; {result['cores']} cores allowed"
    )
    print(f"{'target':<24}{'seconds':>9}{'images/s':>10}{'MB/s':>8}{'vs storescp':>13}")
    for r in result["receive"]:
        print(f"{r['target']:<24}{r['seconds']:>9}{r['images_per_s']:>10}{r['mb_per_s']:>8}{r['ratio']:>13}")
    ing = result["ingest"]
    print(
        f"ingest of FedRad's received folder (check's scan, to {ing['image_size']} px, empty cache): "
        f"{ing['usable']} usable, {ing['seconds']} s, {ing['images_per_s']} images/s; re-check (all cached): "
        f"{ing['recheck_seconds']} s, {ing['recheck_images_per_s']} images/s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
