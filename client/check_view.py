"""Render a site check for people: rich tables on the terminal."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table


def _counts_table(title: str, counts: dict, key_header: str) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column(key_header)
    table.add_column("images", justify="right")
    for k, v in counts.items():
        table.add_row(str(k), str(v))
    return table


def render_check(report: dict, console: Console, max_rows: int = 20) -> None:
    img = report["images"]
    console.print(
        f"[bold]Site check[/] {report['data']}: {img['files']} files, "
        f"[green]{img['usable']} usable[/], [yellow]{img['rejected']} rejected[/]"
    )
    if "findings" in report:  # a multi-label CSV: one column per finding
        render_findings(report["findings"], console)
    else:
        console.print(_counts_table("Labelled usable images per class", report["classes"], "class"))
    for title, field, header in (
        ("Modalities", "modalities", "modality"),
        ("Manufacturers", "manufacturers", "manufacturer"),
        ("Matrix sizes", "matrix_sizes", "rows x columns"),
        ("Transfer syntaxes", "transfer_syntaxes", "transfer syntax"),
    ):
        if report[field]:
            console.print(_counts_table(title, report[field], header))
    if report["rejected_by_reason"]:
        table = Table(title="Rejected files by reason", title_justify="left")
        table.add_column("reason")
        table.add_column("files", justify="right")
        table.add_column("what it means")
        table.add_column("example")
        examples: dict[str, str] = {}
        for r in report["rejected"]:
            examples.setdefault(r["reason"], f"{r['path']}: {r['detail']}")
        for reason, info in report["rejected_by_reason"].items():
            table.add_row(reason, str(info["count"]), info["explanation"], examples.get(reason, ""))
        console.print(table)
    labels = report["labels"]
    console.print(
        f"Labels: {labels['rows']} rows, {labels['matched']} images matched, "
        f"{len(labels['problems'])} problems, {report['unlabelled_images']} usable images without a label"
    )
    if labels["problems"]:
        table = Table(title="Label problems", title_justify="left")
        for col in ("key", "reason", "detail"):
            table.add_column(col)
        for p in labels["problems"][:max_rows]:
            table.add_row(p["key"], p["reason"], p["detail"])
        console.print(table)
        if len(labels["problems"]) > max_rows:
            console.print(f"… and {len(labels['problems']) - max_rows} more (use --json for the full list)")
    if report["cache"].get("warning"):
        console.print(f"[yellow]warning:[/] {report['cache']['warning']}")
    if report.get("hardware"):
        render_hardware(report["hardware"], console)
    colour = "green" if report["ok"] else "red"
    console.print(f"[bold {colour}]{report['verdict']}[/]")


def render_hardware(hw: dict, console: Console) -> None:
    """What this site trains on (:meth:`shared.hardware.Hardware.to_json`), as ``start`` will use it."""
    memory = f", {hw['memory_bytes'] / 2**30:.1f} GiB" if hw.get("memory_bytes") else ""
    precision = f"mixed precision {hw['amp_dtype']}" if hw.get("amp_dtype") else "float32"
    console.print(
        f"[bold]Trains on[/] {hw['device']} ({hw['name']}{memory}), {hw['threads']} threads, {precision}",
        highlight=False,
    )


def render_findings(findings: dict, console: Console) -> None:
    """Labelled usable images per finding of a multi-label CSV: positive, negative, uncertain (-1), blank."""
    table = Table(title="Labelled usable images per finding", title_justify="left")
    for col in ("finding", "positive", "negative", "uncertain (-1)", "unknown (blank)"):
        table.add_column(col, justify="left" if col == "finding" else "right")
    for name, c in findings.items():
        table.add_row(name, *(str(c[k]) for k in ("positive", "negative", "uncertain", "unknown")))
    console.print(table)


def render_segmentation(seg: dict, console: Console, max_rows: int = 20) -> None:
    """The SEG ↔ image matching of ``fedrad-site check --segments``."""
    console.print(f"[bold]Segmentations[/] ({', '.join(seg['labels'])}): {seg['images_with_masks']} images with masks")
    if not seg["problems"]:
        return
    kinds = Table(title="SEG problems", title_justify="left")
    for col in ("problem", "files", "what to do"):
        kinds.add_column(col)
    for kind, info in seg["problems_by_kind"].items():
        kinds.add_row(kind, str(info["count"]), info["what_to_do"])
    console.print(kinds)
    files = Table(title=f"First {min(max_rows, len(seg['problems']))} problem files", title_justify="left")
    for col in ("file", "problem", "detail"):
        files.add_column(col)
    for p in seg["problems"][:max_rows]:
        files.add_row(p["path"], p["kind"], p["detail"])
    console.print(files)


def render_volumes(report: dict, console: Console, max_rows: int = 20) -> None:
    """``fedrad-site check --volumes``: the export's CT/MR series (usable or why not) and, with --segments,
    the label matching (:func:`shared.tasks.segmentation3d.check.check_volume_site`)."""
    series = report["series"]
    spacing = "×".join(f"{v:g}" for v in report["spacing_mm"])
    console.print(
        f"[bold]Volume check[/] {report['data']}: {series['found']} series, [green]{series['usable']} usable[/], "
        f"[yellow]{series['rejected']} rejected[/]; {report['label_files']} label object(s); "
        f"model input at {spacing} mm, window {report['window']}",
        highlight=False,
    )
    table = Table(title="Series", title_justify="left")
    for col in ("series folder", "modality", "slices", "spacing mm", "acquired", "model shape", "labels / verdict"):
        table.add_column(col)
    for s in report["series_list"][:max_rows]:
        if s["usable"]:
            verdict = s.get("labels") or ("[yellow]no labels[/]" if "labels" in report else "usable")
        else:
            verdict = f"[red]{s['reason']}[/]"
        table.add_row(
            str(Path(s["first_file"]).parent),
            s["modality"],
            str(s["slices"] or s["files"]),
            "×".join(f"{v:g}" for v in s.get("spacing_mm", [])),
            s.get("acquisition", ""),
            "×".join(str(v) for v in s.get("model_shape", [])),
            verdict,
        )
    console.print(table)
    if len(report["series_list"]) > max_rows:
        console.print(f"… and {len(report['series_list']) - max_rows} more (use --json for the full list)")
    for s in [s for s in report["series_list"] if not s["usable"]][:max_rows]:
        console.print(f"[yellow]{s['reason']}[/] {s['first_file']}: {s['detail']}", highlight=False)
    if report["rejected_by_reason"]:
        reasons = Table(title="Rejected series by reason", title_justify="left")
        for col in ("reason", "series", "what it means"):
            reasons.add_column(col)
        for reason, info in report["rejected_by_reason"].items():
            reasons.add_row(reason, str(info["count"]), info["explanation"])
        console.print(reasons)
    for p in report["file_problems"][:max_rows]:
        console.print(f"[yellow]file problem:[/] {p['path']}: {p['reason']} ({p['detail']})", highlight=False)
    labels = report.get("labels")
    if labels is not None:
        console.print(
            f"[bold]Labels[/] ({', '.join(labels['labels'])}): {labels['series_with_labels']} series with a label map"
        )
        if labels["problems_by_kind"]:
            kinds = Table(title="Label problems", title_justify="left")
            for col in ("problem", "count", "what to do"):
                kinds.add_column(col)
            for kind, info in labels["problems_by_kind"].items():
                kinds.add_row(kind, str(info["count"]), info["what_to_do"])
            console.print(kinds)
    if report["cache"].get("warning"):
        console.print(f"[yellow]warning:[/] {report['cache']['warning']}")
