"""Relative paths in site.yaml and consortium.yaml mean files beside the YAML, whatever the working directory.

Issue 21, finding 8: ``crossval.share_local_model`` (a nested key) resolved
against the current directory, so `fedrad-site start` from another folder
shared (or failed to find) a different file than the one the site consented to.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from client.site_config import load_site_file, site_node_config
from server.consortium import load_consortium


def _site_yaml(folder: Path) -> Path:
    folder.mkdir(parents=True)
    path = folder / "site.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "site_name": "alpha",
                "server_address": "127.0.0.1:9443",
                "ca_cert": "ca.crt",
                "private_key": "keys/site.key",
                "work_dir": "state",
                "data": "dicom",
                "labels": "labels.csv",
                "masks": "masks/manifest.csv",
                "cache_dir": "cache",
                "crossval": {"share_local_model": "models/local.fedrad"},
            }
        )
    )
    return path


def test_every_relative_site_yaml_path_resolves_against_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _site_yaml(tmp_path / "bundle")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    cfg = load_site_file(Path("..") / "bundle" / "site.yaml")  # a relative config path too, from another cwd
    base = config.resolve().parent
    assert cfg.crossval.share_local_model == base / "models" / "local.fedrad"
    assert cfg.ca_cert == base / "ca.crt"
    assert cfg.private_key == base / "keys" / "site.key"
    assert cfg.work_dir == base / "state"
    assert (cfg.data, cfg.labels, cfg.masks, cfg.cache_dir) == (
        base / "dicom",
        base / "labels.csv",
        base / "masks" / "manifest.csv",
        base / "cache",
    )
    # what the SuperNode is told to share is the consented file, not ./models/local.fedrad of the shell
    node = site_node_config(Path("..") / "bundle" / "site.yaml", cfg)
    assert node["local-model"] == str(base / "models" / "local.fedrad")


def test_absolute_share_local_model_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _site_yaml(tmp_path / "bundle")
    model = tmp_path / "models" / "m.fedrad"
    data = yaml.safe_load(config.read_text())
    data["crossval"]["share_local_model"] = str(model)
    config.write_text(yaml.safe_dump(data))
    monkeypatch.chdir(tmp_path / "bundle")
    assert load_site_file(config).crossval.share_local_model == model


def test_consortium_init_weights_resolves_against_the_consortium_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "consortium"
    folder.mkdir()
    (folder / "consortium.yaml").write_text(
        yaml.safe_dump({"name": "c", "address": "127.0.0.1:9443", "task": {"init_weights": "weights/start.fedrad"}})
    )
    monkeypatch.chdir(tmp_path)
    assert load_consortium(Path("consortium")).task.init_weights == folder.resolve() / "weights" / "start.fedrad"
