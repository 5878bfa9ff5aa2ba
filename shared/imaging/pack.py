"""The on-disk shard format of the image cache: uint16 rows in a ``.npy`` file, read with ``os.pread``.

Why uint16 and not float16: every modality's preprocessing ends in [0, 1]
(a percentile window, clipped), and uint16 covers that interval with a
uniform step of 1/65535 ≈ 1.5e-5, while float16 has ~5e-4 steps near 1 and
radiographs carry 12–16 bits. The model input is *defined* as the quantized
value (:func:`to_pack` then :func:`from_pack`): a fresh scan, a cache hit and
an unwritable cache all give the model the same bits, so the cache never
changes results; the rounding itself is at most 7.6e-6 per pixel.

Why a ``.npy`` per shard read with ``pread`` and not ``np.load(mmap_mode=...)``:
the file stays readable by any numpy (``np.load(path, mmap_mode="r")``), but
pages touched through a memory map count in the reading process's resident
set until the kernel reclaims them, so one epoch over a 100k-image site would
grow RSS to the whole pack. ``pread`` copies a row into a batch buffer; the
kernel's page cache keeps what fits and is not the process's memory.

A shard is created at its full size (``ftruncate``: sparse, so unwritten rows
take no disk) and rows are written in place; which rows are valid, and each
row's CRC-32, is the index's business (:mod:`shared.imaging.cache`). One job
here: bytes in and out of shard files.
"""

from __future__ import annotations

import math
import os
import zlib
from pathlib import Path

import numpy as np

PACK_DTYPE = np.dtype("<u2")
SCALE = np.float32(65535.0)
SHARD_ROWS = 1024  # rows per shard at most ...
SHARD_BYTES = 256 * 2**20  # ... and at most about this many bytes (a 512 px site gets 512 rows a shard)
MAX_OPEN_SHARDS = 256  # file descriptors a process keeps open for reading


class ShardError(OSError):
    """A shard file that is missing, truncated or not the shape the index says."""


def to_pack(image: np.ndarray) -> np.ndarray:
    """A preprocessed image (float in [0, 1]) → its uint16 row; a uint16 row passes through unchanged."""
    image = np.asarray(image)
    if image.dtype == PACK_DTYPE:
        return np.ascontiguousarray(image)
    scaled = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0) * SCALE
    return np.rint(scaled).astype(PACK_DTYPE)


def from_pack(rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint16 rows → float32 in [0, 1]: the model input, the same bits on every path."""
    return np.divide(rows, SCALE, out=out, dtype=np.float32)


def quantize(image: np.ndarray) -> np.ndarray:
    """What the model sees for a freshly preprocessed image: exactly what a cache hit returns."""
    return from_pack(to_pack(image))


def checksum(row: np.ndarray) -> int:
    """CRC-32 of a row's bytes (a bit flip on disk makes the row a miss, not a wrong input)."""
    return zlib.crc32(memoryview(np.ascontiguousarray(row)).cast("B"))


def shard_capacity(row_shape: tuple[int, ...]) -> int:
    """Rows per shard for rows of ``row_shape``: :data:`SHARD_ROWS`, fewer for large rows."""
    row_bytes = math.prod(row_shape) * PACK_DTYPE.itemsize
    return max(1, min(SHARD_ROWS, SHARD_BYTES // max(1, row_bytes)))


def _header(shape: tuple[int, ...]) -> bytes:
    import io

    bio = io.BytesIO()
    np.lib.format.write_array_header_1_0(bio, {"descr": PACK_DTYPE.str, "fortran_order": False, "shape": shape})
    return bio.getvalue()


def create_shard(path: Path, row_shape: tuple[int, ...], capacity: int) -> int:
    """Create an empty shard of ``capacity`` rows (sparse); return an fd open for writing rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = _header((capacity, *row_shape))
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)  # patients' images: owner only
    try:
        os.pwrite(fd, header, 0)
        os.ftruncate(fd, len(header) + capacity * math.prod(row_shape) * PACK_DTYPE.itemsize)
    except BaseException:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    return fd


def open_for_append(path: Path) -> int:
    """Reopen an existing shard to write further rows."""
    return os.open(path, os.O_RDWR)


def data_offset(path: Path, row_shape: tuple[int, ...], capacity: int) -> int:
    """Where row 0 starts; ShardError when the file is not a shard of that shape and size."""
    try:
        with open(path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            if version != (1, 0):
                raise ShardError(f"{path}: npy format {version}, expected 1.0")
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            offset = fh.tell()
            size = os.fstat(fh.fileno()).st_size
    except ShardError:
        raise
    except (OSError, ValueError) as exc:
        raise ShardError(f"{path}: not a readable shard ({exc})") from None
    if dtype != PACK_DTYPE or fortran or tuple(shape) != (capacity, *row_shape):
        raise ShardError(f"{path}: holds {dtype} {shape}, expected {PACK_DTYPE} {(capacity, *row_shape)}")
    if size != offset + capacity * math.prod(row_shape) * PACK_DTYPE.itemsize:
        raise ShardError(f"{path}: {size} bytes, truncated or grown")
    return offset


def write_row(fd: int, offset: int, row: int, data: np.ndarray) -> None:
    """Write one uint16 row in place (a short write is an error: the disk is full)."""
    buf = memoryview(np.ascontiguousarray(data, dtype=PACK_DTYPE)).cast("B")
    done = os.pwrite(fd, buf, offset + row * len(buf))
    if done != len(buf):
        raise OSError(28, "short write: no space left on device")


class ShardReader:
    """Reads rows of shard files with ``pread``; one per process (file descriptors are not inherited safely)."""

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._open: dict[str, tuple[int, int]] = {}  # path → (fd, data offset), oldest first

    def _fd(self, path: str) -> tuple[int, int]:
        if self._pid != os.getpid():  # forked (a DataLoader worker): the parent's descriptors are shared, not ours
            self._pid, self._open = os.getpid(), {}
        hit = self._open.pop(path, None)
        if hit is None:
            with open(path, "rb") as fh:
                np.lib.format.read_magic(fh)
                np.lib.format.read_array_header_1_0(fh)
                offset = fh.tell()
            hit = (os.open(path, os.O_RDONLY), offset)
            if len(self._open) >= MAX_OPEN_SHARDS:
                old = next(iter(self._open))
                os.close(self._open.pop(old)[0])
        self._open[path] = hit  # most recently used last
        return hit

    def read(self, path: str, row: int, out: np.ndarray) -> None:
        """Fill ``out`` (a contiguous uint16 row) from ``path``; ShardError when the file is shorter."""
        try:
            fd, offset = self._fd(path)
            buf = memoryview(out).cast("B")
            got = os.preadv(fd, [buf], offset + row * len(buf))
        except (OSError, ValueError) as exc:
            raise ShardError(f"{path}: cannot read row {row} ({exc})") from None
        if got != len(buf):
            raise ShardError(f"{path}: row {row} is past the end of the file")

    def close(self) -> None:
        if self._pid == os.getpid():
            for fd, _ in self._open.values():
                os.close(fd)
        self._open = {}


READER = ShardReader()  # the process's reader (re-created lazily after a fork)
