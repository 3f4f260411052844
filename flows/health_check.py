"""Daily health check (seeds 001 daily-health-check.sh, 002 Health Monitoring, 003 Morning
health check, 004 Daily Tasks): every check of the environment runs concurrently, each a
retryable task; the worst result is the overall status.

Outcome: a markdown report artifact ``health-check-<env>``, a table artifact
``health-check-<env>-checks``, a ledger run with one step per check, and a notification when
the environment is not healthy. The flow run ends Completed (healthy), Completed named
"Degraded", or Failed named "Critical".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefect.futures import PrefectFuture
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel, Field

from flows.common import RunbookRun, runbook_flow
from opsflow.inventory import Environment
from opsflow.plans import Plan, PlanStep
from opsflow.reports import publish_markdown, publish_table, render_health_report, result_rows
from opsflow.results import CheckResult, Status, worst
from tasks.backups import check_backup_freshness
from tasks.http import check_endpoint, check_metrics
from tasks.logs import scan_log_file
from tasks.sqlite import check_sqlite
from tasks.system import check_disk, check_tls_certificate

RUNBOOK = "health-check"
MAX_PARALLEL_CHECKS = 64


@dataclass(frozen=True)
class CheckCall:
    """One planned check: the plan step it shows as, and the task call that performs it."""

    action: str
    target: str
    why: str
    task: Any
    kwargs: dict[str, Any] = field(default_factory=dict)


class HealthReport(BaseModel):
    env: str
    overall: Status
    results: list[CheckResult] = Field(default_factory=list)
    seconds: float = 0.0
    dry_run: bool = False


def planned_checks(env_name: str, env: Environment) -> list[CheckCall]:
    """Every check the inventory asks for, in report order (pure: no I/O)."""
    th = env.thresholds
    base = f"environments.{env_name}"
    calls: list[CheckCall] = []
    for ep in env.endpoints:
        calls.append(
            CheckCall(
                "check_endpoint",
                ep.name,
                f"{ep.kind} health endpoint answers",
                check_endpoint,
                {"endpoint": ep, "thresholds": th},
            )
        )
        if ep.url.startswith("https://"):
            calls.append(
                CheckCall(
                    "check_tls_certificate",
                    ep.name,
                    f"certificate valid for more than {th.cert_days} days",
                    check_tls_certificate,
                    {"endpoint": ep, "thresholds": th},
                )
            )
    for source in env.metrics:
        calls.append(
            CheckCall(
                "check_metrics",
                source.name,
                "error rate, p95 latency and memory within thresholds",
                check_metrics,
                {"source": source, "thresholds": th},
            )
        )
    if env.kubernetes is not None:
        # system clients are imported only for environments that have the system
        from tasks.kubernetes.checks import check_pod_resources, check_pods, scan_pod_logs

        k8s = env.kubernetes
        where = f"{k8s.namespace}/{k8s.deployment or k8s.label_selector or '*'}"
        calls += [
            CheckCall(
                "check_pods",
                where,
                "pods running, ready, not crash-looping",
                check_pods,
                {"target": k8s, "thresholds": th},
            ),
            CheckCall(
                "check_pod_resources",
                where,
                "pod memory and CPU below limits",
                check_pod_resources,
                {"target": k8s, "thresholds": th},
            ),
            CheckCall(
                "scan_pod_logs",
                where,
                f"errors in the last {env.logs.window}",
                scan_pod_logs,
                {
                    "target": k8s,
                    "window": env.logs.window,
                    "pattern": env.logs.pattern,
                    "thresholds": th,
                },
            ),
        ]
    if env.docker is not None and env.docker.services:
        from tasks.docker.checks import check_containers, scan_container_logs

        names = ", ".join(s.container for s in env.docker.services)
        calls += [
            CheckCall(
                "check_containers",
                names,
                "containers running, healthy, not restarting",
                check_containers,
                {"target": env.docker, "thresholds": th},
            ),
            CheckCall(
                "scan_container_logs",
                names,
                f"errors in the last {env.logs.window}",
                scan_container_logs,
                {
                    "target": env.docker,
                    "window": env.logs.window,
                    "pattern": env.logs.pattern,
                    "thresholds": th,
                },
            ),
        ]
    for log in env.logs.files:
        calls.append(
            CheckCall(
                "scan_log_file",
                log.path,
                f"errors in the last {env.logs.window}",
                scan_log_file,
                {"log": log, "window": env.logs.window, "thresholds": th},
            )
        )
    for i, db in enumerate(env.databases):
        fld = f"{base}.databases[{i}]"
        if db.kind == "postgres":
            from tasks.postgres.checks import check_postgres

            calls.append(
                CheckCall(
                    "check_postgres",
                    db.name,
                    "accepts connections, has headroom",
                    check_postgres,
                    {"db": db, "thresholds": th, "field": fld},
                )
            )
        else:
            calls.append(
                CheckCall(
                    "check_sqlite",
                    db.name,
                    "file passes quick_check",
                    check_sqlite,
                    {"db": db, "thresholds": th, "field": fld},
                )
            )
    for i, target in enumerate(env.redis):
        from tasks.redis import check_redis

        calls.append(
            CheckCall(
                "check_redis",
                target.name,
                "answers PING, memory and hit rate",
                check_redis,
                {"target": target, "thresholds": th, "field": f"{base}.redis[{i}]"},
            )
        )
    for path in env.disks:
        calls.append(
            CheckCall(
                "check_disk",
                path,
                f"usage below {th.disk_pct:g}%",
                check_disk,
                {"path": path, "thresholds": th},
            )
        )
    if env.databases or env.redis:
        calls.append(
            CheckCall(
                "check_backup_freshness",
                "backup catalog",
                f"newest backup younger than {th.backup_max_age}",
                check_backup_freshness,
                {"env_name": env_name, "env": env, "ledger_url": None},
            )
        )
    return calls


def plan_health_check(env_name: str, env: Environment) -> Plan:
    steps = [
        PlanStep(action=c.action, target=c.target, why=c.why) for c in planned_checks(env_name, env)
    ]
    notes = (
        []
        if steps
        else [
            "The environment lists nothing to check: add endpoints, "
            "databases or disks to the inventory."
        ]
    )
    return Plan(runbook=RUNBOOK, env=env_name, steps=steps, notes=notes)


def _collect(call: CheckCall, future: PrefectFuture[Any]) -> list[CheckResult]:
    """A task's results; a task that failed after its retries becomes a critical result."""
    future.wait()
    state = future.state
    if state.is_completed():
        value = future.result()
        return list(value) if isinstance(value, list) else [value]
    try:
        future.result(raise_on_failure=True)
    except Exception as exc:  # noqa: BLE001 - any task failure is reported as critical
        return [CheckResult.failed(call.action.removeprefix("check_"), call.target, exc)]
    return [CheckResult.failed(call.action, call.target, f"ended {state.name}")]


@runbook_flow(
    RUNBOOK,
    "Daily health check: endpoints, TLS, metrics, pods/containers, logs, "
    "databases, Redis, disks and backup freshness, concurrently.",
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_PARALLEL_CHECKS),
    timeout_seconds=900,
)
def health_check(
    env: str = "local",
    dry_run: bool = False,
    notify: bool = True,
    requested_by: str = "",
) -> State[Any]:
    """Check everything the inventory lists for ``env``.

    Args:
        env: environment name from the inventory.
        dry_run: only publish the plan (what would be checked).
        notify: send a notification when the result is not healthy.
        requested_by: who asked for this run (shown in the ledger).
    """
    run = RunbookRun.start(RUNBOOK, env, requested_by)
    plan = plan_health_check(env, run.env)
    run.publish_plan(plan)
    if dry_run:
        report = HealthReport(env=env, overall=Status.HEALTHY, dry_run=True)
        return Completed(message="dry run: plan published", data=report)

    calls = planned_checks(env, run.env)
    futures = [(c, c.task.submit(**c.kwargs)) for c in calls]
    results: list[CheckResult] = []
    for call, future in futures:
        results.extend(_collect(call, future))
    for result in results:
        run.record_check(result)  # one step row each, logged at the level of its grade
    overall = worst([r.status for r in results])
    report = HealthReport(env=env, overall=overall, results=results, seconds=run.elapsed)

    markdown = render_health_report(env, overall, results, run.started_at, run.elapsed)
    publish_markdown(run.key, markdown, f"Health of {env}: {overall.value}")
    publish_table(f"{run.key}-checks", result_rows(results), f"Health checks of {env}")
    counts = ", ".join(f"{sum(r.status == s for r in results)} {s.value}" for s in Status)
    run.finish(overall.value, f"{overall.value}: {counts}", {"checks": len(results)})

    send = run.notifier() if notify else None
    if overall != Status.HEALTHY and send is not None:
        send(f"opsflow: {env} is {overall.value.upper()}", markdown)
    message = f"{env} is {overall.value} ({counts})"
    if overall == Status.CRITICAL:
        return Failed(message=message, data=report, name="Critical")
    if overall == Status.DEGRADED:
        return Completed(message=message, data=report, name="Degraded")
    return Completed(message=message, data=report)
