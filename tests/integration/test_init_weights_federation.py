"""``task.init_weights`` as a colleague's plain checkpoint, through a real consortium over TLS on 127.0.0.1.

``fedrad-server start`` imports the file before it waits for sites and prints the report; round 1 goes out with
exactly the imported weights (``metrics.jsonl``'s ``start_weights_sha256``), and the round's model file keeps
where they came from. Real SuperLink, fleet proxy, two SuperNodes with their site workers; one round.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from client.site_config import fill_site_yaml
from server.enrollment import enroll_site, init_consortium
from server.init_weights import INIT_FILE
from shared.modelfile import load_model_file
from shared.models import build_model
from shared.processes import ProcessSet, executable, free_port
from shared.synth import SiteSummary
from tests.integration.cleanup import stop_all_and_check

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
REPO = Path(__file__).resolve().parents[2]
WIDE = {"COLUMNS": "250"}


def test_start_prints_the_import_and_round_one_starts_from_it(tmp_path: Path, small_cohort: list[SiteSummary]) -> None:
    t0 = time.monotonic()
    torch.manual_seed(21)
    colleague = build_model("smallcnn", 5, 64).state_dict()  # five findings: its head cannot fit two classes
    source = tmp_path / "colleague-smallcnn.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in colleague.items()}}, source)

    port = free_port()
    c = tmp_path / "consortium"
    init_consortium(c, "Init Fed", f"127.0.0.1:{port}")
    cfg_path = c / "consortium.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg.update(rounds=1, min_sites=2, local_epochs=1, round_timeout_s=60, wait_for_sites_s=60)
    cfg["task"]["init_weights"] = str(source)
    cfg_path.write_text(yaml.safe_dump(cfg))
    site_yaml = {}
    for name, data in zip(("site-a", "site-b"), small_cohort[:2], strict=True):
        bundle = enroll_site(c, name).bundle_dir
        site_yaml[name] = fill_site_yaml(
            bundle / "site.yaml", data=data.dicom_dir, labels=data.labels_csv, cache_dir=tmp_path / "cache" / name
        )
        res = subprocess.run(
            [executable("fedrad-site"), "approve", "--config", str(site_yaml[name]), "--json"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert res.returncode == 0, res.stderr

    ps = ProcessSet(tmp_path / "logs")
    started: set = set()
    try:
        server = ps.start(
            "server",
            [executable("fedrad-server"), "start", str(c), "--listen", f"127.0.0.1:{port}"],
            env=WIDE,
            cwd=REPO,
        )
        deadline = time.monotonic() + 60
        while "listening for sites" not in server.log_text():
            assert server.poll() is None and time.monotonic() < deadline, server.log_tail()
            time.sleep(0.2)
        for name, path in site_yaml.items():
            ps.start(name, [executable("fedrad-site"), "start", "--config", str(path)], env=WIDE, cwd=REPO)
        assert server.wait(timeout=200) == 0, server.log_tail()
        started |= ps.all_procs()
        log = server.log_text()
        # the report, before the sites were waited for
        report_at = log.index(f"init weights: {source}")
        assert report_at < log.index("listening for sites")
        for text in ("stripped 'module.'", "module.classifier.weight", "left at its fresh init"):
            assert text in log, text

        run_dir = next((c / "runs").iterdir())
        start_file = load_model_file(run_dir / INIT_FILE)
        got = start_file.model.state_dict()
        assert all(torch.equal(got[k], v) for k, v in colleague.items() if not k.startswith("classifier."))
        row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[0])
        assert row["start_weights_sha256"] == start_file.weights_sha256  # round 1 went out with the import
        story = load_model_file(run_dir / "round-0001.pt").provenance["extra"]["init_weights"]
        assert story["file"] == str(source) and story["left_at_init"] == ["classifier.weight", "classifier.bias"]
        print(f"\ninit-weights federation: {time.monotonic() - t0:.1f} s")
    finally:
        stop_all_and_check(ps, started)
