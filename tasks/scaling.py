"""Scaling the application around a restore: Kubernetes replicas (through the scale
subresource) or the environment's Docker services (stop/start).

``scale_down_app`` remembers what it did in a ``ScaleState`` (and, on Kubernetes, in the
deployment's ``opsflow.io/replicas-before-restore`` annotation, so a retried run cannot lose
the previous count); ``scale_up_app`` puts exactly that back. The restore flow calls
``scale_up_app`` in a ``finally``: the application comes back also when the restore fails.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import docker.errors
import kubernetes.client
from pydantic import BaseModel, Field

from connectors.docker import docker_client, docker_errors
from connectors.kubernetes import REQUEST_TIMEOUT, kube_api, kube_errors
from opsflow.errors import TransientError
from opsflow.inventory import DockerTarget, KubernetesTarget
from tasks.policy import api_task

SCALE_WAIT_S = 300.0
REPLICAS_ANNOTATION = "opsflow.io/replicas-before-restore"


class ScaleState(BaseModel):
    """What was scaled down, so it can be scaled back exactly."""

    kind: Literal["none", "kubernetes", "docker"]
    target: str = ""
    replicas: int = 0
    stopped: list[str] = Field(default_factory=list)


def _apps(target: KubernetesTarget) -> tuple[Any, kubernetes.client.AppsV1Api]:
    api = kube_api(target)
    return api, kubernetes.client.AppsV1Api(api)


def _wait_replicas(
    apps: kubernetes.client.AppsV1Api,
    api: Any,
    target: KubernetesTarget,
    want: int,
    timeout: float,
) -> None:
    name, ns = str(target.deployment), target.namespace
    deadline = time.monotonic() + timeout
    while True:
        with kube_errors(api, f"deployment {ns}/{name}"):
            status = apps.read_namespaced_deployment(
                name, ns, _request_timeout=REQUEST_TIMEOUT
            ).status
        have = (
            (getattr(status, "replicas", 0) or 0)
            if want == 0
            else (getattr(status, "ready_replicas", 0) or 0)
        )
        if (have == 0) if want == 0 else (have >= want):
            return
        if time.monotonic() > deadline:
            what = "pods still running" if want == 0 else f"ready pods, want {want}"
            raise TransientError(
                f"deployment {ns}/{name}: {have} {what} after {timeout:.0f}s "
                "(fix: check the pods' events and termination/readiness in the cluster)"
            )
        time.sleep(0.5)


@api_task("scale_down_app", timeout_seconds=SCALE_WAIT_S + 300)
def scale_down_app(
    kubernetes_target: KubernetesTarget | None,
    docker_target: DockerTarget | None,
    wait_seconds: float = SCALE_WAIT_S,
) -> ScaleState:
    """Stop the application so nothing writes during a restore; return how to bring it back.

    Kubernetes: the deployment's replica count goes into an annotation, then the scale
    subresource is patched to 0 and the pods are awaited gone. Docker: every running
    container of the services is stopped (if one fails the others are started again).
    """
    if kubernetes_target is not None and kubernetes_target.deployment:
        api, apps = _apps(kubernetes_target)
        name, ns = kubernetes_target.deployment, kubernetes_target.namespace
        with kube_errors(api, f"deployment {ns}/{name}"):
            dep = apps.read_namespaced_deployment(name, ns, _request_timeout=REQUEST_TIMEOUT)
            annotations = getattr(dep.metadata, "annotations", None) or {}
            remembered = annotations.get(REPLICAS_ANNOTATION)
            if remembered is None:  # not yet scaled down by an earlier attempt of this restore
                scale = apps.read_namespaced_deployment_scale(
                    name, ns, _request_timeout=REQUEST_TIMEOUT
                )
                remembered = str(getattr(scale.spec, "replicas", 0) or 0)
                apps.patch_namespaced_deployment(
                    name,
                    ns,
                    {"metadata": {"annotations": {REPLICAS_ANNOTATION: remembered}}},
                    _request_timeout=REQUEST_TIMEOUT,
                )
            apps.patch_namespaced_deployment_scale(
                name, ns, {"spec": {"replicas": 0}}, _request_timeout=REQUEST_TIMEOUT
            )
        try:
            _wait_replicas(apps, api, kubernetes_target, 0, wait_seconds)
        except BaseException:  # all or nothing: bring it back before reporting the failure
            with kube_errors(api, f"deployment {ns}/{name}"):
                apps.patch_namespaced_deployment_scale(
                    name,
                    ns,
                    {"spec": {"replicas": int(remembered)}},
                    _request_timeout=REQUEST_TIMEOUT,
                )
            raise
        return ScaleState(kind="kubernetes", target=f"{ns}/{name}", replicas=int(remembered))
    if docker_target is not None and docker_target.services:
        client = docker_client(docker_target)
        stopped: list[str] = []
        try:
            running = []
            for service in docker_target.services:
                with docker_errors(f"container {service.container}"):
                    try:
                        container = client.containers.get(service.container)
                    except docker.errors.NotFound:
                        continue  # nothing to stop
                    if container.status == "running":
                        running.append(container)
            try:
                for container in running:
                    with docker_errors(f"stop container {container.name}"):
                        container.stop(timeout=30)
                    stopped.append(str(container.name))
            except BaseException:
                for container in running:
                    if container.name in stopped:
                        with docker_errors(f"start container {container.name}"):
                            container.start()
                raise
        finally:
            client.close()
        names = ", ".join(s.container for s in docker_target.services)
        return ScaleState(kind="docker", target=names, stopped=stopped)
    return ScaleState(kind="none")


@api_task("scale_up_app", timeout_seconds=SCALE_WAIT_S + 300)
def scale_up_app(
    state: ScaleState,
    kubernetes_target: KubernetesTarget | None,
    docker_target: DockerTarget | None,
    wait_seconds: float = SCALE_WAIT_S,
) -> str:
    """Bring the application back exactly as ``scale_down_app`` found it (idempotent)."""
    if state.kind == "kubernetes" and kubernetes_target is not None:
        api, apps = _apps(kubernetes_target)
        name, ns = str(kubernetes_target.deployment), kubernetes_target.namespace
        with kube_errors(api, f"deployment {ns}/{name}"):
            apps.patch_namespaced_deployment_scale(
                name, ns, {"spec": {"replicas": state.replicas}}, _request_timeout=REQUEST_TIMEOUT
            )
        if state.replicas:
            _wait_replicas(apps, api, kubernetes_target, state.replicas, wait_seconds)
        with kube_errors(api, f"deployment {ns}/{name}"):
            apps.patch_namespaced_deployment(
                name,
                ns,
                {"metadata": {"annotations": {REPLICAS_ANNOTATION: None}}},
                _request_timeout=REQUEST_TIMEOUT,
            )
        return f"{ns}/{name} back to {state.replicas} replica(s)"
    if state.kind == "docker" and docker_target is not None:
        client = docker_client(docker_target)
        try:
            for name in state.stopped:
                with docker_errors(f"start container {name}"):
                    client.containers.get(name).start()
        finally:
            client.close()
        return f"started {', '.join(state.stopped) or 'nothing'}"
    return "nothing was scaled down"
