"""The alert runbooks (flows/alerts.py) in-process on the session's Prefect server: high memory
on a real Docker container that fills its memory (restarted, on a protected environment only
after an approval answered through the REST API), connections and slow queries of a real
PostgreSQL, scale bounds refused at plan time."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from docker.models.containers import Container

from flows.alerts import db_connections, high_latency, high_memory, scale
from opsflow.alert_runbooks import AlertReport
from opsflow.ledger import Ledger
from tests.fixtures.databases import PostgresDatabase
from tests.integration.test_env_lock import Started
from tests.support.approvers import Authenticator, approver_env, approvers_yaml, wait_until

pytestmark = pytest.mark.integration
Run = Callable[..., Container]
LIMIT = 32 * 1024 * 1024
HOG = [
    "sh",
    "-c",
    "trap 'exit 0' TERM; head -c 20971520 /dev/zero > /dev/shm/fill; echo filled; "
    "while true; do sleep 1; done",
]


def _inventory(tmp_path: Path, body: str) -> None:
    (tmp_path / "inventory.yaml").write_text(f"environments:\n{body}")


@pytest.fixture()
def lab(prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OPSFLOW_INVENTORY", str(tmp_path / "inventory.yaml"))
    monkeypatch.setenv("OPSFLOW_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("OPSFLOW_HOME", str(tmp_path / ".opsflow"))
    for name, value in approver_env().items():
        monkeypatch.setenv(name, value)
    Ledger().close()
    return tmp_path


@pytest.fixture()
def hog(docker_busybox_image: str, docker_test_containers: Run) -> Container:
    """A container with a 32 MiB limit holding 20 MiB in /dev/shm (62 %)."""
    container = docker_test_containers(docker_busybox_image, HOG, mem_limit=LIMIT)
    deadline = time.monotonic() + 20
    while b"filled" not in container.logs():
        assert time.monotonic() < deadline, container.logs()
        time.sleep(0.1)
    return container


def _docker_env(name: str, engine: str, container: str, extra: str = "") -> str:
    return (
        f"  {name}:\n{extra}"
        f"    docker: {{host: '{engine}', services: [{{name: web, container: {container}}}]}}\n"
        "    thresholds: {memory_pct: 40}\n"
        "    incident: {remediations: [restart]}\n"
        "    scaling: {web: {min: 1, max: 3}}\n"
    )


def _protected() -> str:
    return (
        "    protected: true\n"
        f"    approvals: {{approvers: {approvers_yaml('alice', 'bob')}, timeout: 5m}}\n"
    )


def _started_at(container: Container) -> str:
    container.reload()
    return str(container.attrs["State"]["StartedAt"])


def _alert(container: str) -> dict[str, Any]:
    return {
        "status": "firing",
        "labels": {"alertname": "ContainerMemoryHigh", "container": container, "severity": "P2"},
        "annotations": {"summary": f"{container} memory above 40%"},
        "startsAt": "2026-12-01T10:00:00Z",
        "fingerprint": "c0ffee0123456789",
    }


def _report(state: Any) -> AlertReport:
    result = state.result()
    return result if isinstance(result, AlertReport) else AlertReport.model_validate(result)


def _paused(api: str) -> str:
    found: list[str] = []

    def paused() -> bool:
        runs = httpx.post(
            f"{api}/flow_runs/filter",
            json={"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}, "limit": 10},
            timeout=10,
        ).json()
        found[:] = [r["id"] for r in runs]
        return len(found) == 1

    wait_until(paused, "a run waiting for approval")
    return found[0]


def test_high_memory_restarts_the_container_over_its_limit_and_says_why(
    lab: Path, docker_engine: str, hog: Container
) -> None:
    _inventory(lab, _docker_env("dev", docker_engine, hog.name))
    before = _started_at(hog)

    state = high_memory(
        env="dev", requested_by="alertmanager", alert=_alert(hog.name), return_state=True
    )

    assert state.is_completed(), state.message
    assert _started_at(hog) != before
    report = _report(state)
    assert report.outcome == "restarted" and report.action == "restart"
    assert report.service == "web"
    assert report.alert["alertname"] == "ContainerMemoryHigh"
    assert f"{hog.name} used" in report.why and "threshold 40%" in report.why
    snapshot = next(f for f in report.findings if f.step == "memory_snapshot")
    assert snapshot.details["limit_bytes"] == LIMIT
    assert snapshot.details["processes"], snapshot.details  # docker top: no exec needed
    assert any("sh" in p["COMMAND"] for p in snapshot.details["processes"])
    ledger = Ledger()
    (run,) = ledger.runs(env="dev", runbook="high-memory")
    assert run.status == "complete" and f"{hog.name} used" in run.summary
    steps = {s.step: s for s in ledger.steps(run.flow_run_id)}
    assert list(steps) == ["find_memory_hog", "memory_snapshot", "restart"]
    assert steps["restart"].details["why"] == report.why
    assert "restarted" in steps["restart"].summary


def test_high_memory_does_nothing_under_the_threshold(
    lab: Path, docker_engine: str, hog: Container
) -> None:
    _inventory(
        lab, _docker_env("dev", docker_engine, hog.name).replace("memory_pct: 40", "memory_pct: 95")
    )
    before = _started_at(hog)
    state = high_memory(env="dev", requested_by="bob", service="web", return_state=True)
    report = _report(state)
    assert report.outcome == "nothing to do" and report.action == "none"
    assert "none over the 95% threshold" in report.why
    assert _started_at(hog) == before


def test_on_a_protected_environment_a_rejected_restart_changes_nothing(
    lab: Path, docker_engine: str, hog: Container, prefect_api: str
) -> None:
    _inventory(lab, _docker_env("prod", docker_engine, hog.name, _protected()))
    codes = Authenticator(f"sqlite:///{lab / 'ledger.db'}")
    before = _started_at(hog)
    try:
        started = Started(
            lambda: high_memory(
                env="prod", requested_by="alice", alert=_alert(hog.name), return_state=True
            )
        )
        run_id = _paused(prefect_api)
        assert _started_at(hog) == before  # waiting: nothing restarted yet
        codes.answer(prefect_api, run_id, "bob", "let it be", approved=False)
        state = started.state()
    finally:
        codes.close()
    assert state.is_failed()
    assert _started_at(hog) == before
    ledger = Ledger()
    (run,) = ledger.runs(env="prod", runbook="high-memory")
    assert run.status == "rejected"
    assert [s.step for s in ledger.steps(run_id)] == ["find_memory_hog", "memory_snapshot"]


def test_on_a_protected_environment_an_approved_restart_runs(
    lab: Path, docker_engine: str, hog: Container, prefect_api: str
) -> None:
    _inventory(lab, _docker_env("prod", docker_engine, hog.name, _protected()))
    codes = Authenticator(f"sqlite:///{lab / 'ledger.db'}")
    before = _started_at(hog)
    try:
        started = Started(
            lambda: high_memory(env="prod", requested_by="alice", service="web", return_state=True)
        )
        run_id = _paused(prefect_api)
        codes.answer(prefect_api, run_id, "bob", "restart it")
        state = started.state()
    finally:
        codes.close()
    assert state.is_completed(), state.message
    assert _started_at(hog) != before
    assert _report(state).approved_by == ["bob"]


def test_auto_remediate_restarts_a_protected_environment_without_asking(
    lab: Path, docker_engine: str, hog: Container
) -> None:
    _inventory(lab, _docker_env("prod", docker_engine, hog.name, _protected()))
    before = _started_at(hog)
    state = high_memory(
        env="prod",
        requested_by="alertmanager",
        alert=_alert(hog.name),
        auto_remediate=True,
        return_state=True,
    )
    assert state.is_completed(), state.message
    assert _started_at(hog) != before
    assert "auto_remediate" in str(_report(state).approved_by)
    (run,) = Ledger().runs(env="prod", runbook="high-memory")
    assert Ledger().approval_events(run.flow_run_id) == []


def test_restart_not_in_remediations_is_refused_at_plan_time(
    lab: Path, docker_engine: str, hog: Container
) -> None:
    body = _docker_env("dev", docker_engine, hog.name).replace("[restart]", "[scale]")
    _inventory(lab, body)
    before = _started_at(hog)
    state = high_memory(env="dev", requested_by="bob", return_state=True)
    assert state.is_failed()
    assert "incident.remediations" in str(state.message)
    assert _started_at(hog) == before
    assert Ledger().runs(env="dev") == []


def test_scale_out_of_bounds_is_refused_at_plan_time(
    lab: Path, docker_engine: str, hog: Container
) -> None:
    _inventory(lab, _docker_env("dev", docker_engine, hog.name))
    for replicas in (0, 4):
        state = scale(
            env="dev", requested_by="bob", service="web", replicas=replicas, return_state=True
        )
        assert state.is_failed()
        assert "replicas" in str(state.message) and "min 1, max 3" in str(state.message)
    assert Ledger().runs(env="dev") == []


# --- PostgreSQL -------------------------------------------------------------------------------


@pytest.fixture()
def pg_env(lab: Path, postgres_database: PostgresDatabase, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("ALERT_PG_DSN", postgres_database.dsn)
    _inventory(
        lab,
        "  dev:\n    databases:\n      - {name: app, kind: postgres, dsn: 'env:ALERT_PG_DSN'}\n",
    )
    return postgres_database.dsn


@pytest.fixture()
def clients(pg_env: str) -> Iterator[list[psycopg.Connection[Any]]]:
    conns = [
        psycopg.connect(pg_env, autocommit=True, application_name="alert-test-app")
        for _ in range(3)
    ]
    yield conns
    for conn in conns:
        conn.close()


def test_db_connections_breaks_connections_down_by_application(
    clients: list[psycopg.Connection[Any]], pg_env: str
) -> None:
    with psycopg.connect(pg_env) as conn:
        maximum = int(conn.execute("show max_connections").fetchone()[0])  # type: ignore[index]
    state = db_connections(env="dev", requested_by="bob", return_state=True)
    assert state.is_completed(), state.message
    (found,) = _report(state).findings
    assert found.step == "connection_breakdown"
    assert found.details["max_connections"] == maximum
    assert found.details["by_application"]["alert-test-app"] == 3
    assert found.details["connections"] >= 3
    assert "alert-test-app" in found.summary
    (run,) = Ledger().runs(env="dev", runbook="db-connections")
    assert [s.step for s in Ledger().steps(run.flow_run_id)] == ["connection_breakdown"]


def test_high_latency_shows_a_running_pg_sleep_as_the_longest(pg_env: str) -> None:
    sleeper = psycopg.connect(pg_env, autocommit=True, application_name="alert-sleeper")

    def sleep() -> None:
        with contextlib.suppress(psycopg.errors.QueryCanceled):
            sleeper.execute("select pg_sleep(20)")

    thread = threading.Thread(target=sleep, daemon=True)
    thread.start()
    try:
        time.sleep(1.0)
        state = high_latency(env="dev", requested_by="bob", return_state=True)
    finally:
        sleeper.cancel_safe()
        thread.join(10)
        sleeper.close()
    assert state.is_completed(), state.message
    report = _report(state)
    endpoints, queries = report.findings
    assert endpoints.step == "slowest_endpoints" and "no metrics endpoints" in endpoints.summary
    assert queries.step == "slow_queries"
    assert queries.details["source"] == "pg_stat_activity"
    top = queries.details["table"][0]
    assert "pg_sleep(20)" in top["query"] and top["application"] == "alert-sleeper"
    assert top["running_s"] >= 0.5
