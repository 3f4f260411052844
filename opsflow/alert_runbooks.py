"""The alert runbooks' pure parts (``flows/alerts.py`` runs them): which service an
Alertmanager alert is about, whether a remediation is allowed and needs an approval, the
findings a diagnostic step returns, the report and its markdown.

No I/O here: plans and reports are built and tested without any system.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from opsflow.errors import InputError
from opsflow.inventory import Database, Environment
from opsflow.inventory.incident import Remediation
from opsflow.plans import PlanStep
from opsflow.redaction import redact

FindingStatus = Literal["complete", "degraded", "failed", "skipped"]
SERVICE_LABELS = ("service", "container", "pod", "deployment")
"""Alert labels that name the service, in the order they are looked at."""


class Finding(BaseModel):
    """What one diagnostic or remediation step found or did (one ledger step)."""

    step: str
    target: str
    status: FindingStatus = "complete"
    summary: str = ""
    details: dict[str, Any] = Field(default_factory=dict)
    seconds: float = 0.0


class AlertReport(BaseModel):
    """The report of one alert runbook run (artifact ``<runbook>-<env>`` and ledger details)."""

    runbook: str
    env: str
    requested_by: str
    service: str | None = None
    alert: dict[str, Any] = Field(default_factory=dict, description="alertname, labels, startsAt")
    findings: list[Finding] = Field(default_factory=list)
    why: str = Field("", description="why the remediation was (or was not) taken")
    action: str = Field("none", description="the remediation taken: restart, scale, rollback")
    approved_by: list[str] | str = Field(default_factory=list)
    outcome: str = "planned"
    dry_run: bool = False
    seconds: float = 0.0

    def summary(self) -> str:
        head = f"{self.outcome}"
        if self.action != "none" and self.action not in self.outcome:
            head += f", {self.action}"
        if self.why:
            head += f": {self.why}"
        return redact(head)


def alert_brief(alert: dict[str, Any] | None) -> dict[str, Any]:
    """The parts of an Alertmanager alert a report keeps (labels, summary, start, fingerprint)."""
    if not alert:
        return {}
    if not isinstance(alert, dict):
        raise InputError("alert", "is not an object", "pass the Alertmanager alert as JSON")
    labels = alert.get("labels") or {}
    annotations = alert.get("annotations") or {}
    if not isinstance(labels, dict) or not isinstance(annotations, dict):
        raise InputError(
            "alert", "labels/annotations are not objects", "pass an Alertmanager alert"
        )
    return {
        "alertname": str(labels.get("alertname", "")),
        "labels": {str(k): redact(str(v))[:200] for k, v in labels.items()},
        "summary": redact(str(annotations.get("summary") or annotations.get("description") or ""))[
            :500
        ],
        "startsAt": str(alert.get("startsAt") or ""),
        "fingerprint": str(alert.get("fingerprint") or ""),
    }


def service_of(env: Environment, service: str | None, alert: dict[str, Any] | None) -> str | None:
    """The service a run is about: ``service``, else the alert's ``service``/``container``/
    ``pod``/``deployment`` label mapped onto the inventory (a Docker container name gives its
    service, a pod name ``<deployment>-…`` its Deployment); None when neither names one."""
    if service:
        return service
    labels = (alert or {}).get("labels") or {}
    docker = {s.container: s.name for s in env.docker.services} if env.docker else {}
    services = set(docker.values())
    if env.kubernetes is not None:
        if env.kubernetes.deployment:
            services.add(env.kubernetes.deployment)
        services |= set(env.scaling)
        if env.deploy is not None and env.deploy.target == "kubernetes":
            services |= {s.name for s in env.deploy.services}
    for label in SERVICE_LABELS:
        value = str(labels.get(label) or "")
        if not value:
            continue
        if value in services:
            return value
        if value in docker:
            return docker[value]
        if label == "pod":
            owners = [s for s in sorted(services) if value.startswith(s + "-")]
            if owners:
                return max(owners, key=len)
        return value  # resolve_service says what the environment knows
    return None


def check_remediation(env_name: str, env: Environment, action: Remediation) -> None:
    """``action`` must be in ``incident.remediations``: ``InputError`` naming it otherwise."""
    allowed = env.incident.remediations
    if action not in allowed:
        raise InputError(
            f"environments.{env_name}.incident.remediations",
            f"does not allow {action!r} (allowed: {', '.join(allowed) or 'none'})",
            f"add {action} to incident.remediations, or run without it",
        )


def needs_approval(env: Environment, auto_remediate: bool) -> bool:
    """A change on a protected environment waits for an approval, unless the alert rule that
    started the run allows automatic remediation."""
    return env.protected and not auto_remediate


def approval_steps(env_name: str, env: Environment, auto_remediate: bool) -> list[PlanStep]:
    """The plan's approval step of a change (``needs_approval``), or none."""
    if needs_approval(env, auto_remediate):
        return [PlanStep(action="request_approval", target=env_name, why="protected")]
    return []


def postgres_databases(
    env_name: str, env: Environment, database: str | None
) -> list[tuple[int, Database]]:
    """The PostgreSQL databases (inventory index, database) a run looks at: ``database`` only,
    or all; an unknown name is an ``InputError`` naming ``database``."""
    dbs = [(i, db) for i, db in enumerate(env.databases) if db.kind == "postgres"]
    if database is None:
        return dbs
    found = [(i, db) for i, db in dbs if db.name == database]
    if not found:
        raise InputError(
            "database",
            f"{database!r:.80} is not a PostgreSQL database of {env_name}",
            f"name one of {[db.name for _, db in dbs] or 'none'}",
        )
    return found


def grade(findings: list[Finding]) -> str:
    """The worst finding's status as an outcome word (complete → done)."""
    statuses = {f.status for f in findings}
    if "failed" in statuses:
        return "failed"
    if "degraded" in statuses:
        return "degraded"
    return "done"


def _cell(text: str) -> str:
    return redact(text).replace("|", "\\|").replace("\n", " ")


def render_alert_report(report: AlertReport, started: datetime) -> str:
    """The markdown report: the alert, each finding with its figures, the action and why."""
    title = report.runbook.replace("-", " ")
    lines = [
        f"# {title} on `{report.env}`: {report.outcome}",
        "",
        f"Started {started:%Y-%m-%d %H:%M:%S} UTC, {report.seconds:.1f} s, "
        f"requested by {report.requested_by}" + (" (dry run)" if report.dry_run else ""),
        "",
    ]
    if report.alert:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(report.alert.get("labels", {}).items()))
        lines += [
            f"**Alert** `{report.alert.get('alertname', '')}` since "
            f"{report.alert.get('startsAt') or '?'}: {report.alert.get('summary') or '-'}",
            "",
            f"Labels: {labels or '-'}",
            "",
        ]
    if report.service:
        lines += [f"**Service** `{report.service}`", ""]
    lines += [
        f"**Action** {report.action}" + (f": {_cell(report.why)}" if report.why else ""),
        "",
    ]
    if report.approved_by:
        who = report.approved_by
        lines += [f"Approved by: {', '.join(who) if isinstance(who, list) else who}", ""]
    lines += ["| step | target | status | summary |", "|---|---|---|---|"]
    for f in report.findings:
        lines.append(f"| {f.step} | {_cell(f.target)} | {f.status} | {_cell(f.summary)} |")
    for f in report.findings:
        listed = f.details.get("table")
        if isinstance(listed, list) and listed and isinstance(listed[0], dict):
            keys = list(listed[0])
            lines += ["", f"### {f.step}: {f.target}", "", "| " + " | ".join(keys) + " |"]
            lines.append("|" + "---|" * len(keys))
            for row in listed:
                lines.append("| " + " | ".join(_cell(str(row.get(k, ""))) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def last_deploy(rows: list[Any]) -> dict[str, Any] | None:
    """The newest deploy run of the ledger's (``RunRow``s, newest first) that changed
    something: when, by whom, its outcome and image changes; None when there is none."""
    for row in rows:
        details = row.details or {}
        changes = [c for c in details.get("changes", []) if c.get("action") != "unchanged"]
        if not changes and details.get("outcome") in (None, "unchanged"):
            continue
        return {
            "flow_run_id": row.flow_run_id,
            "finished_at": row.finished_at.isoformat(timespec="seconds"),
            "by": row.triggered_by,
            "status": row.status,
            "outcome": details.get("outcome", row.status),
            "deploy_id": details.get("deploy_id", ""),
            "changes": [
                {k: c.get(k) for k in ("service", "from_image", "to_image", "outcome")}
                for c in changes
            ],
        }
    return None


def deploy_drift(deploy: dict[str, Any] | None, service: str, image_now: str | None) -> str:
    """What changed for ``service`` since the last deploy: its image then and now."""
    if deploy is None:
        return "no deploy of this environment in the ledger: nothing to compare with"
    change = next((c for c in deploy["changes"] if c.get("service") == service), None)
    if change is None:
        return f"the last deploy ({deploy['finished_at']}) did not change {service}"
    deployed = change.get("to_image")
    when = f"the last deploy ({deploy['finished_at']}, {deploy['outcome']})"
    if image_now is None or deployed == image_now:
        return f"{when} set {deployed} (from {change.get('from_image')}); it still runs it"
    return f"{when} set {deployed}, but it runs {image_now} now: changed outside a deploy"
