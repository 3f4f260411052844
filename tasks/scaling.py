"""Scaling the application around a restore: Kubernetes replicas (through the scale
subresource) or the environment's Docker services (stop/start).

What was stopped is recorded **before** stopping it, next to the application, so a retried
task, a crashed run's successor or the flow's ``finally`` brings back exactly that:

* Kubernetes: the replica count goes into the deployment's annotation
  ``opsflow.io/replicas-before-restore`` before the scale subresource is patched to 0 (a
  second scale-down keeps the count it finds there, not the 0);
* Docker: before a container is stopped, a marker volume ``opsflow-stopped-<container>``
  labelled ``opsflow.io/stopped-for-restore=<container>`` is created on the same engine
  (container labels cannot change after creation); a later scale-down counts containers with a
  marker as stopped by it, and scale-up starts every container of the services that has one,
  then removes the marker (``docker volume ls --filter label=opsflow.io/stopped-for-restore``
  shows what a crashed restore left stopped).

Scale-down returns only when nothing of the application runs: Kubernetes, no pod of the
deployment's selector is left that has not finished (Terminating pods count: their processes
still write; ``status.replicas`` does not count them, so it is not used); Docker, no container
of the services is running, restarting or paused. It is all or nothing: if it fails, what it
stopped is brought back before the error is raised. ``scale_up_app`` is idempotent and also
works from an empty ``ScaleState`` (the records above); the restore flow calls it in a
``finally``, so the application comes back also when the restore (or the scale-down) fails.
"""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, datetime
from typing import Any, Literal

import docker.errors
import kubernetes.client
from pydantic import BaseModel, Field

from connectors.docker import docker_client, docker_errors
from connectors.kubernetes import REQUEST_TIMEOUT, kube_api, kube_errors
from opsflow.errors import PermanentError, TransientError
from opsflow.inventory import DockerTarget, KubernetesTarget
from tasks.policy import api_task

log = logging.getLogger(__name__)

SCALE_WAIT_S = 300.0
POLL_S = 0.5
STOP_TIMEOUT_S = 30
REPLICAS_ANNOTATION = "opsflow.io/replicas-before-restore"
STOPPED_LABEL = "opsflow.io/stopped-for-restore"
MARKER_PREFIX = "opsflow-stopped-"
_ACTIVE_CONTAINER = {"running", "restarting", "paused"}
_FINISHED_PHASES = {"Succeeded", "Failed"}


class ScaleState(BaseModel):
    """What was scaled down, so it can be scaled back exactly."""

    kind: Literal["none", "kubernetes", "docker"]
    target: str = ""
    replicas: int = 0
    stopped: list[str] = Field(default_factory=list)


# --- Kubernetes -------------------------------------------------------------------------------


def _apps(target: KubernetesTarget) -> tuple[Any, kubernetes.client.AppsV1Api]:
    api = kube_api(target)
    return api, kubernetes.client.AppsV1Api(api)


def label_selector(selector: Any) -> str:
    """A Deployment's ``spec.selector`` (``V1LabelSelector``) as a ``labelSelector`` query."""
    terms = [f"{k}={v}" for k, v in sorted((getattr(selector, "match_labels", None) or {}).items())]
    for req in getattr(selector, "match_expressions", None) or []:
        values = ",".join(req.values or [])
        terms.append(
            {
                "In": f"{req.key} in ({values})",
                "NotIn": f"{req.key} notin ({values})",
                "Exists": req.key,
                "DoesNotExist": f"!{req.key}",
            }[req.operator]
        )
    return ",".join(terms)


def _live_pods(api: Any, target: KubernetesTarget, selector: str) -> list[str]:
    """Pods of the selector that may still run: not Succeeded/Failed (Terminating included)."""
    core = kubernetes.client.CoreV1Api(api)
    ns = target.namespace
    with kube_errors(api, f"pods of {ns}/{target.deployment}"):
        pods = core.list_namespaced_pod(
            ns, label_selector=selector, _request_timeout=REQUEST_TIMEOUT
        ).items
    live = []
    for pod in pods:
        phase = getattr(pod.status, "phase", None) or "Pending"
        if phase in _FINISHED_PHASES:
            continue
        terminating = getattr(pod.metadata, "deletion_timestamp", None) is not None
        name = getattr(pod.metadata, "name", "?")
        live.append(f"{name} ({'Terminating' if terminating else phase})")
    return sorted(live)


def _wait_no_pods(api: Any, target: KubernetesTarget, selector: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while live := _live_pods(api, target, selector):
        if time.monotonic() > deadline:
            raise TransientError(
                f"deployment {target.namespace}/{target.deployment}: {len(live)} pod(s) still "
                f"running or terminating after {timeout:.0f}s: {', '.join(live[:5])} (fix: check "
                "the pods' events and termination grace period in the cluster)"
            )
        time.sleep(POLL_S)


def _wait_ready(
    apps: kubernetes.client.AppsV1Api, api: Any, target: KubernetesTarget, want: int, timeout: float
) -> None:
    name, ns = str(target.deployment), target.namespace
    deadline = time.monotonic() + timeout
    while True:
        with kube_errors(api, f"deployment {ns}/{name}"):
            status = apps.read_namespaced_deployment(
                name, ns, _request_timeout=REQUEST_TIMEOUT
            ).status
        have = getattr(status, "ready_replicas", 0) or 0
        if have >= want:
            return
        if time.monotonic() > deadline:
            raise TransientError(
                f"deployment {ns}/{name}: {have} ready pods, want {want}, after {timeout:.0f}s "
                "(fix: check the pods' events and readiness in the cluster)"
            )
        time.sleep(POLL_S)


def _set_replicas(apps: kubernetes.client.AppsV1Api, target: KubernetesTarget, n: int) -> None:
    apps.patch_namespaced_deployment_scale(
        str(target.deployment),
        target.namespace,
        {"spec": {"replicas": n}},
        _request_timeout=REQUEST_TIMEOUT,
    )


def _annotate(
    apps: kubernetes.client.AppsV1Api, target: KubernetesTarget, value: str | None
) -> None:
    apps.patch_namespaced_deployment(
        str(target.deployment),
        target.namespace,
        {"metadata": {"annotations": {REPLICAS_ANNOTATION: value}}},
        _request_timeout=REQUEST_TIMEOUT,
    )


def _scale_down_kubernetes(target: KubernetesTarget, wait_seconds: float) -> ScaleState:
    api, apps = _apps(target)
    name, ns = str(target.deployment), target.namespace
    with kube_errors(api, f"deployment {ns}/{name}"):
        dep = apps.read_namespaced_deployment(name, ns, _request_timeout=REQUEST_TIMEOUT)
        selector = label_selector(dep.spec.selector)
        if not selector:
            raise PermanentError(
                f"deployment {ns}/{name} has an empty selector: its pods cannot be told apart "
                "(fix: give it spec.selector.matchLabels)"
            )
        annotations = getattr(dep.metadata, "annotations", None) or {}
        remembered = annotations.get(REPLICAS_ANNOTATION)
        if remembered is None:  # not yet scaled down by an earlier attempt: record it first
            scale = apps.read_namespaced_deployment_scale(
                name, ns, _request_timeout=REQUEST_TIMEOUT
            )
            remembered = str(getattr(scale.spec, "replicas", 0) or 0)
            _annotate(apps, target, remembered)
        _set_replicas(apps, target, 0)
    try:
        _wait_no_pods(api, target, selector, wait_seconds)
    except BaseException:  # all or nothing: bring it back before reporting the failure
        with kube_errors(api, f"deployment {ns}/{name}"):
            _set_replicas(apps, target, int(remembered))
            _annotate(apps, target, None)
        raise
    return ScaleState(kind="kubernetes", target=f"{ns}/{name}", replicas=int(remembered))


def _scale_up_kubernetes(state: ScaleState, target: KubernetesTarget, wait_seconds: float) -> str:
    api, apps = _apps(target)
    name, ns = str(target.deployment), target.namespace
    with kube_errors(api, f"deployment {ns}/{name}"):
        if state.kind == "kubernetes":
            replicas = state.replicas
        else:  # the state was lost (a crash, a failed scale-down): the annotation remembers
            dep = apps.read_namespaced_deployment(name, ns, _request_timeout=REQUEST_TIMEOUT)
            remembered = (getattr(dep.metadata, "annotations", None) or {}).get(REPLICAS_ANNOTATION)
            if remembered is None:
                return "nothing was scaled down"
            replicas = int(remembered)
        _set_replicas(apps, target, replicas)
    if replicas:
        _wait_ready(apps, api, target, replicas, wait_seconds)
    with kube_errors(api, f"deployment {ns}/{name}"):
        _annotate(apps, target, None)
    return f"{ns}/{name} back to {replicas} replica(s)"


# --- Docker -----------------------------------------------------------------------------------


def marker_name(container: str) -> str:
    """The marker volume of a container stopped for a restore."""
    return MARKER_PREFIX + re.sub(r"[^A-Za-z0-9_.-]", "_", container)


def _markers(client: docker.DockerClient, names: list[str]) -> dict[str, Any]:
    """Container name -> its marker volume, for the containers in ``names`` that have one."""
    with docker_errors("list the restore markers (volumes)"):
        volumes = client.volumes.list(filters={"label": STOPPED_LABEL})
    found = {str((v.attrs.get("Labels") or {}).get(STOPPED_LABEL)): v for v in volumes}
    return {name: found[name] for name in names if name in found}


def _mark(client: docker.DockerClient, container: Any) -> None:
    with docker_errors(f"record that container {container.name} is stopped for a restore"):
        client.volumes.create(
            name=marker_name(container.name),
            labels={
                STOPPED_LABEL: container.name,
                "opsflow.io/container-id": container.id,
                "opsflow.io/stopped-at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )


def _active(client: docker.DockerClient, names: list[str]) -> list[Any]:
    """The containers of ``names`` that run, restart or are paused (missing ones are skipped)."""
    active = []
    for name in names:
        with docker_errors(f"container {name}"):
            try:
                container = client.containers.get(name)
            except docker.errors.NotFound:
                continue  # nothing to stop
        if container.status in _ACTIVE_CONTAINER:
            active.append(container)
    return active


def _wait_stopped(client: docker.DockerClient, names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while active := _active(client, names):
        if time.monotonic() > deadline:
            states = ", ".join(f"{c.name} ({c.status})" for c in active)
            raise TransientError(
                f"containers still running after {timeout:.0f}s: {states} (fix: check their "
                "restart policy and what restarts them)"
            )
        time.sleep(POLL_S)


def _start_marked(client: docker.DockerClient, names: list[str], also: list[str]) -> list[str]:
    """Start every container of ``names`` that has a marker (or is in ``also``), then remove
    its marker; returns the names started. Tries them all, then raises what failed."""
    markers = _markers(client, names)
    wanted = [n for n in names if n in markers or n in also]
    started: list[str] = []
    failed: list[str] = []
    for name in wanted:
        try:
            with docker_errors(f"start container {name}"):
                try:
                    container = client.containers.get(name)
                except docker.errors.NotFound:
                    if name in markers:  # a stale record would fail every later scale-up
                        markers[name].remove()
                    raise
                if container.status not in _ACTIVE_CONTAINER:
                    container.start()
            started.append(name)
            if name in markers:
                with docker_errors(f"remove the restore marker of {name}"):
                    markers[name].remove()
        except (TransientError, PermanentError) as exc:
            failed.append(str(exc))
    if failed:
        raise TransientError(
            "could not start every stopped container (their markers are kept, a retry starts "
            f"them): {'; '.join(failed)}"
        )
    return started


def _scale_down_docker(target: DockerTarget, wait_seconds: float) -> ScaleState:
    names = [s.container for s in target.services]
    client = docker_client(target)
    try:
        earlier = list(_markers(client, names))  # stopped by an earlier attempt or run
        try:
            for container in _active(client, names):
                if container.name not in earlier:
                    _mark(client, container)  # recorded before it is stopped
                with docker_errors(f"stop container {container.name}"):
                    container.stop(timeout=STOP_TIMEOUT_S)
            _wait_stopped(client, names, wait_seconds)
        except BaseException:  # all or nothing: start what is recorded as stopped again
            try:
                _start_marked(client, names, also=[])
            except Exception as exc:  # noqa: BLE001 - the original error is the one to report
                log.error("could not start the stopped containers again: %s", exc)
            raise
        stopped = list(_markers(client, names))
    finally:
        client.close()
    return ScaleState(kind="docker", target=", ".join(names), stopped=stopped)


def _scale_up_docker(state: ScaleState, target: DockerTarget) -> str:
    names = [s.container for s in target.services]
    client = docker_client(target)
    try:
        started = _start_marked(client, names, also=state.stopped)
    finally:
        client.close()
    if not started and state.kind == "none":
        return "nothing was scaled down"
    return f"started {', '.join(started) or 'nothing'}"


# --- tasks ------------------------------------------------------------------------------------


@api_task("scale_down_app", timeout_seconds=SCALE_WAIT_S + 300)
def scale_down_app(
    kubernetes_target: KubernetesTarget | None,
    docker_target: DockerTarget | None,
    wait_seconds: float = SCALE_WAIT_S,
) -> ScaleState:
    """Stop the application so nothing writes during a restore; return how to bring it back.

    Kubernetes: the deployment's replica count goes into an annotation, then the scale
    subresource is patched to 0 and every pod of its selector is awaited gone (Terminating
    ones too). Docker: each running container of the services gets a marker, then is stopped;
    none may be left running. If anything fails, what was stopped is started again.
    """
    if kubernetes_target is not None and kubernetes_target.deployment:
        return _scale_down_kubernetes(kubernetes_target, wait_seconds)
    if docker_target is not None and docker_target.services:
        return _scale_down_docker(docker_target, wait_seconds)
    return ScaleState(kind="none")


@api_task("scale_up_app", timeout_seconds=SCALE_WAIT_S + 300)
def scale_up_app(
    state: ScaleState,
    kubernetes_target: KubernetesTarget | None,
    docker_target: DockerTarget | None,
    wait_seconds: float = SCALE_WAIT_S,
) -> str:
    """Bring the application back exactly as ``scale_down_app`` found it (idempotent).

    With an empty ``state`` (the scale-down's answer was lost) the records next to the
    application say what to bring back: the replicas annotation, the containers' markers.
    """
    k8s = kubernetes_target is not None and bool(kubernetes_target.deployment)
    if k8s and state.kind in ("kubernetes", "none"):
        assert kubernetes_target is not None
        return _scale_up_kubernetes(state, kubernetes_target, wait_seconds)
    if docker_target is not None and docker_target.services and state.kind in ("docker", "none"):
        return _scale_up_docker(state, docker_target)
    return "nothing was scaled down"
