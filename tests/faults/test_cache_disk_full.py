"""Disk full in a site's cache folder: the scan finishes from memory, says so once, and loses nothing.

A real full disk needs a mount (root, a tmpfs); the same write failure is
produced per process with ``RLIMIT_FSIZE``: every write past 4 kB fails with
EFBIG (SIGXFSZ ignored), exactly as the cache's atomic writes would fail with
ENOSPC. The scan runs in a child process so the limit cannot touch pytest.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests import dicom_factory as f

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent("""
    import json, resource, signal, sys, warnings
    from pathlib import Path
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
    from shared.config import PreprocessConfig
    from shared.imaging.scan import scan_site
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = scan_site(Path(sys.argv[1]), PreprocessConfig(image_size=32), Path(sys.argv[2]), workers=1)
    shapes = [list(result.load_image(r).shape) for r in result.usable]
    print(json.dumps({"usable": len(result.usable), "shapes": shapes, "warning": result.cache.warning,
                      "warnings": [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]}))
""")


def test_a_full_cache_disk_degrades_to_memory_with_one_clear_warning(tmp_path: Path) -> None:
    export = tmp_path / "export"
    for i in range(4):
        f.write_image(export / f"img{i}.dcm", f.phantom(96, 96, seed=i))
    cache = tmp_path / "cache"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(export), str(cache)], cwd=REPO, capture_output=True, text=True, timeout=100
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["usable"] == 4 and out["shapes"] == [[32, 32]] * 4  # every image still there, from memory
    assert out["warning"] and "not writable" in out["warning"], out
    assert len(out["warnings"]) == 1, out["warnings"]  # said once, not once per file
    leftovers = [p for p in cache.rglob("*") if p.is_file() and p.stat().st_size >= 4096]
    assert not leftovers, leftovers  # no half-written cache file left behind to be trusted later
