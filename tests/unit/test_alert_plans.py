"""The alert runbooks' plans and pure helpers: bounds, remediations, approvals, services."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from flows.alerts import (
    plan_db_connections,
    plan_high_error_rate,
    plan_high_latency,
    plan_high_memory,
    plan_scale,
    plan_service_down,
)
from opsflow.alert_runbooks import (
    AlertReport,
    Finding,
    alert_brief,
    deploy_drift,
    last_deploy,
    render_alert_report,
    service_of,
)
from opsflow.errors import InputError
from opsflow.inventory import Environment

APPROVALS = {"approvers": {"alice": {"totp": "env:ALICE_TOTP"}}}


def _docker(**extra: Any) -> Environment:
    base: dict[str, Any] = {
        "docker": {"services": [{"name": "web", "container": "shop-web-1"}]},
        "incident": {"remediations": ["restart", "rollback"]},
        "scaling": {"web": {"min": 1, "max": 3}},
    }
    return Environment.model_validate(base | extra)


def _k8s(**extra: Any) -> Environment:
    base: dict[str, Any] = {
        "kubernetes": {"namespace": "shop", "api_url": "http://kube:6443", "deployment": "api"},
        "incident": {"remediations": ["restart"]},
        "scaling": {"api": {"min": 2, "max": 6}},
    }
    return Environment.model_validate(base | extra)


def _actions(plan: Any) -> list[str]:
    return [s.action for s in plan.steps]


def test_high_memory_finds_the_service_from_the_alerts_container_label() -> None:
    alert = {"labels": {"alertname": "HighMemory", "container": "shop-web-1"}}
    plan = plan_high_memory("dev", _docker(), alert=alert)
    assert _actions(plan) == ["find_memory_hog", "memory_snapshot", "restart_service"]
    assert plan.parameters["service"] == "web"
    assert plan.steps[-1].target == "container shop-web-1" and plan.steps[-1].changes


def test_high_memory_on_a_protected_environment_asks_unless_auto_remediate() -> None:
    env = _docker(protected=True, approvals=APPROVALS)
    assert "request_approval" in _actions(plan_high_memory("prod", env, "web"))
    assert "request_approval" not in _actions(plan_high_memory("prod", env, "web", None, True))


def test_a_restart_not_in_remediations_is_refused_naming_remediations() -> None:
    env = _docker(incident={"remediations": ["scale"]})
    with pytest.raises(InputError) as caught:
        plan_high_memory("dev", env, "web")
    assert caught.value.field == "environments.dev.incident.remediations"
    assert "'restart'" in caught.value.problem and "scale" in caught.value.problem
    diagnose_only = plan_high_memory("dev", env, "web", restart=False)
    assert "restart_service" not in _actions(diagnose_only)


def test_an_unknown_service_is_refused_with_the_known_ones() -> None:
    with pytest.raises(InputError) as caught:
        plan_high_memory("dev", _docker(), "db")
    assert caught.value.field == "service" and "web" in caught.value.fix


def test_scale_bounds_are_checked_at_plan_time() -> None:
    env = _docker()
    for replicas, side in ((0, "below the minimum"), (4, "above the maximum")):
        with pytest.raises(InputError) as caught:
            plan_scale("dev", env, "web", replicas)
        assert caught.value.field == "replicas"
        assert side in caught.value.problem and "min 1, max 3" in caught.value.problem
    plan = plan_scale("dev", env, "web", 3)
    assert _actions(plan) == ["scale_service"] and plan.parameters["replicas"] == 3


def test_scale_without_bounds_or_replicas_is_refused() -> None:
    env = _docker(scaling={})
    with pytest.raises(InputError) as caught:
        plan_scale("dev", env, "web", 2)
    assert caught.value.field == "service" and "scaling" in caught.value.fix
    with pytest.raises(InputError) as missing:
        plan_scale("dev", _docker(), "web", None)
    assert missing.value.field == "replicas"


def test_scale_of_a_deployment_named_by_a_pod_label_on_a_protected_environment() -> None:
    env = _k8s(protected=True, approvals=APPROVALS)
    alert = {"labels": {"alertname": "Saturated", "pod": "api-7d9f8c-x2x4q"}}
    plan = plan_scale("prod", env, replicas=4, alert=alert)
    assert _actions(plan) == ["request_approval", "scale_service"]
    assert plan.steps[-1].target == "deployment shop/api"


def test_rollback_needs_the_remediation_and_a_deploy_section() -> None:
    assert _actions(plan_high_error_rate("dev", _docker())) == ["error_analysis", "last_deploy"]
    with pytest.raises(InputError) as no_deploy:
        plan_high_error_rate("dev", _docker(), rollback=True)
    assert no_deploy.value.field == "environments.dev.deploy"
    with pytest.raises(InputError) as not_allowed:
        plan_high_error_rate("dev", _k8s(), rollback=True)
    assert not_allowed.value.field == "environments.dev.incident.remediations"


def test_database_runbooks_look_at_postgres_databases() -> None:
    env = _docker(
        databases=[
            {"name": "app", "kind": "postgres", "dsn": "env:APP_DSN"},
            {"name": "cache", "kind": "sqlite", "path": "/tmp/c.db"},
        ]
    )
    assert [s.target for s in plan_db_connections("dev", env).steps] == ["app"]
    assert _actions(plan_high_latency("dev", env)) == ["slowest_endpoints", "slow_queries"]
    with pytest.raises(InputError) as unknown:
        plan_db_connections("dev", env, database="cache")
    assert unknown.value.field == "database" and "app" in unknown.value.fix
    with pytest.raises(InputError) as none:
        plan_db_connections("dev", _docker())
    assert none.value.field == "environments.dev.databases"


def test_service_down_needs_a_service() -> None:
    with pytest.raises(InputError) as caught:
        plan_service_down("dev", _docker(), alert={"labels": {"alertname": "Down"}})
    assert caught.value.field == "service"
    plan = plan_service_down("dev", _docker(), alert={"labels": {"service": "web"}})
    assert _actions(plan) == ["service_diagnostics", "compare_with_last_deploy", "restart_service"]


def test_service_of_prefers_the_parameter_then_labels_in_order() -> None:
    env = _docker()
    assert service_of(env, "web", {"labels": {"service": "other"}}) == "web"
    assert service_of(env, None, {"labels": {"container": "shop-web-1"}}) == "web"
    assert service_of(env, None, None) is None


def test_alert_brief_keeps_the_alert_redacted() -> None:
    alert = {
        "labels": {"alertname": "X", "url": "postgres://u:hunter2secret@db/app"},
        "annotations": {"summary": "down"},
        "startsAt": "2026-12-01T10:00:00Z",
        "fingerprint": "abc",
    }
    brief = alert_brief(alert)
    assert brief["alertname"] == "X" and brief["summary"] == "down"
    assert "hunter2secret" not in str(brief)
    with pytest.raises(InputError):
        alert_brief({"labels": ["not", "a", "map"]})


def _row(changes: list[dict[str, Any]], outcome: str = "deployed") -> Any:
    return SimpleNamespace(
        flow_run_id="run-1",
        finished_at=datetime(2026, 12, 1, 9, 0, tzinfo=UTC),
        triggered_by="alice",
        status="complete",
        details={"outcome": outcome, "deploy_id": "d-1", "changes": changes},
    )


def test_last_deploy_and_drift() -> None:
    change = {"service": "web", "from_image": "app:1", "to_image": "app:2", "action": "change"}
    unchanged = _row([{"service": "web", "action": "unchanged"}], outcome="unchanged")
    deploy = last_deploy([unchanged, _row([change])])
    assert deploy is not None and deploy["changes"][0]["to_image"] == "app:2"
    assert "still runs it" in deploy_drift(deploy, "web", "app:2")
    assert "changed outside a deploy" in deploy_drift(deploy, "web", "app:3")
    assert "did not change worker" in deploy_drift(deploy, "worker", "w:1")
    assert "no deploy" in deploy_drift(last_deploy([]), "web", None)


def test_report_markdown_lists_findings_and_tables() -> None:
    report = AlertReport(
        runbook="db-connections",
        env="dev",
        requested_by="bob",
        findings=[
            Finding(
                step="connection_breakdown",
                target="database 'app'",
                summary="3/100 | connections",
                details={"table": [{"state": "idle", "connections": 3}]},
            )
        ],
        why="3/100",
        outcome="diagnosed",
    )
    text = render_alert_report(report, datetime(2026, 12, 1, tzinfo=UTC))
    assert "# db connections on `dev`: diagnosed" in text
    assert "3/100 \\| connections" in text
    assert "| idle | 3 |" in text
