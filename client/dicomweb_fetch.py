"""DICOMweb query/retrieve for ``fedrad-site fetch --via dicomweb``: QIDO-RS search, WADO-RS retrieve.

Studies are retrieved with ``Accept: multipart/related; type="application/dicom"; transfer-syntax=*``, so PACS
sends each instance as it stores it (no transcoding), streamed one instance at a time. The bearer token
(``pacs.dicomweb.token_file``, owner-only) and the CA (``pacs.dicomweb.ca``) come from site.yaml.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import requests
from dicomweb_client.api import DICOMwebClient

from client.fetch_request import StudyQuery
from client.pacs_config import DicomWebSettings
from client.pacs_fetch import FoundStudy, PacsUnavailable, Retrieved, StudyRefused, TransientPacsError
from client.received_tree import ReceivedInstanceError, check_uid, store_dataset
from shared.config import ConfigError

TRANSIENT_HTTP = {408, 425, 429, 500, 502, 503, 504}
STUDY_FIELDS = ["AccessionNumber", "StudyDate", "ModalitiesInStudy", "NumberOfStudyRelatedInstances"]
ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)
MAX_PAGES = 1000


def read_bearer_token(path: Path) -> str:
    """The token in ``path``, a file only its owner may read (like an ssh key)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
        token = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(f"pacs.dicomweb.token_file {path}: cannot read it ({exc.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"pacs.dicomweb.token_file {path}: others may read it; run `chmod 600 {path}`")
    if not token or any(c.isspace() for c in token):
        raise ConfigError(f"pacs.dicomweb.token_file {path}: must hold one token (no spaces or line breaks)")
    return token


def _value(item: dict[str, Any], tag: str) -> list[Any]:
    return list((item.get(tag) or {}).get("Value") or [])


def _first(item: dict[str, Any], tag: str) -> str:
    values = _value(item, tag)
    return str(values[0]) if values else ""


class DicomWebBackend:
    """QIDO-RS + WADO-RS against ``pacs.dicomweb.url``."""

    retrieve_mode = "WADO-RS"

    def __init__(self, settings: DicomWebSettings) -> None:
        self.settings = settings
        self.description = settings.url
        self.session = session = requests.Session()
        if settings.ca is not None:
            if not Path(settings.ca).is_file():
                raise ConfigError(f"pacs.dicomweb.ca {settings.ca}: no such file")
            session.verify = str(settings.ca)
        headers = {}
        if settings.token_file is not None:
            headers["Authorization"] = f"Bearer {read_bearer_token(settings.token_file)}"
        self.client = DICOMwebClient(settings.url, session=session, headers=headers, timeout=settings.timeout_s)
        self.client.set_http_retry_params(retry=False)  # fetch retries every transport the same way

    def _call(self, what: str, fn):
        try:
            return fn()
        except requests.exceptions.SSLError as exc:
            raise PacsUnavailable(f"{self.settings.url}: TLS failed ({exc}); check pacs.dicomweb.ca") from None
        except (
            requests.exceptions.ConnectionError,
            requests.exceptions.Timeout,
            requests.exceptions.ChunkedEncodingError,  # the connection dropped mid-study
        ) as exc:
            raise TransientPacsError(f"cannot reach {self.settings.url} ({type(exc).__name__})") from None
        except requests.exceptions.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else 0
            reason = exc.response.reason if exc.response is not None else str(exc)
            if code in TRANSIENT_HTTP:
                raise TransientPacsError(f"{what}: HTTP {code} {reason}") from None
            if code in (401, 403):
                raise PacsUnavailable(
                    f"{self.settings.url} refused {what}: HTTP {code} {reason}; check pacs.dicomweb.token_file"
                ) from None
            raise StudyRefused(f"HTTP {code}", f"{reason} ({what})") from None

    def _search(self, filters: dict[str, str]) -> list[dict[str, Any]]:
        """Every match, page by page (offset); stops at an empty page or one with nothing new (a server that
        ignores offset would otherwise be asked forever)."""
        items: dict[str, dict[str, Any]] = {}
        for _ in range(MAX_PAGES):
            page = self._call(
                "QIDO-RS search",
                lambda: self.client.search_for_studies(search_filters=filters, fields=STUDY_FIELDS, offset=len(items)),
            )
            fresh = {_first(i, "0020000D"): i for i in page or [] if _first(i, "0020000D") not in items}
            if not fresh:
                break
            items.update(fresh)
        return list(items.values())

    def find(self, query: StudyQuery) -> list[FoundStudy]:
        found = []
        for item in self._search(query.to_json()):
            try:
                uid = check_uid(_first(item, "0020000D"), "StudyInstanceUID")
            except ReceivedInstanceError:
                continue
            accession = _first(item, "00080050").strip()
            if query.accession is not None and accession != query.accession:
                continue
            if query.study_uid is not None and uid != query.study_uid:
                continue
            n = _first(item, "00201208")
            found.append(
                FoundStudy(
                    study_uid=uid,
                    accession=accession,
                    study_date=_first(item, "00080020"),
                    modalities=[str(v) for v in _value(item, "00080061")],
                    instances=int(n) if n.isdigit() else None,
                    asked=query.label,
                )
            )
        return found

    def retrieve(self, study: FoundStudy, dest: Path) -> Retrieved:
        got = Retrieved()

        def run() -> None:
            for ds in self.client.iter_study(study.study_uid, media_types=ANY_TRANSFER_SYNTAX):
                try:
                    stored = store_dataset(dest, ds)
                except ReceivedInstanceError as exc:
                    got.failed += 1
                    got.problem = f"an instance could not be stored: {exc}"
                    continue
                got.new += stored.new
                got.kept += not stored.new
                got.bytes += stored.bytes if stored.new else 0

        self._call("WADO-RS retrieve", run)
        return got

    def close(self) -> None:
        self.session.close()
