"""Hostile strings in every widget, drawn by the real script in a real browser: shown as text, never run.

Site names, metric keys, refusal reasons, segment and finding names all reach the page as widget text. Each
field here carries markup that would run script if it were ever inserted as HTML; the test checks that no
script ran, no element was injected, and the strings are visible as typed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.dashboard import widgets as W
from shared.dashboard.server import DashboardOptions, DashboardThread, Document
from shared.processes import free_port
from tests.browser import browser_page

PAYLOADS = [
    "<img src=x onerror=\"window.__pwned='img'\">",
    "<script>window.__pwned='script'</script>",
    "</text><svg onload=\"window.__pwned='svg'\">",
    "\"><iframe src=javascript:window.__pwned='iframe'>",
    "{{7*7}} ${7*7} &lt;b&gt;",
]


class HostileSource:
    title = "site <script>window.__pwned='title'</script>"

    def page(self) -> dict:
        p = PAYLOADS
        return W.page(
            self.title,
            p[0],
            [
                W.section(
                    "s1",
                    p[1],
                    [
                        W.tiles("tiles", [(p[0], p[1], "error")]),
                        W.banner("banner", "error", p[2]),
                        W.table("table", [p[3], "finding"], [[p[0], W.cell(p[1], "warn")], [p[2], p[4]]]),
                        W.kv("kv", [(p[0], p[3])], title=p[2]),
                        W.links("links", [(p[1], "/doc/r")], title=p[0]),
                        W.text("text", "\n".join(p)),
                    ],
                    note=p[3],
                ),
                W.section(
                    "s2",
                    "charts",
                    [
                        W.line(
                            "line", p[0], [(p[1], [(1, 0.5), (2, 0.6)]), (p[2], [(1, 0.4)])], x_label=p[3], y_label=p[4]
                        ),
                        W.bars("bars", p[2], [p[0], p[1]], [(p[3], [1, 2])], y_label=p[0]),
                    ],
                ),
            ],
        )

    def documents(self) -> dict[str, Document]:
        return {"r": Document(Path(__file__), "text/plain")}


@pytest.mark.timeout(120)
def test_hostile_strings_are_text_in_every_widget() -> None:
    port = free_port()
    with DashboardThread(HostileSource(), DashboardOptions(port=port)), browser_page() as page:
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_selector("[data-widget='bars'] rect.bar")
        page.wait_for_timeout(500)
        assert page.evaluate("window.__pwned") is None
        assert page.locator("main img, main script, main iframe, main svg[onload], main [onerror]").count() == 0
        body = page.locator("main").inner_text()
        for payload in PAYLOADS:
            assert payload in body, payload  # shown as typed
        assert page.title() == HostileSource.title
        assert page.locator("[data-widget='line'] circle.point").count() == 3
        assert page.locator("[data-widget='links'] a").get_attribute("href") == "/doc/r"
        assert not [e for e in page.errors if "favicon" not in e], page.errors
