"""Maintenance in a window (seeds 002 "Maintenance Windows", 003 "Regular Maintenance
Schedule" and "Database Maintenance", 004 daily/weekly/monthly tasks, 000 "Scheduled
Maintenance").

Order: plan → window guard (``opsflow.windows.change_allowed``: outside the inventory's
``maintenance_window`` or in a change freeze the run is refused, naming the next window;
``variant=emergency`` or ``override_window_reason`` runs anyway, with an approval and a
reason) → approval (protected environment, emergency, override, ``vacuum_full``) → the
environment's lock ``env-<env>`` → pre-maintenance backup (the backup runbook as a subflow; if
it fails nothing is changed) and whether a rollback is possible (the newest backups
drill-verified) → maintenance mode on → the variant's steps → maintenance mode **always** off
again (a ``finally``, plus the flow's on-cancellation / on-crashed hook for a run that was
cancelled or killed; if turning it off fails the run fails and notifies) → post-maintenance
health check (subflow) → report ``maintenance-<env>``, ledger run, notification.

Steps of the variants (each a task, each a ledger step with its before/after figures):

* weekly: per PostgreSQL database measure → ``VACUUM (ANALYZE)`` per table → ``REINDEX
  CONCURRENTLY`` of bloated indexes → measure again; per SQLite database optimize /
  checkpoint / VACUUM; Redis cleanup by the inventory's rules; log archive; container and pod
  log summary; capacity over 30 days.
* monthly: weekly + the performance comparison (the inventory's benchmark probe) + the DR
  drill (subflow).
* quarterly: monthly, the capacity report over 90 days, and the security review.
* emergency: the weekly steps, outside the window, with approval and a reason.

A step that would end after the window closes (its longest duration in the last runs, or
``maintenance.step_budget`` the first time) is skipped and reported, not started.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prefect import Flow
from prefect.client.schemas.objects import FlowRun
from prefect.logging.loggers import flow_run_logger
from prefect.states import Completed, Failed, State

from flows.backup import backup as backup_flow
from flows.common import (
    CATALOG_SCAN,
    LOCK_WAIT_SECONDS,
    ApprovalWait,
    LockWait,
    RunbookRun,
    pg_reach,
    runbook_flow,
)
from flows.dr_drill import dr_drill as drill_flow
from flows.health_check import health_check as health_flow
from opsflow import catalog
from opsflow.errors import PermanentError
from opsflow.inventory import load_inventory
from opsflow.ledger import Ledger, utcnow
from opsflow.maintenance import (
    MODE_OFF,
    MODE_ON,
    RUNBOOK,
    MaintenanceReport,
    MaintenanceStep,
    StepStatus,
    Variant,
    needs_approval,
    plan_maintenance,
    render_maintenance_report,
    rollback_possible,
)
from opsflow.redaction import redact
from opsflow.reports import publish_chart, publish_markdown, publish_table
from opsflow.windows import change_allowed, current_window
from tasks.app_logs import summarize_app_logs
from tasks.capacity import capacity_report, compare_performance
from tasks.http.maintenance_mode import set_maintenance_mode, switch_maintenance_mode
from tasks.log_archive import archive_logs
from tasks.postgres.maintenance import measure_postgres, reindex_postgres, vacuum_postgres
from tasks.redis import clean_redis
from tasks.sqlite import maintain_sqlite

HISTORY_RUNS = 5
"""A step's expected duration is its longest of this many last runs."""


# --- applying ----------------------------------------------------------------------------------


def guard_window(run: RunbookRun, report: MaintenanceReport, override: bool) -> datetime | None:
    """Refuse outside the window or in a freeze (recorded ``refused``), unless overridden;
    return when the window closes (None: no window to keep to, or overridden)."""
    now = datetime.now(UTC)
    verdict = change_allowed(run.env, now, needs_window=True)
    if override:
        report.window = f"{verdict.reason}; overridden: {report.reason}"
        return None
    if not verdict.allowed:
        message = (
            f"{RUNBOOK} of {run.env_name} refused: {verdict.reason}; nothing was changed (fix: "
            "run it in the window, or pass override_window_reason=<why> (or variant=emergency "
            "with reason=<why>) and get it approved)"
        )
        run.finish("refused", message, {"window": verdict.name, "reason": verdict.reason})
        raise PermanentError(message)
    report.window = verdict.reason
    window = run.env.maintenance_window
    current = current_window(window, now) if window is not None else None
    return current[1].astimezone(UTC) if current is not None else None


def expected_seconds(run: RunbookRun, step: str, target: str) -> float:
    rows = run.ledger.step_history(run.env_name, step, runbook=RUNBOOK, limit=50)
    done = [r.duration_ms / 1000 for r in rows if r.target == target and r.status != "skipped"]
    budget = run.env.maintenance.step_budget.total_seconds()
    return max(done[:HISTORY_RUNS]) if done else budget


def do_step(
    run: RunbookRun,
    report: MaintenanceReport,
    name: str,
    target: str,
    until: datetime | None,
    call: Callable[..., MaintenanceStep],
    *args: Any,
    **kwargs: Any,
) -> MaintenanceStep:
    """One maintenance step, ``call(*args, **kwargs)``: skipped when it would end after
    ``until`` (the window's end); otherwise run and recorded with its figures. A step that
    raises is recorded failed; the others go on."""
    if until is not None:
        left = max((until - datetime.now(UTC)).total_seconds(), 0.0)
        need = expected_seconds(run, name, target)
        if need > left:
            why = f"would end after the window closes (expected {need:.0f}s, {left:.0f}s left)"
            return skip(run, report, name, target, why)
    started = time.monotonic()
    with run.step(name, target) as step:
        try:
            done = call(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - one failed step does not stop maintenance
            done = MaintenanceStep(
                step=name, target=target, status="failed", summary=redact(str(exc) or repr(exc))
            )
        done.step, done.target = name, target
        done.seconds = round(time.monotonic() - started, 3)
        step.summary, step.details = done.summary, done.ledger_details()
        if done.status == "failed":
            step.fail(done.summary)
        elif done.status != "complete":
            step.status = done.status
    report.steps.append(done)
    return done


def skip(
    run: RunbookRun, report: MaintenanceReport, name: str, target: str, why: str
) -> MaintenanceStep:
    done = MaintenanceStep(step=name, target=target, status="skipped", summary=why)
    run.record(name, target, "skipped", why)
    report.steps.append(done)
    return done


def pre_backup(run: RunbookRun, report: MaintenanceReport, skip: bool) -> bool:
    """The pre-maintenance backup (a subflow); False when it failed: nothing is changed."""
    env = run.env
    if skip or env.backup_store is None or not (env.databases or env.redis):
        why = "skip_backup=true" if skip else "no backup_store or nothing to back up"
        report.backup = f"none ({why}, requested by {run.requested_by})"
        run.record("backup", run.env_name, "skipped", report.backup)
        return True
    with run.step("backup", run.env_name) as step:
        state = backup_flow(env=run.env_name, requested_by=run.requested_by, return_state=True)
        if not state.is_completed():
            report.backup = f"FAILED: {redact(state.message or 'failed')}"
            step.fail(report.backup)
            return False
        report.backup = f"taken by backup run {state.state_details.flow_run_id}"
        step.summary = report.backup
    return True


def check_rollback(run: RunbookRun, report: MaintenanceReport) -> None:
    with run.step("check_rollback", run.env_name) as step:
        entries = catalog.fold(run.ledger.backups(env=run.env_name, limit=CATALOG_SCAN))
        passed = {d.backup_id for d in run.ledger.drills(env=run.env_name) if d.outcome == "passed"}
        report.rollback = rollback_possible(run.env_name, run.env, entries, passed)
        step.summary = report.rollback
        if "NO backup" in report.rollback or "never" in report.rollback:
            step.status = "degraded"


def run_subflow(run: RunbookRun, flow_fn: Any, **params: Any) -> MaintenanceStep:
    """Another runbook as a subflow: complete, degraded (it ended Completed with another name,
    e.g. Degraded) or failed."""
    state = flow_fn(env=run.env_name, requested_by=run.requested_by, return_state=True, **params)
    status: StepStatus = "failed"
    if state.is_completed():
        status = "complete" if state.name == "Completed" else "degraded"
    return MaintenanceStep(
        step="",
        target="",
        status=status,
        summary=redact(state.message or state.name or ""),
        details={"flow_run_id": str(state.state_details.flow_run_id)},
    )


def publish_capacity(run: RunbookRun, days: int) -> MaintenanceStep:
    """The capacity report over ``days``: its table and chart artifacts, and the step."""
    step, rows, svg = capacity_report(run.env_name, run.ledger, days=days)
    publish_table(f"{run.key}-capacity", rows, f"Capacity of {run.env_name}, {days} days")
    publish_chart(f"{run.key}-capacity-chart", svg, f"Capacity trend of {run.env_name}")
    return step


def measured(
    reach: dict[str, Any],
    settings: Any,
    into: dict[str, Any] | None,
    earlier: dict[str, Any] | None,
) -> MaintenanceStep:
    """The database's figures: as ``before`` (kept in ``into``), or as ``after`` next to
    the ``earlier`` ones."""
    totals: dict[str, Any] = dict(measure_postgres(**reach, settings=settings).totals())
    if into is not None:
        into.update(totals)
        return MaintenanceStep(step="", target="", before=totals, summary="figures before")
    return MaintenanceStep(
        step="", target="", before=dict(earlier or {}), after=totals, summary="figures after"
    )


def postgres_steps(
    run: RunbookRun, report: MaintenanceReport, full: bool, until: datetime | None
) -> None:
    settings = run.env.maintenance.postgres
    for i, db in enumerate(run.env.databases):
        if db.kind != "postgres":
            continue
        reach, before = pg_reach(run, i, db), dict[str, Any]()
        step = functools.partial(do_step, run, report)
        step("measure_postgres", db.name, until, measured, reach, settings, before, None)
        step(
            "vacuum_postgres",
            db.name,
            until,
            vacuum_postgres,
            **reach,
            settings=settings,
            full=full,
            deadline=until,
        )
        step(
            "reindex_postgres",
            db.name,
            until,
            reindex_postgres,
            **reach,
            settings=settings,
            deadline=until,
        )
        step("measure_postgres", db.name, None, measured, reach, settings, None, before)


def work(
    run: RunbookRun, report: MaintenanceReport, variant: str, full: bool, until: datetime | None
) -> None:
    """The variant's steps (``work_steps`` says the same for the plan)."""
    env, m = run.env, run.env.maintenance
    step = functools.partial(do_step, run, report)
    postgres_steps(run, report, full, until)
    for i, db in enumerate(env.databases):
        if db.kind == "sqlite":
            field = f"environments.{run.env_name}.databases[{i}]"
            step(
                "maintain_sqlite",
                db.name,
                until,
                maintain_sqlite,
                db,
                field,
                m.sqlite,
                deadline=until,
            )
    for index, target in enumerate(env.redis):
        rules = [r for r in m.redis_cleanup if r.redis == target.name]
        if rules:
            field = f"environments.{run.env_name}.redis[{index}]"
            step(
                "clean_redis", target.name, until, clean_redis, target, rules, field, deadline=until
            )
    for policy in m.log_archive:
        step(
            "archive_logs",
            policy.path,
            until,
            archive_logs,
            run.env_name,
            env,
            policy,
            flow_run_id=run.flow_run_id,
            deadline=until,
        )
    if m.container_log_lines and (env.docker is not None or env.kubernetes is not None):
        step(
            "summarize_app_logs",
            "containers/pods",
            until,
            summarize_app_logs,
            env,
            m.container_log_lines,
        )
    days = 90 if variant == "quarterly" else 30
    step("capacity_report", f"{days}d", until, publish_capacity, run, days)
    if variant in ("monthly", "quarterly"):
        if m.benchmark is not None:
            probe = m.benchmark
            step(
                "compare_performance",
                probe.name,
                until,
                compare_performance,
                run.env_name,
                probe,
                run.ledger,
            )
        step("dr_drill", "subflow", until, run_subflow, run, drill_flow)
    if variant == "quarterly":
        skip(
            run,
            report,
            "security_review",
            "subflow",
            "the security review runbook is not built yet (issue 14)",
        )


def in_maintenance_mode(
    run: RunbookRun, report: MaintenanceReport, body: Callable[[], None]
) -> None:
    """Run ``body`` with the application in maintenance mode, and **always** switch it off
    again (the cancel / crash hook covers a run that never reaches the ``finally``)."""
    mode = run.env.maintenance_mode
    if mode is None:
        body()
        return
    try:
        with run.step(MODE_ON, mode.url) as step:
            step.summary = switch_maintenance_mode(mode, True)
        report.maintenance_mode = "on"
        body()
    finally:
        with run.step(MODE_OFF, mode.url) as step:
            try:
                step.summary = switch_maintenance_mode(mode, False)
                report.maintenance_mode = "turned on, and off again"
            except Exception as exc:  # noqa: BLE001 - reported loudly below
                report.error = (
                    f"maintenance mode could NOT be turned off: {redact(str(exc))} (fix: turn it "
                    f"off by hand: {mode.off_method} {mode.url})"
                )
                report.maintenance_mode = "STILL ON"
                step.fail(report.error)
                send = run.notifier()
                if send is not None:
                    send(f"opsflow: {run.env_name} is STILL IN MAINTENANCE MODE", report.error)


def leave_maintenance_mode(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
    """The on-cancellation / on-crashed hook, run by Prefect's runner after the run's process
    ended: a run that switched maintenance mode on and not off again (its ledger steps say) is
    switched off here, and a run that did not record its end is recorded ``cancelled`` /
    ``crashed``. A mode that cannot be switched off notifies and raises (Prefect logs it)."""
    params = flow_run.parameters or {}
    inventory = load_inventory()
    env_name = str(params.get("env") or "")
    env = inventory.environments.get(env_name)
    if env is None:
        return
    run = RunbookRun(
        runbook=RUNBOOK,
        env_name=env_name,
        env=env,
        inventory=inventory,
        ledger=Ledger(),
        logger=flow_run_logger(flow_run, flow),
        flow_run_id=str(flow_run.id),
        requested_by=str(params.get("requested_by") or ""),
        started_at=flow_run.start_time.replace(tzinfo=None) if flow_run.start_time else utcnow(),
    )
    ended = run.ledger.runs(env=env_name, runbook=RUNBOOK, limit=50)
    if any(r.flow_run_id == run.flow_run_id for r in ended):
        return  # the run recorded its end (and switched the mode off) itself
    steps = [s for s in run.ledger.steps(run.flow_run_id) if s.step in (MODE_ON, MODE_OFF)]
    left_on = bool(steps) and not (steps[-1].step == MODE_OFF and steps[-1].status == "complete")
    mode, error = env.maintenance_mode, None
    if mode is not None and left_on:
        try:
            with run.step(MODE_OFF, mode.url) as step:
                said = set_maintenance_mode(mode, False)
                step.summary = f"{said} (after the run ended {state.name})"
        except Exception as exc:  # noqa: BLE001 - recorded by the step; said below
            error = f"maintenance mode could NOT be turned off: {redact(str(exc))}"
    if not steps:
        what = "never switched on"
    elif not left_on:
        what = "already switched off by the run"
    else:
        what = "STILL ON" if error else "switched off after the run ended"
    what = "maintenance mode " + what
    run.finish((state.name or "crashed").lower(), f"the run ended {state.name}; {what}")
    if error and mode is not None:
        error += f" (fix: turn it off by hand: {mode.off_method} {mode.url})"
        send = run.notifier()
        if send is not None:
            send(f"opsflow: {env_name} is STILL IN MAINTENANCE MODE", error)
        raise PermanentError(error)


def finish(run: RunbookRun, report: MaintenanceReport) -> State[Any]:
    report.seconds = round(run.elapsed, 3)
    report.outcome = report.grade()
    markdown = render_maintenance_report(report, run.started_at)
    publish_markdown(run.key, markdown, f"Maintenance of {run.env_name}: {report.outcome}")
    summary = report.summary()
    run.finish(report.outcome, summary, report.model_dump(mode="json"))
    send = run.notifier()
    if send is not None:
        send(
            f"opsflow: {report.variant} maintenance of {run.env_name} {report.outcome.upper()}",
            markdown,
        )
    message = f"{RUNBOOK} of {run.env_name}: {summary}"
    if report.outcome == "failed":
        return Failed(message=message, data=report)
    if report.outcome == "degraded":
        return Completed(message=message, data=report, name="Degraded")
    return Completed(message=message, data=report)


@runbook_flow(
    RUNBOOK,
    "Maintenance in a window: window guard, approval, pre-maintenance backup, maintenance mode "
    "on, VACUUM/REINDEX, SQLite, Redis cleanup, log archive, capacity, (monthly) performance "
    "and DR drill, maintenance mode always off, health check.",
    timeout_seconds=8 * 3600,
    on_cancellation=[leave_maintenance_mode],
    on_crashed=[leave_maintenance_mode],
)
def maintenance(
    env: str = "local",
    *,
    requested_by: str,
    variant: Variant = "weekly",
    reason: str | None = None,
    override_window_reason: str | None = None,
    vacuum_full: bool = False,
    skip_backup: bool = False,
    dry_run: bool = False,
    approval_timeout_seconds: ApprovalWait = None,
    wait_for_lock: LockWait = LOCK_WAIT_SECONDS,
) -> State[Any]:
    """Maintain ``env`` in its maintenance window.

    Args:
        env: environment name from the inventory.
        variant: weekly, monthly (+ performance comparison, DR drill), quarterly (+ 90-day
            capacity, security review) or emergency (weekly steps outside the window, with
            approval and a reason).
        reason: why (required for emergency).
        override_window_reason: run outside the window or in a change freeze; needs approval.
        vacuum_full: VACUUM FULL instead of VACUUM (it locks each table); needs approval.
        skip_backup: no pre-maintenance backup (recorded in the ledger).
        dry_run: only publish the plan.
        requested_by: who asks for this run (required; schedules send `scheduler`).
        approval_timeout_seconds: how long to wait for approval (default: the inventory's).
        wait_for_lock: seconds to wait for the environment's lock (0: fail at once).
    """
    run = RunbookRun.start(RUNBOOK, env, requested_by)
    plan = plan_maintenance(
        env, run.env, variant, reason, override_window_reason, vacuum_full, skip_backup
    )
    run.publish_plan(plan)
    report = MaintenanceReport(
        env=env,
        variant=variant,
        requested_by=run.requested_by,
        reason=reason or override_window_reason,
    )
    if dry_run:
        report.dry_run, report.outcome = True, "planned"
        return Completed(message="dry run: plan published", data=report)
    override = variant == "emergency" or bool(override_window_reason)
    deadline = guard_window(run, report, override)
    if needs_approval(run.env, variant, override_window_reason, vacuum_full):
        report.approved_by = run.approve(plan, approval_timeout_seconds, {"variant": variant})
        deadline = guard_window(run, report, override)  # time passed while waiting
    with run.exclusive(wait_for_lock):
        if not pre_backup(run, report, skip_backup):
            report.error = "the pre-maintenance backup failed: nothing was changed"
            return finish(run, report)
        check_rollback(run, report)
        in_maintenance_mode(run, report, lambda: work(run, report, variant, vacuum_full, deadline))
        if report.maintenance_mode != "STILL ON":
            do_step(
                run,
                report,
                "health_check",
                run.env_name,
                None,
                run_subflow,
                run,
                health_flow,
                notify=False,
            )
        return finish(run, report)
