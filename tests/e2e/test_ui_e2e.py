"""What a person sees: the Prefect UI in headless Chromium lists the served deployment with its
schedule, and a paused approval can be answered with the UI's Resume form."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from playwright.sync_api import Page, sync_playwright

from tests.e2e.test_approvals_e2e import GatedRun
from tests.fixtures.e2e_env import REPO, Workspace
from tests.support.approvers import Authenticator, run_state, wait_until, wrong_code

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
    """The Resume form asks for the one-time code: a wrong one typed in the form is refused
    (the run keeps waiting), bob's valid one lets the run go on."""
    codes = Authenticator(e2e_workspace.ledger_url)
    run = GatedRun(e2e_workspace, prefect_api, tmp_path / "marker")
    try:
        answer_until_heard(page, prefect_api, run, "bob", lambda: wrong_code("bob"), tmp_path)
        wait_until(lambda: "refused" in run.events(), "the refusal")
        [refusal] = [e for e in e2e_workspace.ledger().approval_events(run.run_id)][1:]
        assert (refusal.actor, refusal.reason) == (
            "bob",
            "wrong or expired one-time code for 'bob'",
        )
        wait_until(lambda: run_state(prefect_api, run.run_id) == "PAUSED", "a pause again")
        assert not run.marker.exists()
        answer_until_heard(page, prefect_api, run, "bob", lambda: codes.code("bob"), tmp_path)
        code, out = run.finish()
        assert code == 0, out
        assert run.marker.read_text() == "changed"
        decision = e2e_workspace.ledger().approval_events(run.run_id)[-1]
        assert (decision.event, decision.actor) == ("approved", "bob")
        assert decision.reason == "approved in the UI, CHG-77"
    finally:
        run.stop(prefect_api)
        codes.close()


def answer_until_heard(
    page: Page, api: str, run: GatedRun, approver: str, code: Callable[[], str], shots: Path
) -> None:
    """Answer in the UI until the flow hears it. The SQLite-backed test server sometimes fails
    a resume with "database is locked" on this loaded machine, and the UI does not retry it: the
    run stays paused with nothing recorded. Then the approver answers again (a fresh code: the
    lost one was never spent), at most 3 times, as a person would."""
    before = len(run.events())
    for attempt in range(1, 4):
        answer_in_ui(page, api, run.run_id, approver, code(), shots / f"{before}-{attempt}.png")
        try:
            wait_until(lambda: len(run.events()) > before, "the flow to record the answer", 20)
            return
        except AssertionError:
            if run_state(api, run.run_id) != "PAUSED":
                raise
    raise AssertionError("three answers given in the UI never reached the paused flow")


def answer_in_ui(page: Page, api: str, run_id: str, approver: str, code: str, shot: Path) -> None:
    """Open the paused run in the UI, press Resume, fill in the form (approved, approver,
    code, reason) and submit it."""
    ui = api.removesuffix("/api")
    page.goto(f"{ui}/runs/flow-run/{run_id}", wait_until="networkidle")
    page.get_by_role("button", name="Resume").first.click(timeout=30_000)
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("one-time code", exact=False).first.wait_for(timeout=15_000)
    page.screenshot(path=str(shot))
    dialog.locator("input[type='checkbox'], [role='switch']").first.click()
    text_inputs = dialog.locator("input[type='text'], input:not([type]), textarea")
    assert text_inputs.count() == 3, page.content()[:2000]  # approver, code, reason
    text_inputs.nth(0).fill(approver)
    text_inputs.nth(1).fill(code)
    text_inputs.nth(2).fill("approved in the UI, CHG-77")
    dialog.get_by_role("button", name="Submit").click()
    dialog.wait_for(state="hidden", timeout=15_000)


def test_the_ui_run_form_asks_who_requests_and_the_api_refuses_none(
    served: subprocess.Popen[bytes], prefect_api: str, page: Page, tmp_path: Path
) -> None:
    """restore/manual sets no requester: its run form in the UI has an empty, required
    requested_by field, and the API refuses a run that does not say who asks."""
    url = f"{prefect_api}/deployments/name/restore/manual"
    # `served` waits for the first deployment; the others follow it
    wait_until(lambda: httpx.get(url, timeout=10).status_code == 200, "restore/manual served")
    dep = httpx.get(url, timeout=10).json()
    assert "requested_by" in dep["parameter_openapi_schema"]["required"]
    assert "requested_by" not in dep["parameters"]
    refused = httpx.post(
        f"{prefect_api}/deployments/{dep['id']}/create_flow_run",
        json={"parameters": {"env": "gated"}},
        timeout=30,
    )
    assert refused.status_code in (409, 422), refused.text
    assert "requested_by" in refused.text, refused.text
    ui = prefect_api.removesuffix("/api")
    page.goto(f"{ui}/deployments/deployment/{dep['id']}/run", wait_until="networkidle")
    page.get_by_text("who asks for this run", exact=False).first.wait_for(timeout=30_000)
    page.screenshot(path=str(tmp_path / "run-form.png"))
    labels = page.locator("label, legend, p, span, div").all_inner_texts()
    # the UI marks parameters that have a default "(Optional)": env does, requested_by not
    assert "env (Optional)" in labels and "requested_by" in labels, labels
    assert "requested_by (Optional)" not in labels
    box = page.get_by_text("who asks for this run").first.locator("xpath=following::textarea[1]")
    assert box.input_value() == ""  # nothing filled in for the person asking
