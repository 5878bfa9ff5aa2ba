"""The harness both memory-scaling benchmarks share: write N items, train on them, each in a fresh process.

Why fresh processes: a process's peak resident set (``VmHWM``) only grows, so each N's writer and each
N's training run alone and report their own peaks; the verdict is the ratio of the largest N's training
peak to the smallest's. Used by :mod:`benchmarks.bench_cache_memory` (radiograph packs) and
:mod:`benchmarks.bench_volume_memory` (CT/MR volumes).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

GB = 1e9
TARGET = 1.10  # the largest N's training peak over the smallest's


def vm_kb(key: str) -> int:
    """A /proc/self/status field in kB (VmHWM: peak resident set; VmRSS: now)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def disk_problem(base: Path, need_bytes: float, margin_gb: float, what: str, smaller: str) -> str | None:
    """Why ``base`` cannot hold ``need_bytes`` (+ margin) of ``what``, naming the options to change; else None."""
    free = shutil.disk_usage(base).free
    if free >= need_bytes * 1.05 + margin_gb * GB:
        return None
    return (
        f"{base} has {free / GB:.1f} GB free; {what} need {need_bytes / GB:.1f} GB (+{margin_gb:g} GB margin): "
        f"use {smaller}, or --dir on a larger disk"
    )


def run_phase(module: str, phase: str, root: Path, n: int, options: Sequence[str]) -> dict:
    """Run ``python -m module --phase phase --root root --n n *options`` and return its last stdout line's JSON."""
    cmd = [sys.executable, "-m", module, "--phase", phase, "--root", str(root), "--n", str(n), *options]
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=repo, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{phase} at N={n} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_sizes(
    module: str, sizes: Sequence[int], base: Path, prefix: str, options: Sequence[str], show: Callable[[dict], None]
) -> list[dict]:
    """For each N: a fresh folder under ``base``, the write phase, the train phase, the folder deleted; rows."""
    rows = []
    for n in sizes:
        root = Path(tempfile.mkdtemp(prefix=f"{prefix}-{n}-", dir=base))
        try:
            row = run_phase(module, "write", root, n, options)
            row.update(run_phase(module, "train", root, n, options))
        finally:
            shutil.rmtree(root, ignore_errors=True)
        rows.append(row)
        show(row)
    return rows


def peak_ratios(rows: Sequence[dict]) -> tuple[float, float]:
    """(training, writing) peak of the largest N over the smallest's."""
    return rows[-1]["train_peak_mb"] / rows[0]["train_peak_mb"], rows[-1]["write_peak_mb"] / rows[0]["write_peak_mb"]
