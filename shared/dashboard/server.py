"""The dashboards' HTTP layer: read-only, loopback by default, TLS and a token anywhere else.

One small ASGI app (Starlette's request and response classes, no routing table) serves four things and
nothing else: the page shell ``/``, the packaged ``/static/dashboard.js`` and ``/static/dashboard.css``,
the page model ``/api/page`` (JSON, from a :class:`PageSource`), and the read-only files the page links to,
``/doc/<id>``, where ``id`` is looked up in the source's own table: no part of a URL ever becomes a path.

Safety, in the order a request meets it:

* **methods**: GET and HEAD only (405 otherwise); a request with a body is refused (413): no endpoint changes
  state, so none takes input;
* **Host**: on loopback only ``127.0.0.1``, ``localhost`` or ``[::1]`` (with the port) are answered, so a web
  page elsewhere cannot reach the dashboard through DNS rebinding;
* **token**: when one is set (required off loopback) every request needs it, as ``Authorization: Bearer`` or
  the cookie that opening ``/?token=...`` once sets (HttpOnly, SameSite=Strict, Secure under TLS);
* **headers**: a Content-Security-Policy that allows only this origin's script and style (no inline code, no
  CDN, no frames), ``nosniff``, no referrer, no caching. Linked documents (site reports with embedded images)
  are served sandboxed: they can show but run nothing.

Binding off loopback without TLS and a token is refused (:func:`check_bind`) with the reverse-proxy recipe
in docs/dashboards.md. uvicorn's h11 parser caps the request line and headers (16 KiB).
"""

from __future__ import annotations

import asyncio
import hmac
import html
import ipaddress
import json
import secrets
import stat
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs

from rich.console import Console
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse, Response

from shared.dashboard.widgets import Page, banner, page, section

MAX_HEADER_BYTES = 16 * 1024
MAX_CONNECTIONS = 64  # a handful of browsers; beyond it uvicorn answers 503 at once
MIN_TOKEN_CHARS = 32
COOKIE = "fedrad_dashboard"
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1", "[::1]")
DOCS_RECIPE = "docs/dashboards.md#serving-beyond-this-machine"
PAGE_CACHE_S = 0.5  # several tabs polling at once share one page build

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
DOC_CSP = "sandbox; default-src 'none'; img-src data:; style-src 'unsafe-inline'; frame-ancestors 'none'"
STATIC = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}


class DashboardError(RuntimeError):
    """The dashboard cannot be served as asked; the message says why and what to do."""


@dataclass(frozen=True)
class Document:
    """A read-only file the page may link to as ``/doc/<id>``."""

    path: Path
    media_type: str


class PageSource(Protocol):
    """What a dashboard shows: a title, the page model, and the files it links to."""

    title: str

    def page(self) -> Page: ...

    def documents(self) -> dict[str, Document]: ...


@dataclass(frozen=True)
class DashboardOptions:
    host: str = "127.0.0.1"
    port: int = 8350
    tls_cert: Path | None = None
    tls_key: Path | None = None
    token_file: Path | None = None


def is_loopback(host: str) -> bool:
    """``127.0.0.0/8``, ``::1`` or ``localhost``; every other name or address counts as off this machine."""
    name = host.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def read_token(path: Path) -> str:
    """The token in ``path``: at least 32 characters, in a file only its owner may read."""
    try:
        mode = path.stat().st_mode
        token = path.read_text().strip()
    except OSError as exc:
        raise DashboardError(f"--token-file {path}: cannot read it ({exc.strerror})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise DashboardError(f"--token-file {path}: others may read it; run `chmod 600 {path}`")
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise DashboardError(
            f"--token-file {path}: the token must be one word of at least {MIN_TOKEN_CHARS} characters "
            "(make one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
        )
    return token


def check_bind(options: DashboardOptions) -> str | None:
    """Refuse an unsafe bind; return the token to require (None: loopback without a token file)."""
    if (options.tls_cert is None) != (options.tls_key is None):
        raise DashboardError("give both --tls-cert and --tls-key, or neither")
    for flag, path in (("--tls-cert", options.tls_cert), ("--tls-key", options.tls_key)):
        if path is not None and not Path(path).is_file():
            raise DashboardError(f"{flag} {path}: no such file")
    token = read_token(Path(options.token_file)) if options.token_file is not None else None
    if not is_loopback(options.host):
        missing = [
            what
            for what, there in (("TLS (--tls-cert, --tls-key)", options.tls_cert), ("a token (--token-file)", token))
            if not there
        ]
        if missing:
            raise DashboardError(
                f"refusing to serve the dashboard on {options.host}: off this machine it needs "
                f"{' and '.join(missing)}. Keep it on 127.0.0.1 and publish it through the hospital's reverse "
                f"proxy instead ({DOCS_RECIPE})."
            )
    return token


def dashboard_options(
    host: str, port: int, tls_cert: Path | None, tls_key: Path | None, token_file: Path | None
) -> DashboardOptions:
    """The options a CLI collected, checked (raises :class:`DashboardError`)."""
    options = DashboardOptions(host=host, port=port, tls_cert=tls_cert, tls_key=tls_key, token_file=token_file)
    check_bind(options)
    return options


def _static(name: str) -> bytes:
    return resources.files("shared.dashboard").joinpath("static", name).read_bytes()


def _shell(title: str) -> bytes:
    """The page shell: the packaged script draws everything from ``/api/page``."""
    t = html.escape(title)
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{t}</title><link rel='stylesheet' href='/static/dashboard.css'></head>"
        f"<body><header><h1 id='title'>{t}</h1><p id='subtitle'></p>"
        "<p id='connection' data-state='starting'>connecting…</p></header>"
        "<main id='sections'></main>"
        "<footer>Read-only. Served from this machine; nothing is loaded from the internet.</footer>"
        "<script src='/static/dashboard.js'></script></body></html>\n"
    ).encode()


def _error_page(title: str, exc: BaseException) -> Page:
    """What ``/api/page`` shows when the source itself failed: the reason, never a traceback."""
    return page(title, "", [section("error", "Dashboard error", [banner("page-error", "error", f"{exc}")])])


class DashboardApp:
    """The ASGI application (see the module docstring for what it answers and refuses)."""

    def __init__(self, source: PageSource, *, token: str | None, port: int | None, tls: bool) -> None:
        self.source = source
        self.token = token
        self.tls = tls
        # Host names a loopback dashboard answers to; None: any (off loopback the token guards it)
        self.hosts = None if port is None else {f"{h}:{port}" for h in LOOPBACK_NAMES} | set(LOOPBACK_NAMES)
        self.shell = _shell(source.title)
        self.static = {name: _static(name) for name in STATIC}
        self._page_lock = threading.Lock()
        self._page: tuple[float, bytes] | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":  # lifespan is off; no websockets
            return
        request = Request(scope, receive)
        response = await self.respond(request)
        response.headers.setdefault("Content-Security-Policy", CSP)
        for name, value in (
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
            ("Cache-Control", "no-store"),
            ("X-Frame-Options", "DENY"),
            ("Cross-Origin-Resource-Policy", "same-origin"),
            ("Cross-Origin-Opener-Policy", "same-origin"),
        ):
            response.headers[name] = value
        await response(scope, receive, send)

    async def respond(self, request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return PlainTextResponse("read-only: GET and HEAD only\n", 405, headers={"Allow": "GET, HEAD"})
        if request.headers.get("transfer-encoding") or int(request.headers.get("content-length") or 0) > 0:
            return PlainTextResponse("read-only: requests carry no body\n", 413)
        if self.hosts is not None and request.headers.get("host", "").lower() not in self.hosts:
            return PlainTextResponse("unknown Host: open the dashboard as http(s)://127.0.0.1:PORT/\n", 421)
        path = request.url.path
        if self.token is not None:
            offered = parse_qs(request.url.query).get("token", [None])[0] if path == "/" else None
            if offered is not None and hmac.compare_digest(offered.encode(), self.token.encode()):
                redirect = RedirectResponse("/", 303)  # drop the token from the address bar and the history
                redirect.set_cookie(COOKIE, self.token, httponly=True, samesite="strict", secure=self.tls, path="/")
                return redirect
            if not self._authorised(request):
                return PlainTextResponse("a token is needed: open /?token=... once, or send Authorization\n", 401)
        if path == "/":
            return Response(self.shell, media_type="text/html; charset=utf-8")
        if path.startswith("/static/") and path[len("/static/") :] in STATIC:
            name = path[len("/static/") :]
            return Response(self.static[name], media_type=STATIC[name])
        if path == "/api/page":
            return Response(await run_in_threadpool(self.page_json), media_type="application/json")
        if path == "/favicon.ico":
            return Response(status_code=204)
        if path == "/healthz":
            return PlainTextResponse("ok\n")
        if path.startswith("/doc/"):
            return await run_in_threadpool(self.document, path[len("/doc/") :])
        return PlainTextResponse("not found\n", 404)

    def _authorised(self, request: Request) -> bool:
        assert self.token is not None
        bearer = request.headers.get("authorization", "")
        offered = bearer[len("Bearer ") :] if bearer.startswith("Bearer ") else request.cookies.get(COOKIE, "")
        return hmac.compare_digest(offered.encode(), self.token.encode())

    def page_json(self) -> bytes:
        """The page model as JSON, built at most every :data:`PAGE_CACHE_S` however many browsers poll."""
        with self._page_lock:
            now = time.monotonic()
            if self._page is None or now - self._page[0] > PAGE_CACHE_S:
                stamp = {"generated": time.strftime("%Y-%m-%d %H:%M:%S")}
                try:
                    body = json.dumps({**self.source.page(), **stamp}, allow_nan=False, default=str)
                except Exception as exc:  # noqa: BLE001 - the page says what failed; the server keeps serving
                    body = json.dumps({**_error_page(self.source.title, exc), **stamp}, default=str)
                self._page = (now, body.encode())
            return self._page[1]

    def document(self, doc_id: str) -> Response:
        try:
            doc = self.source.documents().get(doc_id)
        except Exception:  # noqa: BLE001 - a broken source is a missing document, not a crash
            doc = None
        if doc is None or not Path(doc.path).is_file():
            return PlainTextResponse("no such document\n", 404)
        return FileResponse(
            doc.path,
            media_type=doc.media_type,
            headers={"Content-Security-Policy": DOC_CSP, "Content-Disposition": "inline"},
        )


def build_app(source: PageSource, options: DashboardOptions) -> DashboardApp:
    """The app for ``options`` after :func:`check_bind` (tests use it with an ASGI client)."""
    token = check_bind(options)
    port = options.port if is_loopback(options.host) else None
    return DashboardApp(source, token=token, port=port, tls=options.tls_cert is not None)


def _server(source: PageSource, options: DashboardOptions):  # noqa: ANN202 - uvicorn.Server, imported lazily
    import uvicorn

    from shared.tls_policy import harden_tls

    app = build_app(source, options)
    config = uvicorn.Config(
        app,
        host=options.host.strip("[]"),
        port=options.port,
        ssl_certfile=str(options.tls_cert) if options.tls_cert else None,
        ssl_keyfile=str(options.tls_key) if options.tls_key else None,
        log_level="warning",
        access_log=False,
        server_header=False,
        date_header=False,
        proxy_headers=False,
        http="h11",
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        limit_concurrency=MAX_CONNECTIONS,
        timeout_keep_alive=30,
        lifespan="off",
    )
    config.load()
    if config.ssl is not None:
        harden_tls(config.ssl)
    return uvicorn.Server(config)


def dashboard_url(options: DashboardOptions) -> str:
    scheme = "https" if options.tls_cert else "http"
    host = f"[{options.host}]" if ":" in options.host and not options.host.startswith("[") else options.host
    return f"{scheme}://{host}:{options.port}/"


def serve_dashboard(source: PageSource, options: DashboardOptions, console: Console) -> None:
    """Serve until Ctrl-C (blocking). Raises :class:`DashboardError` for a refused bind or a busy port."""
    server = _server(source, options)
    console.print(
        f"{source.title}: [bold]{dashboard_url(options)}[/]"
        + (" (open /?token=… once with the token from --token-file)" if options.token_file else "")
        + "; read-only, Ctrl-C stops it",
        highlight=False,
    )
    try:
        server.run()
    except SystemExit:  # uvicorn logs a bind failure and exits
        raise DashboardError(
            f"cannot listen on {options.host}:{options.port}: is another dashboard using it?"
        ) from None
    except OSError as exc:
        raise DashboardError(f"cannot listen on {options.host}:{options.port}: {exc.strerror}") from None
    if not server.started:  # uvicorn logs a bind failure and returns
        raise DashboardError(f"cannot listen on {options.host}:{options.port}: is another dashboard using it?")


class DashboardThread:
    """A dashboard served from a thread of this process (beside ``fedrad-server start``); stopped on exit."""

    def __init__(self, source: PageSource, options: DashboardOptions) -> None:
        self.options = options
        self.server = _server(source, options)
        self.thread = threading.Thread(target=self._run, name="fedrad-dashboard", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self.server.serve())
        except SystemExit:  # uvicorn exits when it cannot bind; __enter__ reports it
            pass

    def __enter__(self) -> DashboardThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started and self.thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.server.started:
            self.server.should_exit = True
            raise DashboardError(f"cannot listen on {self.options.host}:{self.options.port}: is the port in use?")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)


def new_token() -> str:
    """A fresh token for ``--token-file`` (the docs show the one-liner; tests use this)."""
    return secrets.token_urlsafe(32)
