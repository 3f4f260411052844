"""The health-check flow against real targets, in-process on the session's Prefect server:
a failing endpoint makes the run critical, the webhook is notified, the report names the
problem, and a database password never reaches the report, the ledger or the run's logs."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.health_check import HealthReport, health_check
from opsflow.ledger import Ledger
from opsflow.results import Status
from tests.fixtures.http_targets import WebhookReceiver
from tests.support.net import free_port
from tests.support.prefect_api import api_post

pytestmark = pytest.mark.integration
PASSWORD = "S3cret-Passw0rd-never-shown"


@pytest.fixture
def inventory(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    http_app_url: str,
    webhook_receiver: WebhookReceiver,
) -> Path:
    dead_port = free_port()
    monkeypatch.setenv("HC_TEST_DSN", f"postgresql://app:{PASSWORD}@127.0.0.1:{dead_port}/app")
    monkeypatch.setenv("HC_TEST_WEBHOOK", webhook_receiver.url)
    path = tmp_path / "inventory.yaml"
    path.write_text(f"""
environments:
  svc:
    endpoints:
      - {{name: good, url: "{http_app_url}/health"}}
      - {{name: failing, url: "{http_app_url}/status/404"}}
    databases: [{{name: main, kind: postgres, dsn: "env:HC_TEST_DSN"}}]
    disks: ["{tmp_path}"]
    notify: [{{webhook: "env:HC_TEST_WEBHOOK"}}]
""")
    monkeypatch.setenv("OPSFLOW_INVENTORY", str(path))
    monkeypatch.setenv("OPSFLOW_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    return path


def test_critical_run_reports_notifies_and_keeps_secrets(
    prefect_api: str, inventory: Path, webhook_receiver: WebhookReceiver
) -> None:
    state = health_check(env="svc", requested_by="tester", return_state=True)
    assert state.is_failed() and state.name == "Critical"
    report = state.result(raise_on_failure=False)
    assert isinstance(report, HealthReport)
    by_target = {r.target: r for r in report.results}
    assert by_target["good"].status == Status.HEALTHY
    assert by_target["failing"].status == Status.CRITICAL
    assert by_target["main"].status == Status.CRITICAL  # refused after its retries
    assert report.overall == Status.CRITICAL

    # the webhook got one notification naming the environment and the failing endpoint
    assert len(webhook_receiver.received) == 1
    body = webhook_receiver.received[0]["body"]
    assert "svc is CRITICAL" in body["subject"] and "failing" in body["body"]

    run_id = str(state.state_details.flow_run_id)
    artifacts = api_post(
        f"{prefect_api}/artifacts/filter",
        json={"artifacts": {"flow_run_id": {"any_": [run_id]}}},
        timeout=10,
    ).json()
    keys = {a["key"] for a in artifacts}
    assert {"health-check-svc", "health-check-svc-checks", "health-check-svc-plan"} <= keys
    logs = api_post(
        f"{prefect_api}/logs/filter",
        json={"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200},
        timeout=10,
    ).json()
    ledger = Ledger()
    stored = [s.summary + str(s.details) for s in ledger.steps(run_id)]
    everything = [str(a["data"]) for a in artifacts] + [entry["message"] for entry in logs]
    everything += [*stored, str(body)]
    assert any("main" in text for text in stored)
    assert not [text for text in everything if PASSWORD in text]
    assert ledger.runs(env="svc")[0].status == "critical"
