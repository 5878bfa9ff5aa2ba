"""The CT/MR cache: one ``.npy`` array per preprocessed series (and per label map), indexed in sqlite.

Layout under the site's cache folder (beside the radiograph packs of :mod:`shared.imaging.cache`):

- ``volumes.sqlite``: ``headers``: file content sha256 → the slice header fields the series planner
  needs (JSON), so a rescan of an unchanged export reads no DICOM; ``stat_memo``: path → (size,
  mtime_ns, sha256), so an unchanged file is not even hashed again; ``arrays``: (key, kind) → file,
  shape, dtype and metadata (geometry, spacing) of each stored array.
- ``volumes/<key>.<kind>.npy``: one array per series (``kind`` ``image``: uint16, the model input
  quantized as in :mod:`shared.imaging.pack`; ``labels``: uint8 label map on the same grid).

An array is written to a temporary file, synced and renamed before its index row is committed, so a
crash leaves either the whole array or nothing. Training reads patches with ``os.pread``
(:class:`StoredArray`), never ``np.load(mmap_mode=...)``: pages touched through a memory map count in
the reader's resident set, so an epoch over many volumes would grow RSS to all of them; ``pread``
copies what a patch needs and leaves the rest to the kernel's page cache. The files stay plain
``.npy`` (``np.load`` reads them anywhere).

A cache that cannot be written (read-only, disk full) keeps arrays in memory with one warning; the
next run assembles again. The cache never changes results, only speed.
"""

from __future__ import annotations

import json
import os
import sqlite3
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shared.atomic import replacing_file

INDEX_FILE = "volumes.sqlite"
SCHEMA = 1  # PRAGMA user_version; another value is rebuilt

_TABLES = """
CREATE TABLE IF NOT EXISTS headers (sha TEXT PRIMARY KEY, entry TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stat_memo (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS arrays (
    key TEXT NOT NULL, kind TEXT NOT NULL, file TEXT NOT NULL, shape TEXT NOT NULL, dtype TEXT NOT NULL,
    meta TEXT NOT NULL, PRIMARY KEY (key, kind));
"""


@dataclass
class StoredArray:
    """A 3D array in a ``.npy`` file (or in memory), read by slices without mapping the file.

    ``array[z0:z1, y0:y1, x0:x1]`` reads one contiguous run per z plane (rows ``y0:y1`` whole, then
    cropped), so a patch costs its own size plus the row width, whatever the volume's size."""

    shape: tuple[int, int, int]
    dtype: np.dtype
    meta: dict = field(default_factory=dict)
    path: Path | None = None
    offset: int = 0
    memory: np.ndarray | None = None  # an unwritable cache's only copy

    @property
    def ndim(self) -> int:
        return 3

    def __len__(self) -> int:
        return self.shape[0]

    def read(self) -> np.ndarray:
        """The whole array (evaluation of one volume at a time)."""
        return self[:, :, :]

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        out = self.read()
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, index: slice | tuple[slice, ...]) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        if len(index) > 3 or not all(isinstance(s, slice) for s in index):
            raise TypeError("a stored volume is read by up to three slices, e.g. v[z0:z1, y0:y1, x0:x1]")
        index = index + (slice(None),) * (3 - len(index))
        if self.memory is not None:
            return np.array(self.memory[index])
        (z0, z1, zs), (y0, y1, ys), (x0, x1, xs) = (s.indices(n) for s, n in zip(index, self.shape))
        if zs != 1 or ys != 1 or xs != 1:
            raise ValueError("a stored volume is read with step 1")
        depth, height, width = max(z1 - z0, 0), max(y1 - y0, 0), self.shape[2]
        out = np.empty((depth, height, max(x1 - x0, 0)), dtype=self.dtype)
        if out.size == 0:
            return out
        plane = self.shape[1] * width * self.dtype.itemsize
        run = np.empty((height, width), dtype=self.dtype)
        assert self.path is not None
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for i, z in enumerate(range(z0, z1)):
                start = self.offset + z * plane + y0 * width * self.dtype.itemsize
                got = os.preadv(fd, [memoryview(run).cast("B")], start)
                if got != run.nbytes:
                    raise OSError(f"{self.path} is shorter than its index says (plane {z})")
                out[i] = run[:, x0:x1]
        finally:
            os.close(fd)
        return out


class VolumeStore:
    """The CT/MR cache of one site (module docstring); ``root=None`` keeps everything in memory."""

    def __init__(self, root: Path | None) -> None:
        self.root = Path(root) if root is not None else None
        self.db: sqlite3.Connection | None = None
        self.warning: str | None = None
        self._memory: dict[tuple[str, str], StoredArray] = {}
        self._headers: dict[str, dict] = {}
        self._stat: dict[str, tuple[int, int, str]] = {}
        if self.root is not None:
            try:
                (self.root / "volumes").mkdir(parents=True, exist_ok=True)
                self.db = self._connect()
            except (OSError, sqlite3.Error) as exc:
                self._degrade(exc)

    def _connect(self) -> sqlite3.Connection:
        assert self.root is not None
        db = sqlite3.connect(self.root / INDEX_FILE, timeout=30, isolation_level=None)
        if db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA:
            db.executescript(
                "DROP TABLE IF EXISTS headers; DROP TABLE IF EXISTS stat_memo; DROP TABLE IF EXISTS arrays;"
            )
            db.execute(f"PRAGMA user_version = {SCHEMA}")
        db.executescript(_TABLES)
        return db

    def _degrade(self, exc: BaseException) -> None:
        self.db = None
        self.warning = (
            f"the volume cache in {self.root} cannot be written ({exc}); continuing in memory: the next run "
            "assembles the series again. Free space or fix permissions."
        )
        warnings.warn(self.warning, RuntimeWarning, stacklevel=3)

    # -- per-file header records ----------------------------------------------------------------
    def memo_sha(self, path: Path, stat: os.stat_result) -> str | None:
        """The content hash recorded for ``path`` when its size and mtime are unchanged."""
        entry = self._stat.get(str(path))
        if entry is None and self.db is not None:
            entry = self.db.execute("SELECT size, mtime_ns, sha FROM stat_memo WHERE path = ?", (str(path),)).fetchone()
        if entry and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
            return entry[2]
        return None

    def header(self, sha: str) -> dict | None:
        """The header record stored for content ``sha``."""
        if sha in self._headers:
            return self._headers[sha]
        row = self.db.execute("SELECT entry FROM headers WHERE sha = ?", (sha,)).fetchone() if self.db else None
        return json.loads(row[0]) if row else None

    def remember(self, path: Path, stat: os.stat_result, sha: str, entry: dict) -> None:
        """Record a file's content hash (by stat) and its header record (by content); :meth:`commit` persists."""
        self._stat[str(path)] = (stat.st_size, stat.st_mtime_ns, sha)
        self._headers[sha] = entry

    def commit(self) -> None:
        """Persist the header records gathered since the last commit."""
        if self.db is None or not (self._stat or self._headers):
            return
        try:
            with self.db:
                self.db.execute("BEGIN")
                self.db.executemany(
                    "INSERT OR REPLACE INTO stat_memo VALUES (?, ?, ?, ?)",
                    [(p, s, m, h) for p, (s, m, h) in self._stat.items()],
                )
                self.db.executemany(
                    "INSERT OR REPLACE INTO headers VALUES (?, ?)",
                    [(h, json.dumps(e)) for h, e in self._headers.items()],
                )
            self._stat.clear()
            self._headers.clear()
        except sqlite3.Error as exc:
            self._degrade(exc)

    # -- arrays ---------------------------------------------------------------------------------
    def get(self, key: str, kind: str) -> StoredArray | None:
        """The stored array ``(key, kind)``, or None (never stored, or its file gone or the wrong size)."""
        if (key, kind) in self._memory:
            return self._memory[(key, kind)]
        if self.db is None or self.root is None:
            return None
        row = self.db.execute(
            "SELECT file, shape, dtype, meta FROM arrays WHERE key = ? AND kind = ?", (key, kind)
        ).fetchone()
        if row is None:
            return None
        path = self.root / "volumes" / row[0]
        shape, dtype = tuple(json.loads(row[1])), np.dtype(row[2])
        try:
            header = np.load(path, mmap_mode="r")  # reads the header only: no page of the data is touched
            file_shape, file_dtype, offset = header.shape, header.dtype, header.offset
            del header
            ok = tuple(file_shape) == shape and np.dtype(file_dtype) == dtype
            ok = ok and path.stat().st_size == offset + int(np.prod(shape)) * dtype.itemsize
        except (OSError, ValueError):
            ok = False
        if not ok:
            return None
        return StoredArray(shape, dtype, json.loads(row[3]), path, offset)  # type: ignore[arg-type]

    def put(self, key: str, kind: str, array: np.ndarray, meta: dict) -> StoredArray:
        """Store ``array`` (3D) as ``(key, kind)``: file first (atomic), then its index row."""
        array = np.ascontiguousarray(array)
        if array.ndim != 3:
            raise ValueError(f"a stored volume is 3D, got shape {array.shape}")
        if self.db is None or self.root is None:
            stored = StoredArray(array.shape, array.dtype, dict(meta), memory=array)  # type: ignore[arg-type]
            self._memory[(key, kind)] = stored
            return stored
        name = f"{key}.{kind}.npy"
        path = self.root / "volumes" / name
        try:
            with replacing_file(path) as fh:
                np.save(fh, array, allow_pickle=False)
            with self.db:
                self.db.execute(
                    "INSERT OR REPLACE INTO arrays VALUES (?, ?, ?, ?, ?, ?)",
                    (key, kind, name, json.dumps(list(array.shape)), array.dtype.str, json.dumps(meta)),
                )
        except (OSError, sqlite3.Error) as exc:
            self._degrade(exc)
            return self.put(key, kind, array, meta)
        stored = self.get(key, kind)
        assert stored is not None
        return stored
