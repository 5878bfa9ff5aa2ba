"""Log files for the processes FedRad starts: capped in size, rotated, and followed across a rotation.

Why not ``logging.handlers.RotatingFileHandler``: a child (SuperNode,
SuperLink, fleet proxy, site worker) writes bytes to its stdout, not Python
log records, and a site runs for months, so the cap must hold while one child
runs, not only at its next start. :class:`RotatingLog` is what the parent
writes a child's output with: :class:`shared.processes.ManagedProcess` reads
the child's stdout through a pipe (it stamps each line with the time anyway)
and writes each line here, which rotates the file when the next line would
take it past ``max_bytes`` (``log`` → ``log.1`` → … → ``log.N``, the names
and order of ``RotatingFileHandler``; the oldest is deleted). A child given
the file itself (``timestamps=False``) cannot be rotated under it: its log is
rotated when it is (re)started, the only moment the parent writes to it.

A reader that keeps an offset (``fedrad-site start`` echoing the SuperNode's
lines) uses :class:`LogFollower`, which keeps the file open like ``tail -F``:
after a rotation it reads the old file to its end, then the new one from its
start, so no line is lost or read twice.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

LOG_MAX_BYTES = 10 * 1024 * 1024  # per file: a SuperNode logs ~1 KiB a round; this is months of rounds
LOG_BACKUPS = 3  # older files kept: at most 40 MiB per process
LOG_MODE = 0o640  # readable by the service's group (log shippers), not by other local users


def rotated_name(path: Path, index: int) -> Path:
    """``site.log`` → ``site.log.1`` (the newest old file) … ``site.log.N``."""
    return path.with_name(f"{path.name}.{index}")


def rotate(path: Path, backups: int) -> None:
    """Shift ``path`` to ``path.1`` (``.1`` to ``.2`` …), deleting what falls past ``backups``."""
    path = Path(path)
    if backups <= 0:
        path.unlink(missing_ok=True)
        return
    rotated_name(path, backups).unlink(missing_ok=True)
    for i in range(backups - 1, 0, -1):
        src = rotated_name(path, i)
        if src.exists():
            os.replace(src, rotated_name(path, i + 1))
    if path.exists():
        os.replace(path, rotated_name(path, 1))


class RotatingLog:
    """An append-only byte log capped at ``max_bytes`` per file, keeping ``backups`` older files.

    Thread-safe (a pump thread writes while the owner may close). Writes after
    :meth:`close` are dropped: a descendant that still holds the pipe must not
    reopen a log whose process was stopped. ``max_bytes=0`` disables the cap.
    """

    def __init__(self, path: Path, *, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS) -> None:
        self.path = Path(path)
        self.max_bytes, self.backups = max_bytes, backups
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fd: int | None = self._open()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_MODE)

    def fileno(self) -> int:
        """The open file's descriptor (for a child that writes the file itself)."""
        if self._fd is None:
            raise ValueError(f"log {self.path} is closed")
        return self._fd

    @property
    def closed(self) -> bool:
        return self._fd is None

    def size(self) -> int:
        """Bytes in the current file (where a reader of what comes next starts)."""
        with self._lock:
            return os.fstat(self._fd).st_size if self._fd is not None else 0

    def write(self, data: bytes) -> None:
        """Append ``data``, rotating first when it would take a non-empty file past the cap."""
        with self._lock:
            if self._fd is None:
                return
            if self.max_bytes > 0:
                size = os.fstat(self._fd).st_size  # the file's size, whoever else appends to it
                if size > 0 and size + len(data) > self.max_bytes:
                    os.close(self._fd)
                    self._fd = None
                    rotate(self.path, self.backups)
                    self._fd = self._open()
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = None


class LogFollower:
    """The complete lines appended to a log since the follower was made, across rotations (like ``tail -F``).

    The file is kept open: a rotation renames it, so the open handle still
    reads the old file to its end, after which the follower switches to the
    new file at ``path`` from its first byte. A file that does not exist yet is
    read from its start once it appears.
    """

    def __init__(self, path: Path, offset: int | None = None) -> None:
        """Follow ``path`` from ``offset`` (default: its current end)."""
        self.path = Path(path)
        self._fh = None
        self._partial = b""
        with contextlib.suppress(OSError):
            self._fh = self.path.open("rb")
            self._fh.seek(offset or 0, os.SEEK_SET if offset is not None else os.SEEK_END)

    def _replaced(self) -> bool:
        """True when ``path`` is now another file than the one held open (rotated, or deleted and recreated)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False  # mid-rotation, or gone: keep reading what we hold
        held = os.fstat(self._fh.fileno())  # type: ignore[union-attr]
        return (st.st_ino, st.st_dev) != (held.st_ino, held.st_dev)

    def read_lines(self) -> list[str]:
        """New complete lines (a line still being written waits for its newline)."""
        chunks: list[bytes] = []
        for _ in range(8):  # a rotation per pass; more than a few between two polls is not plausible
            if self._fh is None:
                try:
                    self._fh = self.path.open("rb")
                except OSError:
                    break
            chunks.append(self._fh.read())
            if not self._replaced():
                break
            chunks.append(self._fh.read())  # written to the old file between our read and its rotation
            self._fh.close()
            self._fh = None
        data = self._partial + b"".join(chunks)
        end = data.rfind(b"\n") + 1
        self._partial = data[end:]
        return data[:end].decode(errors="replace").splitlines()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
