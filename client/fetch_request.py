"""What ``fedrad-site fetch`` is asked for, and the site settings it needs, validated once at the edge.

Why the care with accession numbers: a C-FIND key with ``*`` or ``?`` is a wildcard and a backslash separates
values, so an accession list with a stray ``*`` would ask PACS for every study it holds. Such values are refused
(exit 2), as are values longer than DICOM allows (SH: 16 characters; UI: 64).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path

from client.pacs_config import PacsSettings
from client.received_tree import RECEIVED_FOLDER, ReceivedInstanceError, check_uid
from shared.config import ConfigError, load_yaml_mapping, parse_model

PACS_DOC = "docs/pacs.md (Fetching from PACS)"
ACCESSION_COLUMN = "AccessionNumber"
STUDY_UID_COLUMN = "StudyInstanceUID"
MODALITY = re.compile(r"^[A-Z0-9_ ]{1,16}$")  # CS


@dataclass(frozen=True)
class StudyQuery:
    """One C-FIND / QIDO-RS query at study level: by accession, by study UID, or by date range and modality."""

    accession: str | None = None
    study_uid: str | None = None
    date_range: str | None = None  # DICOM range: 20240101-20240131
    modality: str | None = None

    @property
    def label(self) -> str:
        """How the summary names what was asked."""
        if self.accession is not None:
            return self.accession
        if self.study_uid is not None:
            return self.study_uid
        return f"StudyDate {self.date_range}" + (f" modality {self.modality}" if self.modality else "")

    def to_json(self) -> dict[str, str]:
        return {
            k: v
            for k, v in {
                "AccessionNumber": self.accession,
                "StudyInstanceUID": self.study_uid,
                "StudyDate": self.date_range,
                "ModalitiesInStudy": self.modality,
            }.items()
            if v is not None
        }


@dataclass
class FetchRequest:
    """The queries of one fetch, and whether an empty answer means "missing" (lists) or just "none" (a range)."""

    queries: list[StudyQuery]
    by_list: bool
    source: str = ""
    notes: list[str] = field(default_factory=list)


def _clean(value: str | None) -> str:
    return (value or "").strip()


def check_accession(value: str, where: str) -> str:
    if any(c in value for c in "*?\\"):
        raise ConfigError(f"{where}: accession {value!r} holds a wildcard or backslash (*, ?, \\): refused")
    if len(value) > 16 or any(ord(c) < 0x20 for c in value):
        raise ConfigError(f"{where}: accession {value!r} is not a DICOM accession number (at most 16 characters)")
    return value


def read_accession_csv(path: Path) -> FetchRequest:
    """A CSV with an ``AccessionNumber`` column (or ``StudyInstanceUID``, or both: the accession wins where set).

    Extra columns (a label CSV) are ignored; duplicates are asked once; ``;`` works as the separator too.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"--accessions {path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--accessions {path}: cannot read ({exc})") from None
    lines = text.splitlines()
    header = lines[0] if lines else ""
    delimiter = ";" if ";" in header and "," not in header else ","
    reader = csv.DictReader(lines, delimiter=delimiter)
    columns = [c.strip() for c in reader.fieldnames or []]
    if ACCESSION_COLUMN not in columns and STUDY_UID_COLUMN not in columns:
        raise ConfigError(
            f"--accessions {path}: needs a column {ACCESSION_COLUMN} (or {STUDY_UID_COLUMN}); "
            f"its header is {', '.join(columns) or '(empty)'}"
        )
    queries: list[StudyQuery] = []
    seen: set[tuple[str | None, str | None]] = set()
    blank = 0
    for n, row in enumerate(reader, start=2):
        row = {(k or "").strip(): v for k, v in row.items()}
        where = f"{path}:{n}"
        accession, uid = _clean(row.get(ACCESSION_COLUMN)), _clean(row.get(STUDY_UID_COLUMN))
        if accession:
            q = StudyQuery(accession=check_accession(accession, where))
        elif uid:
            try:
                q = StudyQuery(study_uid=check_uid(uid, f"{where}: StudyInstanceUID"))
            except ReceivedInstanceError as exc:
                raise ConfigError(str(exc)) from None
        else:
            blank += 1
            continue
        key = (q.accession, q.study_uid)
        if key not in seen:
            seen.add(key)
            queries.append(q)
    if not queries:
        raise ConfigError(f"--accessions {path}: no accession numbers or study UIDs in it")
    notes = [f"{blank} row(s) without an accession or study UID skipped"] if blank else []
    return FetchRequest(queries, by_list=True, source=str(path), notes=notes)


def parse_day(value: str, flag: str) -> date:
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return datetime.strptime(value.strip(), fmt).date()
        except ValueError:
            continue
    raise ConfigError(f"{flag} {value!r}: give a date as YYYY-MM-DD (or YYYYMMDD)")


def date_request(since: str, until: str | None, modalities: list[str]) -> FetchRequest:
    """Studies with StudyDate in [since, until] (until: today), one query per modality (none: any modality)."""
    first = parse_day(since, "--since")
    last = parse_day(until, "--until") if until else date.today()
    if last < first:
        raise ConfigError(f"--until {last} is before --since {first}")
    mods = []
    for m in modalities:
        m = m.strip().upper()
        if not MODALITY.match(m):
            raise ConfigError(f"--modality {m!r}: a DICOM modality code such as CR, DX, CT, MR")
        if m not in mods:
            mods.append(m)
    span = f"{first:%Y%m%d}-{last:%Y%m%d}"
    queries = [StudyQuery(date_range=span, modality=m) for m in mods] or [StudyQuery(date_range=span)]
    return FetchRequest(queries, by_list=False, source=f"StudyDate {span}" + (f" {','.join(mods)}" if mods else ""))


@dataclass(frozen=True)
class FetchSite:
    """What fetch needs from site.yaml."""

    pacs: PacsSettings
    receive_dir: Path
    work_dir: Path
    config: Path


def load_fetch_site(config: Path) -> FetchSite:
    """site.yaml's ``pacs`` section, where fetched studies land and the work dir (for the fetch log).

    A full site.yaml (with the consortium credentials) is validated whole, like ``start`` does; a data-only one
    needs ``data`` (or ``pacs.node.receive_dir``).
    """
    from client.site_config import SITE_ONLY_KEYS, SiteFileConfig, site_work_dir

    config = Path(config)
    values = load_yaml_mapping(config)
    base = config.resolve().parent
    if (SITE_ONLY_KEYS - {"pacs", "work_dir"}) & set(values):
        parse_model(SiteFileConfig, values, str(config), base)
    raw = values.get("pacs")
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"{config}: 'pacs' must be a mapping (see {PACS_DOC})")
    pacs = parse_model(PacsSettings, raw or {}, f"{config} (pacs)", base)
    if pacs.node is not None and pacs.node.receive_dir is not None:
        receive_dir = Path(pacs.node.receive_dir)
    elif values.get("data"):
        receive_dir = base / str(values["data"]) / RECEIVED_FOLDER
    else:
        raise ConfigError(
            f"{config}: set 'data' (fetched studies go to DATA/{RECEIVED_FOLDER}) or pacs.node.receive_dir"
        )
    return FetchSite(pacs=pacs, receive_dir=receive_dir, work_dir=site_work_dir(config), config=config)


def missing_pacs_message(config: Path, via: str) -> str:
    """What to add to site.yaml when the section fetch needs is absent."""
    if via == "dicomweb":
        return (
            f"{config} has no pacs.dicomweb: add\n  pacs:\n    dicomweb:\n      url: https://pacs.example/dicom-web\n"
            f"(see {PACS_DOC}), or fetch over DIMSE with --via dimse"
        )
    return (
        f"{config} has no pacs.peer: add\n  pacs:\n    peer:\n      ae_title: PACS1\n      host: pacs.example\n"
        f"      port: 104\n(the PACS's AE title, address and port from its administrator; see {PACS_DOC})"
    )
