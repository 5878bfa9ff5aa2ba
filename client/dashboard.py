"""``fedrad-site dashboard``: the hospital's read-only page of what this site sent, checked and runs.

:class:`SitePage` is the page source the web layer (:mod:`shared.dashboard.server`) polls: ``page()``
returns the page model (:mod:`shared.dashboard.widgets`) every couple of seconds, so it only re-reads what
changed (the audit log by its file status, the reports every half minute, site.yaml's identity every
minute) and never raises: a part that fails is a section with an error banner. The data check runs in the
background (:mod:`client.dashboard_check`). Sections, in order: ``audit`` (what left this hospital),
``data``, ``code``, ``privacy``, ``reports``; every widget id is stable (docs/dashboards.md lists them).
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from client.audit import head_path
from client.dashboard_audit import AuditState, audit_section, read_audit
from client.dashboard_check import BackgroundCheck, check_section
from client.dashboard_reports import ReportIndex, documents, reports_section
from client.dashboard_site import Identity, code_section, privacy_section, site_identity
from client.site_config import REPORTS_FOLDER, SiteFileConfig, load_site_file, site_node_config
from shared.config import ConfigError
from shared.dashboard import widgets as w

T = TypeVar("T")
AUDIT_MAX_AGE_S = 30.0  # re-verify at least this often even when the log's files look unchanged
REPORTS_EVERY_S = 30.0
IDENTITY_EVERY_S = 60.0
REFRESH_S = 2.0


def _stat_key(*paths: Path) -> tuple:
    """What tells a file changed: inode, size, mtime and ctime (ctime cannot be set back by its owner)."""
    out = []
    for p in paths:
        try:
            s = os.stat(p)
            out.append((s.st_ino, s.st_size, s.st_mtime_ns, s.st_ctime_ns))
        except OSError:
            out.append(None)
    return tuple(out)


class _Cached:
    """A value recomputed when its key changes or it is older than ``max_age`` seconds."""

    def __init__(self, compute: Callable[[], Any], max_age: float, key: Callable[[], Any] = lambda: None) -> None:
        self.compute, self.max_age, self.key = compute, max_age, key
        self._value: Any = None
        self._stamp: tuple[Any, float] | None = None

    def invalidate(self) -> None:
        self._stamp = None

    def get(self) -> Any:
        key, now = self.key(), time.monotonic()
        if self._stamp is None or self._stamp[0] != key or now - self._stamp[1] > self.max_age:
            self._value = self.compute()
            self._stamp = (key, now)
        return self._value


def _guarded(id: str, title: str, build: Callable[[], w.Section]) -> w.Section:
    """The section, or the same section holding an error banner: one broken part never blanks the page."""
    try:
        return build()
    except Exception as exc:  # noqa: BLE001 - shown on the page instead
        return w.section(id, title, [w.banner(f"{id}-error", "error", f"{type(exc).__name__}: {exc}")])


def _finite(obj: Any) -> Any:
    """The page with every NaN or infinity (an edited log line can hold one) as None: JSON has neither."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


class SitePage:
    """The site dashboard's page source (:class:`shared.dashboard.server.PageSource`) for one site.yaml."""

    def __init__(
        self,
        config: Path,
        *,
        reports: list[Path] | None = None,
        check_runner: Callable[[Path], Any] | None = None,
    ) -> None:
        self.config = Path(config).resolve()
        self.cfg: SiteFileConfig = load_site_file(self.config)  # a broken site.yaml stops the command (exit 2)
        self._cfg_key = _stat_key(self.config)
        self._cfg_problem: str | None = None
        self.title = f"FedRad site {self.cfg.site_name}"
        self._lock = threading.Lock()
        work = Path(self.cfg.work_dir or self.config.parent / "work")
        self.log = Path(str(site_node_config(self.config, self.cfg)["audit-log"]))
        self._audit = _Cached(self._read_audit, AUDIT_MAX_AGE_S, self._audit_key)
        self._identity = _Cached(lambda: site_identity(self.cfg), IDENTITY_EVERY_S)
        roots = [work / REPORTS_FOLDER, self.config.parent, *(Path(r).resolve() for r in reports or [])]
        data_cfg = self.cfg.data_config()
        skip = [Path(self.cfg.data).resolve(), data_cfg.resolved_cache_dir().resolve(), work / "apps", work / "audit"]
        self.reports = ReportIndex(roots, skip)
        self._reports = _Cached(self.reports.scan, REPORTS_EVERY_S)
        self.check = BackgroundCheck(self.config, check_runner)
        self.check.request()  # the first check starts now, in the background

    # -- the parts, each cached ------------------------------------------------------------------------

    def _audit_key(self) -> tuple:
        key = Path(self.cfg.private_key)
        return _stat_key(self.log, head_path(self.log), key, key.with_name("site.pub"))

    def _read_audit(self) -> AuditState:
        from client.audit_site import verify_key

        return read_audit(self.log, lambda: verify_key(self.cfg))

    def _reload_config(self) -> None:
        """Follow edits of site.yaml; an invalid edit keeps the last good settings and says so."""
        key = _stat_key(self.config)
        if key == self._cfg_key:
            return
        self._cfg_key = key
        try:
            self.cfg = load_site_file(self.config)
            self._cfg_problem = None
        except ConfigError as exc:
            self._cfg_problem = str(exc)
            return
        self.log = Path(str(site_node_config(self.config, self.cfg)["audit-log"]))  # work_dir may have moved
        self._identity.invalidate()
        self._audit.invalidate()  # the key it is checked with may have changed

    # -- PageSource ------------------------------------------------------------------------------------

    def page(self) -> w.Page:
        with self._lock:
            try:
                return self._page()
            except Exception as exc:  # noqa: BLE001 - never raise into the web layer
                return w.page(
                    self.title, "", [w.section("error", "Error", [w.banner("page-error", "error", str(exc))])]
                )

    def _page(self) -> w.Page:
        self._reload_config()
        self.check.request()  # starts a check when the last one is older than the refresh interval
        try:
            audit: AuditState = self._audit.get()
        except Exception as exc:  # noqa: BLE001 - read_audit catches what a log does; this is the net
            audit = AuditState(self.log, problem=f"{type(exc).__name__}: {exc}")
        try:
            identity: Identity = self._identity.get()
        except Exception as exc:  # noqa: BLE001
            identity = Identity(f"cannot fingerprint the installed code: {exc}", "", "")
        try:
            self._reports.get()
        except Exception:  # noqa: BLE001 - the last list stays; the section says where it looked
            pass
        sections = [
            _guarded("audit", "What left this hospital", lambda: audit_section(audit)),
            _guarded("data", "Data check", lambda: check_section(self.check)),
            _guarded("code", "Code approval", lambda: code_section(self.cfg, identity, audit.entries)),
            _guarded("privacy", "Privacy settings", lambda: privacy_section(self.cfg, identity, self.config)),
            _guarded("reports", "Evaluation reports", lambda: reports_section(self.reports)),
        ]
        if self._cfg_problem is not None:
            warning = w.banner("site-config", "error", f"site.yaml was edited and no longer loads: {self._cfg_problem}")
            sections[0]["widgets"].insert(0, warning)
        now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
        subtitle = f"{self.cfg.site_name}: read-only, for this hospital only; updated {now} UTC"
        return _finite(w.page(self.title, subtitle, sections, refresh_s=REFRESH_S))

    def documents(self) -> dict[str, Any]:
        from shared.dashboard.server import Document

        with self._lock:
            found = documents(self._reports.get())
        return {doc_id: Document(path, media) for doc_id, (path, media) in found.items()}

    # -- for the CLI -----------------------------------------------------------------------------------

    def wait_for_check(self, timeout: float | None = None) -> None:
        """Block until the data check that is running (if any) has finished (``--json``)."""
        self.check.wait(timeout)

    def close(self) -> None:
        """Stop a data check still running (the dashboard is quitting)."""
        self.check.stop()
