"""What a person sees: the Prefect UI in headless Chromium lists the served deployment with its
schedule, and a paused approval can be answered with the UI's Resume form."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from tests.e2e.test_approvals_e2e import GatedRun
from tests.fixtures.e2e_env import Workspace

pytestmark = pytest.mark.e2e
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Page:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is required (scripts/install-system-deps.sh installs it)"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        yield context.new_page()  # type: ignore[misc]
        browser.close()


def test_ui_lists_the_scheduled_deployment(
    served: subprocess.Popen[bytes], prefect_api: str, page: Page, tmp_path: Path
) -> None:
    ui = prefect_api.removesuffix("/api")
    page.goto(f"{ui}/deployments", wait_until="networkidle")
    page.get_by_text("daily").first.wait_for(timeout=30_000)
    page.screenshot(path=str(tmp_path / "deployments.png"))
    assert "health-check" in page.content()


def test_approval_answered_in_the_ui_resume_form(
    e2e_workspace: Workspace, prefect_api: str, page: Page, tmp_path: Path
) -> None:
    run = GatedRun(e2e_workspace, prefect_api, tmp_path / "marker")
    try:
        ui = prefect_api.removesuffix("/api")
        page.goto(f"{ui}/runs/flow-run/{run.run_id}", wait_until="networkidle")
        page.get_by_role("button", name="Resume").first.click(timeout=30_000)
        dialog = page.get_by_role("dialog")
        dialog.get_by_text("approved", exact=False).first.wait_for(timeout=15_000)
        page.screenshot(path=str(tmp_path / "resume-form.png"))
        dialog.locator("input[type='checkbox'], [role='switch']").first.click()
        text_inputs = dialog.locator("input[type='text'], input:not([type]), textarea")
        text_inputs.nth(0).fill("bob")
        text_inputs.nth(1).fill("approved in the UI, CHG-77")
        dialog.get_by_role("button", name="Submit").click()
        code, out = run.finish()
        assert code == 0, out
        assert run.marker.read_text() == "changed"
        decision = e2e_workspace.ledger().approval_events(run.run_id)[-1]
        assert (decision.event, decision.actor) == ("approved", "bob")
    finally:
        run.stop(prefect_api)
