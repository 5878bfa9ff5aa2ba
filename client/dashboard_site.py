"""The site dashboard's settings sections: which code this site runs (code approval) and what it lets out.

Read from site.yaml, the approvals file in the work dir and the audit log's refusals; nothing secret is
shown: the site key by its fingerprint only, the consortium CA by its subject and dates.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from client.approval import ApprovalError, approvals_path, load_approvals
from client.outbound_guard import ALLOWED_METRICS, STATS_KEY
from client.site_config import SiteFileConfig
from shared.dashboard import widgets as w

# client/app.py's refusal of unapproved code: "... FedRad code sha256 <hex> is not approved there"
UNAPPROVED = re.compile(r"code sha256 ([0-9a-f]{64}) is not approved")


@dataclass(frozen=True)
class Identity:
    """What this installation and its keys are, computed now and then (cheap, but not every poll)."""

    installed_code: str
    key_fingerprint: str
    ca: str


def site_identity(cfg: SiteFileConfig) -> Identity:
    from shared.code_identity import code_sha256, installed_root

    return Identity(code_sha256(installed_root()), _key_fingerprint(cfg), _ca_summary(Path(cfg.ca_cert)))


def _key_fingerprint(cfg: SiteFileConfig) -> str:
    """``SHA256:…`` of the site key (site.pub beside private_key, else the private key's public half)."""
    from shared.keys import SiteKeyError, fingerprint, key_fingerprint, load_private_key

    beside = Path(cfg.private_key).with_name("site.pub")
    try:
        if beside.is_file():
            return fingerprint(beside)
        return key_fingerprint(load_private_key(Path(cfg.private_key)).public_key())
    except (SiteKeyError, OSError) as exc:
        return f"cannot read the site key: {exc}"


def _ca_summary(path: Path) -> str:
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError) as exc:
        return f"{path}: cannot read it ({exc})"
    until = cert.not_valid_after_utc.strftime("%Y-%m-%d")
    return f"{cert.subject.rfc4514_string()}, valid until {until} ({path})"


def _waiting(entries: list[dict[str, Any]], approved: set[str]) -> list[list[Any]]:
    """Code fingerprints runs were refused for, grouped: fingerprint, runs, refusals, first, last, status."""
    seen: dict[str, dict[str, Any]] = {}
    for e in entries:
        if e.get("type") != "refused":
            continue
        m = UNAPPROVED.search(str(e.get("reason", "")))
        if m is None:
            continue
        info = seen.setdefault(m.group(1), {"runs": [], "count": 0, "first": e.get("time"), "last": e.get("time")})
        if e.get("run") not in info["runs"]:
            info["runs"].append(e.get("run"))
        info["count"] += 1
        info["last"] = e.get("time")
    rows = []
    for sha, info in sorted(seen.items(), key=lambda kv: str(kv[1]["last"]), reverse=True):
        status = w.cell("approved since", "ok") if sha in approved else w.cell("waiting for approval", "warn")
        rows.append(
            [
                sha,
                ", ".join(map(str, info["runs"])),
                info["count"],
                str(info["first"] or "")[:19].replace("T", " "),
                str(info["last"] or "")[:19].replace("T", " "),
                status,
            ]
        )
    return rows


def code_section(cfg: SiteFileConfig, identity: Identity, entries: list[dict[str, Any]]) -> w.Section:
    """Section ``code``: banner ``code-status``, kv ``code-installed``, tables ``code-approved``, ``code-waiting``."""
    path = approvals_path(Path(cfg.work_dir or "work"))
    widgets: list[w.Widget] = []
    try:
        approvals = load_approvals(path)
        problem = None
    except ApprovalError as exc:
        approvals, problem = [], str(exc)
    approved = {str(a.get("sha256")) for a in approvals}
    installed = identity.installed_code
    if problem is not None:
        widgets.append(w.banner("code-status", "error", f"every run is refused: {problem}"))
    elif installed in approved:
        widgets.append(w.banner("code-status", "ok", "the FedRad code installed here is approved for consortium runs"))
    else:
        widgets.append(
            w.banner(
                "code-status",
                "warn",
                "the FedRad code installed here is not approved: a run shipping it is refused before any data is "
                "read (`fedrad-site approve --config site.yaml` approves it)",
            )
        )
    widgets.append(
        w.kv(
            "code-installed",
            [
                ("installed FedRad code sha256", installed),
                ("approved", "yes" if installed in approved else "no"),
                ("approvals file", path),
                (
                    "code the consortium shipped",
                    f"{Path(cfg.work_dir or 'work') / 'apps'} (review it before approving)",
                ),
            ],
        )
    )
    widgets.append(
        w.table(
            "code-approved",
            ("code sha256", "approved (UTC)", "note", "installed here"),
            [
                [
                    a.get("sha256"),
                    str(a.get("approved_at", "")).replace("T", " "),
                    a.get("note", ""),
                    "yes" if a.get("sha256") == installed else "",
                ]
                for a in approvals
            ],
            title="Approved code",
            empty="no code approved: every run is refused",
        )
    )
    waiting = _waiting(entries, approved)
    widgets.append(
        w.table(
            "code-waiting",
            ("code sha256", "runs", "refusals", "first refused (UTC)", "last refused (UTC)", "status"),
            waiting,
            title="Runs refused because their code was not approved",
            empty="no run was refused for its code",
        )
    )
    if any(isinstance(r[-1], dict) and r[-1]["level"] == "warn" for r in waiting):
        widgets.append(
            w.text(
                "code-how",
                "To accept a run's code: review it under the work dir's apps/ folder, then run\n"
                'fedrad-site approve --config site.yaml --code-hash <code sha256> --note "reviewed by …"',
            )
        )
    return w.section("code", "Code approval", widgets, note="Runs ship code; this site runs only code it approved.")


def privacy_section(cfg: SiteFileConfig, identity: Identity, config: Path) -> w.Section:
    """Section ``privacy``: kv ``privacy-settings``, ``privacy-guard``, ``privacy-connection``."""
    p = cfg.privacy
    settings = [
        ("min_count (metrics over fewer cases are withheld)", p.min_count),
        ("require differential privacy", "yes" if p.require_dp else "no"),
        ("max epsilon (per-image DP)", p.max_epsilon if p.max_epsilon is not None else "no cap"),
        ("require secure aggregation", "yes" if p.require_secure_aggregation else "no"),
        ("shares its local model (crossval)", cfg.crossval.share_local_model or "no"),
        ("audit heads pinned to", cfg.audit.pin_file or "no pin file"),
        ("audit heads sent to syslog", "yes" if cfg.audit.pin_syslog else "no"),
    ]
    counted = ", ".join(f"{k} (over {v})" for k, v in ALLOWED_METRICS.items() if v)
    free = ", ".join(k for k, v in ALLOWED_METRICS.items() if not v)
    guard = [
        ("model weights", "train replies only: exactly the arrays the server sent (names, shapes, dtypes)"),
        ("always allowed (counts, timings, DP figures)", free),
        ("allowed, withheld below min_count", counted),
        ("the run's task's aggregate metrics", "e.g. auc, accuracy, dice-<label>: withheld below min_count"),
        ("data statistics (query replies)", f"counts matching {STATS_KEY.pattern}, withheld below min_count"),
        ("everything else", "dropped and recorded as a guard violation"),
    ]
    connection = [
        ("site name", cfg.site_name),
        ("server (fleet proxy)", f"{cfg.server_address} over TLS"),
        ("consortium CA", identity.ca),
        ("site key fingerprint", identity.key_fingerprint),
        ("site.yaml", config),
    ]
    return w.section(
        "privacy",
        "Privacy settings",
        [
            w.kv("privacy-settings", settings, title="site.yaml privacy"),
            w.kv(
                "privacy-guard",
                guard,
                title="What the outbound guard lets out (min_count: the setting above)",
            ),
            w.kv("privacy-connection", connection, title="Connection and identity"),
        ],
    )
