"""The incident runbook, pure parts: the plan and the requests it refuses, the alert checks,
the response-time breaches, the post-mortem draft and the Prometheus range step."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from flows.incident import incident_id, plan_incident
from opsflow.errors import InputError
from opsflow.incidents import (
    IncidentReport,
    IncidentStep,
    ResponseTimes,
    TimelineEvent,
    parse_alert,
    response_breaches,
)
from opsflow.inventory import Environment
from opsflow.post_mortem import render_post_mortem, timeline
from tasks.prometheus import MAX_POINTS, range_step

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def env_of(**incident: Any) -> Environment:
    return Environment.model_validate(
        {
            "docker": {"services": [{"name": "api", "container": "api-1"}]},
            "maintenance_mode": {"url": "https://app.example/admin/maintenance"},
            "scaling": {"api": {"min": 1, "max": 4}},
            "incident": {
                "page": [{"webhook": "https://pager.example/hook"}],
                "chat": [{"webhook": "https://chat.example/hook"}],
                **incident,
            },
        }
    )


def test_plan_lists_acknowledge_diagnostics_remediation_and_post_mortem() -> None:
    env = env_of(
        remediations=["restart"], prometheus={"url": "http://p:9090", "queries": {"e": "x"}}
    )
    plan = plan_incident("prod", env, "P1", "api down", "restart", service="api")
    actions = [s.action for s in plan.steps]
    assert actions == [
        "acknowledge",
        "snapshot_containers",
        "recent_changes",
        "health_check",
        "prometheus_figures",
        "remediate",
        "response_times",
        "post_mortem",
    ]
    assert plan.steps[0].target == "1 page target(s)"
    assert [s.action for s in plan.steps if s.changes] == ["remediate"]
    assert plan.parameters == {"severity": "P1", "remediation": "restart", "service": "api"}


def test_p3_goes_to_chat_and_the_status_page_is_a_change() -> None:
    env = env_of(status_page={"url": "https://status.example/api"})
    plan = plan_incident("prod", env, "P3", "slow pages")
    assert plan.steps[0].target == "status page, 1 chat target(s)"
    assert plan.steps[0].changes


def test_a_remediation_not_allowed_is_refused_naming_remediation() -> None:
    with pytest.raises(InputError) as refused:
        plan_incident("prod", env_of(remediations=["restart"]), "P1", "down", "rollback")
    assert refused.value.field == "remediation"
    assert "'rollback' is not allowed in prod (allowed: restart)" in str(refused.value)
    with pytest.raises(InputError) as none_allowed:
        plan_incident("prod", env_of(), "P1", "down", "scale", service="api", replicas=2)
    assert "allowed: none" in str(none_allowed.value)


@pytest.mark.parametrize(
    ("remediation", "service", "replicas", "field", "problem"),
    [
        ("restart", None, None, "service", "is needed for remediation=restart"),
        ("scale", "api", None, "replicas", "is needed for remediation=scale"),
        ("scale", "api", 9, "replicas", "9 is outside api's bounds 1..4"),
    ],
)
def test_restart_and_scale_need_their_service_and_replicas(
    remediation: str, service: str | None, replicas: int | None, field: str, problem: str
) -> None:
    env = env_of(remediations=["restart", "scale"])
    with pytest.raises(InputError) as refused:
        plan_incident("prod", env, "P2", "down", remediation, service, replicas)
    assert refused.value.field == field
    assert problem in refused.value.problem


def test_an_empty_summary_and_a_malformed_alert_are_refused() -> None:
    with pytest.raises(InputError) as empty:
        plan_incident("prod", env_of(), "P2", "  ")
    assert empty.value.field == "summary"
    with pytest.raises(InputError) as bad:
        plan_incident("prod", env_of(), "P2", "down", alert={"startsAt": "yesterday"})
    assert bad.value.field == "alert.startsAt"
    with pytest.raises(InputError) as naive:
        parse_alert({"startsAt": "2026-12-01T09:00:00"})
    assert "time zone" in naive.value.problem


def test_alertmanager_zero_end_time_means_not_ended() -> None:
    alert = parse_alert(
        {
            "status": "firing",
            "labels": {"alertname": "HighErrorRate"},
            "startsAt": "2026-12-01T09:00:00.123Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "fingerprint": "0123456789abcdef",
            "generatorURL": "http://prom/graph",
        }
    )
    assert alert is not None
    assert (alert.name, alert.ends_at) == ("HighErrorRate", None)
    assert alert.starts_at == datetime(2026, 12, 1, 9, 0, 0, 123000, tzinfo=UTC)
    assert incident_id("prod", T0, alert) == "INC-prod-20261201-0900-01234567"


def times(ack_after: timedelta | None, severity: str = "P1") -> ResponseTimes:
    return ResponseTimes(
        severity=severity,  # type: ignore[arg-type]
        target=timedelta(minutes=15),
        started_at=T0,
        started_from="the alert's startsAt",
        acknowledged_at=T0 + ack_after if ack_after is not None else None,
    )


@pytest.mark.parametrize(
    ("ack_after", "now_after", "breaches"),
    [
        (timedelta(minutes=3), timedelta(minutes=30), []),
        (timedelta(minutes=15), timedelta(minutes=30), []),
        (
            timedelta(minutes=16),
            timedelta(minutes=30),
            ["acknowledged 16m after the start (P1 target 15m)"],
        ),
        (None, timedelta(minutes=10), []),
        (None, timedelta(minutes=20), ["not acknowledged 20m after the start (P1 target 15m)"]),
    ],
)
def test_response_breach_is_acknowledgement_later_than_the_target(
    ack_after: timedelta | None, now_after: timedelta, breaches: list[str]
) -> None:
    assert response_breaches(times(ack_after), T0 + now_after) == breaches


def report_of(**extra: Any) -> IncidentReport:
    steps = [
        IncidentStep(
            step="acknowledge",
            target="P1",
            summary="told webhook",
            started_at=T0 + timedelta(minutes=2),
            ended_at=T0 + timedelta(minutes=2, seconds=1),
        ),
        IncidentStep(
            step="snapshot_containers",
            target="api-1",
            started_at=T0 + timedelta(minutes=2, seconds=1),
            ended_at=T0 + timedelta(minutes=2, seconds=4),
        ),
        IncidentStep(
            step="remediate",
            target="restart",
            summary="restarted api-1",
            started_at=T0 + timedelta(minutes=3),
            ended_at=T0 + timedelta(minutes=3, seconds=20),
            link="http://ui/runs/flow-run/abc",
        ),
    ]
    values: dict[str, Any] = {
        "incident_id": "INC-prod-20261201-0900",
        "env": "prod",
        "severity": "P1",
        "summary": "api down",
        "requested_by": "alertmanager",
        "remediation": "restart",
        "steps": steps,
        "events": [TimelineEvent(at=T0, what="Alert `ServiceDown` started firing")],
        "snapshot": {
            "containers": [
                {
                    "kind": "container",
                    "name": "api-1",
                    "state": "restarting",
                    "exit_code": 3,
                    "restart_count": 7,
                    "error_lines": ["2026-12-01T09:01:00Z ERROR password=*** rejected"],
                }
            ]
        },
        "response": ResponseTimes(
            severity="P1",
            target=timedelta(minutes=15),
            started_at=T0,
            started_from="the alert's startsAt",
            acknowledged_at=T0 + timedelta(minutes=2, seconds=1),
            mitigated_at=T0 + timedelta(minutes=3, seconds=20),
        ),
        "outcome": "complete",
    }
    return IncidentReport(**(values | extra))


def test_post_mortem_follows_the_template_with_every_step_in_time_order() -> None:
    text = render_post_mortem(report_of(), T0 + timedelta(minutes=5))
    sections = [line for line in text.splitlines() if line.startswith("## ")]
    assert sections == [
        "## Summary",
        "## Timeline",
        "## Impact",
        "## Root Cause",
        "## Resolution",
        "## Action Items",
        "## Lessons Learned",
    ]
    entries = [line for line in text.splitlines() if line.startswith("- **2026-12-01 ")]
    assert [e.split("** - ")[1].split(" (")[0] for e in entries] == [
        "Alert `ServiceDown` started firing",
        "`acknowledge` P1",
        "`snapshot_containers` api-1",
        "[`remediate` restart](http://ui/runs/flow-run/abc)",
    ]
    assert "(09:03:00 → 09:03:20, 20.0s): **complete** — restarted api-1" in entries[3]
    assert "- **Duration**: ongoing when this draft was written" in text
    assert "container `api-1`: restarting, last exit code 3, 7 restart(s)" in text
    assert "opsflow applied **restart** at 2026-12-01 09:03:20 UTC" in text
    assert "- Owner: TODO - Due: 2026-12-03" in text  # P1: due in 2 days
    assert "- Response: the response met its target." in text


def test_post_mortem_of_a_resolved_breached_incident() -> None:
    report = report_of(remediation="none", steps=report_of().steps[:2])
    assert report.response is not None
    report.response.resolved_at = T0 + timedelta(hours=1, minutes=5)
    report.response.resolved_from = "the alert's endsAt"
    report.response.breaches = ["acknowledged 16m after the start (P1 target 15m)"]
    text = render_post_mortem(report, T0 + timedelta(hours=2))
    assert "- **Duration**: 1h 5m" in text
    assert "No remediation was applied by opsflow" in text
    assert "Review the response: acknowledged 16m after the start" in text
    assert "**BREACH**: acknowledged 16m" in text
    assert "the response target was BREACHED" in text
    assert report.grade() == "degraded"


def test_timeline_sorts_events_and_steps_together() -> None:
    report = report_of()
    report.events.append(TimelineEvent(at=T0 + timedelta(minutes=2, seconds=2), what="ack"))
    order = [what.split(" (")[0] for _, what in timeline(report)]
    assert order.index("ack") == 3  # after snapshot_containers' start (09:02:01)


def test_grade_fails_on_a_failed_acknowledgement_or_remediation_only() -> None:
    report = report_of()
    report.steps[1].status = "failed"
    assert report.grade() == "degraded"
    report.steps[2].status = "failed"
    assert report.grade() == "failed"


@pytest.mark.parametrize(
    ("span", "step"),
    [(timedelta(seconds=30), 1), (timedelta(hours=1), 15), (timedelta(hours=2, seconds=1), 31)],
)
def test_prometheus_range_step_keeps_at_most_max_points(span: timedelta, step: int) -> None:
    got = range_step(T0, T0 + span)
    assert got == timedelta(seconds=step)
    assert span.total_seconds() / got.total_seconds() <= MAX_POINTS
