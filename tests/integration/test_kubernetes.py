"""tasks.kubernetes against kmock's API emulator over HTTP (tests/fixtures/kube_api.py)."""

from __future__ import annotations

import time
from datetime import timedelta

import kubernetes.client
import pytest

from connectors.kubernetes import find_pod, kube_api
from connectors.transports import PodExec
from opsflow.errors import InputError, PermanentError, TransientError
from opsflow.inventory import KubernetesTarget, Thresholds
from opsflow.results import Status
from tasks.kubernetes.checks import check_pod_resources, check_pods, scan_pod_logs
from tasks.scaling import REPLICAS_ANNOTATION, scale_down_app, scale_up_app
from tests.fixtures.kube_api import KubeApiServer, KubeCluster
from tests.support.net import free_port

pytestmark = pytest.mark.integration


def _target(cluster: KubeCluster, **extra: object) -> KubernetesTarget:
    return KubernetesTarget(
        namespace=cluster.namespace,
        deployment=cluster.deployment,
        api_url=cluster.url,
        **extra,  # type: ignore[arg-type]
    )


def _by_target(results: list) -> dict:
    return {r.target.split("/", 1)[1]: r for r in results}


def test_check_pods_grades_each_pod_and_the_deployment(kube_cluster: KubeCluster) -> None:
    results = check_pods.fn(_target(kube_cluster), Thresholds(restarts=5))
    by = _by_target(results)
    pods = kube_cluster.pods
    assert set(by) == {"app", *pods.values()}  # the unrelated pod is not selected

    assert by[pods["ready-1"]].status is Status.HEALTHY
    assert by[pods["ready-1"]].details["ready"] is True
    crash = by[pods["crashloop"]]
    assert crash.status is Status.CRITICAL
    assert "CrashLoopBackOff" in crash.summary and "12 restarts (threshold 5)" in crash.summary
    pending = by[pods["pending"]]
    assert pending.status is Status.DEGRADED
    assert "Unschedulable" in pending.summary

    deployment = by["app"]
    assert deployment.check == "deployment"
    assert deployment.status is Status.DEGRADED
    assert deployment.details["desired"] == 4 and deployment.details["ready"] == 2


def test_check_pods_by_label_selector_without_deployment(kube_cluster: KubeCluster) -> None:
    target = KubernetesTarget(
        namespace=kube_cluster.namespace, label_selector="app=other", api_url=kube_cluster.url
    )
    (only,) = check_pods.fn(target, Thresholds())
    assert only.target.endswith("/other-db-0") and only.status is Status.CRITICAL

    nothing = KubernetesTarget(
        namespace=kube_cluster.namespace, label_selector="app=ghost", api_url=kube_cluster.url
    )
    (missing,) = check_pods.fn(nothing, Thresholds())
    assert missing.status is Status.CRITICAL and "no pods match" in missing.summary


def test_check_pod_resources_grades_usage_against_limits(kube_cluster: KubeCluster) -> None:
    by = _by_target(check_pod_resources.fn(_target(kube_cluster), Thresholds(cpu_pct=95)))
    pods = kube_cluster.pods
    calm = by[pods["ready-1"]]
    assert calm.status is Status.HEALTHY
    assert calm.details["containers"]["app"]["memory_pct"] == pytest.approx(39.1, abs=0.1)
    assert calm.details["containers"]["app"]["memory_limit_bytes"] == 256 * 2**20
    assert calm.details["containers"]["app"]["cpu_pct"] == pytest.approx(20.0)
    hot = by[pods["ready-2"]]
    assert hot.status is Status.DEGRADED
    assert hot.details["containers"]["app"]["memory_pct"] == pytest.approx(95.3, abs=0.1)
    assert "memory 95% of limit (threshold 90%)" in hot.summary
    assert "CPU 92% of limit" in hot.summary and "(threshold 95%)" not in hot.summary
    assert pods["pending"] not in by  # no metrics for a pod that never ran


def test_check_pod_resources_without_metrics_server(
    kube_api_server_no_metrics: KubeApiServer,
) -> None:
    target = KubernetesTarget(
        namespace="default", label_selector="app=x", api_url=kube_api_server_no_metrics.url
    )
    (result,) = check_pod_resources.fn(target, Thresholds())
    assert result.status is Status.DEGRADED
    assert "metrics-server is missing" in result.summary


def test_scan_pod_logs_counts_errors_in_the_window(kube_cluster: KubeCluster) -> None:
    by = _by_target(
        scan_pod_logs.fn(
            _target(kube_cluster), timedelta(minutes=30), "ERROR|FATAL", Thresholds(log_errors=2)
        )
    )
    pods = kube_cluster.pods
    ready = by[pods["ready-1"]]
    assert ready.details["count"] == 2  # the 2 h old ERROR is outside the window
    assert ready.details["top"] == [["ERROR db timeout after <n> ms", 2]]
    assert ready.status is Status.CRITICAL
    assert by[pods["crashloop"]].details["count"] == 2
    assert by[pods["ready-2"]].status is Status.HEALTHY
    assert pods["pending"] not in by

    wide = _by_target(
        scan_pod_logs.fn(_target(kube_cluster), timedelta(hours=3), "ERROR", Thresholds())
    )
    assert wide[pods["ready-1"]].details["count"] == 3
    assert wide[pods["ready-1"]].status is Status.DEGRADED


def test_unreachable_api_url_is_transient() -> None:
    target = KubernetesTarget(
        namespace="default", deployment="app", api_url=f"http://127.0.0.1:{free_port()}"
    )
    started = time.monotonic()
    with pytest.raises(TransientError, match="unreachable") as caught:
        check_pods.fn(target, Thresholds())
    assert "127.0.0.1" in str(caught.value)
    assert time.monotonic() - started < 15


def test_missing_deployment_and_token_are_permanent(
    kube_cluster: KubeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = KubernetesTarget(
        namespace=kube_cluster.namespace, deployment="nope", api_url=kube_cluster.url
    )
    with pytest.raises(PermanentError, match=r"deployment .*/nope: not found"):
        check_pods.fn(gone, Thresholds())
    monkeypatch.delenv("OPSFLOW_TEST_KUBE_TOKEN", raising=False)
    with pytest.raises(InputError, match=r"kubernetes\.token"):
        kube_api(_target(kube_cluster, token="env:OPSFLOW_TEST_KUBE_TOKEN"))
    monkeypatch.setenv("OPSFLOW_TEST_KUBE_TOKEN", "s3cr3t-token-value")
    api = kube_api(_target(kube_cluster, token="env:OPSFLOW_TEST_KUBE_TOKEN"))
    assert api.configuration.api_key["authorization"] == "s3cr3t-token-value"
    api.close()


def test_pod_exec_capture_through_the_exec_websocket(
    kube_cluster: KubeCluster, kube_api_server: KubeApiServer
) -> None:
    calls: list[tuple] = []

    def answer(ns: str, pod: str, container: str | None, argv: list[str], stdin: bytes) -> tuple:
        calls.append((ns, pod, container, argv, stdin))
        if argv[0] == "psql":
            return 0, b"ok:" + stdin, b""
        return 2, b"", b"no such command\n"

    kube_api_server.set_exec_handler(answer)
    try:
        with kube_api_client(kube_cluster) as api:
            pod = find_pod(api, kube_cluster.namespace, kube_cluster.deployment)
            assert pod in (kube_cluster.pods["ready-1"], kube_cluster.pods["ready-2"])
            in_pod = PodExec(_target(kube_cluster), pod, container="app", api=api)
            code, out, err = in_pod.capture(["psql", "-c", "select 1"], timeout=10, stdin=b"\\q\n")
            assert (code, out, err) == (0, b"ok:\\q\n", b"")
            assert calls[-1] == (
                kube_cluster.namespace,
                pod,
                "app",
                ["psql", "-c", "select 1"],
                b"\\q\n",
            )
            code, out, err = PodExec(_target(kube_cluster), pod, api=api).capture(["nope"], 10)
            assert (code, err) == (2, b"no such command\n")
            with pytest.raises(PermanentError, match=r"deployment .*/ghost: not found"):
                find_pod(api, kube_cluster.namespace, "ghost")
    finally:
        kube_api_server.set_exec_handler(None)


def kube_api_client(cluster: KubeCluster) -> kubernetes.client.ApiClient:
    return kube_api(_target(cluster))


def _set_image(cluster: KubeCluster, image: str) -> None:
    apps = kubernetes.client.AppsV1Api(kube_api_client(cluster))
    apps.patch_namespaced_deployment(
        cluster.deployment,
        cluster.namespace,
        [{"op": "replace", "path": "/spec/template/spec/containers/0/image", "value": image}],
    )


def test_fake_controller_rolls_out_fails_and_rolls_back(kube_cluster: KubeCluster) -> None:
    controller = kube_cluster.controller
    target = _target(kube_cluster)
    assert controller.reconcile() == 0  # nothing changed: the seeded state stays

    _set_image(kube_cluster, "registry.local/app:2.0")
    assert controller.reconcile() == 1
    results = check_pods.fn(target, Thresholds())
    deployment = _by_target(results)["app"]
    assert deployment.status is Status.HEALTHY, deployment.summary
    assert deployment.details["images"] == ["registry.local/app:2.0"]
    assert deployment.details["observed_generation"] == deployment.details["generation"] == 2
    pods = [r for r in results if r.check == "pod"]
    assert len(pods) == 4 and all(r.status is Status.HEALTHY for r in pods)

    controller.fail_image("registry.local/app:3.0")
    _set_image(kube_cluster, "registry.local/app:3.0")
    controller.reconcile()
    stuck = check_pods.fn(target, Thresholds())
    dep = _by_target(stuck)["app"]
    assert dep.status is Status.CRITICAL and "progress deadline" in dep.summary
    assert sum(1 for r in stuck if r.check == "pod" and r.status is Status.CRITICAL) == 4
    assert sum(1 for r in stuck if r.check == "pod" and r.status is Status.HEALTHY) == 4

    with controller.start(interval=0.05):  # background mode, as flows will use it
        _set_image(kube_cluster, "registry.local/app:2.0")  # the rollback
        deadline = time.monotonic() + 10
        while True:
            dep = _by_target(check_pods.fn(target, Thresholds()))["app"]
            if dep.status is Status.HEALTHY or time.monotonic() > deadline:
                break
            time.sleep(0.05)
    assert dep.status is Status.HEALTHY, dep.summary
    apps = kubernetes.client.AppsV1Api(kube_api_client(kube_cluster))
    sets = apps.list_namespaced_replica_set(kube_cluster.namespace).items
    revisions = {
        rs.spec.template.spec.containers[0].image: rs.metadata.annotations[
            "deployment.kubernetes.io/revision"
        ]
        for rs in sets
    }
    assert revisions == {
        "registry.local/app:1.0": "1",
        "registry.local/app:3.0": "3",
        "registry.local/app:2.0": "4",
    }


def test_fake_controller_scales_down_and_up(kube_cluster: KubeCluster) -> None:
    apps = kubernetes.client.AppsV1Api(kube_api_client(kube_cluster))
    target = _target(kube_cluster)
    apps.patch_namespaced_deployment_scale(
        kube_cluster.deployment, kube_cluster.namespace, {"spec": {"replicas": 0}}
    )
    kube_cluster.controller.reconcile()
    results = check_pods.fn(target, Thresholds())
    assert [r.check for r in results] == ["deployment"]
    status = apps.read_namespaced_deployment(kube_cluster.deployment, kube_cluster.namespace).status
    assert status.ready_replicas is None and status.replicas is None  # zero fields omitted

    apps.patch_namespaced_deployment_scale(
        kube_cluster.deployment, kube_cluster.namespace, {"spec": {"replicas": 3}}
    )
    kube_cluster.controller.reconcile()
    results = check_pods.fn(target, Thresholds())
    assert _by_target(results)["app"].details["ready"] == 3
    assert sum(1 for r in results if r.check == "pod" and r.status is Status.HEALTHY) == 3


# --- scaling around a restore (tasks/scaling.py) ----------------------------------------------


def _app_pods(cluster: KubeCluster) -> list[dict]:
    """Every pod of the app's selector, terminating ones included (the unrelated pod is not)."""
    pods = cluster.api.list(f"/api/v1/namespaces/{cluster.namespace}/pods", labelSelector="app=app")
    return [p for p in pods if p["metadata"]["labels"].get("tier") == "web"]


def test_scale_down_waits_until_no_pod_of_the_app_is_left_terminating(
    kube_cluster: KubeCluster,
) -> None:
    """Terminating pods still write: scale-down must wait for them, not for status.replicas."""
    target = _target(kube_cluster)
    controller = kube_cluster.controller
    controller.terminate_slowly(2.5)
    with controller:
        started = time.monotonic()
        state = scale_down_app.fn(kubernetes_target=target, docker_target=None, wait_seconds=30)
        took = time.monotonic() - started
        left = _app_pods(kube_cluster)

        assert (state.kind, state.replicas) == ("kubernetes", 4)
        assert left == [], [p["metadata"] for p in left]
        assert controller.terminating == {}
        assert took >= 2.0, took  # it really waited for the terminating pods
        other = kube_cluster.api.get(f"/api/v1/namespaces/{kube_cluster.namespace}/pods/other-db-0")
        assert other is not None  # a pod outside the app's selector neither waits nor goes

        back = scale_up_app.fn(
            state=state, kubernetes_target=target, docker_target=None, wait_seconds=30
        )
    assert back.endswith("back to 4 replica(s)")
    dep = kube_cluster.api.get(f"/apis/apps/v1/namespaces/{kube_cluster.namespace}/deployments/app")
    assert dep is not None and dep["spec"]["replicas"] == 4
    assert dep["status"].get("readyReplicas") == 4
    assert (dep["metadata"].get("annotations") or {}).get(REPLICAS_ANNOTATION) is None


def test_scale_up_after_a_crash_restores_the_remembered_count(kube_cluster: KubeCluster) -> None:
    """A run that scaled down and then died: the next run (or a retry) scales back to the count
    recorded before the first scale-down, not to the 0 it finds."""
    target = _target(kube_cluster)
    with kube_cluster.controller:
        scale_down_app.fn(kubernetes_target=target, docker_target=None, wait_seconds=30)
        # the ScaleState of that run is lost with it; a new run starts from what it finds
        again = scale_down_app.fn(kubernetes_target=target, docker_target=None, wait_seconds=30)
        assert again.replicas == 4
        scale_up_app.fn(state=again, kubernetes_target=target, docker_target=None, wait_seconds=30)
    dep = kube_cluster.api.get(f"/apis/apps/v1/namespaces/{kube_cluster.namespace}/deployments/app")
    assert dep is not None and dep["spec"]["replicas"] == 4
    assert dep["status"].get("readyReplicas") == 4
