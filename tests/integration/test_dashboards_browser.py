"""Both dashboards in a real browser, beside a real consortium over TLS on 127.0.0.1.

Two enrolled sites join a 3-round run. site-a approved the installed code; site-b did not, so it refuses every
round with its reason (``min_sites: 2`` makes the run wait for both, the default ``min_replies: 1`` lets it go on
with site-a). While the run goes, headless Chromium (Debian's, driven by Playwright) opens the coordinator's
dashboard (``fedrad-server dashboard``) and both sites' dashboards (``fedrad-site dashboard``), each its own
process as a coordinator or hospital would start it, and checks what a person would look for:

* both sites listed as online, and the round counter advancing during the run;
* the headline curve with one point per finished round;
* site-b's refusal, in its own words, on the coordinator's page and on site-b's page;
* site-a's byte total on its page equal to ``fedrad-site audit verify --json``'s.

Screenshots go to ``test-artifacts/dashboards/`` (``FEDRAD_TEST_ARTIFACTS`` moves it).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from client.site_config import fill_site_yaml
from server.enrollment import enroll_site, init_consortium
from shared.processes import ProcessSet, executable, free_port
from shared.synth import SiteSummary
from tests.browser import browser_page, chromium_path
from tests.integration.cleanup import stop_all_and_check

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]
REPO = Path(__file__).resolve().parents[2]
ROUNDS = 3
WIDE = {"COLUMNS": "250"}
ARTIFACTS = Path(os.environ.get("FEDRAD_TEST_ARTIFACTS", REPO / "test-artifacts")) / "dashboards"


def _wait_http(url: str, proc, timeout: float = 60) -> None:  # noqa: ANN001 - a ProcessSet process
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.log_tail()
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer: {proc.log_tail()}"
        time.sleep(0.3)


def _tile(page, label: str) -> str:  # noqa: ANN001 - a Playwright page
    return page.locator(f"[data-tile='{label}'] .tile-value").first.text_content() or ""


def test_dashboards_in_a_browser(tmp_path: Path, small_cohort: list[SiteSummary]) -> None:
    if chromium_path() is None:
        browser_page().__enter__()  # skips with how to enable the browser tests
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    port = free_port()
    c = tmp_path / "consortium"
    init_consortium(c, "Dashboard Test", f"127.0.0.1:{port}")
    cfg_path = c / "consortium.yaml"
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg.update(rounds=ROUNDS, evaluate_every=1, min_sites=2, round_timeout_s=90, wait_for_sites_s=90, local_epochs=1)
    cfg_path.write_text(yaml.safe_dump(cfg))
    site_yaml: dict[str, Path] = {}
    for name, data in zip(("site-a", "site-b"), small_cohort[:2], strict=True):
        bundle = enroll_site(c, name).bundle_dir
        site_yaml[name] = fill_site_yaml(
            bundle / "site.yaml",
            data=data.dicom_dir,
            labels=data.labels_csv,
            cache_dir=tmp_path / "cache" / name,
            threads=1,
        )
    res = subprocess.run(
        [executable("fedrad-site"), "approve", "--config", str(site_yaml["site-a"]), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr  # site-b never approves: it refuses every round

    ports = {"server": free_port(), "site-a": free_port(), "site-b": free_port()}
    ps = ProcessSet(tmp_path / "logs")
    started: set = set()
    try:
        dash = {
            "server": ps.start(
                "dash-server",
                [executable("fedrad-server"), "dashboard", str(c), "--port", str(ports["server"])],
                env=WIDE,
                cwd=REPO,
            ),
            **{
                n: ps.start(
                    f"dash-{n}",
                    [executable("fedrad-site"), "dashboard", "--config", str(p), "--port", str(ports[n])],
                    env=WIDE,
                    cwd=REPO,
                )
                for n, p in site_yaml.items()
            },
        }
        server = ps.start(
            "server",
            [executable("fedrad-server"), "start", str(c), "--listen", f"127.0.0.1:{port}"],
            env=WIDE,
            cwd=REPO,
        )
        sites = {
            n: ps.start(n, [executable("fedrad-site"), "start", "--config", str(p)], env=WIDE, cwd=REPO)
            for n, p in site_yaml.items()
        }
        for name, proc in dash.items():
            _wait_http(f"http://127.0.0.1:{ports[name]}/healthz", proc)

        with browser_page() as page:
            # -- the coordinator's page, live ---------------------------------------------------------------------
            page.goto(f"http://127.0.0.1:{ports['server']}/")
            page.wait_for_selector("[data-widget='sites-table'] tbody tr")
            deadline = time.monotonic() + 240
            seen_rounds: list[int] = []
            waves: set[str] = set()  # the live "round k: train wave, asked …" line (progress.json)
            while time.monotonic() < deadline:
                assert server.poll() in (None, 0), server.log_tail()
                now = page.locator("[data-widget='run-now']")
                if now.count():
                    waves.add((now.first.text_content() or "").split(",")[0])
                text = _tile(page, "round")
                m = re.match(r"(\d+)\s*/\s*(\d+)", text)
                if m and (not seen_rounds or int(m.group(1)) != seen_rounds[-1]):
                    seen_rounds.append(int(m.group(1)))
                    if int(m.group(1)) == 1:
                        status = page.locator("[data-widget='sites-table'] td[data-col='status']").all_text_contents()
                        assert status == ["online", "online"], status
                        page.screenshot(path=str(ARTIFACTS / "coordinator-live.png"), full_page=True)
                if server.poll() == 0:
                    break
                time.sleep(0.5)
            assert server.wait(timeout=30) == 0, server.log_tail()
            time.sleep(3)  # one more poll after the last round
            text = _tile(page, "round")
            assert text.startswith(f"{ROUNDS}"), text
            seen_rounds.append(ROUNDS)
            assert len(set(seen_rounds)) >= 2 and seen_rounds == sorted(seen_rounds), seen_rounds  # it advanced
            assert any(re.fullmatch(r"round \d: (train|evaluate) wave", w) for w in waves), waves
            points = page.locator("[data-widget='curve-headline'] circle.point")
            assert points.count() == ROUNDS, points.count()
            refusal = page.locator("[data-widget='sites-table'] tr", has_text="site-b").text_content() or ""
            assert "not approved" in refusal, refusal
            assert not page.errors, page.errors  # no script error, no CSP refusal
            page.screenshot(path=str(ARTIFACTS / "coordinator.png"), full_page=True)

            # -- site-a: what left, byte for byte -------------------------------------------------------------------
            res = subprocess.run(
                [executable("fedrad-site"), "audit", "verify", "--config", str(site_yaml["site-a"]), "--json"],
                capture_output=True,
                text=True,
                timeout=120,
            )
            verified = json.loads(res.stdout)
            assert res.returncode == 0 and verified["ok"], res.stdout + res.stderr
            page.goto(f"http://127.0.0.1:{ports['site-a']}/")
            page.wait_for_selector("[data-widget='audit-status']")
            page.wait_for_function(
                "n => document.querySelector(\"[data-tile='bytes'] .tile-value\")?.textContent.replace(/,/g, '') == n",
                arg=str(verified["bytes"]),
                timeout=20_000,
            )
            assert page.locator("[data-widget='audit-status']").get_attribute("data-level") == "ok"
            assert not page.errors, page.errors
            page.screenshot(path=str(ARTIFACTS / "site-a.png"), full_page=True)

            # -- site-b: the refused runs and why ---------------------------------------------------------------------
            page.goto(f"http://127.0.0.1:{ports['site-b']}/")
            page.wait_for_selector("[data-widget='audit-entries'] tbody tr")
            refused = page.locator("[data-widget='audit-entries'] tr", has_text="refused").first.text_content() or ""
            assert "not approved" in refused, refused
            assert not page.errors, page.errors
            page.screenshot(path=str(ARTIFACTS / "site-b.png"), full_page=True)
        for name, proc in sites.items():
            assert proc.poll() is None, f"{name} stopped: {proc.log_tail()}"
        run_dir = next((c / "runs").iterdir())
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
        assert [r["no_reply"] for r in rows] == [{"train": [], "evaluate": []}] * ROUNDS  # site-b answered: a refusal
    finally:
        started = stop_all_and_check(ps, started | ps.all_procs())
