"""Crash-safe file writes: a reader (or the next start after a power cut) sees the old file or the new one, whole.

Why one helper: keys, certificates and registries must never be left half-written or briefly
world-readable. The data goes to a temporary file in the same folder (so the rename stays on one
file system), created with its final mode, fsynced, renamed over the target, and the folder is
fsynced so the rename itself survives a crash.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def is_temp_file(name: str) -> bool:
    """Whether a file name is one of :func:`replacing_file`'s temporary files (a file still being written)."""
    return name.startswith(".") and name.endswith(".tmp")


def remove_stale_temps(path: Path) -> None:
    """Delete temporary files a crash left beside ``path`` (they never became ``path``)."""
    path = Path(path)
    for tmp in path.parent.glob(_temp_prefix(path) + "*.tmp"):
        tmp.unlink(missing_ok=True)


@contextmanager
def replacing_file(path: Path, mode: str = "wb", *, file_mode: int = 0o644, **open_kwargs: Any) -> Iterator[IO[Any]]:
    """Write a new file that replaces ``path`` (durably) when the block ends without an error.

    The file has ``file_mode`` from its creation (the temporary file is created 0600, then set), so a private
    file is never briefly readable by others, an older copy's mode is not inherited, and a symbolic link
    planted at ``path`` is replaced, never written through. On any error the target is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path), suffix=".tmp")  # created 0600
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as fh:
            os.fchmod(fh.fileno(), file_mode)
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic(path: Path, data: bytes | str, *, mode: int = 0o644) -> Path:
    """Replace ``path`` with ``data`` atomically; the file has ``mode`` from its creation (0600 for keys)."""
    with replacing_file(path, "wb", file_mode=mode) as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
    return Path(path)
