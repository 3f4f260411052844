"""The incident runbook in-process on the session's Prefect server, against a real Docker
engine with a crash-looping container, the mock Kubernetes API with a crash-looping pod, a real
Prometheus, and webhook receivers that record the status page and the pages sent.

What an on-call engineer relies on: the P1 is acknowledged on the status page and paged (not
sent to chat), the snapshot holds the crashing container's / pod's last log lines (secrets
redacted) and restart count, the post-mortem draft lists every step the run took with its
start and end, figures come from Prometheus, and a remediation the inventory does not allow
is refused before anything happens."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from docker.models.containers import Container

from flows.incident import incident
from opsflow.errors import InputError
from opsflow.incidents import IncidentReport
from opsflow.ledger import Ledger
from tests.fixtures.http_targets import ModeSwitch, WebhookReceiver
from tests.fixtures.kube_api import KubeCluster
from tests.fixtures.prometheus_server import PrometheusServer
from tests.support.approvers import approver_env, approvers_yaml
from tests.support.prefect_api import api_post

pytestmark = pytest.mark.integration
SECRET = "hunter2secret"
SECTIONS = (
    "## Summary",
    "## Timeline",
    "## Impact",
    "## Root Cause",
    "## Resolution",
    "## Action Items",
    "## Lessons Learned",
)


@pytest.fixture
def lab(
    tmp_path: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str], None]]:
    def write(environment: str) -> None:
        (tmp_path / "inventory.yaml").write_text("environments:\n  prod:\n" + environment)

    monkeypatch.setenv("OPSFLOW_INVENTORY", str(tmp_path / "inventory.yaml"))
    monkeypatch.setenv("OPSFLOW_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("OPSFLOW_HOME", str(tmp_path / ".opsflow"))
    yield write


def hooks(receiver: WebhookReceiver, status_page: bool = True) -> str:
    base = receiver.url.removesuffix("/hook")
    page = f'      status_page: {{url: "{base}/status"}}\n' if status_page else ""
    return (
        f"    incident:\n{page}"
        f'      page: [{{webhook: "{base}/page"}}]\n'
        f'      chat: [{{webhook: "{base}/chat"}}]\n'
    )


def run(**params: Any) -> tuple[Any, IncidentReport, list[Any]]:
    state = incident(env="prod", requested_by="oncall", return_state=True, **params)
    report = state.result(raise_on_failure=False)
    assert isinstance(report, IncidentReport), report
    return state, report, Ledger().steps(str(state.state_details.flow_run_id))


def alert(minutes_ago: float, fingerprint: str = "f00dfacecafe1234") -> dict[str, Any]:
    started = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    return {
        "status": "firing",
        "labels": {"alertname": "ServiceDown", "service": "api", "severity": "critical"},
        "annotations": {"summary": "api is down"},
        "startsAt": started.isoformat().replace("+00:00", "Z"),
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus/graph",
        "fingerprint": fingerprint,
    }


def check_post_mortem(report: IncidentReport, steps: list[Any]) -> str:
    """Every section of the template, and every ledger step in the timeline with its times."""
    text = report.snapshot["post_mortem"]
    for section in SECTIONS:
        assert section in text
    for step in steps:
        line = next((ln for ln in text.splitlines() if f"`{step.step}` {step.target}" in ln), None)
        assert line is not None, f"{step.step} missing from the timeline:\n{text}"
        assert re.search(r"\*\*\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\*\*", line), line
        assert re.search(r"\(\d\d:\d\d:\d\d → \d\d:\d\d:\d\d, \d+\.\ds\)", line), line
    assert report.flow_run_url is not None
    assert f"/runs/flow-run/{report.flow_run_id}" in text
    return text


def wait_restarts(container: Container, at_least: int, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        container.reload()
        if int(container.attrs.get("RestartCount") or 0) >= at_least:
            return
        time.sleep(0.2)
    raise AssertionError(f"{container.name} did not restart {at_least} times")


def test_p1_on_docker_snapshots_the_crashing_container_and_drafts_the_post_mortem(
    lab: Callable[[str], None],
    docker_engine: str,
    docker_busybox_image: str,
    docker_test_containers: Callable[..., Container],
    webhook_receiver: WebhookReceiver,
    mode_switch: ModeSwitch,
) -> None:
    crashing = docker_test_containers(
        docker_busybox_image,
        [
            "sh",
            "-c",
            "echo INFO starting; echo 'ERROR db connect failed password=" + SECRET + "'; "
            "echo ERROR giving up; exit 3",
        ],
        restart_policy={"Name": "always"},
    )
    wait_restarts(crashing, 2)
    lab(
        f'    docker: {{host: "{docker_engine}", services: [{{name: api, container: '
        f"{crashing.name}}}]}}\n"
        f'    maintenance_mode: {{url: "{mode_switch.url}"}}\n'
        + hooks(webhook_receiver)
        + "      remediations: [maintenance_mode]\n      log_lines: 50\n"
    )
    state, report, steps = run(
        severity="P1",
        summary="api crash-looping",
        alert=alert(2),
        remediation="maintenance_mode",
    )

    assert (state.name, report.outcome) == ("Completed", "complete")
    container = report.snapshot["containers"][0]
    assert container["name"] == crashing.name
    assert container["restart_count"] >= 2
    assert container["exit_code"] == 3
    assert any("ERROR giving up" in line for line in container["lines"])
    assert any("db connect failed" in line for line in container["error_lines"])
    assert all("INFO" not in line for line in container["error_lines"])
    names = [s.step for s in steps]
    for step in ("acknowledge", "snapshot_containers", "recent_changes", "health_check"):
        assert step in names
    assert names[-2:] == ["response_times", "post_mortem"]
    assert "remediate" in names and mode_switch.methods == ["POST"]

    times = report.response
    assert times is not None and times.acknowledged_at is not None
    assert times.mitigated_at is not None and times.mitigated_at >= times.acknowledged_at
    assert times.started_from == "the alert's startsAt"
    assert times.breaches == []  # acknowledged ~2 min after the start, P1 target 15 min

    text = check_post_mortem(report, steps)
    assert "Alert `ServiceDown` started firing" in text
    assert f"container `{crashing.name}`: " in text and "last exit code 3" in text

    paths = [r["path"] for r in webhook_receiver.received]
    assert paths.count("/status") == 1 and "/chat" not in paths
    assert paths.count("/page") == 2  # the page at acknowledgement and the post-mortem at the end
    status = next(r["body"] for r in webhook_receiver.received if r["path"] == "/status")
    assert (status["env"], status["severity"], status["summary"]) == (
        "prod",
        "P1",
        "api crash-looping",
    )
    assert datetime.fromisoformat(status["started"]) == times.started_at
    page = next(r["body"] for r in webhook_receiver.received if r["path"] == "/page")
    assert "P1 incident in prod" in page["subject"]

    run_row = Ledger().runs(env="prod", runbook="incident")[0]
    assert run_row.flow_run_id == report.flow_run_id
    everything = json.dumps(
        [report.model_dump(mode="json"), run_row.details, webhook_receiver.received], default=str
    )
    assert SECRET not in everything
    assert "password=" in everything  # the line is there, its value masked


def test_p1_on_kubernetes_snapshots_the_crash_looping_pod(
    lab: Callable[[str], None], kube_cluster: KubeCluster, webhook_receiver: WebhookReceiver
) -> None:
    ns, pod = kube_cluster.namespace, kube_cluster.pods["crashloop"]
    kube_cluster.server.add_log_lines(ns, pod, [f"ERROR token={SECRET} rejected"])
    kube_cluster.api.create(
        f"/api/v1/namespaces/{ns}/events",
        {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{pod}.backoff", "namespace": ns},
            "involvedObject": {"kind": "Pod", "name": pod, "namespace": ns},
            "reason": "BackOff",
            "message": "Back-off restarting failed container app",
            "type": "Warning",
            "count": 12,
            "lastTimestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    )
    lab(
        f'    kubernetes: {{api_url: "{kube_cluster.url}", namespace: {ns}, '
        f"deployment: {kube_cluster.deployment}}}\n" + hooks(webhook_receiver, status_page=False)
    )
    state, report, steps = run(severity="P1", summary="pods crash-looping", alert=alert(1))

    assert state.name == "Completed"
    pods = {p["name"]: p for p in report.snapshot["pods"]}
    crash = pods[pod]
    assert crash["restart_count"] == 12
    assert any("CrashLoopBackOff" in r for r in crash["reasons"])
    assert any("FATAL config missing" in line for line in crash["lines"])
    assert any("ERROR exiting" in line for line in crash["error_lines"])
    events = report.snapshot["events"]
    assert [(e["object"], e["reason"], e["count"]) for e in events] == [
        (f"pod/{pod}", "BackOff", 12)
    ]
    assert "rollout_history" in [s.step for s in steps]
    text = check_post_mortem(report, steps)
    assert f"pod `{pod}`: " in text
    assert "12 restart(s)" in text and "BackOff" in text
    assert [r["path"] for r in webhook_receiver.received].count("/page") == 2
    assert SECRET not in json.dumps(report.model_dump(mode="json"))


def test_a_remediation_not_allowed_is_refused_before_anything_happens(
    lab: Callable[[str], None], webhook_receiver: WebhookReceiver
) -> None:
    lab(hooks(webhook_receiver) + "      remediations: [restart]\n")
    with pytest.raises(InputError) as refused:
        incident(env="prod", requested_by="oncall", summary="down", remediation="rollback")
    assert refused.value.field == "remediation"
    assert "allowed: restart" in str(refused.value)
    assert webhook_receiver.received == []
    assert Ledger().runs(env="prod", runbook="incident") == []


def test_prometheus_figures_come_from_a_real_prometheus(
    lab: Callable[[str], None],
    prometheus_server: PrometheusServer,
    webhook_receiver: WebhookReceiver,
) -> None:
    lab(
        f"    disks: []\n{hooks(webhook_receiver, status_page=False)}"
        f'      prometheus:\n        url: "{prometheus_server.url}"\n        window: 1m\n'
        "        queries:\n"
        f'          errors: \'sum(http_requests_total{{job="{prometheus_server.job}",'
        'status=~"5.."})\'\n'
        f"          up: 'up{{job=\"{prometheus_server.job}\"}}'\n"
    )
    state, report, steps = run(severity="P3", summary="errors up", alert=alert(0.5))
    assert state.name == "Completed"
    figures = {f["name"]: f for f in report.snapshot["metrics"]}
    errors = figures["errors"]
    assert errors["error"] is None
    values = [v for _, v in errors["series"][0]["points"]]
    assert values and all(v == 100.0 for v in values)  # 70 x 500 + 30 x 503 in the scraped text
    started = datetime.fromisoformat(errors["start"])
    assert report.alert is not None and report.alert.starts_at is not None
    assert started == report.alert.starts_at - timedelta(minutes=1)
    assert figures["up"]["series"][0]["labels"]["job"] == prometheus_server.job
    assert [r["path"] for r in webhook_receiver.received].count("/chat") == 2  # P3 → chat
    step = next(s for s in steps if s.step == "prometheus_figures")
    assert step.status == "complete" and "errors: 1 series, last 100" in step.summary


def test_restart_mitigates_and_the_receivers_resolved_alert_closes_the_timeline(
    lab: Callable[[str], None],
    docker_engine: str,
    docker_busybox_image: str,
    docker_test_containers: Callable[..., Container],
    webhook_receiver: WebhookReceiver,
) -> None:
    box = docker_test_containers(docker_busybox_image, ["sleep", "600"])
    box.reload()
    first_start = box.attrs["State"]["StartedAt"]
    lab(
        f'    docker: {{host: "{docker_engine}", services: [{{name: api, container: '
        f"{box.name}}}]}}\n"
        + hooks(webhook_receiver, status_page=False)
        + "      remediations: [restart]\n"
    )
    opened = alert(3, fingerprint="beefbeefbeef0001")
    ledger, now = Ledger(), datetime.now(UTC).replace(tzinfo=None)
    common = {
        "env": "prod",
        "alertname": "ServiceDown",
        "fingerprint": opened["fingerprint"],
        "group_key": '{}:{alertname="ServiceDown"}',
        "labels": opened["labels"],
        "annotations": opened["annotations"],
        "starts_at": now - timedelta(minutes=3),
        "runbook": "incident",
    }
    earlier = now - timedelta(days=2)  # an earlier incident of the same alert ended then
    ledger.record_alert(**common, status="resolved", ends_at=earlier, outcome="resolved")
    ledger.record_alert(**common, status="resolved", ends_at=now, outcome="resolved")

    with pytest.raises(InputError) as unknown:
        incident(
            env="prod", requested_by="oncall", summary="x", remediation="restart", service="web"
        )
    assert unknown.value.field == "service"

    state, report, steps = run(
        severity="P2", summary="api hung", alert=opened, remediation="restart", service="api"
    )
    assert state.name == "Completed"
    box.reload()
    assert box.attrs["State"]["StartedAt"] != first_start  # it was restarted
    remediate = next(s for s in steps if s.step == "remediate")
    assert remediate.status == "complete" and box.name in remediate.summary
    times = report.response
    assert times is not None and times.mitigated_at is not None
    assert times.resolved_at is not None
    assert times.resolved_at.replace(tzinfo=None) == now  # the resolved row's endsAt
    assert times.resolved_from == "resolved alert received"
    text = check_post_mortem(report, steps)
    assert text.count("Receiver: alert `ServiceDown` resolved, resolved") == 2  # both received
    assert "Resolved (resolved alert received)" in text
    assert "- **Duration**: 3m" in text


def test_a_remediation_not_approved_changes_nothing_and_still_drafts_the_post_mortem(
    lab: Callable[[str], None],
    prefect_api: str,
    webhook_receiver: WebhookReceiver,
    mode_switch: ModeSwitch,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in approver_env().items():
        monkeypatch.setenv(name, value)
    lab(
        f"    protected: true\n    approvals: {{approvers: {approvers_yaml('alice')}}}\n"
        f'    disks: []\n    maintenance_mode: {{url: "{mode_switch.url}"}}\n'
        + hooks(webhook_receiver, status_page=False)
        + "      remediations: [maintenance_mode]\n"
    )
    state = incident(
        env="prod",
        requested_by="oncall",
        summary="api down",
        severity="P1",
        remediation="maintenance_mode",
        approval_timeout_seconds=2,
        return_state=True,
    )
    assert state.is_failed()
    assert mode_switch.methods == []  # nothing was changed
    flow_run_id = str(state.state_details.flow_run_id)
    ledger = Ledger()
    assert [e.event for e in ledger.approval_events(flow_run_id)] == ["requested", "timed_out"]
    assert ledger.runs(env="prod", runbook="incident")[0].status == "rejected"
    steps = [(s.step, s.status) for s in ledger.steps(flow_run_id)]
    assert ("remediate", "skipped") in steps and steps[-1] == ("post_mortem", "complete")
    response = api_post(
        f"{prefect_api}/artifacts/filter",
        json={"artifacts": {"key": {"any_": ["incident-prod-post-mortem"]}}},
        timeout=10,
    )
    drafts = [a for a in response.json() if a["flow_run_id"] == flow_run_id]
    assert len(drafts) == 1
    assert "remediation not approved" in drafts[0]["data"]
    assert "## Lessons Learned" in drafts[0]["data"]
