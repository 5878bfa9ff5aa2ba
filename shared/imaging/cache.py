"""On-disk cache of ingest results keyed by file content, so DICOM is decoded once per site.

Layout under the cache folder (which lives at the site, never leaves it):

- ``records.json``: content sha256 → header fields or rejection reason
  (independent of preprocessing parameters).
- ``stat-memo.json``: absolute path → (size, mtime_ns, sha256), so an
  unchanged file is not even re-read to hash it on the next scan.
- ``tensors/<preprocess tag>/<folder id>.npy`` + ``.json``: one stacked array of
  the preprocessed images of a data folder, and the content hash of each row plus
  the shape of one row (its rank is the modality's: (S, S) for a radiograph).
  One file instead of one per image makes a fresh process's load a single
  read, and a scan's write a single atomic rename.

Writes are atomic (temp file + rename). A cache that cannot be written (disk
full, read-only) degrades to memory with one warning; a corrupt entry or pack
is treated as a miss and rebuilt. The cache never changes results, only speed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from shared.config import PreprocessConfig

CACHE_VERSION = 2


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class IngestCache:
    """Content-addressed ingest records plus the preprocessed-image pack of one data folder."""

    def __init__(self, root: Path | None, params: PreprocessConfig, folder: Path | None = None) -> None:
        self.root = Path(root) if root is not None else None
        self.params = params
        folder_id = hashlib.sha256(str(Path(folder).resolve() if folder else "").encode()).hexdigest()[:16]
        self._pack_base = (self.root / "tensors" / params.cache_tag() / folder_id) if self.root else None
        self.records: dict[str, dict] = {}
        self.stat_memo: dict[str, list] = {}
        self._fresh: dict[str, np.ndarray] = {}
        self._pack: np.ndarray | None = None
        self._pack_rows: dict[str, int] = {}
        self._dirty = False  # indexes changed since loading
        self.writable = self.root is not None
        self.warning: str | None = None
        self.hits = 0
        self.decoded = 0
        if self.root is not None:
            self.records = self._load_json(self.root / "records.json")
            self.stat_memo = self._load_json(self.root / "stat-memo.json")
            self._load_pack()

    # -- indexes ----------------------------------------------------------------------------
    @staticmethod
    def _load_json(path: Path) -> dict:
        try:
            data = json.loads(path.read_text())
            if data.get("version") == CACHE_VERSION and isinstance(data.get("entries"), dict):
                return data["entries"]
        except (OSError, ValueError, AttributeError):
            pass  # missing or corrupt index: rebuilt from the files, nothing is lost
        return {}

    def _load_pack(self) -> None:
        try:
            index = json.loads(self._pack_base.with_suffix(".json").read_text())
            shas, row_shape = index["shas"], tuple(index["shape"])
            pack = np.load(self._pack_base.with_suffix(".npy"), allow_pickle=False)
        except (OSError, ValueError, KeyError, TypeError, EOFError):
            return
        if pack.dtype != np.float32 or pack.shape != (len(shas), *row_shape):
            return
        self._pack, self._pack_rows = pack, {sha: i for i, sha in enumerate(shas)}

    def _write(self, path: Path | None, data: bytes) -> bool:
        if path is None or not self.writable:
            return False
        try:
            _atomic_write_bytes(path, data)
            return True
        except OSError as exc:
            self.writable = False
            self.warning = (
                f"cache folder {self.root} is not writable ({exc.strerror or exc}); "
                "continuing in memory: the next run will decode again. Free space or fix permissions."
            )
            warnings.warn(self.warning, RuntimeWarning, stacklevel=3)
            return False

    def flush(self, keep: list[str]) -> None:
        """Persist the indexes, and the pack of the images ``keep`` lists (in that order) if it changed."""
        if self._dirty:
            for name, entries in (("records.json", self.records), ("stat-memo.json", self.stat_memo)):
                payload = json.dumps({"version": CACHE_VERSION, "entries": entries}).encode()
                self._write(self.root / name if self.root else None, payload)
            self._dirty = False
        if self._pack_base is None or (not self._fresh and list(self._pack_rows) == keep):
            return
        images = [self.get_tensor(sha) for sha in keep]
        shas = [sha for sha, img in zip(keep, images) if img is not None]
        stack = np.stack([img for img in images if img is not None]) if shas else np.zeros((0,), np.float32)
        bio = io.BytesIO()
        np.save(bio, stack.astype(np.float32, copy=False), allow_pickle=False)
        index = {"shas": shas, "shape": list(stack.shape[1:])}  # one row's shape: the rank is the data's
        # Array first, then its index: a crash between the two leaves a mismatch that _load_pack rejects.
        if self._write(self._pack_base.with_suffix(".npy"), bio.getvalue()) and self._write(
            self._pack_base.with_suffix(".json"), json.dumps(index).encode()
        ):
            # What was written is now the pack: a second flush with nothing new writes nothing.
            self._pack, self._pack_rows, self._fresh = stack, {sha: i for i, sha in enumerate(shas)}, {}

    # -- content hashes -----------------------------------------------------------------------
    def memo_sha(self, path: Path, stat: os.stat_result) -> str | None:
        entry = self.stat_memo.get(str(path))
        if entry and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
            return entry[2]
        return None

    def remember(self, path: Path, stat: os.stat_result, sha: str, entry: dict) -> None:
        """Record a freshly ingested file: its content hash (by stat) and its verdict (by content)."""
        self.stat_memo[str(path)] = [stat.st_size, stat.st_mtime_ns, sha]
        self.records[sha] = entry
        self._dirty = True

    # -- tensors ------------------------------------------------------------------------------
    def has_tensor(self, sha: str) -> bool:
        return sha in self._fresh or sha in self._pack_rows

    def put_tensor(self, sha: str, image: np.ndarray) -> None:
        self._fresh[sha] = np.ascontiguousarray(image, dtype=np.float32)

    def get_tensor(self, sha: str) -> np.ndarray | None:
        """The cached image, or None when missing or damaged (a damaged row is forgotten)."""
        if sha in self._fresh:
            return self._fresh[sha]
        row = self._pack_rows.get(sha)
        if row is None:
            return None
        img = self._pack[row]
        if not np.isfinite(img).all():
            del self._pack_rows[sha]
            return None
        return img
