"""Incidents (``flows/incident.py``), the pure parts: the alert that opened one, what each step
did (with its start and end), the response-time targets and their breaches, the report and
the **post-mortem draft** (seed 001's "Incident Communication Template", seed 003's
post-incident review: Summary, Timeline, Impact, Root Cause, Resolution, Action Items,
Lessons Learned), and ``plan_incident``: the steps and the requests refused before anything
is done.

Times are aware UTC ``datetime`` values here; ledger times (naive UTC) go through ``aware``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from opsflow.durations import format_duration
from opsflow.errors import InputError
from opsflow.inventory import Environment
from opsflow.inventory.incident import Severity
from opsflow.plans import Plan, PlanStep
from opsflow.redaction import redact, redact_data

RUNBOOK = "incident"
RemediationChoice = Literal["none", "rollback", "restart", "scale", "maintenance_mode"]
StepStatus = Literal["complete", "degraded", "failed", "skipped"]
PAGE_SEVERITIES: tuple[Severity, ...] = ("P1", "P2")
UNSET_TIME = "0001-01-01T00:00:00Z"
"""Alertmanager's ``endsAt`` of an alert that has not ended."""
ACTION_DAYS = {"P1": 2, "P2": 5, "P3": 14, "P4": 30}
"""When the post-mortem's action items are due, by severity (days after the incident)."""


def aware(moment: datetime | None) -> datetime | None:
    """``moment`` as aware UTC (ledger times are naive UTC)."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def utc(moment: datetime | None) -> str:
    return "-" if moment is None else f"{aware(moment):%Y-%m-%d %H:%M:%S} UTC"


class Alert(BaseModel):
    """The Alertmanager alert (webhook payload v4, one of ``alerts[]``) that opened it."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    status: Literal["firing", "resolved"] = "firing"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: datetime | None = Field(None, alias="startsAt")
    ends_at: datetime | None = Field(None, alias="endsAt")
    fingerprint: str = ""
    generator_url: str = Field("", alias="generatorURL")

    @field_validator("starts_at", "ends_at", mode="before")
    @classmethod
    def _time(cls, value: Any) -> Any:
        if value in (None, "", UNSET_TIME) or str(value).startswith("0001-01-01"):
            return None
        return value

    @field_validator("starts_at", "ends_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("has no time zone (fix: RFC 3339 with Z or an offset)")
        return aware(value)

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "")


def parse_alert(alert: dict[str, Any] | None) -> Alert | None:
    """The ``alert`` parameter checked: InputError naming the field that is wrong."""
    if alert is None:
        return None
    try:
        return Alert.model_validate(alert)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InputError(
            f"alert.{where}" if where else "alert",
            redact(first["msg"]),
            "pass the Alertmanager alert as it is (labels, annotations, startsAt, endsAt, "
            "fingerprint, status: firing|resolved)",
        ) from None


class IncidentStep(BaseModel):
    """What one step of the incident did, with its start and end."""

    step: str
    target: str
    status: StepStatus = "complete"
    summary: str = ""
    started_at: datetime
    ended_at: datetime | None = None
    details: dict[str, Any] = Field(default_factory=dict)
    link: str | None = Field(None, description="the Prefect UI page of a subflow run")

    @property
    def seconds(self) -> float:
        end = self.ended_at or self.started_at
        return round((end - self.started_at).total_seconds(), 3)


class TimelineEvent(BaseModel):
    """A moment of the incident that is not a step: the alert, acknowledged, resolved…"""

    at: datetime
    what: str
    link: str | None = None


class ResponseTimes(BaseModel):
    """The response-time targets of the severity: when it started, was acknowledged,
    mitigated and resolved, and the breaches."""

    severity: Severity
    target: timedelta
    started_at: datetime
    started_from: str = Field(description="the alert's startsAt, or the run's start")
    acknowledged_at: datetime | None = None
    mitigated_at: datetime | None = None
    resolved_at: datetime | None = None
    resolved_from: str = ""
    breaches: list[str] = Field(default_factory=list)


def response_breaches(times: ResponseTimes, now: datetime) -> list[str]:
    """The breaches of the severity's target: acknowledged later than ``target`` after the
    start (or not acknowledged and the target already passed at ``now``)."""
    limit = times.target
    wanted = f"{times.severity} target {format_duration(limit)}"
    if times.acknowledged_at is None:
        late = now - times.started_at
        if late > limit:
            return [f"not acknowledged {format_duration(late)} after the start ({wanted})"]
        return []
    took = times.acknowledged_at - times.started_at
    if took > limit:
        return [f"acknowledged {format_duration(took)} after the start ({wanted})"]
    return []


class IncidentReport(BaseModel):
    """The report ``incident-<env>``, the ledger run's details and the post-mortem's source."""

    incident_id: str
    env: str
    severity: Severity
    summary: str
    requested_by: str
    alert: Alert | None = None
    flow_run_id: str = ""
    flow_run_url: str | None = None
    notified: list[str] = Field(default_factory=list)
    remediation: RemediationChoice = "none"
    remediation_result: str = ""
    approved_by: list[str] = Field(default_factory=list)
    steps: list[IncidentStep] = Field(default_factory=list)
    events: list[TimelineEvent] = Field(default_factory=list)
    snapshot: dict[str, Any] = Field(default_factory=dict)
    """Diagnostics by name: containers, pods, events, logs, rollouts, changes, health, metrics."""
    response: ResponseTimes | None = None
    outcome: str = "failed"
    error: str | None = None
    seconds: float = 0.0
    dry_run: bool = False

    def step_named(self, name: str) -> IncidentStep | None:
        return next((s for s in self.steps if s.step == name), None)

    def grade(self) -> str:
        """failed (the acknowledgement or the remediation failed), degraded (a diagnostic
        failed or degraded, or a response target was breached) or complete."""
        vital = [s for s in self.steps if s.step in ("acknowledge", "remediate")]
        if self.error or any(s.status == "failed" for s in vital):
            return "failed"
        breached = self.response is not None and bool(self.response.breaches)
        unhappy = any(s.status in ("failed", "degraded") for s in self.steps)
        return "degraded" if breached or unhappy else "complete"

    def line(self) -> str:
        parts = [f"{self.severity} {self.summary}"]
        bad = [f"{s.step} {s.status}" for s in self.steps if s.status in ("failed", "degraded")]
        if bad:
            parts.append("; ".join(bad))
        if self.remediation != "none":
            parts.append(f"remediation {self.remediation}: {self.remediation_result or '-'}")
        if self.response is not None and self.response.breaches:
            parts.append("BREACH: " + "; ".join(self.response.breaches))
        if self.error:
            parts.append(self.error)
        return redact(" | ".join(parts))


# --- planning ----------------------------------------------------------------------------------


def plan_incident(
    env_name: str,
    env: Environment,
    severity: Severity,
    summary: str,
    remediation: str = "none",
    service: str | None = None,
    replicas: int | None = None,
    alert: dict[str, Any] | None = None,
) -> Plan:
    """The incident's steps; InputError for a request that cannot be run (before any side
    effect): an empty summary, a malformed alert, a remediation the inventory does not allow
    or that lacks its service / replicas."""
    if not summary.strip():
        raise InputError("summary", "is empty", "say in a line what is wrong, e.g. 'API 5xx'")
    opened = parse_alert(alert)
    policy, base = env.incident, f"environments.{env_name}.incident"
    if remediation != "none" and remediation not in policy.remediations:
        allowed = ", ".join(policy.remediations) or "none"
        raise InputError(
            "remediation",
            f"{remediation!r} is not allowed in {env_name} (allowed: {allowed})",
            f"choose one of: none, {allowed}"
            if policy.remediations
            else f"use remediation=none, or add it to {base}.remediations",
        )
    if remediation in ("restart", "scale") and not service:
        raise InputError(
            "service",
            f"is needed for remediation={remediation}",
            "pass service=<the Compose service or Kubernetes deployment>",
        )
    if remediation == "scale" and replicas is None:
        raise InputError("replicas", "is needed for remediation=scale", "pass replicas=<N>")
    if remediation == "scale" and service and replicas is not None:
        bounds = env.scaling.get(service)
        if bounds is not None and not bounds.min <= replicas <= bounds.max:
            raise InputError(
                "replicas",
                f"{replicas} is outside {service}'s bounds {bounds.min}..{bounds.max}",
                f"pass replicas between {bounds.min} and {bounds.max}",
            )
    if remediation == "maintenance_mode" and env.maintenance_mode is None:
        raise InputError(
            "remediation",
            f"maintenance_mode, but {env_name} has no maintenance_mode call",
            f"add environments.{env_name}.maintenance_mode, or choose another remediation",
        )
    targets = policy.page if severity in PAGE_SEVERITIES else policy.chat
    told = "page" if severity in PAGE_SEVERITIES else "chat"
    who = f"{len(targets)} {told} target(s)" if targets else f"{len(env.notify)} notify target(s)"
    steps = [
        PlanStep(
            action="acknowledge",
            target=("status page, " if policy.status_page else "") + who,
            why=f"{severity}: the status page and the people on call know",
            changes=policy.status_page is not None,
        ),
        *[
            PlanStep(action=a, target=t, why=w)
            for a, t, w in diagnostics_plan(env_name, env, opened)
        ],
    ]
    if remediation != "none":
        what = {
            "rollback": "the rollback runbook (subflow): the previous images",
            "restart": f"restart {service}",
            "scale": f"scale {service} to {replicas}",
            "maintenance_mode": "maintenance mode on",
        }[remediation]
        approval = " (approval: protected environment)" if env.protected else ""
        steps.append(
            PlanStep(action="remediate", target=what, why=f"mitigate{approval}", changes=True)
        )
    steps += [
        PlanStep(action="response_times", target=severity, why="acknowledged/mitigated/resolved"),
        PlanStep(action="post_mortem", target="artifact", why="the draft, timeline filled in"),
    ]
    params: dict[str, Any] = {"severity": severity, "remediation": remediation}
    if service:
        params["service"] = service
    if replicas is not None:
        params["replicas"] = replicas
    if opened is not None and opened.name:
        params["alert"] = opened.name
    return Plan(runbook=RUNBOOK, env=env_name, steps=steps, parameters=params)


def diagnostics_plan(
    env_name: str, env: Environment, alert: Alert | None
) -> list[tuple[str, str, str]]:
    """(action, target, why) of each diagnostic the snapshot takes, in parallel."""
    steps: list[tuple[str, str, str]] = []
    lines = env.incident.log_lines
    if env.docker is not None and env.docker.services:
        names = ", ".join(s.container for s in env.docker.services)
        steps.append(("snapshot_containers", names, f"state, restarts, last {lines} log lines"))
    if env.kubernetes is not None:
        k8s = env.kubernetes
        where = f"{k8s.namespace}/{k8s.deployment or k8s.label_selector or '*'}"
        steps.append(("snapshot_pods", where, f"state, restarts, events, last {lines} lines"))
        if k8s.deployment:
            steps.append(("rollout_history", where, "the Deployment's revisions"))
    steps.append(("recent_changes", env_name, "last deploys, rollbacks and approvals (ledger)"))
    steps.append(("health_check", env_name, "the health-check runbook (subflow)"))
    prom = env.incident.prometheus
    if prom is not None and prom.queries:
        since = "the alert's start" if alert is not None and alert.starts_at else "now"
        steps.append(
            (
                "prometheus_figures",
                ", ".join(prom.queries),
                f"from {format_duration(prom.window)} before {since} until now",
            )
        )
    return steps


def report_details(report: IncidentReport) -> dict[str, Any]:
    """The ledger run's details (redacted)."""
    data: dict[str, Any] = redact_data(report.model_dump(mode="json"))
    return data
