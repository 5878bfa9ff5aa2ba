"""A real Orthanc PACS for the PACS tests: Debian's ``orthanc`` (+ ``orthanc-dicomweb``) on free loopback ports.

The test starts it with a generated configuration (storage in the test's folder, DICOM and HTTP on 127.0.0.1 only,
DICOMweb on, FedRad's node known as a C-MOVE destination) and talks to it through its own REST API. Without the
package the tests skip and say how to enable them (``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.processes import ProcessSet, free_port

ENABLE = "install Debian's PACS (`apt-get install orthanc orthanc-dicomweb`; .ci/run does)"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
AE_TITLE = "ORTHANC"


def orthanc_path() -> str | None:
    return shutil.which("Orthanc") or (str(Path("/usr/sbin/Orthanc")) if Path("/usr/sbin/Orthanc").exists() else None)


@dataclass
class Orthanc:
    """A running Orthanc: its ports and a REST client."""

    http_port: int
    dicom_port: int
    ae_title: str
    client: httpx.Client

    @property
    def dicomweb_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/dicom-web"

    def upload(self, files: Iterable[Path]) -> int:
        """POST each file to /instances; returns how many Orthanc stored."""
        n = 0
        for f in files:
            r = self.client.post("/instances", content=Path(f).read_bytes())
            r.raise_for_status()
            n += 1
        return n

    def studies(self) -> list[dict[str, Any]]:
        return [self.client.get(f"/studies/{s}").json() for s in self.client.get("/studies").json()]

    def find_study(self, study_uid: str) -> dict[str, Any] | None:
        r = self.client.post("/tools/find", json={"Level": "Study", "Query": {"StudyInstanceUID": study_uid}})
        r.raise_for_status()
        ids = r.json()
        return self.client.get(f"/studies/{ids[0]}").json() if ids else None

    def series_of(self, study_id: str) -> list[dict[str, Any]]:
        return self.client.get(f"/studies/{study_id}/series").json()

    def instance_tags(self, instance_id: str) -> dict[str, Any]:
        return self.client.get(f"/instances/{instance_id}/simplified-tags").json()

    def instance_file(self, instance_id: str) -> bytes:
        return self.client.get(f"/instances/{instance_id}/file").content


def orthanc_config(root: Path, http_port: int, dicom_port: int, modalities: dict[str, tuple[str, int]]) -> dict:
    """Orthanc's configuration for a test: loopback only, no auth (the test is the only client), DICOMweb on."""
    storage = root / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    return {
        "Name": "FedRad test PACS",
        "StorageDirectory": str(storage),
        "IndexDirectory": str(storage),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": AE_TITLE,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpServerEnabled": True,
        "DicomServerEnabled": True,
        "DicomCheckCalledAet": False,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowFind": True,
        "DicomAlwaysAllowGet": True,
        "DicomAlwaysAllowMove": True,
        "DicomModalities": {name: [ae, "127.0.0.1", port] for name, (ae, port) in modalities.items()},
        "Plugins": [str(DICOMWEB_PLUGIN)] if DICOMWEB_PLUGIN.exists() else [],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "StudiesMetadata": "Full"},
        "StableAge": 1,
        "SaveJobs": False,
        "ConcurrentJobs": 2,
        "StorageCompression": False,
    }


@contextmanager
def running_orthanc(
    root: Path,
    ps: ProcessSet,
    modalities: dict[str, tuple[str, int]] | None = None,
    timeout: float = 60,
    overrides: dict[str, Any] | None = None,
) -> Iterator[Orthanc]:
    """Start Orthanc under ``ps`` (stopped with it) and wait until its REST API answers; skip if not installed.

    ``overrides`` replaces keys of the generated configuration (e.g. ``{"DicomCheckCalledAet": True}``)."""
    exe = orthanc_path()
    if exe is None:
        pytest.skip(f"no Orthanc for the PACS tests: {ENABLE}")
    http_port, dicom_port = free_port(), free_port()
    root.mkdir(parents=True, exist_ok=True)
    cfg_path = root / "orthanc.json"
    config = {**orthanc_config(root, http_port, dicom_port, modalities or {}), **(overrides or {})}
    cfg_path.write_text(json.dumps(config, indent=2))
    proc = ps.start("orthanc", [exe, str(cfg_path)], cwd=root)
    client = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=30)
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"Orthanc exited: {proc.log_tail()}"
        try:
            if client.get("/system").status_code == 200:
                break
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"Orthanc did not answer on {http_port}: {proc.log_tail()}"
        time.sleep(0.2)
    try:
        yield Orthanc(http_port, dicom_port, AE_TITLE, client)
    finally:
        client.close()
