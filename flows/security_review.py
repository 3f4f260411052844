"""Weekly security review (seeds 000 "Security Monitoring", 001 security checklist, 002 failed
authentication attempts, 003 weekly dependency scan and monthly secret review, 004 security
checklist): every check the inventory's ``security`` and ``access`` ask for runs concurrently,
each a task returning its findings with a severity.

Checks: dependency vulnerabilities (Python environments, npm lock files) and container images
(Debian and Python packages, image age) against the OSV advisory source the operator keeps
synced; TLS certificates and protocols of every https endpoint; failed logins per source IP
and user; the age of secrets (rotated ones against their ``rotate_every``, Kubernetes Secrets
and Prefect Secret blocks against ``secret_max_age``); access (PostgreSQL roles, Kubernetes
bindings) against the ``access`` allow-lists. A check that cannot run reports so as a high
finding: the review never claims "no vulnerabilities" for packages it could not match.

Outcome: a markdown report ``security-review-<env>``, a findings table
``security-review-<env>-findings``, a ledger run with one step per check, an incident run (or
a notification) for critical findings. The run is Completed when no finding is high or
critical, Failed otherwise; `opsflow run security-review --json` prints the findings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefect.futures import PrefectFuture
from prefect.states import Completed, Failed, State
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import RunbookRun, pg_reach, runbook_flow
from opsflow.errors import OpsflowError
from opsflow.inventory import Environment
from opsflow.ledger import Ledger
from opsflow.osv import AdvisoryIndex
from opsflow.plans import Plan, PlanStep
from opsflow.redaction import redact
from opsflow.reports import publish_markdown, publish_table
from opsflow.security import (
    RUNBOOK,
    CheckOutcome,
    SecurityReport,
    Severity,
    finding_rows,
    render_security_report,
)
from tasks.security.incident import start_incident

MAX_PARALLEL_CHECKS = 16
ADVISORIES = "advisories"
_STEP_STATUS = {
    Severity.CRITICAL: "critical",
    Severity.HIGH: "failed",
    Severity.MEDIUM: "degraded",
    Severity.LOW: "complete",
}
"""A check's ledger step status by its worst finding (none: complete)."""


@dataclass(frozen=True)
class Planning:
    """The environment a plan is built for, before a run exists (no ledger yet)."""

    env_name: str
    env: Environment
    ledger: Ledger | None = None


Review = RunbookRun | Planning


@dataclass(frozen=True)
class SecurityCheck:
    """One planned check: the plan step it shows as, and the task call that performs it.
    ``advisories``: the call takes the loaded advisory index as ``index``."""

    action: str
    check: str
    target: str
    why: str
    task: Any
    kwargs: dict[str, Any] = field(default_factory=dict)
    advisories: bool = False


def planned_checks(run: Review) -> list[SecurityCheck]:
    """Every check the inventory asks for, in report order (no I/O)."""
    env_name, env = run.env_name, run.env
    sec = env.security
    calls: list[SecurityCheck] = []
    if sec.python or sec.npm or sec.images:
        from tasks.security.dependencies import check_npm_packages, check_python_packages
        from tasks.security.images import check_image

        for py in sec.python:
            calls.append(
                SecurityCheck(
                    "check_python_packages",
                    "dependencies",
                    f"python {py.name}",
                    "installed Python packages against the OSV advisories",
                    check_python_packages,
                    {"env_name": env_name, "env": env, "python": py},
                    advisories=True,
                )
            )
        for lock in sec.npm:
            calls.append(
                SecurityCheck(
                    "check_npm_packages",
                    "dependencies",
                    f"npm {lock.name}",
                    "locked npm packages against the OSV advisories",
                    check_npm_packages,
                    {"env_name": env_name, "lock": lock},
                    advisories=True,
                )
            )
        for scan in sec.images:
            calls.append(
                SecurityCheck(
                    "check_image",
                    "images",
                    scan.name,
                    f"image packages against the advisories, built within {scan.max_age.days}d",
                    check_image,
                    {"env_name": env_name, "env": env, "scan": scan},
                    advisories=True,
                )
            )
    from tasks.security.tls import check_tls, tls_urls

    for url in tls_urls(env):
        calls.append(
            SecurityCheck(
                "check_tls",
                "tls",
                url,
                f"certificate valid > {env.thresholds.cert_days}d, {sec.tls.min_version}+",
                check_tls,
                {
                    "env_name": env_name,
                    "url": url,
                    "tls": sec.tls,
                    "cert_days": env.thresholds.cert_days,
                },
            )
        )
    if sec.logins is not None:
        from tasks.security.logins import check_failed_logins

        calls.append(
            SecurityCheck(
                "check_failed_logins",
                "logins",
                ", ".join(sec.logins.files) or "container logs",
                f"under {sec.logins.threshold} failed logins per IP/user in {sec.logins.window}",
                check_failed_logins,
                {"env_name": env_name, "env": env, "logins": sec.logins},
            )
        )
    calls += _secret_and_access_checks(run)
    return calls


def _secret_and_access_checks(run: Review) -> list[SecurityCheck]:
    env_name, env = run.env_name, run.env
    from tasks.security.access import check_kubernetes_access, check_postgres_access
    from tasks.security.secrets_age import check_secrets_age

    calls = []
    if env.secrets or env.kubernetes is not None or _prefect_secrets(env_name, env):
        calls.append(
            SecurityCheck(
                "check_secrets_age",
                "secrets_age",
                env_name,
                f"secrets rotated within rotate_every / {env.security.secret_max_age.days}d",
                check_secrets_age,
                {"env_name": env_name, "env": env, "ledger": run.ledger},
            )
        )
    policy = env.access
    if policy.postgres_superusers is not None or policy.postgres_logins is not None:
        for index, db in enumerate(env.databases):
            if db.kind != "postgres":
                continue
            reach = pg_reach(run, index, db)
            calls.append(
                SecurityCheck(
                    "check_postgres_access",
                    "access",
                    f"postgres {db.name}",
                    "superusers and login roles on the allow-list",
                    check_postgres_access,
                    {"env_name": env_name, "policy": policy, **reach},
                )
            )
    if policy.kubernetes_subjects is not None and env.kubernetes is not None:
        calls.append(
            SecurityCheck(
                "check_kubernetes_access",
                "access",
                f"namespace {env.kubernetes.namespace}",
                "RoleBinding and ClusterRoleBinding subjects on the allow-list",
                check_kubernetes_access,
                {"env_name": env_name, "target": env.kubernetes, "policy": policy},
            )
        )
    return calls


def _prefect_secrets(env_name: str, env: Environment) -> bool:
    from opsflow.inventory.references import references

    return any(ref.startswith("secret:") for _, ref in references(env_name, env))


def plan_security_review(env_name: str, env: Environment) -> Plan:
    calls = planned_checks(Planning(env_name, env))
    steps = [PlanStep(action=c.action, target=c.target, why=c.why) for c in calls]
    if any(c.advisories for c in calls):
        source = env.security.advisories
        where = source.path or source.url if source is not None else "-"
        steps.insert(0, PlanStep(action="load_advisories", target=str(where), why="OSV records"))
    notes = [] if steps else ["Nothing to review: add security and access to the inventory."]
    return Plan(runbook=RUNBOOK, env=env_name, steps=steps, notes=notes)


def _outcome(call: SecurityCheck, future: PrefectFuture[Any]) -> CheckOutcome:
    """A task's outcome; a task that failed after its retries could not check."""
    future.wait()
    if future.state.is_completed():
        value: CheckOutcome = future.result()
        return value
    try:
        future.result(raise_on_failure=True)
    except Exception as exc:  # noqa: BLE001 - a check that fails is reported, not fatal
        problem = redact(str(exc) or type(exc).__name__)
    else:
        problem = f"ended {future.state.name}"
    return CheckOutcome.unusable(call.check, call.target, f"the check failed: {problem}", _FIX)


_FIX = "see the run's log for the error, fix the inventory or the target and run it again"


def _load_index(
    run: RunbookRun, calls: list[SecurityCheck]
) -> tuple[AdvisoryIndex | None, str | None]:
    """The advisory index (None when no check needs it) and why it is unusable (None: it is
    usable)."""
    source = run.env.security.advisories
    if source is None or not any(c.advisories for c in calls):
        return None, None
    from tasks.security.advisories import load_advisories

    with run.step("load_advisories", str(source.path or source.url)) as step:
        try:
            index = load_advisories(source)
        except OpsflowError as exc:
            step.fail(f"advisory source unusable: {exc}")
            return None, step.summary
        step.summary = f"{len(index)} advisories"
    return index, None


def _run_checks(run: RunbookRun, report: SecurityReport) -> None:
    calls = planned_checks(run)
    index, unusable = _load_index(run, calls)
    pending: list[tuple[SecurityCheck, PrefectFuture[Any] | CheckOutcome]] = []
    for call in calls:
        if call.advisories and index is None:
            skipped = CheckOutcome.unusable(
                call.check,
                call.target,
                str(unusable),
                "fix the advisory source (security.advisories) and run the review again",
            )
            pending.append((call, skipped))
            continue
        extra = {"index": index} if call.advisories else {}
        pending.append((call, call.task.submit(**call.kwargs, **extra)))
    for call, item in pending:
        outcome = item if isinstance(item, CheckOutcome) else _outcome(call, item)
        report.add(outcome)
        worst = outcome.worst
        status = _STEP_STATUS[worst] if worst is not None else "complete"
        details = {"findings": [f.model_dump(mode="json") for f in outcome.findings]}
        run.record(call.action, call.target, status, outcome.summary, details=details)


def _escalate(run: RunbookRun, report: SecurityReport, markdown: str) -> None:
    """Critical findings: an incident run when the environment asks for one and the incident
    runbook is served, else a notification."""
    critical = [f for f in report.findings if f.severity == Severity.CRITICAL]
    if not critical:
        return
    summary = f"security review: {len(critical)} critical finding(s): " + "; ".join(
        f"{f.check} {f.target}" for f in critical[:5]
    )
    if run.env.security.incident_on_critical:
        with run.step("start_incident", run.env_name) as step:
            report.incident_run = step.result(
                start_incident(run.env_name, run.requested_by, summary)
            )
            if report.incident_run is None:
                step.summary = "the incident runbook is not served: notifying instead"
    if report.incident_run is None:
        send = run.notifier()
        if send is not None:
            send(f"opsflow: security review of {run.env_name}: CRITICAL", markdown)


@runbook_flow(
    RUNBOOK,
    "Weekly security review: dependency and image vulnerabilities (OSV), TLS, failed logins, "
    "secret age and access audit; findings by severity, incident on critical.",
    task_runner=ThreadPoolTaskRunner(max_workers=MAX_PARALLEL_CHECKS),
    timeout_seconds=3600,
)
def security_review(
    env: str = "local",
    *,
    requested_by: str,
    dry_run: bool = False,
) -> State[Any]:
    """Review the security of ``env``.

    Args:
        env: environment name from the inventory.
        dry_run: only publish the plan (what would be checked).
        requested_by: who asks for this run (schedules send `scheduler`).
    """
    run = RunbookRun.start(RUNBOOK, env, requested_by)
    run.publish_plan(plan_security_review(env, run.env))
    report = SecurityReport(env=env, dry_run=dry_run)
    if dry_run:
        return Completed(message="dry run: plan published", data=report)
    _run_checks(run, report)
    markdown = render_security_report(report)
    publish_markdown(run.key, markdown, f"Security review of {env}: {report.summary()}")
    publish_table(f"{run.key}-findings", finding_rows(report), f"Security findings of {env}")
    _escalate(run, report, markdown)
    status = "complete" if report.passed else "failed"
    run.finish(status, report.summary(), {"counts": report.counts})
    message = f"security review of {env}: {report.summary()}"
    if report.passed:
        return Completed(message=message, data=report)
    return Failed(message=message, data=report)
