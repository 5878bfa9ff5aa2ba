"""How a FedRad consortium scales with the number of sites, on Flower's simulation engine (Ray).

Runs ``fedrad-bench scale`` (:func:`benchmarks.scale.run_scale`) for N = 5,
10, 25, 50 sites of the same size, and prints wall time per round, peak
memory of the whole process tree, upload bytes per round, and a least-squares
fit of seconds per round against total images (does time grow linearly?).
Sized for a 2-core machine: 20 images per site, 2 rounds, 2 Ray CPUs.

    .venv/bin/python -m benchmarks.bench_scale [--sites 5,10,25,50] [--images-per-site 20] [--rounds 2] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.scale import run_scale  # noqa: E402


def linear_fit(x: list[float], y: list[float]) -> dict:
    """y ≈ slope·x + intercept, with R²."""
    slope, intercept = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    pred = slope * np.asarray(x) + intercept
    ss_res, ss_tot = float(((np.asarray(y) - pred) ** 2).sum()), float(((np.asarray(y) - np.mean(y)) ** 2).sum())
    return {
        "slope_s_per_image": round(float(slope), 5),
        "intercept_s": round(float(intercept), 2),
        "r2": round(1 - ss_res / ss_tot, 4) if ss_tot > 0 else 1.0,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", default="5,10,25,50")
    ap.add_argument("--images-per-site", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    counts = [int(n) for n in args.sites.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="fedrad-scale-") as tmp:
        for n in counts:  # one cohort folder: the first N sites of a larger N are reused
            r = run_scale(Path(tmp), n, args.images_per_site, args.rounds, cpus=args.cpus)
            results.append(r.to_json())
            print(f"N={n}: {r.seconds_per_round:.1f} s/round, peak {r.peak_rss_mb:.0f} MB", file=sys.stderr, flush=True)
    fit = linear_fit([r["images"] for r in results], [r["seconds_per_round"] for r in results])
    if args.json:
        print(json.dumps({"runs": results, "fit_seconds_per_round_vs_images": fit}, indent=2))
        return
    print(
        f"{'sites':>5s} {'images':>6s} {'s/round':>8s} {'s/round/site':>12s} {'peak RSS MB':>11s} {'upload B/round':>15s}"
    )
    for r in results:
        print(
            f"{r['sites']:5d} {r['images']:6d} {r['seconds_per_round']:8.1f} {r['seconds_per_round'] / r['sites']:12.2f} "
            f"{r['peak_rss_mb']:11.0f} {r['upload_bytes_per_round']:15,d}"
        )
    print(f"fit: s/round ≈ {fit['slope_s_per_image']:.4f} × images + {fit['intercept_s']:.1f}  (R² {fit['r2']:.3f})")


if __name__ == "__main__":
    main()
