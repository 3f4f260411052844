"""tasks.remediation on a real Docker engine and on the mock Kubernetes API with the fake
controller: restart a service, scale a Compose-style service and a Deployment to N and back."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import docker
import pytest
from docker.models.containers import Container

from opsflow.errors import InputError
from opsflow.inventory import DockerService, DockerTarget, Environment, KubernetesTarget
from opsflow.inventory.incident import ScaleBounds
from tasks.docker.replicas import COPY_LABEL, NUMBER_LABEL, PROJECT_LABEL, SERVICE_LABEL
from tasks.kubernetes.replicas import RESTARTED_AT
from tasks.remediation import current_replicas, restart, restart_service, scale, scale_service
from tests.fixtures.kube_api import KubeCluster

pytestmark = pytest.mark.integration
Run = Callable[..., Container]
LOOP = ["sh", "-c", "trap 'exit 0' TERM; echo started; while true; do sleep 1; done"]


def _docker_env(engine: str, container: str, bounds: ScaleBounds | None = None) -> Environment:
    return Environment(
        docker=DockerTarget(host=engine, services=[DockerService(name="web", container=container)]),
        scaling={"web": bounds} if bounds else {},
    )


@pytest.fixture()
def compose_web(
    docker_engine: str,
    docker_busybox_image: str,
    docker_test_containers: Run,
    docker_engine_client: docker.DockerClient,
) -> Iterator[tuple[str, Container]]:
    """``<project>-web-1``: a Compose-style service of one container; its copies removed after."""
    project = f"p{uuid.uuid4().hex[:8]}"
    first = docker_test_containers(
        docker_busybox_image,
        LOOP,
        name=f"{project}-web-1",
        labels={PROJECT_LABEL: project, SERVICE_LABEL: "web", NUMBER_LABEL: "1"},
        environment={"ROLE": "web"},
        mem_limit=64 * 1024 * 1024,
    )
    yield project, first
    for c in docker_engine_client.containers.list(
        all=True, filters={"label": f"{PROJECT_LABEL}={project}"}
    ):
        c.remove(force=True, v=True)


def _group(client: docker.DockerClient, project: str) -> dict[str, dict[str, Any]]:
    found = client.containers.list(all=True, filters={"label": f"{PROJECT_LABEL}={project}"})
    return {c.name: c.attrs for c in found}


def test_restart_service_restarts_the_docker_container(
    docker_engine: str, docker_busybox_image: str, docker_test_containers: Run
) -> None:
    app = docker_test_containers(docker_busybox_image, LOOP)
    app.reload()
    before = app.attrs["State"]["StartedAt"]

    said = restart_service.fn(_docker_env(docker_engine, app.name), "web")

    app.reload()
    assert app.attrs["State"]["Running"] is True
    assert app.attrs["State"]["StartedAt"] != before
    assert app.logs().count(b"started") == 2  # the process really ran again
    assert f"container {app.name} of service web restarted" in said


def test_restart_waits_for_the_healthcheck(
    docker_engine: str, docker_busybox_image: str, docker_test_containers: Run
) -> None:
    app = docker_test_containers(
        docker_busybox_image,
        LOOP,
        healthcheck={"test": ["CMD", "true"], "interval": 200_000_000, "retries": 3},
    )
    restart(_docker_env(docker_engine, app.name), "web", wait_seconds=30)
    app.reload()
    assert app.attrs["State"]["Health"]["Status"] == "healthy"


def test_scale_a_compose_service_1_to_3_and_back(
    docker_engine: str,
    docker_engine_client: docker.DockerClient,
    compose_web: tuple[str, Container],
) -> None:
    project, first = compose_web
    env = _docker_env(docker_engine, first.name, ScaleBounds(min=1, max=3))
    assert current_replicas(env, "web") == 1

    up = scale_service.fn(env, "web", 3)

    group = _group(docker_engine_client, project)
    assert sorted(group) == sorted([first.name, f"{project}-web-2", f"{project}-web-3"])
    assert all(a["State"]["Running"] for a in group.values())
    copy = group[f"{project}-web-3"]
    assert copy["Config"]["Labels"][COPY_LABEL] == "1"
    assert copy["Config"]["Labels"][NUMBER_LABEL] == "3"
    assert "ROLE=web" in copy["Config"]["Env"]
    assert copy["HostConfig"]["Memory"] == 64 * 1024 * 1024  # the first one's configuration
    assert (up.from_replicas, up.to_replicas) == (1, 3)
    assert sorted(up.changed) == [f"{project}-web-2", f"{project}-web-3"]
    assert current_replicas(env, "web") == 3

    down = scale(env, "web", 1)

    assert list(_group(docker_engine_client, project)) == [first.name]  # the newest removed
    assert (down.from_replicas, down.to_replicas) == (1 + 2, 1)
    assert down.changed == [f"{project}-web-3", f"{project}-web-2"]


def test_scale_out_of_bounds_is_refused_before_any_change(
    docker_engine: str,
    docker_engine_client: docker.DockerClient,
    compose_web: tuple[str, Container],
) -> None:
    project, first = compose_web
    env = _docker_env(docker_engine, first.name, ScaleBounds(min=1, max=3))
    for replicas, side in ((4, "above the maximum"), (0, "below the minimum")):
        with pytest.raises(InputError) as caught:
            scale(env, "web", replicas)
        assert caught.value.field == "replicas"
        assert side in str(caught.value)
        assert "min 1, max 3" in str(caught.value)
    with pytest.raises(InputError) as unbounded:
        scale(_docker_env(docker_engine, first.name), "web", 2)
    assert unbounded.value.field == "service"
    assert list(_group(docker_engine_client, project)) == [first.name]


def test_scale_refuses_a_service_that_is_not_compose_style(
    docker_engine: str, docker_busybox_image: str, docker_test_containers: Run
) -> None:
    app = docker_test_containers(docker_busybox_image, LOOP)
    env = _docker_env(docker_engine, app.name, ScaleBounds(min=1, max=3))
    with pytest.raises(Exception, match="not a Compose-style service"):
        scale(env, "web", 2)


# --- Kubernetes -------------------------------------------------------------------------------


def _k8s_env(cluster: KubeCluster) -> Environment:
    return Environment(
        kubernetes=KubernetesTarget(
            namespace=cluster.namespace, api_url=cluster.url, deployment="app"
        ),
        scaling={"app": ScaleBounds(min=2, max=4)},
    )


def _deployment(cluster: KubeCluster) -> dict[str, Any]:
    dep = cluster.api.get(f"/apis/apps/v1/namespaces/{cluster.namespace}/deployments/app")
    assert dep is not None
    return dep


def _live_pods(cluster: KubeCluster) -> list[dict[str, Any]]:
    pods = cluster.api.list(f"/api/v1/namespaces/{cluster.namespace}/pods", labelSelector="app=app")
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def test_restart_service_rolls_the_deployment(kube_cluster: KubeCluster) -> None:
    kube_cluster.controller.start(0.05)
    old_pods = {p["metadata"]["name"] for p in _live_pods(kube_cluster)}

    said = restart_service.fn(_k8s_env(kube_cluster), "app")

    dep = _deployment(kube_cluster)
    stamp = dep["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT]
    assert stamp.endswith("Z") and f"restartedAt {stamp}" in said
    assert dep["status"]["availableReplicas"] == 4  # the rollout was waited for
    new_pods = {p["metadata"]["name"] for p in _live_pods(kube_cluster)}
    assert len(new_pods) == 4 and not new_pods & old_pods


def test_scale_a_deployment_2_to_4_and_back(kube_cluster: KubeCluster) -> None:
    kube_cluster.controller.start(0.05)
    env = _k8s_env(kube_cluster)
    scale(env, "app", 2)
    assert current_replicas(env, "app") == 2
    assert len(_live_pods(kube_cluster)) == 2

    up = scale_service.fn(env, "app", 4)

    assert (up.from_replicas, up.to_replicas) == (2, 4)
    assert _deployment(kube_cluster)["status"]["readyReplicas"] == 4
    assert len(_live_pods(kube_cluster)) == 4

    down = scale(env, "app", 2)

    assert (down.from_replicas, down.to_replicas) == (4, 2)
    assert _deployment(kube_cluster)["spec"]["replicas"] == 2
    assert len(_live_pods(kube_cluster)) == 2
    with pytest.raises(InputError) as caught:
        scale(env, "app", 5)
    assert caught.value.field == "replicas"
    assert _deployment(kube_cluster)["spec"]["replicas"] == 2


def test_unknown_service_is_refused(kube_cluster: KubeCluster) -> None:
    with pytest.raises(InputError) as caught:
        restart(_k8s_env(kube_cluster), "nope")
    assert caught.value.field == "service"
    assert "app" in caught.value.fix
