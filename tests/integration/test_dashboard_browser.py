"""The dashboard in a real browser (Debian's Chromium, driven by Playwright) during a real
canary: the real operator on the local control plane, real Envoy sidecars, the real registry
and Prometheus (tests/support/canary.py), and the dashboard as its own process, as a person
runs it with their kubeconfig.

One page is opened once and never reloaded: the release appears in the list, its page shows
the steps advance, a Promote from the page moves the rollout on, when the faulty version's
analysis fails the same page shows the rollback, and "Undo to this" on a kept revision puts it
back at once. A read-only dashboard shows no button and
refuses a request even with its token.

Screenshots go to test-artefacts/dashboard/ (list, pause step, mid-canary, after the
rollback, after the undo).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from localcluster.oci_publish import publish
from tests.support.canary import (
    ANALYSIS,
    NS,
    RELEASE,
    Mesh,
    Traffic,
    brief,
    install_v1,
    operated_mesh,
    release,
    report,
)
from tests.support.polling import poll
from tests.support.wasm import with_custom_section

pytestmark = [pytest.mark.integration, pytest.mark.envoy]

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTEFACTS = REPO_ROOT / "test-artefacts" / "dashboard"
CHROMIUM = "/usr/bin/chromium"
KEY = f"{NS}/{RELEASE}"
# Generous: a step of the canary waits for sidecars to move and for Prometheus to scrape.
STEP_MS = 120_000

# The faulty version answers every other request with a 503: the pause step holds it (nothing
# judges a pause), and the analysis step after it fails on success-rate and rolls it back. Two
# failures are tolerated, so the plot has a few points before the third ends the rollout.
TOLERANT = {"metrics": [{**m, "count": 5, "failureLimit": 2} for m in ANALYSIS["metrics"]]}
STEPS: list[dict[str, Any]] = [
    {"setWeight": 25},
    {"pause": {}},
    {"setWeight": 50},
    {"analysis": TOLERANT},
]


@pytest.fixture(scope="module")
def mesh(
    tmp_path_factory: pytest.TempPathFactory, filter_modules: dict[str, bytes]
) -> Iterator[Mesh]:
    with operated_mesh(tmp_path_factory.mktemp("dashboard")) as (cluster, operator):
        found = Mesh(cluster, operator)
        for name in ("security-headers", "local-5xx"):
            wasm = with_custom_section(filter_modules[name], "dashboard", name.encode())
            digest = publish(cluster.registry.host, f"filters/{name}", "e2e", wasm, "oci-wasm")
            found.modules[name] = f"oci://{cluster.registry.host}/filters/{name}@{digest}"
        try:
            yield found
        finally:
            report(found)


@contextmanager
def dashboard(kubeconfig: Path, log: Path, *extra: str, plugin: bool = False) -> Iterator[str]:
    """The dashboard on a free port, as `python -m filterrelease.dashboard` or (plugin) as
    `kubectl filterrelease dashboard` runs it; its URL. Stopped on the way out."""
    program = (
        [str(Path(sys.executable).parent / "kubectl-filterrelease"), "dashboard", "-A"]
        if plugin
        else [sys.executable, "-m", "filterrelease.dashboard"]
    )
    with log.open("w") as out:
        proc = subprocess.Popen(
            [*program, "--kubeconfig", str(kubeconfig), "--port", "0", "--no-browser", *extra],
            stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        try:

            def url() -> str | None:
                assert proc.poll() is None, log.read_text()
                found = re.search(r"dashboard on (http://\S+/)", log.read_text())
                return found[1] if found else None

            yield poll(url, timeout=30, what="the dashboard's URL", on_timeout=log.read_text)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            print(f"\n--- dashboard log ({log}) ---\n{log.read_text()[-3000:]}")


@pytest.fixture
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


def shot(page: Page, name: str) -> None:
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTEFACTS / f"{name}.png"), full_page=True)


def current_step(page: Page) -> Any:
    return page.locator('#steps li[aria-current="step"]')


@pytest.mark.timeout(900)
def test_the_dashboard_follows_a_canary_live_and_acts_on_it(
    mesh: Mesh, browser: Browser, tmp_path: Path
) -> None:
    started = time.monotonic()
    install_v1(mesh)
    kubeconfig = mesh.cluster.admin_kubeconfig
    with dashboard(kubeconfig, tmp_path / "dashboard.log") as url:
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        # A script error, or anything the Content-Security-Policy blocked, is a failure.
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(url)
        # Set once: still there at the end proves the page was never reloaded.
        page.evaluate("window.__openedOnce = true")

        # The list: the release, live, with its phase as a coloured badge and as text.
        row = page.locator(f'tr[data-key="{KEY}"]')
        expect(row).to_have_attribute("data-phase", "Healthy", timeout=60_000)
        expect(row.locator(".badge")).to_have_text("Healthy")
        expect(page.locator('#counts li[data-phase="Healthy"]')).to_contain_text("1")
        expect(page.locator("#connection")).to_have_text("● live")

        with Traffic(mesh):
            release(mesh, "local-5xx", {"fail_every": 2, "status": 503, "version": "bad"}, STEPS)
            expect(row).to_have_attribute("data-phase", "Progressing", timeout=60_000)
            shot(page, "1-list")

            # Its page, by keyboard: the link is focusable and Enter follows it.
            page.locator(f'tr[data-key="{KEY}"] a').focus()
            page.keyboard.press("Enter")
            expect(page.locator("#release-title")).to_have_text(KEY)
            # The pause step, once the first 25 % of the pods run the canary.
            expect(current_step(page)).to_have_attribute("data-step", "2", timeout=STEP_MS)
            expect(page.locator("#fact-weight")).to_have_text("25%")
            expect(page.locator("#steps li").nth(0)).to_have_class("done")
            expect(page.locator('#pods [data-track="canary"] li')).to_have_count(1)
            shot(page, "2-release-pause-step")

            # Actions: offered to the admin. Abort asks first; cancelled, nothing is sent.
            promote = page.locator('#actions button[data-request="promote"]')
            expect(promote).to_be_visible()
            page.locator('#actions button[data-request="abort"]').click()
            expect(page.locator("#confirm")).to_be_visible()
            expect(page.locator("#confirm-text")).to_contain_text("Abort the rollout?")
            page.keyboard.press("Escape")
            expect(page.locator("#confirm")).to_be_hidden()
            expect(page.locator("#action-result")).to_be_empty()
            # Promote ends the pause step.
            promote.click()
            expect(page.locator("#action-result")).to_have_text(
                f"asked the operator to promote {KEY}", timeout=30_000
            )
            expect(current_step(page)).to_have_attribute("data-step", "4", timeout=STEP_MS)
            expect(page.locator("#fact-weight")).to_have_text("50%")
            expect(page.locator("#events")).to_contain_text("by request", timeout=30_000)

            # Measurements of the analysis step, plotted as they come.
            points = page.locator('#metrics [data-metric="success-rate"] circle.canary-point')
            expect(points.nth(1)).to_be_attached(timeout=STEP_MS)
            shot(page, "3-release-mid-canary")

            # The analysis fails: the same page shows the rollback.
            expect(page.locator("#release-phase")).to_have_text("Degraded", timeout=STEP_MS)
            expect(page.locator("#history tbody tr").first).to_contain_text("RolledBack")
            expect(page.locator("#fact-aborted")).to_contain_text("success-rate")
            expect(page.locator("#steps li.stopped")).to_have_attribute("data-step", "4")
            expect(page.locator('#actions button[data-request="retry"]')).to_be_visible()
            # Three failed measurements at least: every one of them is on the plot.
            assert points.count() >= 3
            shot(page, "4-release-rolled-back")

            # A good version goes out in one step; then "Undo to this" on v1's revision puts
            # it back on every pod at once (asked first), and the same page shows the drift.
            release(mesh, "security-headers", {"version": "v2"}, [{"setWeight": 100}])
            expect(page.locator("#release-phase")).to_have_text("Healthy", timeout=STEP_MS)
            undo = page.locator('#history button[data-request="undo:1"]')
            expect(undo).to_be_visible(timeout=30_000)
            undo.click()
            expect(page.locator("#confirm")).to_be_visible()
            page.locator("#confirm-yes").click()
            expect(page.locator("#release-phase")).to_have_text("Degraded", timeout=60_000)
            expect(page.locator("#release-message")).to_contain_text("undone to revision 1")
            # The answer to the undo request spoke of the Healthy release: it went with that phase.
            expect(page.locator("#action-result")).to_be_empty()
            expect(page.locator("#history tbody tr").first).to_contain_text("Undone")
            shot(page, "5-release-undone")

            page.get_by_role("link", name="← All releases").click()
            expect(row).to_have_attribute("data-phase", "Degraded")
            expect(page.locator('#counts li[data-phase="Degraded"]')).to_contain_text("1")
        assert page.evaluate("window.__openedOnce") is True
        assert errors == []

    print(f"\nbrowser test took {time.monotonic() - started:.0f}s (after the cluster started)")


@pytest.mark.timeout(300)
def test_a_read_only_dashboard_shows_no_action_and_refuses_requests(
    mesh: Mesh, browser: Browser, tmp_path: Path
) -> None:
    if not mesh.cluster.kubectl("get", "frel", RELEASE, "-n", NS, check=False).stdout:
        install_v1(mesh)
    kubeconfig = mesh.cluster.admin_kubeconfig
    # Through the kubectl plugin's own command line this time: the way a person starts it.
    with dashboard(kubeconfig, tmp_path / "dashboard.log", "--read-only", plugin=True) as url:
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        page.goto(f"{url}#/{NS}/{RELEASE}")
        expect(page.locator("#mode")).to_have_text("read-only")
        expect(page.locator("#release-phase")).not_to_be_empty(timeout=30_000)
        expect(page.locator("#history tbody tr").first).to_be_visible()
        expect(page.locator("button[data-request]")).to_have_count(0)
        # Even with the page's own token, the server refuses.
        answer = page.evaluate(
            """async (path) => {
                const token = document.querySelector('meta[name="filterrelease-token"]').content;
                const r = await fetch(path, {method: "POST", body: '{"request": "abort"}',
                    headers: {"Content-Type": "application/json", "X-Filterrelease-Token": token}});
                return [r.status, (await r.json()).message];
            }""",
            f"/api/releases/{NS}/{RELEASE}/request",
        )
        assert answer == [403, "this dashboard is read-only"]
    annotations = mesh.cluster.kubectl(
        "get", "frel", RELEASE, "-n", NS, "-o", "jsonpath={.metadata.annotations}"
    ).stdout
    assert "filterrelease.dev/request" not in annotations, brief(mesh)
