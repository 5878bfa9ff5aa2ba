"""The synthetic CT cohort read back by the series reader: two independent implementations of DICOM geometry agree.

The writer (shared/synth/ct_*) samples an analytic phantom in patient millimetres for every patient position
(HFS, FFS, HFP, FFP) and encoding (classic, RLE, JPEG-LS, Enhanced CT) with SEG or RTSTRUCT labels; the reader
(shared/imaging/series_scan.py) assembles the series and reads the labels onto its canonical grid. Every good
series must come back labelled exactly as the phantom says at its voxel centres, and every junk series must be
rejected for the reason the writer planted."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from shared.imaging.series_scan import attach_labels, scan_series
from shared.imaging.volume_preprocess import VolumeParams
from shared.synth.ct_cohort import phantom_of, read_manifest, write_ct_cohort
from shared.synth.ct_phantom import SEGMENT_NAMES

JUNK_TO_REASON = {
    "localizer": "series-localizer",
    "missing-slice": "series-missing-slices",
    "duplicate-slice": "series-duplicate-position",
}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ct")
    write_ct_cohort(out, n_sites=3, seed=3, unseen=1, patients_per_site=2, size=32)
    return out


@pytest.mark.parametrize("site", ["site-1", "site-2", "site-3", "unseen-1"])
def test_every_series_is_read_as_written(cohort: Path, site: str) -> None:
    manifest = read_manifest(cohort)
    written = {s["series_uid"]: s for s in manifest["series"] if s["site"] == site}
    scan = scan_series(cohort / site / "dicom", VolumeParams(), None)
    labels = attach_labels(scan, list(SEGMENT_NAMES))
    seen = {e.series_uid: e for e in scan.series}
    positions = set()
    for uid, info in written.items():
        entry = seen[uid]
        if info["junk"]:
            assert not entry.usable and entry.reason == JUNK_TO_REASON[info["junk"]], (uid, entry.detail)
            continue
        assert entry.usable, (info["position"], info["encoding"], entry.reason, entry.detail)
        positions.add(info["position"])
        grid = entry.native
        idx = np.stack(np.meshgrid(*[np.arange(n) for n in grid.shape], indexing="ij"), axis=-1)
        truth = phantom_of(manifest, info["patient_id"]).label_map(grid.index_to_patient(idx))
        got = labels.maps[uid].read()
        assert np.array_equal(got, truth), (site, info["position"], int((got != truth).sum()))
    assert len(positions) >= 1
