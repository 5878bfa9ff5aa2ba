"""Reading the consortium folder for the coordinator's dashboard: cached, tolerant, and never raising past a banner.

The dashboard's page is rebuilt on every poll, so each file is parsed again only when its size or modification
time changed (:class:`FileCache`). A file that cannot be read raises :class:`FileProblem`, whose message names the
file; the page shows it as an error banner instead of failing.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class FileProblem(Exception):
    """A file the dashboard needs is unreadable; the message names it and says why."""


def signature(path: Path) -> tuple[int, int] | None:
    """(mtime in ns, size) of ``path``, or None when it is not a file."""
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


class FileCache:
    """``parse(path)`` per file, re-run only when the file changed."""

    def __init__(self) -> None:
        self._store: dict[tuple[str, str], tuple[tuple[int, int], Any]] = {}

    def parsed(self, path: Path, parse: Callable[[Path], Any]) -> Any:
        """What ``parse`` made of ``path`` (None when the file is absent); :class:`FileProblem` when unreadable."""
        key = (str(path), parse.__qualname__)
        sig = signature(path)
        if sig is None:
            self._store.pop(key, None)
            return None
        hit = self._store.get(key)
        if hit is not None and hit[0] == sig:
            return hit[1]
        value = parse(Path(path))
        self._store[key] = (sig, value)
        return value

    def json(self, path: Path) -> Any:
        return self.parsed(path, read_json_file)

    def json_object(self, path: Path) -> dict | None:
        """A JSON file that must hold an object (None when absent)."""
        data = self.json(path)
        if data is not None and not isinstance(data, dict):
            raise FileProblem(f"{path}: not a JSON object")
        return data


def read_json_file(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise FileProblem(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise FileProblem(f"{path}: not valid JSON ({exc})") from None


@dataclass(frozen=True)
class MetricsLines:
    """``metrics.jsonl`` as the dashboard reads it: the complete rounds, and what was skipped."""

    rows: list[dict]
    bad_lines: list[int]  # 1-based numbers of complete lines that are not a JSON object (damage, not a crash)
    torn: bool  # the last line has no newline yet: a round being written (or a crash mid-line); it is ignored


def read_metrics_lines(path: Path) -> MetricsLines:
    """Every complete round row of ``metrics.jsonl``. A torn last line is ignored (as ``read_metrics`` does on
    resume), and so is a damaged line, but those are counted so the page can name them."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise FileProblem(f"{path}: cannot read it ({exc.strerror or exc})") from None
    lines = data.split(b"\n")
    torn = bool(lines[-1].strip())
    rows, bad = [], []
    for number, raw in enumerate(lines[:-1], start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except ValueError:
            row = None
        if isinstance(row, dict) and isinstance(row.get("round"), int):
            rows.append(row)
        else:
            bad.append(number)
    return MetricsLines(rows, bad, torn)


def slug(name: str) -> str:
    """``name`` as a document id part: itself when plain, else a cleaned form plus a short hash (so two names never
    share one, and no name can smuggle a ``/`` or ``..`` into a URL)."""
    clean = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:60].strip(".") or "x"
    if clean == name:
        return name
    return f"{clean}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def num(value: Any) -> float | int | None:
    """A finite number from a metrics field, else None (a missing, NaN or non-numeric value is a gap)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


def fmt(value: Any, digits: int = 3) -> str:
    """A metric for a table cell: ``0.812``; ``–`` when missing."""
    v = num(value)
    if v is None:
        return "–"
    return str(v) if isinstance(v, int) else f"{v:.{digits}f}"


def megabytes(n: Any) -> str:
    v = num(n)
    return "–" if v is None else f"{v / 1e6:.1f} MB"
