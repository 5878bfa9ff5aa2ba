"""The page model both dashboards share: a page is sections of widgets, each plain JSON.

Why a model and not HTML templates: the data side (``server/dashboard.py``, ``client/dashboard.py``) stays plain
Python that unit tests read directly, and one script draws every page, writing values with ``textContent`` so a
site name, metric key or refusal reason can never become markup. Every widget has an ``id`` that is stable across
refreshes (the browser tests and the live update key on it).

Widget kinds (``kind``):

``tiles``    a row of headline figures: ``items: [{label, value, level?}]`` (level: ok | warn | error | None)
``banner``   one prominent line: ``level`` (ok | warn | error | info), ``text``
``table``    ``columns: [str]``, ``rows: [[cell, ...]]``; a cell is a str/number/None or
             ``{"text": str, "level": str}`` for a coloured cell; ``empty``: what to say when there are no rows
``line``     ``x_label``, ``y_label``, ``series: [{name, points: [[x, y], ...]}]`` (x numeric, y numeric or None)
``bars``     ``y_label``, ``groups: [str]`` (x categories), ``series: [{name, values: [number, ...]}]`` (one
             value per group), ``stacked: bool``
``text``     ``text`` (plain, may hold newlines)
``kv``       ``items: [[key, value], ...]``: a two-column definition list
``links``    ``items: [{text, href}]``: links inside this dashboard only (``href`` must start with ``/``)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

Widget = dict[str, Any]
Section = dict[str, Any]
Page = dict[str, Any]

LEVELS = ("ok", "warn", "error", "info", None)


def _num(v: Any) -> float | int | None:
    """A JSON-safe number: NaN and infinities become None (JSON has no NaN; the chart leaves a gap)."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(f):
        return None
    return int(f) if isinstance(v, int) else f


JS_SAFE_INT = 2**53  # a browser's numbers are doubles: larger integers (Flower's run and node ids) travel as text


def _plain(v: Any) -> Any:
    """A table value the browser shows exactly: an integer beyond 2**53 becomes its decimal text."""
    if isinstance(v, int) and not isinstance(v, bool) and abs(v) >= JS_SAFE_INT:
        return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def cell(text: Any, level: str | None = None) -> Any:
    """A table cell; with ``level`` it is drawn coloured (ok/warn/error/info)."""
    if level is None:
        return text
    assert level in LEVELS, level
    return {"text": "" if text is None else str(text), "level": level}


def tiles(id: str, items: Iterable[tuple[str, Any] | tuple[str, Any, str | None]]) -> Widget:
    out = []
    for item in items:
        label, value, *rest = item
        out.append(
            {"label": str(label), "value": "" if value is None else str(value), "level": rest[0] if rest else None}
        )
    return {"kind": "tiles", "id": id, "items": out}


def banner(id: str, level: str, text: str) -> Widget:
    assert level in LEVELS, level
    return {"kind": "banner", "id": id, "level": level, "text": str(text)}


def table(
    id: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], title: str = "", empty: str = "nothing yet"
) -> Widget:
    rows = [[_plain(v) for v in r] for r in rows]
    for r in rows:
        if len(r) != len(columns):
            raise ValueError(f"table {id!r}: a row has {len(r)} cells for {len(columns)} columns")
    return {"kind": "table", "id": id, "title": title, "columns": list(map(str, columns)), "rows": rows, "empty": empty}


def line(
    id: str,
    title: str,
    series: Iterable[tuple[str, Iterable[tuple[Any, Any]]]],
    x_label: str = "round",
    y_label: str = "",
) -> Widget:
    """A line chart: one line per series; a point whose y is missing or not finite leaves a gap."""
    out = [
        {"name": str(name), "points": [[_num(x), _num(y)] for x, y in pts if _num(x) is not None]}
        for name, pts in series
    ]
    return {"kind": "line", "id": id, "title": title, "x_label": x_label, "y_label": y_label, "series": out}


def bars(
    id: str,
    title: str,
    groups: Sequence[str],
    series: Iterable[tuple[str, Sequence[Any]]],
    y_label: str = "",
    stacked: bool = False,
) -> Widget:
    out = []
    for name, values in series:
        values = list(values)
        if len(values) != len(groups):
            raise ValueError(f"bars {id!r}: series {name!r} has {len(values)} values for {len(groups)} groups")
        out.append({"name": str(name), "values": [_num(v) for v in values]})
    return {
        "kind": "bars",
        "id": id,
        "title": title,
        "groups": list(map(str, groups)),
        "series": out,
        "y_label": y_label,
        "stacked": stacked,
    }


def text(id: str, body: str) -> Widget:
    return {"kind": "text", "id": id, "text": str(body)}


def kv(id: str, items: Iterable[tuple[str, Any]], title: str = "") -> Widget:
    return {"kind": "kv", "id": id, "title": title, "items": [[str(k), "" if v is None else str(v)] for k, v in items]}


def links(id: str, items: Iterable[tuple[str, str]], title: str = "") -> Widget:
    out = []
    for label, href in items:
        if not href.startswith("/") or href.startswith("//"):
            raise ValueError(f"links {id!r}: {href!r} is not a path on this dashboard")
        out.append({"text": str(label), "href": href})
    return {"kind": "links", "id": id, "title": title, "items": out}


def section(id: str, title: str, widgets: Iterable[Widget], note: str = "") -> Section:
    return {"id": id, "title": title, "note": note, "widgets": list(widgets)}


def page(title: str, subtitle: str, sections: Iterable[Section], refresh_s: float = 2.0) -> Page:
    """The whole page; ``refresh_s`` is how often the browser asks again (0: never)."""
    return {"title": title, "subtitle": subtitle, "refresh_s": refresh_s, "sections": list(sections)}
