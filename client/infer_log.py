"""The local record of every ``fedrad-site infer`` run: ``WORK_DIR/infer/infer-<UTC time>.jsonl``, one per run.

One JSON object a line, written as it happens (a run that crashes keeps what it did): ``run`` (the model, what
was asked, where results go), ``read`` (per source image: study, series, SOP instance, file), ``skipped`` (a
file of the study the scan rejected, with its reason), ``missing`` (a study not in the export), ``written`` (per
result object: SOP instance and class, its source images), ``delivered`` (per object: destination, stored or
not, status) and ``end`` (counts, exit code). It holds patients' identifiers and stays at the site (owner-only
file); nothing here goes to the consortium or the outbound audit log.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.private_files import PRIVATE_FILE_MODE, private_dir

LOG_FOLDER = "infer"


def new_log_path(work_dir: Path) -> Path:
    """``WORK_DIR/infer/infer-<UTC time>.jsonl``, not yet existing (a suffix when two runs share a second)."""
    folder = private_dir(Path(work_dir) / LOG_FOLDER)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path, n = folder / f"infer-{stamp}.jsonl", 1
    while path.exists():
        n += 1
        path = folder / f"infer-{stamp}-{n}.jsonl"
    return path


class InferLog:
    """Appends one JSON line per event to its file, each flushed as written."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # created owner-only from its first byte and appended line by line (a crash keeps what was done)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, PRIVATE_FILE_MODE)
        self._fh = os.fdopen(fd, "a", encoding="utf-8")

    def event(self, event: str, **fields: Any) -> None:
        line = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), "event": event, **fields}
        self._fh.write(json.dumps(line, default=str) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> InferLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_log(path: Path) -> list[dict]:
    """The events of one log file, in order."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
