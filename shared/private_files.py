"""Files that hold per-case results (evaluation reports): owner-only from their first byte.

Why a helper: ``open(path, "w")`` creates a file with the process umask (usually
0644, readable by every local account), and a later ``chmod`` leaves a window in
which it is. :func:`shared.atomic.replacing_file` writes a temporary file created
0600 and renames it over ``path``: a file never readable by anyone else, that
replaces an older world-readable copy instead of inheriting its mode, never writes
through a symbolic link planted at ``path``, and never leaves a half-written report.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path
from typing import IO, Any

from shared.atomic import replacing_file

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700


def private_dir(path: Path) -> Path:
    """Create ``path`` (and its parents) if missing; a folder FedRad creates is owner-only (0700).

    An existing folder keeps its mode: it is the user's (``--out .``), and its files are 0600 anyway.
    """
    path = Path(path)
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    return path


def private_file(path: Path, mode: str = "w", **open_kwargs: Any) -> AbstractContextManager[IO[Any]]:
    """Open a new owner-only (0600) file that replaces ``path`` when the block ends without an error."""
    return replacing_file(path, mode, file_mode=PRIVATE_FILE_MODE, **open_kwargs)


def write_private_text(path: Path, text: str) -> Path:
    """``path.write_text(text)``, but the file is 0600 from creation (:func:`private_file`)."""
    with private_file(path, "w", encoding="utf-8") as fh:
        fh.write(text)
    return Path(path)
