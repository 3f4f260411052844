"""tasks.kubernetes.rollout against kmock's API emulator over HTTP and the fake controller
(tests/fixtures/kube_api.py, tests/support/fake_controller.py).

The seeded Deployment ``app`` (4 replicas, ``registry.local/app:1.0``) starts with 2 unready
pods; tests that roll out first deploy a healthy image, so every later ReplicaSet is whole.
Faults (409, 500, 403, a racing writer) are injected by the emulator, which also counts the
requests that reached it. Retries are Prefect's (the tasks run through the engine against the
session's Prefect server) with the policy's count and condition, only shorter delays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from prefect import flow

from opsflow.errors import PermanentError, TransientError
from opsflow.inventory import KubernetesTarget
from tasks.kubernetes.rollout import (
    CHANGE_CAUSE,
    DEPLOY_ID,
    PREVIOUS_IMAGE,
    read_deployment_image,
    set_deployment_image,
    wait_for_rollout,
)
from tests.fixtures.kube_api import KubeCluster, KubeFault, OpsflowKubeEmulator
from tests.support.fake_controller import template_hash

pytestmark = pytest.mark.integration
T = TypeVar("T")

V1, V2, BAD = "registry.local/app:1.0", "registry.local/app:2.0", "registry.local/app:bad"
QUICK = [0.2, 0.2, 0.2]  # API_RETRIES' three retries, without the 2/8/20 s waits


def _in_flow(call: Callable[[], T]) -> T:
    """Run ``call`` (a task call) inside a flow run, so Prefect's engine runs the retries."""

    @flow(name="rollout-test", persist_result=False)
    def rollout_test() -> T:
        return call()

    return rollout_test()


def _target(cluster: KubeCluster) -> KubernetesTarget:
    return KubernetesTarget(namespace=cluster.namespace, api_url=cluster.url)


def _path(cluster: KubeCluster) -> str:
    return f"/apis/apps/v1/namespaces/{cluster.namespace}/deployments/app"


def _deployment(cluster: KubeCluster) -> dict[str, Any]:
    dep = cluster.api.get(_path(cluster))
    assert dep is not None
    return dep


def _calls(cluster: KubeCluster, since: int) -> list[str]:
    """Methods of the requests to the deployment that reached the server after ``since``."""
    return [m for m, _ in cluster.server.requests(_path(cluster))[since:]]


def _pods(cluster: KubeCluster) -> list[dict[str, Any]]:
    pods = cluster.api.list(f"/api/v1/namespaces/{cluster.namespace}/pods", labelSelector="app=app")
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def _replicasets(cluster: KubeCluster) -> dict[str, dict[str, Any]]:
    items = cluster.api.list(f"/apis/apps/v1/namespaces/{cluster.namespace}/replicasets")
    return {rs["metadata"]["name"]: rs for rs in items}


def _roll(cluster: KubeCluster, image: str, deploy_id: str) -> None:
    """Deploy ``image`` and wait for it (the controller must be running)."""
    set_deployment_image.fn(_target(cluster), "app", "app", image, deploy_id)
    wait_for_rollout.fn(_target(cluster), "app", timeout_seconds=60, poll_seconds=0.05)


def test_read_deployment_image(kube_cluster: KubeCluster) -> None:
    now = read_deployment_image.fn(_target(kube_cluster), "app", "app")
    assert (now.deployment, now.container, now.image) == ("app", "app", V1)
    assert (now.revision, now.generation, now.replicas) == (1, 1, 4)
    assert now.deploy_id is None and now.previous_image is None and not now.patched


def test_unknown_deployment_and_container_are_named(kube_cluster: KubeCluster) -> None:
    ns = kube_cluster.namespace
    with pytest.raises(PermanentError) as missing:
        read_deployment_image.fn(_target(kube_cluster), "web", "app")
    assert f"deployment {ns}/web not found" in str(missing.value)
    assert f"deployments in {ns}: app;" in str(missing.value)
    with pytest.raises(PermanentError) as no_container:
        set_deployment_image.fn(_target(kube_cluster), "app", "web", V2, "d-1")
    assert "has no container 'web' (its containers: app;" in str(no_container.value)
    assert _deployment(kube_cluster)["metadata"]["generation"] == 1  # nothing was patched


def test_set_and_wait_rolls_out_the_new_image(kube_cluster: KubeCluster) -> None:
    kube_cluster.controller.start(0.05)
    target = _target(kube_cluster)
    after = set_deployment_image.fn(target, "app", "app", V2, "deploy-1")
    assert after.patched and after.image == V2 and after.generation == 2
    assert (after.deploy_id, after.previous_image) == ("deploy-1", V1)
    annotations = _deployment(kube_cluster)["metadata"]["annotations"]
    assert annotations[DEPLOY_ID] == "deploy-1" and annotations[PREVIOUS_IMAGE] == V1
    assert annotations[CHANGE_CAUSE] == f"opsflow deploy-1: app {V1} -> {V2}"

    status = wait_for_rollout.fn(target, "app", timeout_seconds=60, poll_seconds=0.05)
    assert (status.image, status.revision) == (V2, 2)
    assert (status.replicas, status.updated, status.available) == (4, 4, 4)
    assert status.polls >= 1
    new_rs = f"app-{template_hash(_deployment(kube_cluster)['spec']['template'])}"
    pods = _pods(kube_cluster)
    assert len(pods) == 4
    for pod in pods:
        assert pod["spec"]["containers"][0]["image"] == V2
        assert pod["metadata"]["ownerReferences"][0]["name"] == new_rs
        assert pod["status"]["phase"] == "Running"
    replicasets = _replicasets(kube_cluster)
    assert (
        replicasets[new_rs]["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    )
    assert {n: rs["spec"]["replicas"] for n, rs in replicasets.items() if n != new_rs} == {
        n: 0 for n in replicasets if n != new_rs
    }
    assert read_deployment_image.fn(target, "app", "app").revision == 2


def test_rerun_with_the_same_deploy_id_does_not_patch_twice(kube_cluster: KubeCluster) -> None:
    target = _target(kube_cluster)
    seen = len(kube_cluster.server.requests(_path(kube_cluster)))
    first = set_deployment_image.fn(target, "app", "app", V2, "deploy-7")
    assert _calls(kube_cluster, seen) == ["GET", "PATCH"]
    before = _deployment(kube_cluster)["metadata"]
    seen = len(kube_cluster.server.requests(_path(kube_cluster)))
    again = set_deployment_image.fn(target, "app", "app", V2, "deploy-7")  # a rerun
    assert _calls(kube_cluster, seen) == ["GET"]  # read, found done, no PATCH
    after = _deployment(kube_cluster)["metadata"]
    assert first.patched and not again.patched
    assert (after["resourceVersion"], after["generation"]) == (
        before["resourceVersion"],
        before["generation"],
    )
    assert again.image == V2 and again.previous_image == V1 and again.deploy_id == "deploy-7"
    kube_cluster.controller.start(0.05)  # the rerun goes on to the wait
    assert wait_for_rollout.fn(target, "app", timeout_seconds=60, poll_seconds=0.05).image == V2


def test_progress_deadline_fails_at_once_then_rollback_serves_the_old_replicaset(
    kube_cluster: KubeCluster,
) -> None:
    controller, target = kube_cluster.controller, _target(kube_cluster)
    controller.start(0.05)
    _roll(kube_cluster, V2, "deploy-1")
    good_rs = f"app-{template_hash(_deployment(kube_cluster)['spec']['template'])}"
    good_pods = {p["metadata"]["name"] for p in _pods(kube_cluster)}
    controller.stop()

    controller.fail_image(BAD)
    bad = set_deployment_image.fn(target, "app", "app", BAD, "deploy-2")
    assert controller.reconcile() == 1  # the controller sets ProgressDeadlineExceeded first
    (progressing,) = [
        c for c in _deployment(kube_cluster)["status"]["conditions"] if c["type"] == "Progressing"
    ]
    assert progressing["reason"] == "ProgressDeadlineExceeded"
    with pytest.raises(PermanentError) as failed:
        wait_for_rollout.fn(target, "app", timeout_seconds=600, poll_seconds=0.05)
    message = str(failed.value)
    assert f"deployment app exceeded its progress deadline: {progressing['message']}" in message
    assert "(seen at poll 1," in message  # the first look fails it: no waiting out the 600 s
    assert {p["metadata"]["name"] for p in _pods(kube_cluster)} >= good_pods  # old pods serve

    assert bad.previous_image == V2
    back = set_deployment_image.fn(target, "app", "app", bad.previous_image, "rollback-2")
    assert back.patched and back.previous_image == BAD and back.deploy_id == "rollback-2"
    controller.start(0.05)
    status = wait_for_rollout.fn(target, "app", timeout_seconds=60, poll_seconds=0.05)
    assert (status.image, status.revision, status.available) == (V2, 4, 4)
    pods = _pods(kube_cluster)
    assert {p["metadata"]["ownerReferences"][0]["name"] for p in pods} == {good_rs}
    assert {p["metadata"]["name"] for p in pods} == good_pods  # the same pods, never replaced
    replicasets = _replicasets(kube_cluster)
    assert replicasets[good_rs]["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == (
        "4"
    )
    assert sum(rs["spec"]["replicas"] for rs in replicasets.values()) == 4


def test_the_backstop_names_the_unmet_condition(kube_cluster: KubeCluster) -> None:
    target = _target(kube_cluster)
    set_deployment_image.fn(target, "app", "app", V2, "deploy-1")  # no controller reconciles
    with pytest.raises(PermanentError) as caught:
        wait_for_rollout.fn(target, "app", timeout_seconds=2, poll_seconds=0.5)
    message = str(caught.value)
    assert "not complete after" in message and "(timeout 2 s," in message
    assert "the spec change is not observed yet (observedGeneration 1 < generation 2)" in message


def test_the_backstop_names_the_counts(kube_cluster: KubeCluster) -> None:
    """The seeded Deployment is observed but 2 of its 4 pods never become available."""
    with pytest.raises(PermanentError, match=r"2 of 4 updated replicas are available"):
        wait_for_rollout.fn(_target(kube_cluster), "app", timeout_seconds=1, poll_seconds=0.5)


# --- through Prefect: what is retried and what is not ------------------------------------------


def test_409_and_500_are_retried(kube_cluster: KubeCluster, prefect_api: str) -> None:
    server, path = kube_cluster.server, _path(kube_cluster)
    server.inject(KubeFault("GET", path, 500))
    server.inject(KubeFault("PATCH", path, 409))
    seen = len(server.requests(path))
    task = set_deployment_image.with_options(retry_delay_seconds=QUICK)
    after = _in_flow(lambda: task(_target(kube_cluster), "app", "app", V2, "deploy-1"))
    assert after.image == V2 and after.patched
    # try 1: GET 500; try 2: GET, PATCH 409; try 3: GET, PATCH
    assert _calls(kube_cluster, seen) == ["GET", "GET", "PATCH", "GET", "PATCH"]
    assert _deployment(kube_cluster)["metadata"]["generation"] == 2  # one patch applied


def test_a_lost_answer_to_an_applied_patch_is_not_patched_again(
    kube_cluster: KubeCluster, prefect_api: str
) -> None:
    server, path = kube_cluster.server, _path(kube_cluster)
    server.inject(KubeFault("PATCH", path, 500, applied=True))
    seen = len(server.requests(path))
    task = set_deployment_image.with_options(retry_delay_seconds=QUICK)
    after = _in_flow(lambda: task(_target(kube_cluster), "app", "app", V2, "deploy-1"))
    assert _calls(kube_cluster, seen) == ["GET", "PATCH", "GET"]  # the retry saw it done
    assert not after.patched and after.image == V2 and after.previous_image == V1
    assert _deployment(kube_cluster)["metadata"]["generation"] == 2


def test_a_concurrent_change_is_kept(kube_cluster: KubeCluster, prefect_api: str) -> None:
    """Another writer changes the Deployment between our read and our patch: the patch's
    resourceVersion no longer holds (409), the retry reads again and keeps their change."""
    server, path, ns = kube_cluster.server, _path(kube_cluster), kube_cluster.namespace

    app = _deployment(kube_cluster)["spec"]["template"]["spec"]["containers"][0]
    sidecar = {"name": "sidecar", "image": "registry.local/proxy:1"}

    def other_writer(emulator: OpsflowKubeEmulator) -> None:  # runs in the server's loop
        emulator.write_directly(
            "apps/v1/deployments",
            ns,
            "app",
            {"spec": {"template": {"spec": {"containers": [app, sidecar]}}}},
        )

    server.inject(KubeFault("PATCH", path, before=other_writer))
    seen = len(server.requests(path))
    task = set_deployment_image.with_options(retry_delay_seconds=QUICK)
    after = _in_flow(lambda: task(_target(kube_cluster), "app", "app", V2, "deploy-1"))
    assert _calls(kube_cluster, seen) == ["GET", "PATCH", "GET", "PATCH"]
    containers = _deployment(kube_cluster)["spec"]["template"]["spec"]["containers"]
    assert [(c["name"], c["image"]) for c in containers] == [
        ("app", V2),
        ("sidecar", "registry.local/proxy:1"),
    ]
    assert after.image == V2 and after.previous_image == V1


def test_403_is_not_retried(kube_cluster: KubeCluster, prefect_api: str) -> None:
    server, path = kube_cluster.server, _path(kube_cluster)
    server.inject(KubeFault("GET", path, 403, times=10))
    seen = len(server.requests(path))
    task = set_deployment_image.with_options(retry_delay_seconds=QUICK)
    with pytest.raises(PermanentError, match=r"403 Forbidden .*RBAC"):
        _in_flow(lambda: task(_target(kube_cluster), "app", "app", V2, "deploy-1"))
    assert _calls(kube_cluster, seen) == ["GET"]


def _watches(cluster: KubeCluster, since: int) -> list[str]:
    """Queries of the watches of the namespace's Deployments opened after ``since``."""
    calls = cluster.server.requests(_list_path(cluster))[since:]
    return [p.split("?", 1)[1] for m, p in calls if m == "GET" and "watch=true" in p]


def _list_path(cluster: KubeCluster) -> str:
    return f"/apis/apps/v1/namespaces/{cluster.namespace}/deployments"


def test_a_timeout_is_not_retried(kube_cluster: KubeCluster, prefect_api: str) -> None:
    seen = len(kube_cluster.server.requests(_list_path(kube_cluster)))
    task = wait_for_rollout.with_options(retry_delay_seconds=QUICK)
    with pytest.raises(PermanentError, match=r"not complete after .* watches\)") as caught:
        _in_flow(lambda: task(_target(kube_cluster), "app", timeout_seconds=1, poll_seconds=0.25))
    watches = int(str(caught.value).split(" watches)")[0].rsplit(" ", 1)[1])
    opened = _watches(kube_cluster, seen)
    assert len(opened) == watches >= 1  # one attempt's watches, no retry
    assert all("fieldSelector=metadata.name%3Dapp" in q for q in opened), opened


def test_errors_during_the_wait_are_polled_through(
    kube_cluster: KubeCluster, prefect_api: str
) -> None:
    server, path = kube_cluster.server, _list_path(kube_cluster)
    set_deployment_image.fn(_target(kube_cluster), "app", "app", V2, "deploy-1")
    server.inject(KubeFault("GET", path, 500, times=2, query="watch=true"))
    server.inject(KubeFault("GET", path, 409, times=1, query="watch=true"))
    seen = len(server.requests(path))
    kube_cluster.controller.start(0.05)
    task = wait_for_rollout.with_options(retries=0)
    status = _in_flow(
        lambda: task(_target(kube_cluster), "app", timeout_seconds=60, poll_seconds=0.05)
    )
    assert status.image == V2 and status.available == 4
    assert len(_watches(kube_cluster, seen)) == 4  # 3 answered with an error, then the one
    assert status.polls >= 1  # that saw the rollout through


def test_an_unreachable_api_at_the_deadline_is_transient(kube_cluster: KubeCluster) -> None:
    kube_cluster.server.inject(KubeFault("GET", _list_path(kube_cluster), 503, times=100))
    with pytest.raises(TransientError, match=r"did not answer at the end of the .* wait"):
        wait_for_rollout.fn(_target(kube_cluster), "app", timeout_seconds=0.5, poll_seconds=0.1)
