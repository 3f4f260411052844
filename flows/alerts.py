"""Alert runbooks (seeds 001 "Alert Response Procedures", 002/004 manual scaling, 003/004
troubleshooting): each a flow the alert receiver starts (with the Alertmanager ``alert``) or
an operator runs by hand.

* ``high-memory``: find the container/pod over ``thresholds.memory_pct`` of its limit, take a
  memory snapshot (figures, top processes), restart its service;
* ``high-error-rate``: top errors from the logs, 5xx series from the metrics, the last deploy
  from the ledger; ``rollback=true`` runs the rollback runbook (else the report says how);
* ``high-latency``: slowest endpoints (request-duration histograms), slow queries of each
  PostgreSQL database (pg_stat_statements, else pg_stat_activity);
* ``service-down``: state, exit code, restarts, image, last logs, events, the image against
  the last deploy's, then a restart;
* ``db-connections``: connections by state / application / user / client vs max_connections;
* ``scale``: a service to N replicas within ``scaling[service]``.

A restart needs ``restart`` in ``incident.remediations`` (a rollback ``rollback``): refused at
plan time otherwise (exit 2). A restart or scale on a protected environment waits for an
approval unless the alert rule that started the run allows ``auto_remediate``; it holds the
environment's lock (no deploy or restore at the same time). Each step is a task and a ledger
step; the report ``<runbook>-<env>`` (markdown) and the ledger run say what was found, what
was done and why.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prefect.states import Completed, Failed, State

from flows.common import (
    LOCK_WAIT_SECONDS,
    ApprovalWait,
    LockWait,
    RunbookRun,
    pg_reach,
    runbook_flow,
)
from flows.rollback import rollback as rollback_flow
from opsflow.alert_runbooks import (
    AlertReport,
    Finding,
    alert_brief,
    approval_steps,
    check_remediation,
    deploy_drift,
    grade,
    last_deploy,
    needs_approval,
    postgres_databases,
    render_alert_report,
    service_of,
)
from opsflow.errors import InputError
from opsflow.inventory import Environment
from opsflow.plans import Plan, PlanStep
from opsflow.redaction import redact
from opsflow.reports import publish_markdown
from opsflow.units import format_bytes
from tasks.alert_checks import (
    error_analysis,
    find_memory_hog,
    memory_snapshot,
    service_diagnostics,
    slowest_endpoints,
)
from tasks.postgres.activity import connection_breakdown, slow_queries
from tasks.remediation import check_scale, resolve_service, restart_service, scale_service

LEDGER_SCAN = 200
Alert = dict[str, Any] | None


# --- plans (pure) -------------------------------------------------------------------------------


def _target(env: Environment, service: str | None) -> str:
    return resolve_service(env, service).label if service else "every service"


def _plan(runbook: str, env_name: str, steps: list[PlanStep], **params: Any) -> Plan:
    shown = {k: v for k, v in params.items() if v is not None}
    return Plan(runbook=runbook, env=env_name, steps=steps, parameters=shown)


def _restart_steps(
    env_name: str, env: Environment, service: str | None, auto_remediate: bool, why: str
) -> list[PlanStep]:
    check_remediation(env_name, env, "restart")
    return [
        *approval_steps(env_name, env, auto_remediate),
        PlanStep(action="restart_service", target=_target(env, service), why=why, changes=True),
    ]


def plan_high_memory(
    env_name: str,
    env: Environment,
    service: str | None = None,
    alert: Alert = None,
    auto_remediate: bool = False,
    restart: bool = True,
) -> Plan:
    svc = service_of(env, service, alert)
    target = _target(env, svc)
    steps = [
        PlanStep(action="find_memory_hog", target=target, why="memory vs limit"),
        PlanStep(action="memory_snapshot", target=target, why="figures, top processes"),
    ]
    if restart:
        steps += _restart_steps(env_name, env, svc, auto_remediate, "when over the threshold")
    return _plan("high-memory", env_name, steps, service=svc, restart=restart)


def plan_high_error_rate(
    env_name: str, env: Environment, alert: Alert = None, rollback: bool = False
) -> Plan:
    steps = [
        PlanStep(action="error_analysis", target=env_name, why="logs and metrics"),
        PlanStep(action="last_deploy", target=env_name, why="ledger"),
    ]
    if rollback:
        check_remediation(env_name, env, "rollback")
        if env.deploy is None:
            raise InputError(
                f"environments.{env_name}.deploy", "is missing", "add a deploy section first"
            )
        steps.append(PlanStep(action="rollback", target=env_name, why="subflow", changes=True))
    return _plan("high-error-rate", env_name, steps, rollback=rollback)


def plan_high_latency(
    env_name: str, env: Environment, alert: Alert = None, database: str | None = None
) -> Plan:
    steps = [PlanStep(action="slowest_endpoints", target=env_name, why="p95 per series")]
    steps += [
        PlanStep(action="slow_queries", target=db.name, why="pg_stat_statements or activity")
        for _, db in postgres_databases(env_name, env, database)
    ]
    return _plan("high-latency", env_name, steps, database=database)


def plan_service_down(
    env_name: str,
    env: Environment,
    service: str | None = None,
    alert: Alert = None,
    auto_remediate: bool = False,
    restart: bool = True,
) -> Plan:
    svc = service_of(env, service, alert)
    if svc is None:
        raise InputError("service", "is not given and the alert names none", "pass service=NAME")
    target = _target(env, svc)
    steps = [
        PlanStep(action="service_diagnostics", target=target, why="state, logs, events"),
        PlanStep(action="compare_with_last_deploy", target=target, why="ledger"),
    ]
    if restart:
        steps += _restart_steps(env_name, env, svc, auto_remediate, "bring it back")
    return _plan("service-down", env_name, steps, service=svc, restart=restart)


def plan_db_connections(
    env_name: str, env: Environment, alert: Alert = None, database: str | None = None
) -> Plan:
    dbs = postgres_databases(env_name, env, database)
    if not dbs:
        raise InputError(
            f"environments.{env_name}.databases", "has no PostgreSQL database", "add one"
        )
    steps = [
        PlanStep(action="connection_breakdown", target=db.name, why="pg_stat_activity")
        for _, db in dbs
    ]
    return _plan("db-connections", env_name, steps, database=database)


def plan_scale(
    env_name: str,
    env: Environment,
    service: str | None = None,
    replicas: int | None = None,
    alert: Alert = None,
    auto_remediate: bool = False,
) -> Plan:
    svc = service_of(env, service, alert)
    if svc is None:
        raise InputError("service", "is not given and the alert names none", "pass service=NAME")
    if replicas is None:
        raise InputError("replicas", "is not given", "pass replicas=N")
    check_scale(env, svc, replicas)
    target = resolve_service(env, svc).label
    steps = [
        *approval_steps(env_name, env, auto_remediate),
        PlanStep(action="scale_service", target=target, why=f"to {replicas}", changes=True),
    ]
    return _plan("scale", env_name, steps, service=svc, replicas=replicas)


# --- running ------------------------------------------------------------------------------------


def observe(
    run: RunbookRun,
    report: AlertReport,
    call: Callable[..., Finding],
    *args: Any,
    **kwargs: Any,
) -> Finding:
    """One diagnostic task as a ledger step; a failure is recorded and the run goes on."""
    started = time.monotonic()
    name = str(getattr(call, "name", "step"))
    try:
        found = call(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - a diagnostic that fails does not stop the rest
        found = Finding(step=name, target=run.env_name, status="failed", summary=redact(str(exc)))
    found.seconds = found.seconds or round(time.monotonic() - started, 3)
    ms = int(found.seconds * 1000)
    run.record(
        name, found.target, found.status, found.summary, duration_ms=ms, details=found.details
    )
    report.findings.append(found)
    return found


def change(
    run: RunbookRun,
    report: AlertReport,
    plan: Plan,
    action: str,
    target: str,
    call: Callable[[], Any],
    approval: tuple[bool, ApprovalWait],
    wait_for_lock: int,
) -> Any:
    """The remediation: approved first where it must be (a rejection ends the run, recorded
    ``rejected``), under the environment's lock; a failure is recorded (None returned)."""
    auto, timeout = approval
    if needs_approval(run.env, auto):
        report.approved_by = run.approve(plan, timeout, {"action": action, "why": report.why})
    elif run.env.protected:
        report.approved_by = "not needed: the alert rule allows auto_remediate"
    report.action = action
    started = time.monotonic()
    found = Finding(step=action, target=target)
    done: Any = None
    with run.exclusive(wait_for_lock):
        try:
            done = call()
            found.summary = done if isinstance(done, str) else redact(str(done))
        except Exception as exc:  # noqa: BLE001 - reported as the run's failure
            found.status, found.summary = "failed", redact(str(exc) or type(exc).__name__)
    found.seconds = round(time.monotonic() - started, 3)
    found.details = {"why": report.why}
    ms = int(found.seconds * 1000)
    run.record(action, target, found.status, found.summary, duration_ms=ms, details=found.details)
    report.findings.append(found)
    return done


def finish(run: RunbookRun, report: AlertReport, outcome: str | None = None) -> State[Any]:
    report.seconds = round(run.elapsed, 3)
    status = grade(report.findings)
    report.outcome = outcome or status
    publish_markdown(
        run.key, render_alert_report(report, run.started_at), f"{report.runbook}: {report.outcome}"
    )
    summary = report.summary()
    run.finish("complete" if status == "done" else status, summary, report.model_dump(mode="json"))
    message = f"{report.runbook} on {run.env_name}: {summary}"
    if status == "failed":
        return Failed(message=message, data=report)
    return Completed(message=message, data=report)


def _begin(
    runbook: str, env: str, requested_by: str, alert: Alert, plan: Callable[[RunbookRun], Plan]
) -> tuple[RunbookRun, Plan, AlertReport]:
    run = RunbookRun.start(runbook, env, requested_by)
    brief = alert_brief(alert)
    made = plan(run)
    run.publish_plan(made)
    report = AlertReport(runbook=runbook, env=env, requested_by=run.requested_by, alert=brief)
    return run, made, report


def _dry(report: AlertReport) -> State[Any]:
    report.dry_run = True
    return Completed(message="dry run: plan published", data=report)


def _restart(
    run: RunbookRun, report: AlertReport, plan: Plan, service: str, approval: Any, lock: int
) -> bool:
    label = resolve_service(run.env, service).label
    call = lambda: restart_service(run.env, service)  # noqa: E731
    return change(run, report, plan, "restart", label, call, approval, lock) is not None


# --- the runbooks -------------------------------------------------------------------------------


@runbook_flow(
    "high-memory",
    "High memory: find the container/pod over its limit, snapshot it, "
    "restart it (approval on protected environments unless auto_remediate).",
    timeout_seconds=3 * 3600,
)
def high_memory(
    env: str = "local",
    *,
    requested_by: str,
    alert: dict[str, Any] | None = None,
    service: str | None = None,
    auto_remediate: bool = False,
    restart: bool = True,
    dry_run: bool = False,
    approval_timeout_seconds: ApprovalWait = None,
    wait_for_lock: LockWait = LOCK_WAIT_SECONDS,
) -> State[Any]:
    """Args: service (default: the alert's service/container/pod label, else every
    service); auto_remediate (set by the receiver from the rule); restart=false only
    diagnoses."""
    run, plan, report = _begin(
        "high-memory",
        env,
        requested_by,
        alert,
        lambda r: plan_high_memory(env, r.env, service, alert, auto_remediate, restart),
    )
    if dry_run:
        return _dry(report)
    svc = service_of(run.env, service, alert)
    hog = observe(run, report, find_memory_hog, run.env, svc)
    over = hog.details.get("over")
    if hog.status == "failed" or over is None:
        report.why = f"not restarted: {hog.summary}"
        return finish(run, report, None if hog.status == "failed" else "nothing to do")
    report.service = str(over["service"])
    observe(run, report, memory_snapshot, run.env, report.service, over)
    threshold = hog.details["threshold_pct"]
    report.why = (
        f"{over['name']} used {over['memory_pct']:.0f}% of its memory limit "
        f"({format_bytes(over['memory_bytes'])} of {format_bytes(over['memory_limit_bytes'])}), "
        f"threshold {threshold:g}%"
    )
    if restart:
        approval = (auto_remediate, approval_timeout_seconds)
        restarted = _restart(run, report, plan, report.service, approval, wait_for_lock)
        return finish(run, report, "restarted" if restarted else None)
    return finish(run, report, "diagnosed")


@runbook_flow(
    "high-error-rate",
    "High error rate: top errors from logs and metrics, the last "
    "deploy, optionally the rollback runbook.",
    timeout_seconds=5 * 3600,
)
def high_error_rate(
    env: str = "local",
    *,
    requested_by: str,
    alert: dict[str, Any] | None = None,
    rollback: bool = False,
    auto_remediate: bool = False,  # the receiver's uniform contract: nothing to skip
    dry_run: bool = False,
    approval_timeout_seconds: ApprovalWait = None,
) -> State[Any]:
    """Args: rollback=true runs the rollback runbook (needs rollback in remediations; it asks
    for its own approval on protected environments)."""
    run, _plan_made, report = _begin(
        "high-error-rate",
        env,
        requested_by,
        alert,
        lambda r: plan_high_error_rate(env, r.env, alert, rollback),
    )
    if dry_run:
        return _dry(report)
    errors = observe(run, report, error_analysis, run.env, run.env.incident.log_lines)
    deploy = _last_deploy(run, report)
    report.why = errors.summary
    if rollback:
        report.action = "rollback"
        with run.step("rollback", env) as step:
            state = rollback_flow(
                env=env,
                requested_by=run.requested_by,
                approval_timeout_seconds=approval_timeout_seconds,
                return_state=True,
            )
            step.summary = redact(state.message or state.name or "")
            report.findings.append(
                Finding(
                    step="rollback",
                    target=env,
                    status="complete" if state.is_completed() else "failed",
                    summary=step.summary,
                    details={"flow_run_id": str(state.state_details.flow_run_id)},
                )
            )
            if not state.is_completed():
                step.fail(step.summary)
        return finish(run, report)
    if deploy is not None:
        report.why += (
            f"; to undo the last deploy: opsflow run rollback --env {env} "
            "(or this runbook with rollback=true)"
        )
    return finish(run, report, "diagnosed")


def _last_deploy(run: RunbookRun, report: AlertReport) -> dict[str, Any] | None:
    with run.step("last_deploy", run.env_name) as step:
        deploy = last_deploy(run.ledger.runs(env=run.env_name, runbook="deploy", limit=LEDGER_SCAN))
        if deploy is None:
            step.summary = "no deploy of this environment in the ledger"
        else:
            moved = ", ".join(
                f"{c['service']} {c['from_image']} -> {c['to_image']}" for c in deploy["changes"]
            )
            step.summary = (
                f"{deploy['finished_at']} by {deploy['by']}: {deploy['outcome']} ({moved})"
            )
        step.details = {"deploy": deploy}
    report.findings.append(
        Finding(step="last_deploy", target=run.env_name, summary=step.summary, details=step.details)
    )
    return deploy


@runbook_flow(
    "high-latency",
    "High latency: slowest endpoints from metrics, slow queries of each PostgreSQL database.",
    timeout_seconds=3600,
)
def high_latency(
    env: str = "local",
    *,
    requested_by: str,
    alert: dict[str, Any] | None = None,
    database: str | None = None,
    auto_remediate: bool = False,  # the receiver's uniform contract: nothing to skip
    dry_run: bool = False,
    approval_timeout_seconds: ApprovalWait = None,
) -> State[Any]:
    """Args: database: only this PostgreSQL database (default: all). Changes nothing."""
    run, _made, report = _begin(
        "high-latency",
        env,
        requested_by,
        alert,
        lambda r: plan_high_latency(env, r.env, alert, database),
    )
    if dry_run:
        return _dry(report)
    endpoints = observe(run, report, slowest_endpoints, run.env)
    parts = [endpoints.summary]
    for index, db in postgres_databases(env, run.env, database):
        found = observe(run, report, slow_queries, **pg_reach(run, index, db))
        parts.append(f"{db.name}: {found.summary}")
    report.why = "; ".join(parts)
    return finish(run, report, "diagnosed")


@runbook_flow(
    "service-down",
    "Service down: state, exit code, restarts, logs, events and the "
    "last deploy, then a restart (approval on protected environments unless "
    "auto_remediate).",
    timeout_seconds=3 * 3600,
)
def service_down(
    env: str = "local",
    *,
    requested_by: str,
    alert: dict[str, Any] | None = None,
    service: str | None = None,
    auto_remediate: bool = False,
    restart: bool = True,
    dry_run: bool = False,
    approval_timeout_seconds: ApprovalWait = None,
    wait_for_lock: LockWait = LOCK_WAIT_SECONDS,
) -> State[Any]:
    """Args: service (default: the alert's label); restart=false only diagnoses."""
    run, plan, report = _begin(
        "service-down",
        env,
        requested_by,
        alert,
        lambda r: plan_service_down(env, r.env, service, alert, auto_remediate, restart),
    )
    if dry_run:
        return _dry(report)
    svc = service_of(run.env, service, alert)
    assert svc is not None  # the plan refused it
    report.service = svc
    found = observe(run, report, service_diagnostics, run.env, svc, run.env.incident.log_lines)
    with run.step("compare_with_last_deploy", svc) as step:
        rows = run.ledger.runs(env=env, runbook="deploy", limit=LEDGER_SCAN)
        step.summary = deploy_drift(last_deploy(rows), svc, found.details.get("image"))
    report.findings.append(
        Finding(step="compare_with_last_deploy", target=svc, summary=step.summary)
    )
    report.why = found.summary
    if restart:
        approval = (auto_remediate, approval_timeout_seconds)
        restarted = _restart(run, report, plan, svc, approval, wait_for_lock)
        return finish(run, report, "restarted" if restarted else None)
    return finish(run, report, "diagnosed")


@runbook_flow(
    "db-connections",
    "Database connections high: connections by state, application, "
    "user and client vs max_connections.",
    timeout_seconds=3600,
)
def db_connections(
    env: str = "local",
    *,
    requested_by: str,
    alert: dict[str, Any] | None = None,
    database: str | None = None,
    auto_remediate: bool = False,  # the receiver's uniform contract: nothing to skip
    dry_run: bool = False,
    approval_timeout_seconds: ApprovalWait = None,
) -> State[Any]:
    """Args: database: only this PostgreSQL database (default: all). Changes nothing."""
    run, _made, report = _begin(
        "db-connections",
        env,
        requested_by,
        alert,
        lambda r: plan_db_connections(env, r.env, alert, database),
    )
    if dry_run:
        return _dry(report)
    parts = []
    for index, db in postgres_databases(env, run.env, database):
        reach = pg_reach(run, index, db)
        found = observe(run, report, connection_breakdown, thresholds=run.env.thresholds, **reach)
        parts.append(f"{db.name}: {found.summary}")
    report.why = "; ".join(parts)
    return finish(run, report, "diagnosed")


@runbook_flow(
    "scale",
    "Scale a Deployment or Compose-style service to N replicas within the "
    "inventory's scaling bounds (approval on protected environments).",
    timeout_seconds=3 * 3600,
)
def scale(
    env: str = "local",
    *,
    requested_by: str,
    service: str | None = None,
    replicas: int | None = None,
    alert: dict[str, Any] | None = None,
    auto_remediate: bool = False,
    dry_run: bool = False,
    approval_timeout_seconds: ApprovalWait = None,
    wait_for_lock: LockWait = LOCK_WAIT_SECONDS,
) -> State[Any]:
    """Args: service (default: the alert's label), replicas (within scaling[service])."""
    run, plan, report = _begin(
        "scale",
        env,
        requested_by,
        alert,
        lambda r: plan_scale(env, r.env, service, replicas, alert, auto_remediate),
    )
    if dry_run:
        return _dry(report)
    svc = service_of(run.env, service, alert)
    assert svc is not None and replicas is not None  # the plan refused them
    report.service = svc
    report.why = f"requested {replicas} replica(s) of {svc} by {run.requested_by}"
    where = resolve_service(run.env, svc)
    done = change(
        run,
        report,
        plan,
        "scale",
        where.label,
        lambda: scale_service(run.env, svc, replicas),
        (auto_remediate, approval_timeout_seconds),
        wait_for_lock,
    )
    if done is None:
        return finish(run, report)
    report.why += f": {done.from_replicas} -> {done.to_replicas}"
    report.findings[-1].details |= done.model_dump(mode="json")
    return finish(run, report, f"scaled {done.from_replicas} -> {done.to_replicas}")
