"""The site's HTML report page, shared by every task's local evaluation report.

One self-contained page (figures inlined as PNG), with the per-case notice on
top: a report holds per-case results and stays at the site.
"""

from __future__ import annotations

import base64
import html
import json
from datetime import UTC, datetime
from pathlib import Path

PER_CASE_NOTICE = "This report and predictions.csv contain per-case results: keep them at the site."
MODEL_INFO_FIRST = ("architecture", "classes", "provenance", "sha256")
DPI = 110


def html_page(
    title: str,
    sections: str,
    warnings: list[str],
    model_info: dict,
    images: dict[str, Path],
    captions: list[str],
    footer: str,
) -> str:
    """The self-contained report page: notice, warnings, the task's ``sections`` (HTML), model, embedded plots.

    Shared by the classification report and the segmentation one (:mod:`shared.tasks.segmentation.report`).
    """
    esc = html.escape
    img = {k: base64.b64encode(v.read_bytes()).decode("ascii") for k, v in images.items()}
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    warn = "".join(f"<li>{esc(w)}</li>" for w in warnings)
    figures = "".join(
        f'<figure><img alt="{k}" src="data:image/png;base64,{b64}"><figcaption>{esc(cap)}</figcaption></figure>'
        for (k, b64), cap in zip(img.items(), captions)
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{esc(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
.notice {{ border: 2px solid #b00; background: #fee; padding: .6em 1em; font-weight: 600; }}
.warn {{ border-left: 4px solid #d80; background: #fff6e0; padding: .3em 1em; }}
table {{ border-collapse: collapse; margin: .5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: .25em .7em; text-align: left; vertical-align: top; }}
th {{ background: #f3f3f3; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
figure {{ display: inline-block; margin: 0 1em 1em 0; }}
img {{ max-width: 520px; }}
</style></head><body>
<h1>{esc(title)}</h1>
<p>Generated {generated}.</p>
<p class="notice">{esc(PER_CASE_NOTICE)}</p>
{f'<div class="warn"><p>Warnings:</p><ul>{warn}</ul></div>' if warn else ""}
{sections}<h2>Model</h2>
{_model_table(model_info) if model_info else "<p>No model information given.</p>"}
<h2>Plots</h2>
{figures}
<p>{footer}
Aggregate figures: <code>metrics.json</code>.</p>
</body></html>
"""


def _model_table(info: dict) -> str:
    keys = [k for k in MODEL_INFO_FIRST if k in info] + [k for k in info if k not in MODEL_INFO_FIRST]
    rows = []
    for k in keys:
        v = info[k]
        if isinstance(v, (list, tuple)):
            v = ", ".join(map(str, v))
        elif isinstance(v, dict):
            v = json.dumps(v, sort_keys=True, default=str)
        rows.append((str(k), str(v)))
    return _rows_table(rows)


def _rows_table(rows: list[tuple[str, str]], escape: bool = True, numeric: bool = False) -> str:
    """Two-column key/value table; row keys are always escaped, values unless already HTML."""
    e = html.escape if escape else (lambda s: s)
    td = '<td class="num">' if numeric else "<td>"
    body = "".join(f"<tr><th>{html.escape(k)}</th>{td}{e(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.3f}" if isinstance(v, float) else html.escape(str(v))


def _fmt_ci(ci) -> str:
    return f"{ci[0]:.3f}–{ci[1]:.3f}" if ci else ""
