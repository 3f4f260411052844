"""Incident response (seeds 001 "P1 Critical Incident Response" and "Incident Communication
Template", 002 severities P1-P4 and "Immediate Response (First 15 minutes)", 003 "P0/P1
Incident Response" and post-incident review, 004 "Service Outage Response").

Order: plan (a remediation the inventory does not allow is refused here, exit 2) →
**acknowledge**: the status-page webhook and the people on call by severity (P1/P2: the
``incident.page`` targets, P3/P4: ``incident.chat``, else ``notify``) → the **diagnostics
snapshot**, in parallel (Prefect tasks): containers / pods with their restarts, recent events,
the last ``incident.log_lines`` lines with the error lines (redacted), the rollout history,
the last deploys, rollbacks and approvals of the ledger, Prometheus figures around the alert,
and the health-check runbook as a subflow → the optional **remediation** (rollback as a
subflow, restart, scale, maintenance mode on) behind the approval policy → the **response-time
targets** of the severity (acknowledged, mitigated, resolved; a breach degrades the run) → the
report ``incident-<env>``, the **post-mortem draft** ``incident-<env>-post-mortem``, the ledger
run and a notification.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from typing import Any

from prefect.futures import PrefectFuture
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import LOCK_WAIT_SECONDS, ApprovalWait, LockWait, RunbookRun, runbook_flow
from flows.health_check import health_check as health_flow
from flows.rollback import rollback as rollback_flow
from opsflow.errors import ApprovalRejected, OpsflowError
from opsflow.incidents import (
    PAGE_SEVERITIES,
    RUNBOOK,
    Alert,
    IncidentReport,
    IncidentStep,
    RemediationChoice,
    ResponseTimes,
    StepStatus,
    TimelineEvent,
    aware,
    parse_alert,
    plan_incident,
    report_details,
    response_breaches,
)
from opsflow.inventory.incident import RESPONSE_TARGETS, Severity
from opsflow.plans import Plan
from opsflow.post_mortem import render_incident_report, render_post_mortem
from opsflow.redaction import redact
from opsflow.reports import publish_markdown
from tasks.diagnostics import recent_changes, rollout_history, snapshot_containers, snapshot_pods
from tasks.notify import send_notification
from tasks.prometheus import prometheus_figures
from tasks.status_page import post_status_page

MAX_PARALLEL = 8


def ui_url(flow_run_id: str) -> str | None:
    """The Prefect UI page of a flow run: ``<PREFECT_UI_URL or the API URL without /api>
    /runs/flow-run/<id>`` (None without a server)."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    base = os.environ.get("PREFECT_UI_URL") or settings.ui_url
    if not base and settings.api.url:
        base = str(settings.api.url).removesuffix("/").removesuffix("/api")
    if not base or not flow_run_id or flow_run_id == "local":
        return None
    return f"{str(base).rstrip('/')}/runs/flow-run/{flow_run_id}"


def now() -> datetime:
    return datetime.now(UTC)


def recorded(
    run: RunbookRun,
    report: IncidentReport,
    step: IncidentStep,
) -> IncidentStep:
    """Write the finished ``step`` to the ledger and the report."""
    ended = step.ended_at or now()
    step.ended_at = ended
    step.summary = redact(step.summary)
    run.record(
        step.step,
        step.target,
        step.status,
        step.summary,
        duration_ms=int(step.seconds * 1000),
        details={
            "started_at": step.started_at.isoformat(),
            "ended_at": ended.isoformat(),
            **({"link": step.link} if step.link else {}),
        },
    )
    report.steps.append(step)
    return step


def do_step(
    run: RunbookRun,
    report: IncidentReport,
    name: str,
    target: str,
    call: Callable[[IncidentStep], None],
) -> IncidentStep:
    """One step: ``call(step)`` fills in its summary (and status); one that raises is
    recorded failed and the incident goes on."""
    step = IncidentStep(step=name, target=target, started_at=now())
    try:
        call(step)
    except Exception as exc:  # noqa: BLE001 - one failed step does not stop the response
        step.status, step.summary = "failed", redact(str(exc) or type(exc).__name__)
    step.ended_at = now()
    return recorded(run, report, step)


# --- acknowledge -------------------------------------------------------------------------------


def told(run: RunbookRun, severity: Severity) -> list[Any]:
    policy = run.env.incident
    targets = policy.page if severity in PAGE_SEVERITIES else policy.chat
    return list(targets or run.env.notify)


def acknowledge(run: RunbookRun, report: IncidentReport, times: ResponseTimes) -> None:
    page = run.env.incident.status_page
    targets = told(run, report.severity)

    def call(step: IncidentStep) -> None:
        said, problems = [], []
        if page is not None:
            payload = {
                "incident": report.incident_id,
                "env": report.env,
                "severity": report.severity,
                "summary": report.summary,
                "status": "investigating",
                "started": times.started_at.isoformat(),
                "alert": report.alert.name if report.alert is not None else None,
                "url": report.flow_run_url,
            }
            try:
                said.append(post_status_page(page, payload))
            except OpsflowError as exc:
                problems.append(f"status page: {exc}")
        if targets:
            subject = f"opsflow: {report.severity} incident in {report.env}: {report.summary}"
            body = (
                f"{report.severity} incident {report.incident_id} in {report.env}, "
                f"acknowledged by opsflow for {report.requested_by}.\n{report.summary}\n"
                f"started {times.started_at:%Y-%m-%d %H:%M:%S} UTC ({times.started_from})\n"
                f"run: {report.flow_run_url or report.flow_run_id}"
            )
            try:
                report.notified = send_notification(targets, subject, body, env=report.env)
                said.append("told " + ", ".join(report.notified))
            except OpsflowError as exc:
                problems.append(f"notification: {exc}")
        else:
            problems.append("nobody to tell: no incident.page/chat and no notify targets")
        step.summary = "; ".join(said + problems)
        if problems:
            step.status = "failed" if not said else "degraded"

    done = do_step(run, report, "acknowledge", report.severity, call)
    if done.status != "failed":
        times.acknowledged_at = done.ended_at
        assert done.ended_at is not None
        report.events.append(TimelineEvent(at=done.ended_at, what="Incident acknowledged"))


# --- the diagnostics snapshot ------------------------------------------------------------------


def _ended(future: PrefectFuture[Any]) -> datetime:
    stamp = getattr(future.state, "timestamp", None)
    return (aware(stamp) or now()) if isinstance(stamp, datetime) else now()


def _collect(
    run: RunbookRun,
    report: IncidentReport,
    name: str,
    target: str,
    started: datetime,
    future: PrefectFuture[Any],
    store: Callable[[Any], tuple[StepStatus, str]],
) -> None:
    step = IncidentStep(step=name, target=target, started_at=started)
    future.wait()
    try:
        value = future.result(raise_on_failure=True)
        step.status, step.summary = store(value)
    except Exception as exc:  # noqa: BLE001 - one diagnostic failing leaves the others
        step.status, step.summary = "failed", redact(str(exc) or type(exc).__name__)
    step.ended_at = max(_ended(future), started)
    recorded(run, report, step)


def _containers(report: IncidentReport, value: list[dict[str, Any]]) -> tuple[StepStatus, str]:
    report.snapshot["containers"] = value
    unread = [c["name"] for c in value if c.get("error")]
    parts = [
        f"{c['name']} {c.get('state')}, {c.get('restart_count', 0)} restart(s), "
        f"{len(c.get('error_lines', []))} error line(s)"
        for c in value
    ]
    status: StepStatus = "degraded" if unread else "complete"
    return status, "; ".join(parts) + (f"; unreadable: {', '.join(unread)}" if unread else "")


def _pods(report: IncidentReport, value: dict[str, Any]) -> tuple[StepStatus, str]:
    report.snapshot["pods"], report.snapshot["events"] = value["pods"], value["events"]
    pods = value["pods"]
    restarts = sum(p.get("restart_count", 0) for p in pods)
    unready = [p["name"] for p in pods if not p.get("ready")]
    unread = [p["name"] for p in pods if p.get("error")]
    text = (
        f"{len(pods)} pod(s), {len(unready)} not ready, {restarts} restart(s), "
        f"{len(value['events'])} event(s)"
    )
    return ("degraded" if unread else "complete"), text


def _rollouts(report: IncidentReport, value: list[dict[str, Any]]) -> tuple[StepStatus, str]:
    report.snapshot["rollouts"] = value
    newest = value[0] if value else None
    text = f"{len(value)} revision(s)" + (
        f"; newest {newest['revision']}: {', '.join(newest['images'])}" if newest else ""
    )
    return "complete", text


def _figures(report: IncidentReport, value: list[Any]) -> tuple[StepStatus, str]:
    report.snapshot["metrics"] = [f.model_dump(mode="json") for f in value]
    failed = [f for f in value if f.error]
    return ("degraded" if failed else "complete"), "; ".join(f.line() for f in value)


def snapshot(run: RunbookRun, report: IncidentReport, alert: Alert | None) -> None:
    """Every diagnostic at once: the tasks are submitted, the ledger is read and the health
    check runs (subflow) while they run, then each is collected and recorded."""
    env, lines, pattern = run.env, run.env.incident.log_lines, run.env.logs.pattern
    pending: list[tuple[str, str, datetime, PrefectFuture[Any], Callable[[Any], Any]]] = []

    def submit(name: str, shown: str, task: Any, store: Callable[[Any], Any], **kw: Any) -> None:
        pending.append((name, shown, now(), task.submit(**kw), store))

    if env.docker is not None and env.docker.services:
        names = ", ".join(s.container for s in env.docker.services)
        submit(
            "snapshot_containers",
            names,
            snapshot_containers,
            lambda v: _containers(report, v),
            target=env.docker,
            lines=lines,
            pattern=pattern,
        )
    if env.kubernetes is not None:
        k8s = env.kubernetes
        where = f"{k8s.namespace}/{k8s.deployment or k8s.label_selector or '*'}"
        submit(
            "snapshot_pods",
            where,
            snapshot_pods,
            lambda v: _pods(report, v),
            target=k8s,
            lines=lines,
            pattern=pattern,
        )
        if k8s.deployment:
            submit(
                "rollout_history",
                where,
                rollout_history,
                lambda v: _rollouts(report, v),
                target=k8s,
            )
    prom = env.incident.prometheus
    if prom is not None and prom.queries:
        around = alert.starts_at if alert is not None and alert.starts_at else aware(run.started_at)
        submit(
            "prometheus_figures",
            ", ".join(prom.queries),
            prometheus_figures,
            lambda v: _figures(report, v),
            prom=prom,
            around=around,
            end=now(),
        )

    def changes(step: IncidentStep) -> None:
        found = recent_changes(run.ledger, run.env_name)
        report.snapshot["changes"] = found
        last = found["runs"][0] if found["runs"] else None
        step.summary = (
            f"{len(found['runs'])} deploy/rollback run(s), {len(found['approvals'])} approval "
            "event(s)" + (f"; last: {last['runbook']} {last['status']}" if last else "")
        )

    def health(step: IncidentStep) -> None:
        state = health_flow(
            env=run.env_name, requested_by=run.requested_by, notify=False, return_state=True
        )
        step.link = ui_url(str(state.state_details.flow_run_id))
        verdict = redact(state.message or state.name or "")
        report.snapshot["health"] = {"state": state.name, "message": verdict, "link": step.link}
        step.summary = f"{state.name}: {verdict}"
        if not state.is_completed() and state.name != "Critical":
            step.status = "failed"

    do_step(run, report, "recent_changes", run.env_name, changes)
    do_step(run, report, "health_check", run.env_name, health)
    for name, target, started, future, store in pending:
        _collect(run, report, name, target, started, future, store)


# --- remediation -------------------------------------------------------------------------------


def remediate(
    run: RunbookRun,
    report: IncidentReport,
    times: ResponseTimes,
    plan: Plan,
    choice: RemediationChoice,
    service: str | None,
    replicas: int | None,
    approval_timeout_seconds: int | None,
    wait_for_lock: float,
) -> None:
    """The chosen remediation, after the approval of a protected environment (a rollback asks
    for it itself, as the rollback runbook does)."""
    if run.env.protected and choice != "rollback":
        try:
            report.approved_by = run.approve(
                plan, approval_timeout_seconds, report_details(report) | {"stage": "remediation"}
            )
        except ApprovalRejected as exc:  # recorded `rejected`; the drafts still get written
            report.outcome, report.error = "rejected", f"remediation not approved: {exc}"
            run.record("remediate", choice, "skipped", report.error)
            publish_drafts(run, report)
            raise

    def call(step: IncidentStep) -> None:
        if choice == "rollback":
            state = rollback_flow(
                env=run.env_name,
                requested_by=run.requested_by,
                approval_timeout_seconds=approval_timeout_seconds,
                return_state=True,
            )
            step.link = ui_url(str(state.state_details.flow_run_id))
            step.summary = f"rollback {state.name}: {redact(state.message or '')}"
            if not state.is_completed():
                step.status = "failed"
        elif choice == "restart":
            from tasks.remediation import restart_service

            assert service is not None
            step.summary = restart_service(run.env, service)
        elif choice == "scale":
            from tasks.remediation import scale_service

            assert service is not None and replicas is not None
            change = scale_service(run.env, service, replicas)
            step.summary = f"{service}: {change.from_replicas} → {change.to_replicas} replica(s)"
        else:
            from tasks.http.maintenance_mode import switch_maintenance_mode

            assert run.env.maintenance_mode is not None
            step.summary = "maintenance mode on: " + switch_maintenance_mode(
                run.env.maintenance_mode, True
            )

    # a restart or scale waits for a backup, restore or deploy of the environment to end
    held: AbstractContextManager[None] = (
        run.exclusive(wait_for_lock) if choice in ("restart", "scale") else nullcontext()
    )
    with held:
        done = do_step(run, report, "remediate", choice, call)
    report.remediation_result = f"{done.status}: {done.summary}"
    if done.status == "complete" and done.ended_at is not None:
        times.mitigated_at = done.ended_at
        report.events.append(TimelineEvent(at=done.ended_at, what=f"Mitigated ({choice})"))


# --- response times and the end ----------------------------------------------------------------


def resolved_at(
    run: RunbookRun, report: IncidentReport, alert: Alert | None, started: datetime
) -> tuple[datetime | None, str]:
    """When the incident was resolved: the alert's endsAt when it came in resolved, else the
    first ``resolved`` row the receiver recorded in the ledger for this run or the alert's
    fingerprint (its endsAt, or when it was received). The receiver's rows for this incident
    go into the timeline."""
    rows = {r.seq: r for r in run.ledger.alerts(env=run.env_name, flow_run_id=run.flow_run_id)}
    if alert is not None and alert.fingerprint:
        for row in run.ledger.alerts(env=run.env_name, fingerprint=alert.fingerprint):
            rows[row.seq] = row
    ends: list[datetime] = []
    for row in sorted(rows.values(), key=lambda r: r.seq):
        received = aware(row.recorded_at) or now()
        if received < started and row.flow_run_id != run.flow_run_id:
            continue  # an earlier incident of the same alert
        what = f"Receiver: alert `{row.alertname}` {row.status}, {row.outcome}"
        report.events.append(
            TimelineEvent(at=received, what=what + (f" ({row.reason})" if row.reason else ""))
        )
        ended = aware(row.ends_at)
        ended = ended if ended is not None and ended.year > 1 else received
        if row.status == "resolved" and ended >= started:  # not an earlier incident's all-clear
            ends.append(ended)
    if alert is not None and alert.status == "resolved" and alert.ends_at is not None:
        return alert.ends_at, "the alert's endsAt"
    return (min(ends), "resolved alert received") if ends else (None, "")


def response_step(run: RunbookRun, report: IncidentReport, times: ResponseTimes) -> None:
    def call(step: IncidentStep) -> None:
        times.resolved_at, times.resolved_from = resolved_at(
            run, report, report.alert, times.started_at
        )
        if times.resolved_at is not None:
            report.events.append(
                TimelineEvent(at=times.resolved_at, what=f"Resolved ({times.resolved_from})")
            )
        times.breaches = response_breaches(times, now())
        took = (
            f"acknowledged after {(times.acknowledged_at - times.started_at).total_seconds():.0f}s"
            if times.acknowledged_at is not None
            else "not acknowledged"
        )
        step.summary = f"{took} (target {times.target.total_seconds():.0f}s)" + (
            "; BREACH: " + "; ".join(times.breaches) if times.breaches else ""
        )
        if times.breaches:
            step.status = "degraded"

    do_step(run, report, "response_times", report.severity, call)


def publish_drafts(run: RunbookRun, report: IncidentReport) -> str:
    """The post-mortem draft (a step of its own, listed in it) and the report, as artifacts;
    returns the draft."""
    report.seconds = round(run.elapsed, 3)
    written = now()
    step = IncidentStep(step="post_mortem", target="artifact", started_at=written)
    step.summary = f"draft published as {run.key}-post-mortem"
    step.ended_at = written
    recorded(run, report, step)  # before rendering: the draft lists itself too
    post_mortem = render_post_mortem(report, written)
    publish_markdown(
        f"{run.key}-post-mortem", post_mortem, f"Post-mortem draft of {report.incident_id}"
    )
    report.snapshot["post_mortem"] = post_mortem
    markdown = render_incident_report(report)
    publish_markdown(run.key, markdown, f"Incident {report.incident_id}: {report.outcome}")
    return post_mortem


def finish(run: RunbookRun, report: IncidentReport) -> State[Any]:
    report.outcome = report.grade()
    post_mortem = publish_drafts(run, report)
    line = report.line()
    run.finish(report.outcome, line, report_details(report))
    targets = told(run, report.severity)
    if targets:
        try:
            send_notification(
                targets,
                f"opsflow: {report.severity} incident in {report.env} {report.outcome.upper()}",
                post_mortem,
                env=report.env,
            )
        except OpsflowError as exc:
            run.logger.error("Notification failed: %s", exc)
    message = f"{RUNBOOK} of {run.env_name}: {line}"
    if report.outcome == "failed":
        return Failed(message=message, data=report)
    if report.outcome == "degraded":
        return Completed(message=message, data=report, name="Degraded")
    return Completed(message=message, data=report)


def incident_id(env: str, started: datetime, alert: Alert | None) -> str:
    """``INC-<env>-<YYYYMMDD-HHMM>`` plus the alert's fingerprint (its first 8)."""
    tail = f"-{alert.fingerprint[:8]}" if alert is not None and alert.fingerprint else ""
    return f"INC-{env}-{started:%Y%m%d-%H%M}{tail}"


@runbook_flow(
    RUNBOOK,
    "Incident response: acknowledge (status page, page/chat by severity), diagnostics "
    "snapshot in parallel (containers/pods, events, logs, rollouts, deploys, health check, "
    "Prometheus), optional remediation with approval, response-time targets, post-mortem draft.",
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_PARALLEL),
    timeout_seconds=4 * 3600,
)
def incident(
    env: str = "local",
    *,
    requested_by: str,
    summary: str,
    severity: Severity = "P3",
    alert: dict[str, Any] | None = None,
    remediation: RemediationChoice = "none",
    service: str | None = None,
    replicas: int | None = None,
    dry_run: bool = False,
    approval_timeout_seconds: ApprovalWait = None,
    wait_for_lock: LockWait = LOCK_WAIT_SECONDS,
) -> State[Any]:
    """Respond to an incident in ``env``.

    Args:
        env: environment name from the inventory.
        summary: what is wrong, in a line.
        severity: P1 (critical, paged) … P4 (low, chat).
        alert: the Alertmanager alert that opened it (the receiver passes it).
        remediation: none, or one of the inventory's incident.remediations.
        service: the service / deployment to restart or scale.
        replicas: the replicas to scale to.
        dry_run: only publish the plan.
        requested_by: who asks for this run (the receiver sends `alertmanager`).
        approval_timeout_seconds: how long to wait for approval (default: the inventory's).
        wait_for_lock: seconds a restart or scale waits for the environment's lock (a
            backup, restore or deploy of it).
    """
    run = RunbookRun.start(RUNBOOK, env, requested_by)
    plan = plan_incident(env, run.env, severity, summary, remediation, service, replicas, alert)
    opened = parse_alert(alert)
    if remediation in ("restart", "scale"):
        from tasks.remediation import check_scale, resolve_service

        assert service is not None
        resolve_service(run.env, service)  # an unknown service: InputError before any change
        if remediation == "scale" and replicas is not None:
            check_scale(run.env, service, replicas)
    run.publish_plan(plan)
    run_start = aware(run.started_at) or now()
    started = opened.starts_at if opened is not None and opened.starts_at else run_start
    report = IncidentReport(
        incident_id=incident_id(env, started, opened),
        env=env,
        severity=severity,
        summary=summary,
        requested_by=run.requested_by,
        alert=opened,
        flow_run_id=run.flow_run_id,
        flow_run_url=ui_url(run.flow_run_id),
        remediation=remediation,
    )
    if dry_run:
        report.dry_run, report.outcome = True, "planned"
        return Completed(message="dry run: plan published", data=report)
    times = ResponseTimes(
        severity=severity,
        target=run.env.incident.response_targets.get(severity, RESPONSE_TARGETS[severity]),
        started_at=started,
        started_from="the alert's startsAt" if started != run_start else "the run's start",
    )
    report.response = times
    if opened is not None and opened.starts_at is not None:
        what = f"Alert `{opened.name or '?'}` started firing"
        report.events.append(TimelineEvent(at=opened.starts_at, what=what))
    report.events.append(
        TimelineEvent(at=run_start, what="Incident run started", link=report.flow_run_url)
    )
    started_clock = time.monotonic()
    acknowledge(run, report, times)
    snapshot(run, report, opened)
    run.logger.info("diagnostics took %.1fs", time.monotonic() - started_clock)
    if remediation != "none":
        remediate(
            run,
            report,
            times,
            plan,
            remediation,
            service,
            replicas,
            approval_timeout_seconds,
            wait_for_lock,
        )
    response_step(run, report, times)
    return finish(run, report)
