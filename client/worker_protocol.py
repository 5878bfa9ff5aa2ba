"""The wire between the per-message ClientApp and the site's warm worker (:mod:`client.site_worker`).

Flower starts a fresh ``flwr-clientapp`` process for every message. Importing
torch, building the model and reading the site's tensor cache in that process
cost seconds per message; the warm worker pays them once. The ClientApp then
only forwards: this module, with numpy and the standard library and nothing
else, is all it imports on that path.

Frame: 8-byte big-endian header length, a UTF-8 JSON header, then the raw
bytes of each array in the order the header lists them
(``"arrays": [[name, dtype, shape], ...]``). No pickle: a frame can carry
numbers and JSON only, so neither side can be made to run code by the other.
The socket is a Unix socket in a folder only the site's user can open (0700).
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

PROTOCOL = 1
_LEN = struct.Struct(">Q")
MAX_HEADER_BYTES = 16 << 20
ALLOWED_DTYPES = frozenset({"float16", "float32", "float64", "int8", "uint8", "int16", "int32", "int64", "bool"})


class WorkerUnavailable(ConnectionError):
    """Nobody listens on the worker socket (not started, or still starting): run the message in-process."""


class WorkerError(RuntimeError):
    """The worker took the message and failed; the text is the worker's reason."""


class SiteRefusal(Exception):
    """The site declines this message by its own rule (e.g. its privacy budget); the text goes to the server."""


class FrameError(ValueError):
    """A frame that does not follow the format above."""


def _recv_exact(sock: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionError(f"peer closed the connection after {got} of {n} bytes")
        got += k
    return buf


def send_frame(sock: socket.socket, header: Mapping[str, Any], arrays: Mapping[str, np.ndarray] | None = None) -> None:
    """Send ``header`` (JSON-able) and ``arrays`` as one frame."""
    arrays = {k: np.require(v, requirements="C") for k, v in (arrays or {}).items()}  # keeps 0-d arrays 0-d
    for name, arr in arrays.items():
        if arr.dtype.name not in ALLOWED_DTYPES:
            raise FrameError(f"array {name!r}: dtype {arr.dtype} is not allowed")
    head = dict(header)
    head["arrays"] = [[name, arr.dtype.name, list(arr.shape)] for name, arr in arrays.items()]
    raw = json.dumps(head).encode()
    sock.sendall(_LEN.pack(len(raw)) + raw)
    for arr in arrays.values():
        sock.sendall(memoryview(arr).cast("B"))


def recv_frame(sock: socket.socket) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Receive one frame: (header, arrays by name). Arrays are writable (torch can share their memory)."""
    (length,) = _LEN.unpack(_recv_exact(sock, _LEN.size))
    if length > MAX_HEADER_BYTES:
        raise FrameError(f"header of {length} bytes exceeds {MAX_HEADER_BYTES}")
    try:
        header = json.loads(_recv_exact(sock, length))
        specs = header.pop("arrays")
        layout = [(str(n), np.dtype(d), tuple(int(x) for x in s)) for n, d, s in specs]
    except (ValueError, TypeError, KeyError) as exc:
        raise FrameError(f"bad frame header: {exc}") from None
    arrays: dict[str, np.ndarray] = {}
    for name, dtype, shape in layout:
        if dtype.name not in ALLOWED_DTYPES:
            raise FrameError(f"array {name!r}: dtype {dtype} is not allowed")
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        arrays[name] = np.frombuffer(_recv_exact(sock, nbytes), dtype=dtype).reshape(shape)
    return header, arrays


def call_worker(
    socket_path: str | Path,
    op: str,
    *,
    run_id: int,
    run_config: Mapping[str, Any],
    config: Mapping[str, Any],
    arrays: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Ask the warm worker to ``op`` ("train"/"evaluate"/"query"); return (arrays, metrics).

    The worker reads the site's data settings from its own command line, not from here.
    Raises :class:`WorkerUnavailable` when the socket does not answer a connect
    (the caller then works in-process) and :class:`WorkerError` when the worker
    failed on the message (the caller must not retry it in-process).
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.connect(str(socket_path))
        except OSError as exc:
            raise WorkerUnavailable(f"site worker at {socket_path} not reachable ({exc.strerror or exc})") from None
        header = {
            "protocol": PROTOCOL,
            "op": op,
            "run_id": int(run_id),
            "run_config": dict(run_config),
            "config": dict(config),
        }
        try:
            send_frame(sock, header, arrays)
            reply, out = recv_frame(sock)
        except ConnectionError as exc:
            raise WorkerError(
                f"site worker stopped during the {op} message ({exc}); see its log in the site's work/logs"
            ) from None
        if reply.get("refused"):
            raise SiteRefusal(str(reply["refused"]))
        if not reply.get("ok"):
            raise WorkerError(str(reply.get("error") or "site worker failed without a reason"))
        return out, dict(reply.get("metrics") or {})
    finally:
        sock.close()
