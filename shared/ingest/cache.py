"""On-disk cache of ingest results keyed by file content, so DICOM is decoded once per site.

Layout under the cache folder (which lives at the site, never leaves it):

- ``records.json``: content sha256 → header fields or rejection reason
  (independent of preprocessing parameters).
- ``stat-memo.json``: absolute path → (size, mtime_ns, sha256), so an
  unchanged file is not even re-read to hash it on the next scan.
- ``tensors/<preprocess tag>/<sha[:2]>/<sha>.npy``: the preprocessed image.

Writes are atomic (temp file + rename). A cache that cannot be written (disk
full, read-only) degrades to memory with one warning; a corrupt entry is
treated as a miss and rebuilt. The cache never changes results, only speed.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from shared.config import PreprocessConfig

CACHE_VERSION = 1


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
    """Content-addressed cache of ingest records and preprocessed tensors for one preprocessing setting."""

    def __init__(self, root: Path | None, params: PreprocessConfig) -> None:
        self.root = Path(root) if root is not None else None
        self.params = params
        self.records: dict[str, dict] = {}
        self.stat_memo: dict[str, list] = {}
        self._memory: dict[str, np.ndarray] = {}
        self.writable = self.root is not None
        self.warning: str | None = None
        self.hits = 0
        self.decoded = 0
        if self.root is not None:
            self.records = self._load_json("records.json")
            self.stat_memo = self._load_json("stat-memo.json")

    # -- json indexes -----------------------------------------------------------------
    def _load_json(self, name: str) -> dict:
        path = self.root / name
        try:
            data = json.loads(path.read_text())
            if data.get("version") == CACHE_VERSION and isinstance(data.get("entries"), dict):
                return data["entries"]
        except FileNotFoundError:
            pass
        except (OSError, ValueError, AttributeError):
            pass  # corrupt index: rebuilt from the files, nothing is lost
        return {}

    def flush(self) -> None:
        """Persist the indexes; called once at the end of a scan."""
        for name, entries in (("records.json", self.records), ("stat-memo.json", self.stat_memo)):
            payload = json.dumps({"version": CACHE_VERSION, "entries": entries}).encode()
            self._write(self.root / name if self.root else None, payload)

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
            warnings.warn(self.warning, RuntimeWarning, stacklevel=2)
            return False

    # -- content hashes -----------------------------------------------------------------
    def memo_sha(self, path: Path, stat: os.stat_result) -> str | None:
        entry = self.stat_memo.get(str(path))
        if entry and entry[0] == stat.st_size and entry[1] == stat.st_mtime_ns:
            return entry[2]
        return None

    def remember_sha(self, path: Path, stat: os.stat_result, sha: str) -> None:
        self.stat_memo[str(path)] = [stat.st_size, stat.st_mtime_ns, sha]

    # -- tensors ------------------------------------------------------------------------
    def _tensor_path(self, sha: str) -> Path | None:
        if self.root is None:
            return None
        return self.root / "tensors" / self.params.cache_tag() / sha[:2] / f"{sha}.npy"

    def has_tensor(self, sha: str) -> bool:
        path = self._tensor_path(sha)
        return sha in self._memory or (path is not None and path.exists())

    def put_tensor(self, sha: str, image: np.ndarray) -> None:
        path = self._tensor_path(sha)
        buf = _npy_bytes(image)
        if not self._write(path, buf):
            self._memory[sha] = image

    def get_tensor(self, sha: str) -> np.ndarray | None:
        """The cached image, or None when missing or unreadable (a corrupt entry is deleted)."""
        if sha in self._memory:
            return self._memory[sha]
        path = self._tensor_path(sha)
        if path is None:
            return None
        try:
            img = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError):
            path.unlink(missing_ok=True)
            return None
        size = self.params.image_size
        if img.shape != (size, size) or img.dtype != np.float32 or not np.isfinite(img).all():
            path.unlink(missing_ok=True)
            return None
        return img


def _npy_bytes(image: np.ndarray) -> bytes:
    import io

    bio = io.BytesIO()
    np.save(bio, np.ascontiguousarray(image, dtype=np.float32), allow_pickle=False)
    return bio.getvalue()
