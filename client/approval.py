"""Which FedRad code this site agreed to run: a list of approved code fingerprints in the site's work dir.

Flower runs whatever code the consortium's run ships (the FAB). Open-source
Flower 1.42 cannot verify FAB signatures (``--trusted-entities`` needs a
SuperLink with Flower's commercial licence; docs/flower-notes.md), so the
site decides itself: the ClientApp computes
:func:`shared.code_identity.code_sha256` of the code it was shipped and
refuses the run, before reading any data, unless that fingerprint is in
``WORK_DIR/approved-code.json``. ``fedrad-site approve`` adds fingerprints:
by default the site's own installed FedRad (what a consortium on the same
version ships), or one the site reviewed (``--code-hash``, after reading the
unpacked code under ``WORK_DIR/apps/``).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

APPROVALS_FILE = "approved-code.json"


class ApprovalError(ValueError):
    """The approvals file is unreadable or a fingerprint is malformed; the message names the file."""


def approvals_path(work_dir: Path) -> Path:
    return Path(work_dir) / APPROVALS_FILE


def load_approvals(path: Path) -> list[dict[str, Any]]:
    """The approved entries (``sha256``, ``approved_at``, ``note``); none if the file does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
        entries = list(data["approved"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ApprovalError(
            f"{path}: not a FedRad approvals file ({exc}); fix or delete it and approve again"
        ) from None
    return entries


def is_approved(path: Path, sha256: str) -> bool:
    return any(e.get("sha256") == sha256 for e in load_approvals(path))


def approve(path: Path, sha256: str, note: str = "") -> bool:
    """Add ``sha256``; return False when it was already approved."""
    sha256 = sha256.strip().lower()
    if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
        raise ApprovalError(f"{sha256!r} is not a sha256 fingerprint (64 hex digits)")
    entries = load_approvals(path)
    if any(e.get("sha256") == sha256 for e in entries):
        return False
    entries.append({"sha256": sha256, "approved_at": datetime.now(UTC).isoformat(timespec="seconds"), "note": note})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"approved": entries}, indent=2))
    os.replace(tmp, path)
    return True


def approve_installed(work_dir: Path, note: str = "installed FedRad") -> str:
    """Approve this installation's own code fingerprint at the site whose work dir is ``work_dir``; return it."""
    from shared.code_identity import code_sha256, installed_root

    sha = code_sha256(installed_root())
    approve(approvals_path(work_dir), sha, note)
    return sha
