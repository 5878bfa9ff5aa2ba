"""The dashboards' HTTP layer under hostile input: binds, methods, Host, token, paths, oversized requests.

The ASGI app is exercised through Starlette's test client (the same app object uvicorn serves); the bind
policy, TLS and the header-size limit through a real uvicorn server on a loopback port.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
import warnings
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from server.pki import create_ca, issue_server_cert
from shared.dashboard import widgets as W
from shared.dashboard.server import (
    COOKIE,
    CSP,
    DashboardError,
    DashboardOptions,
    DashboardThread,
    Document,
    build_app,
    check_bind,
    new_token,
    serve_dashboard,
)
from shared.processes import free_port

with warnings.catch_warnings():  # Starlette 1.x prefers httpx2 for its test client; httpx is what is installed
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

HOSTILE = "<img src=x onerror=alert(1)>"


class Source:
    """A page source with a hostile title and one document."""

    title = f"Test {HOSTILE}"

    def __init__(self, doc: Path, fail: Exception | None = None) -> None:
        self.doc, self.fail, self.calls = doc, fail, 0

    def page(self) -> dict:
        self.calls += 1
        if self.fail is not None:
            raise self.fail
        return W.page(self.title, "", [W.section("s", "S", [W.table("t", ["site"], [[HOSTILE]])])])

    def documents(self) -> dict[str, Document]:
        return {"report-1": Document(self.doc, "text/html")}


@pytest.fixture
def doc(tmp_path: Path) -> Path:
    path = tmp_path / "report.html"
    path.write_text("<html><body><script>alert(1)</script>report</body></html>")
    return path


def _token_file(tmp_path: Path, token: str | None = None, mode: int = 0o600) -> Path:
    path = tmp_path / "token"
    path.write_text((token or new_token()) + "\n")
    path.chmod(mode)
    return path


def _client(source: Source, port: int = 8350, **opts) -> TestClient:  # noqa: ANN003 - DashboardOptions fields
    app = build_app(source, DashboardOptions(port=port, **opts))
    return TestClient(app, base_url=f"http://127.0.0.1:{port}")


def test_loopback_page_shell_script_and_model(doc: Path) -> None:
    client = _client(Source(doc))
    shell = client.get("/")
    assert shell.status_code == 200
    assert "<img" not in shell.text and "&lt;img src=x onerror=alert(1)&gt;" in shell.text  # title escaped
    assert shell.headers["content-security-policy"] == CSP
    assert "script-src 'self'" in CSP and "unsafe-inline" not in CSP
    assert shell.headers["x-content-type-options"] == "nosniff"
    assert "http://" not in shell.text.replace("http://127", "") and "https://" not in shell.text  # nothing remote
    script = client.get("/static/dashboard.js")
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert "innerHTML" not in script.text and "eval(" not in script.text  # values are written as text only
    model = client.get("/api/page").json()
    assert model["sections"][0]["widgets"][0]["rows"] == [[HOSTILE]]  # data stays data; the script writes text
    assert client.head("/api/page").status_code == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_only_get_and_head(doc: Path, method: str) -> None:
    r = _client(Source(doc)).request(method, "/api/page")
    assert r.status_code == 405 and r.headers["allow"] == "GET, HEAD"


def test_a_request_with_a_body_is_refused(doc: Path) -> None:
    r = _client(Source(doc)).request("GET", "/api/page", content=b"x" * 10_000)
    assert r.status_code == 413


@pytest.mark.parametrize(
    "path",
    [
        "/static/../server.py",
        "/static/%2e%2e/server.py",
        "/static/dashboard.js/../../widgets.py",
        "/doc/../../etc/passwd",
        "/doc/..%2f..%2fetc%2fpasswd",
        "/doc/%2Fetc%2Fpasswd",
        "/doc/" + "a" * 4000,
        "/etc/passwd",
        "//etc/passwd",
        "/api/page/../../../",
    ],
)
def test_no_path_reaches_the_filesystem(doc: Path, path: str) -> None:
    r = _client(Source(doc)).get(path)
    assert r.status_code in (404, 200) and "root:" not in r.text
    if r.status_code == 200:  # only a normalised path that is the page itself
        assert r.headers["content-type"].startswith(("text/html", "application/json"))
        assert "alert(1)</script>report" not in r.text


def test_linked_document_is_served_sandboxed(doc: Path) -> None:
    r = _client(Source(doc)).get("/doc/report-1")
    assert r.status_code == 200 and "report" in r.text
    assert r.headers["content-security-policy"].startswith("sandbox;")  # its script cannot run
    assert _client(Source(doc)).get("/doc/report-2").status_code == 404


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8350", "127.0.0.1.evil.example:8350", "10.0.0.1:8350"])
def test_loopback_answers_only_loopback_host_names(doc: Path, host: str) -> None:
    r = _client(Source(doc)).get("/api/page", headers={"host": host})
    assert r.status_code == 421  # DNS rebinding: a page on evil.example resolving to 127.0.0.1 gets nothing


@pytest.mark.parametrize("host", ["127.0.0.1:8350", "localhost:8350", "[::1]:8350", "LOCALHOST:8350"])
def test_loopback_names_are_answered(doc: Path, host: str) -> None:
    assert _client(Source(doc)).get("/api/page", headers={"host": host}).status_code == 200


def test_token_by_header_or_the_cookie_a_token_link_sets(doc: Path, tmp_path: Path) -> None:
    token = new_token()
    client = _client(Source(doc), token_file=_token_file(tmp_path, token))
    assert client.get("/api/page").status_code == 401
    assert client.get("/").status_code == 401
    assert client.get("/api/page", headers={"authorization": "Bearer wrong"}).status_code == 401
    assert client.get(f"/api/page?token={token}").status_code == 401  # only the page address takes it
    assert client.get("/api/page", headers={"authorization": f"Bearer {token}"}).status_code == 200
    first = client.get(f"/?token={token}", follow_redirects=False)
    assert first.status_code == 303 and first.headers["location"] == "/"
    cookie = first.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert client.get("/api/page", cookies={COOKIE: token}).status_code == 200
    fresh = _client(Source(doc), token_file=_token_file(tmp_path, token))  # no cookie yet
    assert fresh.get(f"/?token={token}x", follow_redirects=False).status_code == 401


def test_a_failing_source_shows_its_reason_not_a_traceback(doc: Path) -> None:
    r = _client(Source(doc, fail=ValueError("metrics.jsonl line 3: not JSON"))).get("/api/page")
    assert r.status_code == 200
    banner = r.json()["sections"][0]["widgets"][0]
    assert banner["level"] == "error" and banner["text"] == "metrics.jsonl line 3: not JSON"
    assert "Traceback" not in r.text


def test_nan_in_a_page_is_an_error_banner_not_invalid_json(doc: Path) -> None:
    class NaNSource(Source):
        def page(self) -> dict:
            return {"title": "t", "subtitle": "", "refresh_s": 2, "sections": [{"x": float("nan")}]}

    r = _client(NaNSource(doc)).get("/api/page")
    assert r.status_code == 200 and r.json()["sections"][0]["widgets"][0]["level"] == "error"


def test_widgets_refuse_links_off_the_dashboard() -> None:
    for href in ("https://cdn.example/x.js", "//evil.example/", "javascript:alert(1)"):
        with pytest.raises(ValueError):
            W.links("l", [("x", href)])
    assert W.line("c", "", [("a", [(1, float("nan")), (2, 0.5)])])["series"][0]["points"] == [[1, None], [2, 0.5]]
    run_id = 15412963251319949038  # a Flower run id: beyond a double's exact integers, so it travels as text
    assert W.table("t", ["run", "bytes"], [[run_id, 130]])["rows"] == [["15412963251319949038", 130]]


# -- the bind policy ---------------------------------------------------------------------------------------------


def test_off_loopback_needs_tls_and_a_token(tmp_path: Path) -> None:
    with pytest.raises(DashboardError, match=r"needs TLS .* and a token .*reverse proxy.*docs/dashboards.md"):
        check_bind(DashboardOptions(host="0.0.0.0"))
    pki = tmp_path / "pki"
    pki.mkdir()
    create_ca(pki, "Test CA")
    tls = issue_server_cert(pki, ["127.0.0.1"])
    with pytest.raises(DashboardError, match=r"needs a token"):
        check_bind(DashboardOptions(host="192.0.2.1", tls_cert=tls.server_cert, tls_key=tls.server_key))
    with pytest.raises(DashboardError, match=r"needs TLS"):
        check_bind(DashboardOptions(host="10.1.2.3", token_file=_token_file(tmp_path)))
    assert check_bind(
        DashboardOptions(
            host="0.0.0.0", tls_cert=tls.server_cert, tls_key=tls.server_key, token_file=_token_file(tmp_path)
        )
    )
    assert check_bind(DashboardOptions(host="127.0.0.1")) is None
    assert check_bind(DashboardOptions(host="::1")) is None


def test_token_files_must_be_private_and_long(tmp_path: Path) -> None:
    with pytest.raises(DashboardError, match="chmod 600"):
        check_bind(DashboardOptions(token_file=_token_file(tmp_path, mode=0o644)))
    with pytest.raises(DashboardError, match="at least 32"):
        check_bind(DashboardOptions(token_file=_token_file(tmp_path, token="short")))
    with pytest.raises(DashboardError, match="cannot read"):
        check_bind(DashboardOptions(token_file=tmp_path / "missing"))
    with pytest.raises(DashboardError, match="both --tls-cert and --tls-key"):
        check_bind(DashboardOptions(tls_cert=tmp_path / "c"))


def test_real_server_tls_token_and_oversized_headers(doc: Path, tmp_path: Path) -> None:
    """Off loopback for real: 0.0.0.0 with TLS and a token; a 64 KiB header is cut off by the parser."""
    pki = tmp_path / "pki"
    pki.mkdir()
    create_ca(pki, "Test CA")
    tls = issue_server_cert(pki, ["127.0.0.1"])
    token = new_token()
    port = free_port()
    opts = DashboardOptions(
        host="0.0.0.0",
        port=port,
        tls_cert=tls.server_cert,
        tls_key=tls.server_key,
        token_file=_token_file(tmp_path, token),
    )
    with DashboardThread(Source(doc), opts):
        verify = str(pki / "ca.crt")
        base = f"https://127.0.0.1:{port}"
        assert httpx.get(f"{base}/api/page", verify=verify).status_code == 401
        ok = httpx.get(f"{base}/api/page", verify=verify, headers={"authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.json()["sections"][0]["id"] == "s"
        with pytest.raises((httpx.ConnectError, httpx.RemoteProtocolError)):  # plain HTTP gets nothing
            httpx.get(f"http://127.0.0.1:{port}/api/page", timeout=3).raise_for_status()
        ctx = ssl.create_default_context(cafile=verify)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                try:
                    s.sendall(b"GET /api/page HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n")
                    reply = s.recv(200)
                except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
                    reply = b""  # the server dropped the connection mid-request
        assert reply == b"" or reply.startswith(b"HTTP/1.1 4")  # 431/400, or closed; never served


def test_serve_refuses_an_unsafe_bind_before_listening(doc: Path) -> None:
    with pytest.raises(DashboardError, match="refusing to serve"):
        serve_dashboard(
            Source(doc), DashboardOptions(host="0.0.0.0", port=free_port()), Console(file=open(os.devnull, "w"))
        )


def test_a_busy_port_is_a_clear_error(doc: Path) -> None:
    port = free_port()
    with DashboardThread(Source(doc), DashboardOptions(port=port)):
        time.sleep(0.1)
        with pytest.raises(DashboardError, match="cannot listen"):
            with DashboardThread(Source(doc), DashboardOptions(port=port)):
                pass
