"""The benchmark's deployment-engine pieces that need no processes: site.yaml for any site layout, engine choice."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.deployment_engine import DeploymentEngine, DeploymentError
from benchmarks.generalization import BenchConfig, BenchSite
from client.site_config import load_site_file
from deploy.loopback import CLASSES, SiteFiles, write_site_yaml
from shared.config import ConfigError


def _write(tmp_path: Path, site: Path | SiteFiles, classes: list[str] | None = None) -> Path:
    key = tmp_path / "key"
    key.write_text("not read here")
    return write_site_yaml(
        tmp_path / "s" / "site.yaml",
        site=site,
        name="site-a",
        server="127.0.0.1:9443",
        ca_cert=tmp_path / "ca.crt",
        key=key,
        image_size=32,
        classes=classes,
    )


def test_site_yaml_keeps_the_synthetic_layout_and_takes_explicit_files(tmp_path: Path) -> None:
    synthetic = load_site_file(_write(tmp_path, tmp_path / "synth"))
    assert (synthetic.data, synthetic.labels, synthetic.classes) == (
        tmp_path / "synth" / "dicom",
        tmp_path / "synth" / "labels.csv",
        CLASSES,
    )
    seg_only = SiteFiles(tmp_path / "export", None, tmp_path / "shared-cache")
    cfg = load_site_file(_write(tmp_path, seg_only, ["a", "b", "c"]))
    assert (cfg.data, cfg.labels, cfg.classes, cfg.cache_dir) == (
        tmp_path / "export",
        None,
        ["a", "b", "c"],
        tmp_path / "shared-cache",
    )
    assert cfg.work_dir == tmp_path / "s" / "work"


def test_engine_choice_is_checked_and_runs_need_the_context(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="--engine"):
        BenchConfig(engine="ray")
    assert BenchConfig(engine="deployment").engine == "deployment"
    engine = DeploymentEngine(tmp_path, [BenchSite("site-a", tmp_path, None)], classes=CLASSES, image_size=32)
    assert engine.work_dir("site-a") == tmp_path.resolve() / "sites" / "site-a" / "work"
    assert "1 SuperNodes" in engine.description
    with pytest.raises(DeploymentError, match="outside its `with` block"):
        engine.run({"num-server-rounds": 1})
