"""What crash safety, signing and pinning cost per outbound message (issue 21, finding 5).

``python -m benchmarks.bench_audit_append [--n 200] [--dir DIR]`` appends
``n`` entries shaped like a training reply (62 array digests, metrics, guard
decisions) to a fresh log in each mode and prints the median milliseconds per
append, then the time ``verify`` takes for the signed log and the time to
recover from a crash between a line and its head. DIR should be on the disk the
site's work_dir uses: fsync cost is the disk's.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

from client.audit import AuditSettings, append_entry, verify
from client.audit_head import new_head, read_head, write_head
from client.audit_pin import PinSettings
from shared.keys import generate_site_keys, load_private_key, load_public_key


def _entry(i: int) -> dict:
    arrays = {f"layer{k}.weight": f"{(i * 62 + k):064x}" for k in range(62)}
    return {"run": 1, "round": i, "type": "train", "bytes": 44_700_000, "arrays": arrays, "metrics": {"loss": 0.3}}


def _run(log: Path, settings: AuditSettings, n: int) -> float:
    times = []
    for i in range(1, n + 1):
        t0 = time.perf_counter()
        append_entry(log, _entry(i), settings)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        root = Path(tmp)
        priv, pub = generate_site_keys(root / "keys")
        (root / "pins").mkdir()
        modes = {
            "unsigned": AuditSettings(),
            "signed": AuditSettings(key=priv),
            "signed+pin_file": AuditSettings(key=priv, pins=PinSettings(file=root / "pins" / "heads.jsonl")),
        }
        for name, settings in modes.items():
            print(f"append {name:16s} {_run(root / name / 'outbound.jsonl', settings, args.n):7.2f} ms median")
        log = root / "signed" / "outbound.jsonl"
        t0 = time.perf_counter()
        summary = verify(log, load_public_key(pub))
        print(
            f"verify {summary.entries} lines ({log.stat().st_size:,} bytes), signed: {time.perf_counter() - t0:.3f} s"
        )
        head = read_head(log)  # the crash's trace: the last line is past a (validly signed) head
        lines = log.read_bytes().splitlines(keepends=True)
        behind = new_head(head.entries - 1, _sha(lines[-2]), head.size - len(lines[-1]), load_private_key(priv))
        write_head(log, behind)
        t0 = time.perf_counter()
        append_entry(log, _entry(args.n + 1), modes["signed"])
        print(f"append after a crash (recovery line + entry): {(time.perf_counter() - t0) * 1000:.2f} ms")


def _sha(line: bytes) -> str:
    return hashlib.sha256(line).hexdigest()


if __name__ == "__main__":
    main()
