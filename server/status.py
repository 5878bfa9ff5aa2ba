"""``fedrad-server status DIR [--json]``: who is enrolled/online, which run, which round, last metrics.

Reads only files the coordinator and the ServerApp write (registry,
``state/server.json``, ``state/current-run.json``, ``RUN_DIR/state.json`` and
``metrics.jsonl``), plus the loopback Control API when ``start`` is running,
so it works on a stopped server too and never touches the run. It also checks
the certificates' expiry and whether the CA key is encrypted (server/cert_expiry.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from server.cert_expiry import ca_key_health, certificate_health
from server.consortium import load_consortium
from server.coordinator import CURRENT_RUN_JSON, SERVER_JSON, STATE_DIR, last_run_dir, read_json, round_row
from server.enrollment import load_registry, pki_dir
from shared.processes import is_running


def _last_line(path: Path) -> dict[str, Any] | None:
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None


def server_running(directory: Path) -> dict[str, Any] | None:
    """``state/server.json`` if the process that wrote it is still alive (same pid and start time)."""
    info = read_json(Path(directory) / STATE_DIR / SERVER_JSON)
    if not info or info.get("starttime") is None:
        return None
    return info if is_running((int(info["pid"]), int(info["starttime"]))) else None


def collect_status(directory: Path) -> dict[str, Any]:
    """Everything ``status`` shows, as one JSON-able dict."""
    directory = Path(directory).resolve()
    cfg = load_consortium(directory)
    sites = load_registry(directory)
    server = server_running(directory)
    nodes: dict[str, Any] | None = None  # site name -> server.superlink.NodeStatus while the server runs
    if server is not None:
        from server.coordinator import site_nodes
        from server.superlink import ControlClient, SuperLinkError

    current = read_json(directory / STATE_DIR / CURRENT_RUN_JSON)
    if server is not None:
        try:
            with ControlClient(server["superlink"], pki_dir(directory) / "ca.crt") as control:
                nodes = site_nodes(control)
                if current and current.get("run_id") is not None:  # the live status, not the last one written
                    current["status"] = control.run(int(current["run_id"]))["status"]
        except SuperLinkError:
            nodes = None
    run_dir = Path(current["run_dir"]) if current and current.get("run_dir") else last_run_dir(directory)
    run: dict[str, Any] | None = None
    if run_dir is not None:
        state = read_json(run_dir / "state.json") or {}
        last = _last_line(run_dir / "metrics.jsonl")
        run = {
            "run_dir": str(run_dir),
            "run_id": current.get("run_id") if current else None,
            "status": (current or {}).get("status", "unknown")
            if current and current.get("run_dir") == str(run_dir)
            else "unknown",
            "rounds": cfg.rounds,
            "last_round": state.get("last_round", last.get("round") if last else None),
            "last_metrics": last,
            "latest_model": str(run_dir / "latest.pt") if (run_dir / "latest.pt").exists() else None,
            "best_model": str(run_dir / "best.pt") if (run_dir / "best.pt").exists() else None,
            "averaged_model": (
                {"path": str(run_dir / state["averaged"]["file"]), "rounds": state["averaged"]["rounds"]}
                if state.get("averaged")
                else None
            ),
        }
        if server is None and run["status"] in ("submitted", "running"):
            run["status"] = f"{run['status']} (server stopped; `fedrad-server start --resume` continues it)"
    return {
        "consortium": cfg.name,
        "address": cfg.address,
        "strategy": cfg.strategy.name,
        "server_running": server is not None,
        "sites": [
            {
                "name": n,
                "fingerprint": s.fingerprint,
                "enrolled_at": s.enrolled_at,
                "status": (nodes[n].status if n in (nodes or {}) else "not connected")
                if server is not None
                else "unknown (server not running)",
                # from the SuperLink while the server runs: its Flower node id, and when it last heard from it
                "node_id": nodes[n].node_id if n in (nodes or {}) else None,
                "last_seen": (nodes[n].last_seen or None) if n in (nodes or {}) else None,
            }
            for n, s in sorted(sites.items())
        ],
        "run": run,
        "certificates": certificate_health(pki_dir(directory), directory),
        "ca_key": ca_key_health(pki_dir(directory), directory),
    }


def status_problems(st: dict[str, Any]) -> list[tuple[str, str]]:
    """(level, message) for every certificate or CA-key finding that is not ok, errors first."""
    rows = [*st.get("certificates", []), st.get("ca_key") or {}]
    found = [(r["level"], r["message"]) for r in rows if r.get("level") in ("error", "warning") and r.get("message")]
    return sorted(found, key=lambda lm: lm[0] != "error")


def render_status(st: dict[str, Any], console: Console) -> None:
    running = (
        "[green]running[/]" if st["server_running"] else "[yellow]not running[/] (start it with `fedrad-server start`)"
    )
    console.print(f"[bold]{st['consortium']}[/] at {st['address']} ({st['strategy']}): server {running}")
    table = Table(title=f"{len(st['sites'])} site(s) enrolled", title_justify="left")
    for col in ("site", "status", "key fingerprint", "enrolled"):
        table.add_column(col)
    for s in st["sites"]:
        table.add_row(s["name"], s["status"], s["fingerprint"], s["enrolled_at"])
    console.print(table)
    for level, message in status_problems(st):
        colour = "red" if level == "error" else "yellow"
        console.print(f"[bold {colour}]{level}:[/] {message}", highlight=False, soft_wrap=True)
    run = st["run"]
    if run is None:
        console.print("no run yet")
        return
    console.print(
        f"run {run['run_id'] or '?'} in {run['run_dir']}: {run['status']}, "
        f"round {run['last_round'] if run['last_round'] is not None else 0}/{run['rounds']}"
    )
    if run["last_metrics"]:
        r = round_row(run["last_metrics"])
        console.print(f"last round {r.round}: sites {r.sites}, {r.metrics}, {r.seconds} s")
