"""Headless Chromium for the dashboard tests: Debian's browser, driven by Playwright, never downloaded.

Playwright's own browser download cannot work offline, so the system browser is launched by its path
(``FEDRAD_CHROMIUM``, else ``chromium`` or ``chromium-browser`` on PATH). Without one, the browser tests skip
and say how to enable them. The flags keep Chromium off the network: without them it tries Google's hosts at
every start.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

ENABLE = "install Debian's browser (`apt-get install chromium`; .ci/run does) or set FEDRAD_CHROMIUM to its path"
FLAGS = [
    "--headless=new",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
]


def chromium_path() -> str | None:
    explicit = os.environ.get("FEDRAD_CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    return shutil.which("chromium") or shutil.which("chromium-browser")


@contextmanager
def browser_page(width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A fresh page in a fresh headless Chromium; skips the test when there is no browser or no Playwright."""
    path = chromium_path()
    if path is None:
        pytest.skip(f"no Chromium for the browser tests: {ENABLE}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("Playwright is not installed: pip install -e '.[test]'")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=path, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.errors = []  # uncaught script errors and CSP refusals: a test asserts there are none
            page.on("pageerror", lambda exc: page.errors.append(str(exc)))
            page.on("console", lambda m: page.errors.append(m.text) if m.type == "error" else None)
            yield page
        finally:
            browser.close()
