"""More alert runbooks end to end: high memory on the mock Kubernetes API (PodMetrics, exec'd
``ps``, a rollout restart), service down and high error rate on a real Docker container."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from docker.models.containers import Container

from flows.alerts import high_error_rate, high_memory, service_down
from opsflow.alert_runbooks import AlertReport
from opsflow.ledger import Ledger
from tasks.kubernetes.replicas import RESTARTED_AT
from tests.fixtures.kube_api import KubeCluster

pytestmark = pytest.mark.integration
Run = Callable[..., Container]
PS = (
    b"USER PID %CPU %MEM VSZ RSS TTY STAT START TIME COMMAND\n"
    b"app 1 3.0 94.0 300000 249856 ? Ssl 10:00 1:02 "
    b"java -Xmx200m -Dtoken=s3cr3t-t0ken-value-42 -jar app.jar\n"
    b"app 40 0.0 0.1 1600 900 ? S 10:05 0:00 sleep 60\n"
)


@pytest.fixture()
def lab(prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OPSFLOW_INVENTORY", str(tmp_path / "inventory.yaml"))
    monkeypatch.setenv("OPSFLOW_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("OPSFLOW_HOME", str(tmp_path / ".opsflow"))
    Ledger().close()
    return tmp_path


def _report(state: Any) -> AlertReport:
    result = state.result()
    return result if isinstance(result, AlertReport) else AlertReport.model_validate(result)


@pytest.fixture()
def k8s(lab: Path, kube_cluster: KubeCluster) -> Iterator[KubeCluster]:
    (lab / "inventory.yaml").write_text(f"""
environments:
  k8s:
    kubernetes: {{namespace: {kube_cluster.namespace}, api_url: "{kube_cluster.url}",
                  deployment: app}}
    thresholds: {{memory_pct: 90}}
    incident: {{remediations: [restart]}}
""")
    seen: list[list[str]] = []

    def handler(
        ns: str, pod: str, container: str | None, argv: list[str], stdin: bytes
    ) -> tuple[int, bytes, bytes]:
        seen.append([pod, *argv])
        return 0, PS, b""

    kube_cluster.server.set_exec_handler(handler)
    kube_cluster.controller.start(0.05)
    kube_cluster.exec_calls = seen  # type: ignore[attr-defined]
    try:
        yield kube_cluster
    finally:
        kube_cluster.server.set_exec_handler(None)


def test_high_memory_on_kubernetes_finds_the_pod_and_rolls_the_deployment(
    k8s: KubeCluster,
) -> None:
    hot = k8s.pods["ready-2"]  # 244Mi of its 256Mi limit
    alert = {"labels": {"alertname": "PodMemoryHigh", "pod": hot}, "startsAt": "2026-12-01T10:00Z"}

    state = high_memory(env="k8s", requested_by="alertmanager", alert=alert, return_state=True)

    assert state.is_completed(), state.message
    report = _report(state)
    assert report.service == "app" and report.outcome == "restarted"
    assert f"{k8s.namespace}/{hot} used 95%" in report.why
    snapshot = next(f for f in report.findings if f.step == "memory_snapshot")
    top = snapshot.details["processes"][0]
    assert top["PID"] == "1" and top["RSS"] == 249856
    assert top["COMMAND"] == "java -Xmx200m -Dtoken=*** -jar app.jar"  # redacted
    assert k8s.exec_calls[0] == [hot, "ps", "aux"]  # type: ignore[attr-defined]
    dep = k8s.api.get(f"/apis/apps/v1/namespaces/{k8s.namespace}/deployments/app")
    assert dep is not None
    assert RESTARTED_AT in dep["spec"]["template"]["metadata"]["annotations"]
    assert dep["status"]["availableReplicas"] == 4


# --- Docker -----------------------------------------------------------------------------------

CRASH_ONCE = [
    "sh",
    "-c",
    "trap 'exit 0' TERM; if [ -f /tmp/ran ]; then echo 'INFO back'; "
    "while true; do sleep 1; done; fi; touch /tmp/ran; "
    "echo 'ERROR db unreachable at 10.0.0.5:5432'; exit 3",
]


def _docker_inventory(lab: Path, engine: str, container: str) -> None:
    (lab / "inventory.yaml").write_text(f"""
environments:
  dev:
    docker: {{host: '{engine}', services: [{{name: web, container: {container}}}]}}
    incident: {{remediations: [restart], log_lines: 50}}
""")


def _wait_exited(container: Container) -> None:
    deadline = time.monotonic() + 20
    while True:
        container.reload()
        if container.status == "exited":
            return
        assert time.monotonic() < deadline, container.status
        time.sleep(0.1)


def test_service_down_diagnoses_the_exited_container_then_restarts_it(
    lab: Path, docker_engine: str, docker_busybox_image: str, docker_test_containers: Run
) -> None:
    app = docker_test_containers(docker_busybox_image, CRASH_ONCE)
    _wait_exited(app)
    _docker_inventory(lab, docker_engine, app.name)

    state = service_down(
        env="dev",
        requested_by="alertmanager",
        alert={"labels": {"alertname": "ServiceDown", "service": "web"}},
        return_state=True,
    )

    assert state.is_completed(), state.message
    report = _report(state)
    diagnosis, compared, restart = report.findings
    assert diagnosis.details["state"] == "exited" and diagnosis.details["exit_code"] == 3
    assert "db unreachable" in diagnosis.summary
    assert compared.summary.startswith("no deploy of this environment in the ledger")
    assert restart.step == "restart" and restart.status == "complete"
    app.reload()
    assert app.status == "running"
    assert b"INFO back" in app.logs()
    (run,) = Ledger().runs(env="dev", runbook="service-down")
    assert run.status == "complete" and "exited with exit code 3" in run.summary


def test_high_error_rate_reports_the_top_errors_and_no_deploy(
    lab: Path, docker_engine: str, docker_busybox_image: str, docker_test_containers: Run
) -> None:
    noisy = docker_test_containers(
        docker_busybox_image,
        [
            "sh",
            "-c",
            "trap 'exit 0' TERM; for i in 1 2 3 4; do "
            'echo "ERROR payment timeout after ${i}1 ms"; done; '
            "echo 'INFO ok'; while true; do sleep 1; done",
        ],
    )
    deadline = time.monotonic() + 20
    while b"INFO ok" not in noisy.logs():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    _docker_inventory(lab, docker_engine, noisy.name)

    state = high_error_rate(env="dev", requested_by="bob", return_state=True)

    assert state.is_completed(), state.message
    report = _report(state)
    analysis, deploy = report.findings
    assert list(analysis.details["top_errors"][0]) == ["ERROR payment timeout after <n> ms", 4]
    assert "4 error line(s)" in analysis.summary
    assert deploy.summary == "no deploy of this environment in the ledger"
    assert "opsflow run rollback" not in report.why  # nothing to roll back to
    assert report.action == "none" and report.outcome == "diagnosed"
