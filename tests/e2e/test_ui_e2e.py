"""What a person sees: the Prefect UI in headless Chromium lists the served deployment with its
schedule, and a paused approval can be answered with the UI's Resume form."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from playwright.sync_api import Page, sync_playwright

from tests.e2e.test_approvals_e2e import GatedRun
from tests.fixtures.e2e_env import REPO, Workspace

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
# prefect.yaml's crons as the Prefect UI words them; a new cron needs its wording here
UI_WORDING = {"0 9 * * *": "At 09:00 AM every day"}


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Page:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is required (scripts/install-system-deps.sh installs it)"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        yield context.new_page()  # type: ignore[misc]
        browser.close()


def yaml_schedules(deployment: str) -> list[dict[str, Any]]:
    """The schedules prefect.yaml (the single source of deployments) gives ``deployment``."""
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    [dep] = [d for d in spec["deployments"] if d["name"] == deployment]
    return list(dep["schedules"])


def test_ui_shows_the_deployment_with_its_schedule(
    served: subprocess.Popen[bytes], prefect_api: str, page: Page, tmp_path: Path
) -> None:
    [wanted] = yaml_schedules("daily")
    # what the server holds: exactly prefect.yaml's schedule, active
    dep = httpx.get(f"{prefect_api}/deployments/name/health-check/daily", timeout=10).json()
    served_schedules = [
        (s["schedule"]["cron"], s["schedule"]["timezone"], s["active"]) for s in dep["schedules"]
    ]
    assert served_schedules == [(wanted["cron"], wanted["timezone"], wanted["active"])]
    assert wanted["active"] is True and dep["paused"] is False, dep
    # how the UI words that cron (Prefect's UI renders crons with cronstrue)
    shown = UI_WORDING[wanted["cron"]]
    ui = prefect_api.removesuffix("/api")

    # the deployments list: the row of health-check/daily shows the schedule
    page.goto(f"{ui}/deployments", wait_until="networkidle")
    row = page.locator("tr").filter(has=page.get_by_role("link", name="daily", exact=True))
    row.first.wait_for(timeout=30_000)
    page.screenshot(path=str(tmp_path / "deployments.png"))
    assert row.count() == 1, row.count()
    assert "health-check" in row.inner_text()
    assert shown in row.inner_text(), row.inner_text()

    # the deployment's own page: one schedule card with that wording and its toggle on
    page.goto(f"{ui}/deployments/deployment/{dep['id']}", wait_until="networkidle")
    cards = page.locator(".deployment-schedule-card")
    cards.first.wait_for(timeout=30_000)
    page.screenshot(path=str(tmp_path / "deployment.png"))
    assert cards.count() == 1, cards.all_inner_texts()
    assert cards.first.inner_text().strip() == shown
    toggle = cards.first.get_by_role("switch")
    assert toggle.get_attribute("aria-checked") == "true", "the schedule is shown inactive"


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
