"""On-disk cache of ingest results keyed by file content, so DICOM is decoded once per site.

Layout under the cache folder (which lives at the site, never leaves it):

- ``index.sqlite``: four tables. ``records``: content sha256 → header fields or
  rejection reason (independent of preprocessing). ``stat_memo``: absolute
  path → (size, mtime_ns, sha256), so an unchanged file is not even re-read
  to hash it. ``shards``: each shard file, its preprocessing tag, row shape,
  capacity, rows in use and the writer holding it. ``rows``: (tag, sha256) →
  (shard, row, CRC-32).
- ``packs/<preprocess tag>/<token>.npy``: the shards, uint16 rows
  (:mod:`shared.imaging.pack`), read a row at a time: nothing here holds a
  site's images in memory.

Why sqlite rather than JSON indexes: the scan commits every
:data:`COMMIT_ROWS` images (shard data synced first, then records, stat memo
and rows in one transaction), so a crash keeps every finished image and never
leaves an index entry pointing at unwritten bytes; nothing is rewritten whole
(a 100k-image JSON index would be, at every scan); a lookup is one query
instead of the whole index in memory; and two processes (``fedrad-site check``
beside a running site) can share the folder: each writes its own shards.

Writes degrade: a cache that cannot be written (disk full, read-only) keeps
the rest of the scan in memory with one warning. A corrupt index, a shard
whose file is missing or of the wrong size, and a row whose CRC does not
match are misses, rebuilt from the DICOM file. The cache never changes
results, only speed: the model input is the quantized image on every path.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shared.config import PreprocessConfig
from shared.imaging.pack import (
    READER,
    ShardError,
    checksum,
    create_shard,
    data_offset,
    from_pack,
    open_for_append,
    shard_capacity,
    to_pack,
    write_row,
)

CACHE_SCHEMA = 3  # PRAGMA user_version of index.sqlite; another value is rebuilt
COMMIT_ROWS = 64  # images written between commits: what a crash can cost, and the rows held in memory meanwhile
INDEX_FILE = "index.sqlite"
LEGACY = ("tensors", "records.json", "stat-memo.json")  # the cache layout before sharded packs

_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (sha TEXT PRIMARY KEY, entry TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stat_memo (
    path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, sha TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS shards (
    id INTEGER PRIMARY KEY, tag TEXT NOT NULL, file TEXT NOT NULL UNIQUE, shape TEXT NOT NULL,
    capacity INTEGER NOT NULL, used INTEGER NOT NULL, owner TEXT);
CREATE TABLE IF NOT EXISTS rows (
    tag TEXT NOT NULL, sha TEXT NOT NULL, shard INTEGER NOT NULL, row INTEGER NOT NULL, crc INTEGER NOT NULL,
    PRIMARY KEY (tag, sha));
CREATE INDEX IF NOT EXISTS rows_by_shard ON rows (shard);
"""


@dataclass(frozen=True)
class RowRef:
    """Where one cached image is: a shard row (``path``, ``row``, ``crc``), or ``array`` (uint16) in memory."""

    shape: tuple[int, ...]
    path: str | None = None
    row: int = 0
    crc: int = 0
    array: np.ndarray | None = None


@dataclass
class _OpenShard:
    id: int
    path: Path
    fd: int
    offset: int
    capacity: int
    next_row: int
    synced: bool = True


def _owner_alive(owner: str | None) -> bool:
    """Whether the writer that claimed a shard may still be writing it (another host: assume so)."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def drop_row(index_path: str | Path, tag: str, sha: str) -> None:
    """Forget one cached image (a damaged row), best effort: the next scan decodes it again."""
    try:
        db = sqlite3.connect(index_path, timeout=10)
        try:
            with db:
                db.execute("DELETE FROM rows WHERE tag = ? AND sha = ?", (tag, sha))
        finally:
            db.close()
    except sqlite3.Error:
        pass


class IngestCache:
    """Content-addressed ingest records plus the sharded, preprocessed images of one preprocessing setting."""

    def __init__(self, root: Path | None, params: PreprocessConfig) -> None:
        self.root = Path(root) if root is not None else None
        self.params = params
        self.tag = params.cache_tag()
        self.index_path = self.root / INDEX_FILE if self.root is not None else None
        self.db: sqlite3.Connection | None = None
        self.writable = self.root is not None
        self.warning: str | None = None
        self.hits = 0
        self.decoded = 0
        # Not yet committed, or (cache not writable) the only copy.
        self._records: dict[str, dict] = {}
        self._stat: dict[str, tuple[int, int, str]] = {}
        self._arrays: dict[str, np.ndarray] = {}  # uint16 rows
        self._pending: dict[str, tuple[int, int, int]] = {}  # sha → (shard id, row, crc), written, not committed
        self._shards: dict[tuple[int, ...], _OpenShard] = {}  # the shard this cache writes, per row shape
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        if self.root is not None:
            self._open_index()

    # -- the index ----------------------------------------------------------------------------
    def _open_index(self) -> None:
        assert self.root is not None and self.index_path is not None
        created = False
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            created = not self.index_path.exists()
            try:
                self.db = self._connect(created)
            except sqlite3.OperationalError:
                raise  # locked or not permitted: not damage; work from memory, delete nothing
            except sqlite3.DatabaseError:  # not a database, damaged, or another schema: start again
                self._reset()
                created = True
                self.db = self._connect(True)
            self._check_shards()
        except (OSError, sqlite3.Error) as exc:
            self._degrade(exc)
            if created:  # nothing half-written is left to be trusted later
                if self.db is not None:
                    self.db.close()
                self.db = None
                for name in (INDEX_FILE, INDEX_FILE + "-journal"):
                    (self.root / name).unlink(missing_ok=True)

    def _connect(self, fresh: bool) -> sqlite3.Connection:
        assert self.index_path is not None
        db = sqlite3.connect(self.index_path, timeout=60, isolation_level=None)  # transactions are explicit
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, CACHE_SCHEMA):
                raise sqlite3.DatabaseError(f"cache index schema {version}, expected {CACHE_SCHEMA}")
            if version == 0:  # new (or created by a process that stopped before this): idempotent, serialised
                db.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}PRAGMA user_version = {CACHE_SCHEMA};COMMIT;")
                if fresh:
                    self._remove_legacy()
            elif db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("cache index failed its integrity check")
        except BaseException:
            db.close()
            raise
        return db

    def _reset(self) -> None:
        """Drop a damaged index and every shard it described (without the index they cannot be trusted)."""
        assert self.root is not None
        for name in (INDEX_FILE, INDEX_FILE + "-journal"):
            (self.root / name).unlink(missing_ok=True)
        shutil.rmtree(self.root / "packs", ignore_errors=True)

    def _remove_legacy(self) -> None:
        assert self.root is not None
        for name in LEGACY:
            path = self.root / name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def _check_shards(self) -> None:
        """Shards of this tag whose file is missing or not the recorded shape are dropped with their rows."""
        assert self.db is not None and self.root is not None
        bad = []
        for sid, file, shape, capacity, owner in self.db.execute(
            "SELECT id, file, shape, capacity, owner FROM shards WHERE tag = ?", (self.tag,)
        ).fetchall():
            if _owner_alive(owner):
                continue  # another process is writing it; its committed rows are its promise
            try:
                data_offset(self.root / file, tuple(json.loads(shape)), capacity)
            except (ShardError, ValueError):
                bad.append((sid, file))
        if not bad:
            return
        with self._transaction():
            self.db.executemany("DELETE FROM rows WHERE shard = ?", [(sid,) for sid, _ in bad])
            self.db.executemany("DELETE FROM shards WHERE id = ?", [(sid,) for sid, _ in bad])
        for _, file in bad:
            (self.root / file).unlink(missing_ok=True)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        assert self.db is not None
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            try:
                self.db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            raise
        self.db.execute("COMMIT")

    def _query(self, sql: str, args: tuple) -> tuple | None:
        if self.db is None:
            return None
        try:
            return self.db.execute(sql, args).fetchone()
        except sqlite3.Error:
            return None  # an unreadable index is a miss

    def _degrade(self, exc: BaseException) -> None:
        """Stop writing; what was not committed stays in memory. Warn once."""
        self.writable = False
        self._pending.clear()  # their rows are still in self._arrays
        for shard in self._shards.values():
            try:
                os.close(shard.fd)
            except OSError:
                pass
        self._shards.clear()
        if self.warning is None:
            reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
            self.warning = (
                f"cache folder {self.root} is not writable ({reason}); "
                "continuing in memory: the next run will decode again. Free space or fix permissions."
            )
            warnings.warn(self.warning, RuntimeWarning, stacklevel=4)

    # -- content hashes and verdicts ----------------------------------------------------------
    def memo_sha(self, path: Path, stat: os.stat_result) -> str | None:
        entry = self._stat.get(str(path)) or self._query(
            "SELECT size, mtime_ns, sha FROM stat_memo WHERE path = ?", (str(path),)
        )
        if entry and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
            return entry[2]
        return None

    def record(self, sha: str) -> dict | None:
        """The verdict cached for content ``sha`` (header fields or rejection), or None."""
        if sha in self._records:
            return self._records[sha]
        row = self._query("SELECT entry FROM records WHERE sha = ?", (sha,))
        try:
            return json.loads(row[0]) if row else None
        except ValueError:
            return None

    def remember(self, path: Path, stat: os.stat_result, sha: str, entry: dict) -> None:
        """Record a freshly ingested file: its content hash (by stat) and its verdict (by content)."""
        self._stat[str(path)] = (stat.st_size, stat.st_mtime_ns, sha)
        self._records[sha] = entry
        if len(self._stat) >= 16 * COMMIT_ROWS:  # a run of rejected files commits too
            self._commit()

    # -- images -------------------------------------------------------------------------------
    def has_tensor(self, sha: str) -> bool:
        if sha in self._arrays:
            return True
        return self._query("SELECT 1 FROM rows WHERE tag = ? AND sha = ?", (self.tag, sha)) is not None

    def put_tensor(self, sha: str, image: np.ndarray) -> None:
        """Cache one preprocessed image (float in [0, 1], or its uint16 row); written to a shard at once."""
        if self.has_tensor(sha):
            return
        row = to_pack(image)
        self._arrays[sha] = row
        if not self.writable or self.db is None:
            return
        try:
            self._write(sha, row)
        except (OSError, sqlite3.Error) as exc:
            self._degrade(exc)

    def get_tensor(self, sha: str) -> np.ndarray | None:
        """The cached image as float32, or None when missing or damaged (a damaged row is forgotten)."""
        ref = self.locate(sha)
        if ref is None:
            return None
        if ref.array is not None:
            return from_pack(ref.array)
        row = np.empty(ref.shape, dtype=np.uint16)
        try:
            READER.read(ref.path, ref.row, row)
        except ShardError:
            self.forget(sha)
            return None
        if checksum(row) != ref.crc:
            self.forget(sha)
            return None
        return from_pack(row)

    def locate(self, sha: str) -> RowRef | None:
        """Where the image of ``sha`` is (committed rows and memory only: call :meth:`flush` first)."""
        if sha in self._arrays:
            arr = self._arrays[sha]
            return RowRef(tuple(arr.shape), array=arr)
        hit = self._query(
            "SELECT s.file, s.shape, r.row, r.crc FROM rows r JOIN shards s ON s.id = r.shard "
            "WHERE r.tag = ? AND r.sha = ?",
            (self.tag, sha),
        )
        if hit is None or self.root is None:
            return None
        return RowRef(tuple(json.loads(hit[1])), str(self.root / hit[0]), int(hit[2]), int(hit[3]))

    def forget(self, sha: str) -> None:
        if self.index_path is not None and self.db is not None:
            drop_row(self.index_path, self.tag, sha)

    def shards(self) -> list[dict]:
        """This tag's shards as the index records them (for checks and tests)."""
        if self.db is None or self.root is None:
            return []
        rows = self.db.execute(
            "SELECT file, shape, capacity, used FROM shards WHERE tag = ? ORDER BY id", (self.tag,)
        ).fetchall()
        return [{"path": self.root / f, "shape": json.loads(s), "capacity": c, "used": u} for f, s, c, u in rows]

    # -- writing ------------------------------------------------------------------------------
    def _write(self, sha: str, row: np.ndarray) -> None:
        shard = self._shard_for(tuple(row.shape))
        write_row(shard.fd, shard.offset, shard.next_row, row)
        self._pending[sha] = (shard.id, shard.next_row, checksum(row))
        shard.next_row += 1
        shard.synced = False
        if shard.next_row >= shard.capacity:
            self._commit()
            self._release(tuple(row.shape))
        elif len(self._pending) >= COMMIT_ROWS:
            self._commit()

    def _shard_for(self, shape: tuple[int, ...]) -> _OpenShard:
        """The shard this cache writes rows of ``shape`` to: one it holds, a partly filled one whose writer is
        gone, or a new one."""
        if shape in self._shards:
            return self._shards[shape]
        assert self.db is not None and self.root is not None
        capacity, key = shard_capacity(shape), json.dumps(list(shape))
        while True:
            with self._transaction():
                claimed = None
                for sid, file, used, owner in self.db.execute(
                    "SELECT id, file, used, owner FROM shards WHERE tag = ? AND shape = ? AND capacity = ? "
                    "AND used < capacity ORDER BY id",
                    (self.tag, key, capacity),
                ).fetchall():
                    if not _owner_alive(owner):
                        self.db.execute("UPDATE shards SET owner = ? WHERE id = ?", (self._owner, sid))
                        claimed = (sid, file, used)
                        break
                chosen = claimed
                if chosen is None:
                    file = f"packs/{self.tag}/{uuid.uuid4().hex}.npy"
                    cur = self.db.execute(
                        "INSERT INTO shards (tag, file, shape, capacity, used, owner) VALUES (?, ?, ?, ?, 0, ?)",
                        (self.tag, file, key, capacity, self._owner),
                    )
                    chosen = (int(cur.lastrowid), file, 0)
            sid, file, used = chosen
            path = self.root / file
            if claimed is None:
                fd = create_shard(path, shape, capacity)
            else:
                try:
                    data_offset(path, shape, capacity)
                    fd = open_for_append(path)
                except (ShardError, OSError):  # damaged since the scan began: drop it, take another
                    with self._transaction():
                        self.db.execute("DELETE FROM rows WHERE shard = ?", (sid,))
                        self.db.execute("DELETE FROM shards WHERE id = ?", (sid,))
                    path.unlink(missing_ok=True)
                    continue
            shard = _OpenShard(sid, path, fd, data_offset(path, shape, capacity), capacity, used)
            self._shards[shape] = shard
            return shard

    def _commit(self) -> None:
        """Sync the shards' new rows, then record them with the pending verdicts in one transaction."""
        if not self.writable or self.db is None or not (self._records or self._stat or self._pending):
            return
        try:
            for shard in self._shards.values():
                if not shard.synced:
                    os.fdatasync(shard.fd)  # the data is on disk before the index says it is there
                    shard.synced = True
            with self._transaction():
                self.db.executemany(
                    "INSERT OR REPLACE INTO records (sha, entry) VALUES (?, ?)",
                    [(sha, json.dumps(e)) for sha, e in self._records.items()],
                )
                self.db.executemany(
                    "INSERT OR REPLACE INTO stat_memo (path, size, mtime_ns, sha) VALUES (?, ?, ?, ?)",
                    [(p, *v) for p, v in self._stat.items()],
                )
                self.db.executemany(
                    "INSERT OR REPLACE INTO rows (tag, sha, shard, row, crc) VALUES (?, ?, ?, ?, ?)",
                    [(self.tag, sha, *v) for sha, v in self._pending.items()],
                )
                self.db.executemany(
                    "UPDATE shards SET used = ? WHERE id = ?", [(s.next_row, s.id) for s in self._shards.values()]
                )
        except (OSError, sqlite3.Error) as exc:
            self._degrade(exc)
            return
        for sha in self._pending:
            self._arrays.pop(sha, None)
        self._records.clear()
        self._stat.clear()
        self._pending.clear()

    def _release(self, shape: tuple[int, ...]) -> None:
        shard = self._shards.pop(shape)
        try:
            os.close(shard.fd)
        except OSError:
            pass
        if self.db is not None:
            try:
                with self._transaction():
                    self.db.execute(
                        "UPDATE shards SET owner = NULL WHERE id = ? AND owner = ?", (shard.id, self._owner)
                    )
            except sqlite3.Error:
                pass  # a shard left claimed by a process that is gone is reclaimed by the next writer

    def flush(self, keep: list[str] | None = None) -> None:
        """Commit what was written and hand the open shards back (``keep`` is no longer needed: rows are
        content-addressed and shared by every folder with the same preprocessing)."""
        self._commit()
        for shape in list(self._shards):
            self._release(shape)
