"""The site dashboard's data check: ``fedrad-site check --config site.yaml --json``, run in the background.

Why a child process running the ``check`` command itself, and not a call in the dashboard's process: the
result is the command's own ``--json`` report by construction; a big export's scan (minutes, every core,
forked decoders, torch for the hardware line) never shares a process with the web server's threads; and
a decoder that crashes on a bad file takes the check down, not the dashboard. The scan reads through the
ingest cache, so every check after the first is fast.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.dashboard import widgets as w

MAX_ROWS = 200
CHECK_EVERY_S = 600.0  # a page seen after this long asks for a fresh check


@dataclass(frozen=True)
class CheckResult:
    """One finished check: the ``--json`` report, or why there is none."""

    finished: str  # UTC time, ISO
    seconds: float
    exit_code: int
    report: dict[str, Any] | None
    error: str | None = None


class CheckCommand:
    """``fedrad-site check --config CONFIG --json`` as a child process (FedRad's child environment: no calls
    home, this FedRad's code first on the path); :meth:`stop` ends a check still running (the dashboard quits).
    """

    def __init__(self) -> None:
        self._proc: subprocess.Popen[str] | None = None
        self._stopped = False

    def __call__(self, config: Path) -> CheckResult:
        """Run one check; never raises."""
        from shared.processes import child_env

        started = time.monotonic()
        root = str(Path(__file__).resolve().parents[1])
        env = child_env({"PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)})
        env.pop("FEDRAD_PROGRESS", None)
        command = [sys.executable, "-m", "client", "check", "--config", str(config), "--json"]
        try:
            self._proc = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                env=env,
                text=True,
                start_new_session=True,  # its own group: stop() reaches its decoder processes too
            )
            if self._stopped:
                self.stop()
            stdout, stderr = self._proc.communicate()
        except OSError as exc:
            return CheckResult(_now(), 0.0, -1, None, f"cannot start the check: {exc}")
        return _result(self._proc.returncode, stdout, stderr, time.monotonic() - started)

    def stop(self) -> None:
        self._stopped = True
        proc = self._proc
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass


def _slim(report: dict[str, Any]) -> dict[str, Any]:
    """What the page shows of a report kept for ten minutes: a big export's per-file lists (every rejected or
    unlabelled file) become one example per reason and the first label problems, with their totals."""
    examples: dict[str, dict[str, Any]] = {}
    for r in report.get("rejected") or []:
        if isinstance(r, dict):
            examples.setdefault(str(r.get("reason")), r)
    report["rejected"] = list(examples.values())
    report.pop("unlabelled", None)
    labels = report.get("labels")
    if isinstance(labels, dict) and isinstance(labels.get("problems"), list):
        labels["problems_total"] = len(labels["problems"])
        labels["problems"] = labels["problems"][:MAX_ROWS]
    return report


def _result(code: int, stdout: str, stderr: str, seconds: float) -> CheckResult:
    """The command's JSON report (exit 0: can train, 1: cannot), or its error line (exit 2, 3)."""
    report = None
    if stdout.strip():
        try:
            report = json.loads(stdout)
        except ValueError:
            report = None
    if isinstance(report, dict):
        return CheckResult(_now(), seconds, code, _slim(report))
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    reason = lines[-1] if lines else f"the check exited with code {code} and printed nothing"
    if code < 0:
        reason = f"the check was stopped (signal {-code})"
    return CheckResult(_now(), seconds, code, None, reason.removeprefix("error: "))


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class BackgroundCheck:
    """The latest check and whether one is running; ``request()`` starts one unless one runs or is fresh."""

    def __init__(self, config: Path, runner: Any = None, every_s: float = CHECK_EVERY_S) -> None:
        self.config, self.every_s = Path(config), every_s
        self.runner = runner if runner is not None else CheckCommand()
        self.result: CheckResult | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._started_at = 0.0
        self._finished_at = 0.0

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def request(self, force: bool = False) -> None:
        """Start a check now if none runs and the last one is older than ``every_s`` (or ``force``)."""
        with self._lock:
            if self.running:
                return
            if not force and self.result is not None and time.monotonic() - self._finished_at < self.every_s:
                return
            self._started_at = time.monotonic()
            self._thread = threading.Thread(target=self._run, name="fedrad-site-check", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            result = self.runner(self.config)
        except Exception as exc:  # noqa: BLE001 - the page says what failed; the dashboard goes on
            result = CheckResult(_now(), 0.0, -1, None, f"{type(exc).__name__}: {exc}")
        with self._lock:
            self.result, self._finished_at = result, time.monotonic()

    def wait(self, timeout: float | None = None) -> CheckResult | None:
        """Block until the running check (if any) is done; the latest result."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.result

    def stop(self) -> None:
        """End a check still running (its child process), if the runner can."""
        stop = getattr(self.runner, "stop", None)
        if stop is not None:
            stop()

    def running_for(self) -> float:
        return time.monotonic() - self._started_at if self.running else 0.0


def _counts_table(id: str, title: str, counts: dict[str, Any], header: str, unit: str = "images") -> w.Widget:
    return w.table(id, (header, unit), [[k, v] for k, v in counts.items()], title=title, empty="none")


def _images_widgets(r: dict[str, Any]) -> list[w.Widget]:
    """A planar export (classification, multi-label): counts, rejections, classes, label problems."""
    img, labels = r.get("images", {}), r.get("labels", {})
    problems = labels.get("problems", [])
    n_problems = labels.get("problems_total", len(problems))
    out = [
        w.tiles(
            "data-totals",
            [
                ("files", img.get("files")),
                ("usable images", img.get("usable"), "ok" if img.get("usable") else "error"),
                ("rejected files", img.get("rejected"), "warn" if img.get("rejected") else None),
                ("label rows", labels.get("rows")),
                ("labelled images", labels.get("matched")),
                ("label problems", n_problems, "warn" if n_problems else None),
                ("usable without a label", r.get("unlabelled_images")),
            ],
        )
    ]
    out += _rejected_widgets(r, "files")
    if "findings" in r:
        out.append(
            w.table(
                "data-classes",
                ("finding", "positive", "negative", "uncertain (-1)", "unknown (blank)"),
                [
                    [name, c.get("positive"), c.get("negative"), c.get("uncertain"), c.get("unknown")]
                    for name, c in r["findings"].items()
                ],
                title="Labelled usable images per finding",
            )
        )
    else:
        out.append(_counts_table("data-classes", "Labelled usable images per class", r.get("classes", {}), "class"))
    out.append(
        w.table(
            "data-label-problems",
            ("key", "problem", "detail"),
            [[p.get("key"), p.get("reason"), p.get("detail")] for p in problems[:MAX_ROWS]],
            title=f"Label problems ({min(n_problems, MAX_ROWS)} of {n_problems} shown)",
            empty="no label problems",
        )
    )
    for field, title, header in (
        ("modalities", "Modalities", "modality"),
        ("manufacturers", "Manufacturers", "manufacturer"),
        ("matrix_sizes", "Matrix sizes", "rows x columns"),
        ("transfer_syntaxes", "Transfer syntaxes", "transfer syntax"),
    ):
        if r.get(field):
            out.append(_counts_table(f"data-{field.replace('_', '-')}", title, r[field], header))
    return out


def _rejected_widgets(r: dict[str, Any], unit: str) -> list[w.Widget]:
    by_reason = r.get("rejected_by_reason") or {}
    examples: dict[str, str] = {}
    for x in r.get("rejected", []):
        examples.setdefault(str(x.get("reason")), f"{x.get('path')}: {x.get('detail')}")
    reasons = list(by_reason)
    return [
        w.table(
            "data-rejected",
            ("reason", unit, "what it means", "example"),
            [[k, v.get("count"), v.get("explanation"), examples.get(k, "")] for k, v in by_reason.items()],
            title=f"Rejected {unit} by reason",
            empty=f"no {unit} rejected",
        ),
        w.bars(
            "data-rejected-bars",
            f"Rejected {unit} by reason",
            reasons,
            [(unit, [by_reason[k].get("count") for k in reasons])],
            y_label=unit,
        ),
    ]


def _hardware(hw: dict[str, Any] | None) -> list[w.Widget]:
    if not hw:
        return []
    memory = f", {hw['memory_bytes'] / 2**30:.1f} GiB" if hw.get("memory_bytes") else ""
    precision = f"mixed precision {hw['amp_dtype']}" if hw.get("amp_dtype") else "float32"
    return [
        w.kv(
            "data-hardware",
            [
                ("trains on", f"{hw.get('device')} ({hw.get('name')}{memory})"),
                ("threads", hw.get("threads")),
                ("precision", precision),
            ],
            title="What this site trains on",
        )
    ]


def check_section(check: BackgroundCheck) -> w.Section:
    """Section ``data``: the latest check (banner ``data-status``), or "checking…" until the first is done."""
    result = check.result
    widgets: list[w.Widget] = []
    running = check.running
    if result is None:
        widgets.append(
            w.banner(
                "data-status",
                "info",
                f"checking the data export… ({check.running_for():.0f} s so far; a first "
                "check of a big export takes minutes, later ones read the ingest cache)",
            )
        )
        return w.section("data", "Data check", widgets, note=_note(check))
    again = " (checking again now…)" if running else ""
    when = f"checked {result.finished[:19].replace('T', ' ')} UTC in {result.seconds:.0f} s{again}"
    r = result.report
    if r is None:
        widgets.append(w.banner("data-status", "error", f"the data check failed: {result.error} ({when})"))
        return w.section("data", "Data check", widgets, note=_note(check))
    widgets.append(w.banner("data-status", "ok" if r.get("ok") else "error", f"{r.get('verdict', '')} ({when})"))
    if "images" in r:
        widgets += _images_widgets(r)
    else:  # a segmentation-only site.yaml: the command says whether it can train, segment names come with a run
        widgets.append(
            w.text(
                "data-detail",
                "This site's labels come with its export (DICOM SEG, RTSTRUCT or NIfTI). `fedrad-site check "
                "--segments a,b` (radiographs) or `--volumes --segments a,b` (CT/MR) lists every series and "
                "problem for a run's segment names.",
            )
        )
    widgets += _hardware(r.get("hardware"))
    if r.get("cache", {}).get("warning"):
        widgets.append(w.banner("data-cache", "warn", r["cache"]["warning"]))
    return w.section("data", "Data check", widgets, note=_note(check))


def _note(check: BackgroundCheck) -> str:
    return (
        f"`fedrad-site check --config {check.config} --json`, run by the dashboard at start and again when the "
        f"page is open {check.every_s / 60:.0f} minutes after the last check."
    )
