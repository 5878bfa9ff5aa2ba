"""`fedrad-server init/enroll`, `fedrad-site keygen`: real files, real certificates, CLI exit codes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from typer.testing import CliRunner

from client.cli import app as site_cli
from client.site_config import SITE_ONLY_KEYS, SiteFileConfig, fill_site_yaml, load_site_file
from client.site_options import SITE_ONLY_KEYS as OPTIONS_SITE_KEYS
from client.site_options import site_data_config
from server.cli import app as server_cli
from server.enrollment import load_registry
from server.pki import certificate_names
from shared.config import ConfigError
from shared.keys import fingerprint

pytestmark = pytest.mark.timeout(60)
runner = CliRunner()


def _server(*args: object):
    return runner.invoke(server_cli, [str(a) for a in args])


def _site(*args: object):
    return runner.invoke(site_cli, [str(a) for a in args])


@pytest.fixture()
def consortium(tmp_path: Path) -> Path:
    res = _server("init", tmp_path / "c", "--name", "Test Net", "--address", "gw.hospital-net.org:9443")
    assert res.exit_code == 0, res.output
    return tmp_path / "c"


def test_init_creates_ca_server_cert_with_sans_and_config(consortium: Path) -> None:
    pki = consortium / "pki"
    ca = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((pki / "server.crt").read_bytes())
    assert cert.issuer == ca.subject
    ca.public_key().verify(
        cert.signature,
        cert.tbs_certificate_bytes,
        __import__("cryptography.hazmat.primitives.asymmetric.ec", fromlist=["ECDSA"]).ECDSA(
            cert.signature_hash_algorithm
        ),
    )
    assert {"gw.hospital-net.org", "127.0.0.1", "localhost"} <= set(certificate_names(pki / "server.crt"))
    for key in ("ca.key", "server.key"):
        assert stat.S_IMODE(os.stat(pki / key).st_mode) == 0o600
    text = (consortium / "consortium.yaml").read_text()
    data = yaml.safe_load(text)
    assert data["name"] == "Test Net" and data["address"] == "gw.hospital-net.org:9443"
    assert "# " in text and "wait_for_sites_s" in text
    assert load_registry(consortium) == {}


def test_init_refuses_existing_and_bad_address(consortium: Path, tmp_path: Path) -> None:
    res = _server("init", consortium, "--name", "Other", "--address", "h:1")
    assert res.exit_code == 2 and "already holds a consortium" in res.output and "Traceback" not in res.output
    res = _server("init", tmp_path / "new", "--name", "X", "--address", "no-port-here")
    assert res.exit_code == 2 and "'address'" in res.output
    assert not (tmp_path / "new" / "pki").exists()  # nothing written on a bad invocation


def test_keygen_then_enroll_external_key_writes_bundle_and_registry(consortium: Path, tmp_path: Path) -> None:
    res = _site("keygen", tmp_path / "hospital")
    assert res.exit_code == 0, res.output
    pub, priv = tmp_path / "hospital" / "site.pub", tmp_path / "hospital" / "site.key"
    fp = fingerprint(pub)
    assert fp in "".join(res.output.split())
    assert stat.S_IMODE(os.stat(priv).st_mode) == 0o600
    assert _site("keygen", tmp_path / "hospital").exit_code == 2  # never overwrites an identity silently

    res = _server("enroll", consortium, "hospital-a", "--public-key", pub)
    assert res.exit_code == 0, res.output
    assert "demo" not in res.output.lower()
    reg = load_registry(consortium)
    assert reg["hospital-a"].fingerprint == fp and not reg["hospital-a"].key_generated_by_server
    assert (consortium / reg["hospital-a"].public_key).read_bytes() == pub.read_bytes()

    bundle = consortium / "bundles" / "hospital-a"
    assert {p.name for p in bundle.iterdir()} == {"ca.crt", "site.yaml", "bundle.json", "README.txt"}  # no private key
    assert (bundle / "ca.crt").read_bytes() == (consortium / "pki" / "ca.crt").read_bytes()
    info = json.loads((bundle / "bundle.json").read_text())
    assert info["site_name"] == "hospital-a" and info["server_address"] == "gw.hospital-net.org:9443"
    assert info["task"]["classes"] == ["normal", "nodule"] and info["site_key_fingerprint"] == fp

    # The template is a valid site.yaml as shipped ...
    cfg = load_site_file(bundle / "site.yaml")
    assert isinstance(cfg, SiteFileConfig) and cfg.site_name == "hospital-a"
    assert cfg.ca_cert == bundle / "ca.crt" and cfg.server_address == "gw.hospital-net.org:9443"
    # ... and once filled in, the data commands read its data part and validate the rest.
    filled = fill_site_yaml(
        bundle / "site.yaml",
        tmp_path / "site.yaml",
        data=tmp_path / "dicom",
        labels=tmp_path / "labels.csv",
        private_key=priv,
    )
    data_cfg = site_data_config(filled)
    assert data_cfg.data == tmp_path / "dicom" and data_cfg.classes == ["normal", "nodule"]
    filled.write_text(filled.read_text() + "server_adress: typo:1\n")
    with pytest.raises(ConfigError, match="unknown key 'server_adress'"):
        site_data_config(filled)


def test_site_only_keys_in_sync() -> None:
    assert OPTIONS_SITE_KEYS == SITE_ONLY_KEYS


def test_enroll_without_key_warns_loudly_and_generates(consortium: Path) -> None:
    res = _server("enroll", consortium, "demo-site")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "demos only" in text and "private key never leaves" in text
    bundle = consortium / "bundles" / "demo-site"
    assert (bundle / "site.key").exists() and load_registry(consortium)["demo-site"].key_generated_by_server
    assert load_site_file(bundle / "site.yaml").private_key == bundle / "site.key"


def test_bad_enroll_inputs_exit_2_without_traceback(consortium: Path, tmp_path: Path) -> None:
    _site("keygen", tmp_path / "k")
    assert _server("enroll", consortium, "site-1", "--public-key", tmp_path / "k" / "site.pub").exit_code == 0
    junk = tmp_path / "junk.pub"
    junk.write_text("not a key\n")
    cases = [
        (("enroll", consortium, "site-1", "--public-key", tmp_path / "k" / "site.pub"), "already enrolled"),
        (
            ("enroll", consortium, "site-2", "--public-key", tmp_path / "k" / "site.pub"),
            "already enrolled for site 'site-1'",
        ),
        (("enroll", consortium, "site-3", "--public-key", tmp_path / "missing.pub"), "not found"),
        (("enroll", consortium, "site-4", "--public-key", junk), "not an OpenSSH public key"),
        (("enroll", consortium, "bad name!"), "site name"),
        (("enroll", tmp_path / "nowhere", "site-5"), "consortium.yaml: not found"),
    ]
    for args, words in cases:
        res = _server(*args)
        assert res.exit_code == 2, (args, res.output)
        assert words in " ".join(res.output.split()), (args, res.output)
        assert "Traceback" not in res.output and "demos only" not in res.output
    assert set(load_registry(consortium)) == {"site-1"}
    # Key rotation is explicit.
    _site("keygen", tmp_path / "k2")
    res = _server("enroll", consortium, "site-1", "--public-key", tmp_path / "k2" / "site.pub", "--replace")
    assert res.exit_code == 0 and load_registry(consortium)["site-1"].fingerprint == fingerprint(
        tmp_path / "k2" / "site.pub"
    )


def test_status_and_export_before_any_run(consortium: Path, tmp_path: Path) -> None:
    _server("enroll", consortium, "demo-site")
    res = _server("status", consortium, "--json")
    assert res.exit_code == 0, res.output
    st = json.loads(res.stdout[res.stdout.index("{") :])
    assert st["server_running"] is False and st["run"] is None
    assert [s["name"] for s in st["sites"]] == ["demo-site"]
    res = _server("export", consortium, "--out", tmp_path / "m.pt")
    assert res.exit_code == 2 and "no run folder" in res.output


def test_site_start_refuses_bad_key_and_failed_data_check(consortium: Path, tmp_path: Path) -> None:
    """`fedrad-site start` checks credentials and data before any connection (no SuperNode is started)."""
    res = _server("enroll", consortium, "site-x")
    bundle = consortium / "bundles" / "site-x"
    (tmp_path / "dicom").mkdir()
    (tmp_path / "labels.csv").write_text("SOPInstanceUID,label\n1.2.3,normal\n")
    site_yaml = fill_site_yaml(
        bundle / "site.yaml",
        tmp_path / "site.yaml",
        data=tmp_path / "dicom",
        labels=tmp_path / "labels.csv",
        private_key=bundle / "site.key",
        ca_cert=bundle / "ca.crt",
        work_dir=tmp_path / "work",
    )
    res = _site("start", "--config", site_yaml)
    assert res.exit_code == 1, res.output
    text = " ".join(res.output.split())
    assert "data check failed, not joining" in text and "fedrad-site check --config" in text
    assert not (tmp_path / "work" / "logs").exists()  # no SuperNode was started

    fill_site_yaml(site_yaml, private_key=bundle / "site.pub")  # a public key where the private one belongs
    res = _site("start", "--config", site_yaml)
    assert res.exit_code == 2 and "private_key" in res.output and "Traceback" not in res.output


def test_supernode_exit_codes_explained() -> None:
    from client.site_start import explain_exit

    log = "12:00:00 ERROR : Exit Code: 305\n[code: 2004] Failed to activate SuperNode.\n"
    assert "not registered" in explain_exit(log, 1) and "305" in explain_exit(log, 1)
    assert "no Flower exit code" in explain_exit("killed\n", -9)


def test_start_refuses_before_starting_anything(consortium: Path) -> None:
    """Config problems stop `fedrad-server start` before any process starts (exit 2, the reason named)."""
    res = _server("start", consortium)
    assert res.exit_code == 2 and "0 site(s) enrolled but min_sites is 2" in " ".join(res.output.split())
    _server("enroll", consortium, "s1")
    _server("enroll", consortium, "s2")
    res = _server("start", consortium, "--resume")
    assert res.exit_code == 2 and "no run to resume" in res.output
    assert not (consortium / "logs").exists() and not (consortium / "state").exists()
