"""What both ``dashboard`` commands share: the serving options, and serving with a refused bind as exit 2."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from shared.cli_support import out
from shared.config import ConfigError

if TYPE_CHECKING:
    from shared.dashboard.server import PageSource

HostOpt = typer.Option("127.0.0.1", "--host", help="Address to serve on; off this machine it needs TLS and a token.")
TlsCertOpt = typer.Option(None, "--tls-cert", help="TLS certificate (PEM) to serve HTTPS with.")
TlsKeyOpt = typer.Option(None, "--tls-key", help="Its private key (PEM).")
TokenFileOpt = typer.Option(None, "--token-file", help="A file (mode 600) holding the token every request must carry.")


def serve_from_cli(
    make_source: Callable[[], PageSource],
    host: str,
    port: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    token_file: Path | None,
) -> None:
    """Check the bind before any work (a refused one costs nothing), build the page source, serve until Ctrl-C.

    A refused bind or a busy port is a :class:`ConfigError` (exit 2, one line); a source with ``close()`` (the
    site page's background check) is closed on the way out."""
    from shared.dashboard.server import DashboardError, dashboard_options, serve_dashboard  # the web stack, when used

    try:
        options = dashboard_options(host, port, tls_cert, tls_key, token_file)
        source = make_source()
        try:
            serve_dashboard(source, options, out)
        finally:
            close = getattr(source, "close", None)
            if callable(close):
                close()
    except DashboardError as exc:
        raise ConfigError(str(exc)) from None
