"""A whole consortium on 127.0.0.1 from FedRad's own parts, for integration tests and benchmarks.

The same pieces ``fedrad-server start`` and ``fedrad-site start`` run, wired
directly so a caller can submit several runs with its own run config: CA and
server certificate, SuperLink (TLS, SuperNode auth, persistent database) on
loopback, the fleet-only proxy, and per site a registered key, a full
site.yaml, the checkout's code approved, the warm worker and the SuperNode
connecting through the proxy.
Every process goes through the caller's :class:`ProcessSet`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from client.approval import approve_installed
from client.site_config import load_site_file, site_node_config
from client.site_worker import start_site_worker
from client.supernode import start_supernode
from server.fleet_proxy import start_fleet_proxy
from server.pki import ServerTls, init_pki
from server.superlink import SuperLink, start_superlink
from shared.keys import generate_site_keys
from shared.processes import ManagedProcess, ProcessSet, free_port

REPO = Path(__file__).resolve().parent.parent
CLASSES = ["normal", "nodule"]


@dataclass(frozen=True)
class SiteFiles:
    """A site's data outside the synthetic layout: ``data``, ``labels`` (None: segmentation only), a cache to share."""

    data: Path
    labels: Path | None
    cache_dir: Path | None = None


@dataclass
class LoopbackSite:
    name: str
    site_yaml: Path
    supernode: ManagedProcess
    worker: ManagedProcess | None


@dataclass
class LoopbackConsortium:
    root: Path
    tls: ServerTls
    link: SuperLink
    proxy: str
    proxy_process: ManagedProcess | None = None
    sites: dict[str, LoopbackSite] = field(default_factory=dict)

    def wait_until_online(self, timeout: float = 180.0) -> None:
        """Every site's SuperNode online (so a run's ``min-sites`` can be all of them); otherwise a RuntimeError
        that names the sites online, those whose processes exited, and where the logs are."""
        deadline = time.monotonic() + timeout
        with self.link.control() as control:
            while True:
                online = {n.name for n in control.nodes() if n.status == "online"}
                if set(self.sites) <= online:
                    return
                dead = [
                    s.name
                    for s in self.sites.values()
                    if s.supernode.poll() is not None or (s.worker is not None and s.worker.poll() is not None)
                ]
                if dead or time.monotonic() > deadline:
                    why = f"site process(es) of {', '.join(dead)} exited" if dead else f"not after {timeout:.0f} s"
                    raise RuntimeError(
                        f"SuperNodes online: {sorted(online) or 'none'} of {sorted(self.sites)} ({why}); "
                        f"logs under {self.root}"
                    )
                time.sleep(0.5)


def write_site_yaml(
    path: Path,
    *,
    site: Path | SiteFiles,
    name: str,
    server: str,
    ca_cert: Path,
    key: Path,
    image_size: int,
    classes: list[str] | None = None,
    threads: int | str = 1,
    min_count: int | None = None,
) -> Path:
    """A full site.yaml (data keys + credentials) for a synthetic site folder (``dicom/`` + ``labels.csv``)
    or for explicit :class:`SiteFiles`. ``threads: 1`` by default: the loopback consortium runs every site
    on this one machine, and several processes at several threads each slow each other down many times."""
    files = site if isinstance(site, SiteFiles) else SiteFiles(site / "dicom", site / "labels.csv")
    doc = {
        "site_name": name,
        "server_address": server,
        "ca_cert": str(ca_cert),
        "private_key": str(key),
        "data": str(files.data),
        "classes": list(classes or CLASSES),
        "image_size": image_size,
        "cache_dir": str(files.cache_dir or path.parent / "cache"),
        "work_dir": str(path.parent / "work"),
        "threads": threads,
    }
    if files.labels is not None:
        doc["labels"] = str(files.labels)
    if min_count is not None:  # privacy.min_count: tests with small held-out parts lower it
        doc["privacy"] = {"min_count": min_count}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc))
    return path


def start_loopback_consortium(
    ps: ProcessSet,
    root: Path,
    sites: Mapping[str, Path | SiteFiles],
    *,
    image_size: int = 32,
    classes: list[str] | None = None,
    name: str = "TestConsortium",
    warm_workers: bool = True,
    proxy_flags: Sequence[str] = (),
    min_count: int | None = None,
    persistent_state: bool = True,
) -> LoopbackConsortium:
    """Start the server side and one SuperNode (+ warm worker) per entry of ``sites``
    (name → synthetic site folder, or :class:`SiteFiles`). ``persistent_state=False`` keeps the SuperLink's
    state in memory (benchmarks comparing Flower's sqlite object store; a restart then forgets the SuperNodes)."""
    root = Path(root)
    tls = init_pki(root / "pki", name, "127.0.0.1:9443")
    link = start_superlink(
        ps,
        tls=tls,
        port=free_port(),
        database=root / "state" / "sl.db" if persistent_state else None,
        flwr_home=root / "server-home",
    )
    keys = {site_name: generate_site_keys(root / "sites" / site_name / "keys") for site_name in sites}
    (root / "state").mkdir(parents=True, exist_ok=True)
    enrolled = root / "state" / "fleet-keys.pub"  # as the coordinator does: the proxy lets only these keys in
    enrolled.write_text("".join(pub.read_text() for _, pub in keys.values()))
    proxy = f"127.0.0.1:{free_port()}"
    proxy_process = start_fleet_proxy(
        ps,
        listen=proxy,
        upstream=link.address,
        certfile=tls.server_cert,
        keyfile=tls.server_key,
        ca_certfile=tls.ca_cert,
        enrolled_keys=enrolled,
        extra=proxy_flags,
        cwd=REPO,
    )
    fed = LoopbackConsortium(root=root, tls=tls, link=link, proxy=proxy, proxy_process=proxy_process)
    with link.control() as control:
        for site_name, folder in sites.items():
            key, pub = keys[site_name]
            control.register(pub, site_name)
            site_yaml = write_site_yaml(
                root / "sites" / site_name / "site.yaml",
                site=folder,
                name=site_name,
                server=proxy,
                ca_cert=tls.ca_cert,
                key=key,
                image_size=image_size,
                classes=classes,
                min_count=min_count,
            )
            worker, socket_path = start_site_worker(ps, site_name, site_yaml) if warm_workers else (None, None)
            node_config = site_node_config(site_yaml, load_site_file(site_yaml), socket_path)
            approve_installed(Path(node_config["approvals"]).parent, note="loopback consortium: this checkout")
            supernode = start_supernode(
                ps,
                site_name,
                superlink=proxy,
                ca_cert=tls.ca_cert,
                private_key=key,
                node_config=node_config,
                work_dir=root / "sites" / site_name / "work",
                runtime_port=free_port(),
            )
            fed.sites[site_name] = LoopbackSite(site_name, site_yaml, supernode, worker)
    return fed
