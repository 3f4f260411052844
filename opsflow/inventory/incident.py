"""Incidents and alerts in the inventory: the incident policy of an environment (who is told
by severity, the status page, the allowed remediations, Prometheus), the receiver's
``alerting`` limits, ``alert_rules`` (an Alertmanager alert → a runbook) and the replica
bounds of ``scale`` (seeds 001, 002, 003 and 004: incident response, alert procedures, manual
scaling).

Rule runbook names are checked against prefect.yaml by ``opsflow inventory check`` and the
receiver (``opsflow.alerts.check_rules``): this layer does not know the runbooks.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from opsflow.inventory.fields import (
    Model,
    PositiveDuration,
)
from opsflow.inventory.http import HttpTarget, Notify

Severity = Literal["P1", "P2", "P3", "P4"]
Remediation = Literal["rollback", "restart", "scale", "maintenance_mode"]
RESPONSE_TARGETS: dict[Severity, timedelta] = {
    "P1": timedelta(minutes=15),
    "P2": timedelta(hours=1),
    "P3": timedelta(hours=4),
    "P4": timedelta(hours=24),
}
"""Seed 002's response times by severity: acknowledged within this of the alert's start."""
_LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class StatusPage(HttpTarget):
    """A status-page webhook: the incident is posted there (JSON) when it is acknowledged."""

    name: str = "status-page"
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    timeout: PositiveDuration = Field(default=timedelta(seconds=10))


class Prometheus(HttpTarget):
    """A Prometheus server the incident asks for figures around the alert's time."""

    name: str = "prometheus"
    url: str = Field(description="base URL, e.g. http://prometheus:9090")
    queries: dict[str, str] = Field(
        default_factory=dict,
        description="name -> PromQL, e.g. {errors: 'sum(rate(http_requests_total[5m]))'}",
    )
    window: PositiveDuration = Field(
        default=timedelta(minutes=30), description="figures from this long before the alert"
    )
    timeout: PositiveDuration = Field(default=timedelta(seconds=10))


class Incident(Model):
    """How an incident of this environment is run (``flows/incident.py``)."""

    page: list[Notify] = Field(default_factory=list, description="told of P1/P2 (pagers)")
    chat: list[Notify] = Field(default_factory=list, description="told of P3/P4 (chat)")
    status_page: StatusPage | None = None
    remediations: list[Remediation] = Field(
        default_factory=list, description="the actions an incident may take (with approval)"
    )
    log_lines: int = Field(200, ge=1, le=100_000, description="last lines per container/pod")
    prometheus: Prometheus | None = None
    response_targets: dict[Severity, PositiveDuration] = Field(
        default_factory=lambda: dict(RESPONSE_TARGETS)
    )

    @field_validator("remediations")
    @classmethod
    def _unique(cls, value: list[str]) -> list[str]:
        dupes = sorted({r for r in value if value.count(r) > 1})
        if dupes:
            raise ValueError(f"lists {dupes} more than once (fix: list each action once)")
        return value


class Alerting(Model):
    """The receiver's limits for this environment's alerts."""

    dedup_window: PositiveDuration = Field(
        default=timedelta(minutes=10),
        description="a repeat of an alert (group key + fingerprint) within this starts no run",
    )
    max_runs_per_hour: int = Field(20, ge=1, le=10_000, description="runs alerts may start")


class AlertRule(Model):
    """An Alertmanager alert → a runbook: every label of ``match`` must equal the alert's."""

    match: dict[str, str] = Field(min_length=1, description="labels, alertname among them")
    runbook: str = Field(min_length=1, description="a runbook name, e.g. high-memory")
    params: dict[str, Any] = Field(default_factory=dict, description="the run's parameters")
    auto_remediate: bool = Field(
        False, description="the runbook may restart/scale without an approval for this alert"
    )

    @field_validator("match")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _LABEL.match(name):
                raise ValueError(
                    f"{name!r} is not a Prometheus label name (fix: letters, digits and '_')"
                )
        if "alertname" not in value:
            raise ValueError("needs an alertname (fix: add alertname: <the alert's name>)")
        return value

    @field_validator("params")
    @classmethod
    def _no_reserved(cls, value: dict[str, Any]) -> dict[str, Any]:
        taken = sorted(set(value) & {"env", "requested_by", "alert"})
        if taken:
            raise ValueError(
                f"sets {taken}, which the receiver sets itself (fix: remove them from params)"
            )
        return value


class ScaleBounds(Model):
    """How far ``scale`` may take a service or deployment."""

    min: int = Field(1, ge=0)
    max: int = Field(ge=1, le=1000)

    @model_validator(mode="after")
    def _order(self) -> ScaleBounds:
        if self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max} (fix: make min <= max)")
        return self


def check_alerting(rules: list[AlertRule]) -> None:
    """Rules of one environment: no rule names another environment in its match."""
    for i, rule in enumerate(rules):
        if "env" in rule.match:
            raise ValueError(
                f"alert_rules[{i}].match.env: a rule under an environment applies to it "
                "(fix: remove env, or move the rule to the top-level alert_rules)"
            )
