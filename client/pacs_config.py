"""``pacs:`` in site.yaml: the site's DICOM node and the PACS it talks to. Nothing here reaches the consortium.

Three commands read it: ``fedrad-site receive`` (the storage node PACS routes studies to), ``fetch`` (query and
retrieve from PACS by accession, date or modality) and ``infer`` (results back to PACS as DICOM). Why one
section: hospital IT configures the PACS link once, and the AE titles, ports and TLS files a PACS administrator
asks about are all in one place.

```yaml
pacs:
  node:                         # this site's DICOM node (fedrad-site receive)
    ae_title: FEDRAD
    bind: 127.0.0.1             # an address of this machine PACS can reach (0.0.0.0: every interface)
    port: 11112
    allowed_callers: [PACS1]    # calling AE titles accepted; every other association is rejected
    allowed_hosts: []           # optional: also only these peer addresses (IPs or networks, 10.1.2.0/24)
    receive_dir: /srv/dicom/received   # default: DATA/received; one folder per study
    tls: {cert: node.crt, key: node.key, ca: pacs-ca.crt}   # optional; with ca, peers must show a certificate
    check_pixels: true          # decode each image on arrival, as check does (false: header checks only)
  peer:                         # the PACS (fetch, infer --to pacs)
    ae_title: PACS1
    host: pacs.hospital.example
    port: 104
    retrieve: get               # get (C-GET, one association) or move (C-MOVE to node.ae_title)
    tls: {ca: pacs-ca.crt, cert: node.crt, key: node.key}  # optional
  dicomweb:                     # optional: QIDO-RS / WADO-RS / STOW-RS instead of DIMSE
    url: https://pacs.hospital.example/dicom-web
    token_file: dicomweb.token  # optional bearer token (mode 600)
    ca: pacs-ca.crt             # optional CA for https
    timeout_s: 60               # optional: seconds to wait for one answer
```
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from shared.config import StrictModel

AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE: 1-16 printable ASCII, no backslash


def _check_ae(value: str) -> str:
    if not AE_TITLE.match(value) or not value.strip():
        raise ValueError("an AE title is 1 to 16 printable ASCII characters, no backslash, not only spaces")
    return value.strip()


class TlsFiles(StrictModel):
    """TLS for a DICOM association (DICOM PS3.15 Annex B): our certificate and key, and the CA peers are checked
    against."""

    cert: Path | None = Field(None, description="This node's certificate (PEM).")
    key: Path | None = Field(None, description="Its private key (PEM).")
    ca: Path | None = Field(None, description="CA certificate(s) the peer's certificate must chain to (PEM).")

    @model_validator(mode="after")
    def _pair(self) -> TlsFiles:
        if (self.cert is None) != (self.key is None):
            raise ValueError("give both cert and key, or neither")
        return self


class NodeSettings(StrictModel):
    """``pacs.node``: the storage node ``fedrad-site receive`` runs."""

    ae_title: str = Field("FEDRAD", description="This node's AE title (what PACS sends to).")
    bind: str = Field("127.0.0.1", description="Address to listen on (0.0.0.0: every interface).")
    port: int = Field(11112, ge=1, le=65535, description="TCP port (11112 is DICOM's registered port).")
    allowed_callers: list[str] = Field(
        min_length=1, description="Calling AE titles accepted; every other association is rejected."
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="If set, only associations from these peer addresses (IP addresses or networks such as "
        "10.1.2.0/24) are accepted.",
    )
    receive_dir: Path | None = Field(
        None, description="Where received studies land, one folder each; default DATA/received (inside the export)."
    )
    tls: TlsFiles | None = Field(None, description="Serve DICOM over TLS; with tls.ca, peers must show a certificate.")
    max_pdu: int = Field(65536, ge=4096, le=1 << 24, description="Largest PDU accepted, bytes.")
    check_pixels: bool = Field(
        True,
        description="Decode every image on arrival, as `fedrad-site check` does, and refuse what does not decode; "
        "false: header checks only (the next check still rejects undecodable pixels).",
    )

    _ae = field_validator("ae_title")(_check_ae)

    @field_validator("allowed_callers")
    @classmethod
    def _callers(cls, value: list[str]) -> list[str]:
        return [_check_ae(v) for v in value]

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        for host in value:
            try:
                ipaddress.ip_network(host.strip(), strict=False)
            except ValueError:
                raise ValueError(
                    f"{host!r} is not an IP address or network (e.g. 10.1.2.3 or 10.1.2.0/24); host names are not "
                    "resolved"
                ) from None
        return [h.strip() for h in value]

    def host_allowed(self, address: str) -> bool:
        """Whether a peer at ``address`` may associate (always, when ``allowed_hosts`` is empty)."""
        if not self.allowed_hosts:
            return True
        try:
            ip = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:  # a dual-stack socket's IPv4 peer
            ip = ip.ipv4_mapped
        return any(ip in ipaddress.ip_network(h, strict=False) for h in self.allowed_hosts)

    @model_validator(mode="after")
    def _server_tls(self) -> NodeSettings:
        if self.tls is not None and self.tls.cert is None:
            raise ValueError("tls needs cert and key for a node that serves")
        return self


class PeerSettings(StrictModel):
    """``pacs.peer``: the PACS that ``fetch`` queries and ``infer --to pacs`` sends to (DIMSE)."""

    ae_title: str = Field(description="The PACS's AE title.")
    host: str = Field(description="Its address.")
    port: int = Field(104, ge=1, le=65535)
    retrieve: Literal["get", "move"] = Field(
        "get", description="C-GET (one association) or C-MOVE (PACS sends to pacs.node; `receive` must run)."
    )
    tls: TlsFiles | None = Field(None, description="DICOM over TLS to the PACS.")
    timeout_s: float = Field(30.0, gt=0, description="Seconds to wait for an association or a reply.")

    _ae = field_validator("ae_title")(_check_ae)


class DicomWebSettings(StrictModel):
    """``pacs.dicomweb``: QIDO-RS / WADO-RS / STOW-RS, where the PACS offers DICOMweb."""

    url: str = Field(description="The service's base URL, e.g. https://pacs.example/dicom-web.")
    token_file: Path | None = Field(None, description="A file (mode 600) holding a bearer token.")
    ca: Path | None = Field(None, description="CA certificate for https, if not the system's.")
    timeout_s: float = Field(60.0, gt=0, description="Seconds to wait for an answer to one request.")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an http:// or https:// URL")
        return value.rstrip("/")


class PacsSettings(StrictModel):
    """``pacs:`` in site.yaml; every part optional (absent: the command that needs it says what to add)."""

    node: NodeSettings | None = None
    peer: PeerSettings | None = None
    dicomweb: DicomWebSettings | None = None
