"""The end of a deploy or rollback: verify the release (health check, smoke tests, the
verification window) and finish the run with its report."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from prefect.client.schemas.objects import State
from prefect.states import Completed, Failed

from flows.common.run import RunbookRun
from opsflow.inventory.changes import Verification
from opsflow.redaction import redact
from opsflow.releases import ReleaseReport, render_release_report
from opsflow.reports import publish_markdown
from opsflow.results import Status


def verify_release(
    run: RunbookRun, health: Callable[..., Any] | None, verify: Verification | None
) -> tuple[list[str], str | None]:
    """After a deploy or rollback: the health-check runbook as a subflow (``health``; a
    Critical result fails), every smoke test of the environment, then the verification
    window (``verify``). Each is a step. Returns what was checked (one line each) and the
    first failed check (None: all passed); stops at that failure."""
    from tasks.http import run_smoke_test
    from tasks.verification import verify_window

    lines: list[str] = []

    def check(name: str, target: str, attempt: Callable[[], tuple[bool, str]]) -> str | None:
        with run.step(name, target) as step:
            try:
                ok, text = attempt()
            except Exception as exc:  # noqa: BLE001 - a check that cannot run has failed
                ok, text = False, redact(str(exc) or type(exc).__name__)
            step.summary = text
            if not ok:
                step.fail(text)
        lines.append(f"{name} {target}: {'passed' if ok else 'FAILED'}: {text}")
        return None if ok else f"{name} {target}: {text}"

    def health_check() -> tuple[bool, str]:
        assert health is not None
        state = health(
            env=run.env_name, requested_by=run.requested_by, notify=False, return_state=True
        )
        return not state.is_failed(), redact(state.message or state.name or "")

    def smoke(test: Any) -> tuple[bool, str]:
        result = run_smoke_test(test)
        return result.status != Status.CRITICAL, f"{result.status.value}: {result.summary}"

    def window(verify: Verification) -> tuple[bool, str]:
        verdict = verify_window(run.env, verify)
        return verdict.passed, f"{len(verdict.samples)} sample(s): {verdict.reason}"

    attempts: list[tuple[str, str, Callable[[], tuple[bool, str]]]] = []
    if health is not None:
        attempts.append(("health_check", run.env_name, health_check))
    attempts += [
        ("run_smoke_test", t.name, functools.partial(smoke, t)) for t in run.env.smoke_tests
    ]
    if verify is not None:
        attempts.append(("verify_window", run.env_name, functools.partial(window, verify)))
    for name, target, attempt in attempts:
        failed = check(name, target, attempt)
        if failed:
            return lines, failed
    return lines, None


def finish_release(run: RunbookRun, report: ReleaseReport) -> State[Any]:
    """Publish the report, record the run, notify, end Completed or Failed."""
    report.seconds = round(run.elapsed, 3)
    markdown = render_release_report(report, run.started_at)
    publish_markdown(run.key, markdown, f"{run.runbook} of {run.env_name}: {report.outcome}")
    ok, summary = report.succeeded, report.summary()
    status = "complete" if ok else report.outcome.replace(" ", "-")
    run.finish(status, summary, report.model_dump(mode="json"))
    send = run.notifier()
    if send is not None and not report.dry_run:
        send(f"opsflow: {run.runbook} of {run.env_name} {report.outcome.upper()}", markdown)
    message = f"{run.runbook} of {run.env_name}: {summary}"
    return Completed(message=message, data=report) if ok else Failed(message=message, data=report)
