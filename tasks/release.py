"""The deploy target of an environment, one service at a time: what runs now, set a new
image and wait until it serves, put the previous one back, and drop the previous one once
the change is verified. Docker (``tasks.docker.deploy``: the container is recreated with the
same config, the old one kept stopped as ``<name>.opsflow-previous``) and Kubernetes
(``tasks.kubernetes.rollout``: the Deployment's container image is patched, the rollout
followed as ``kubectl rollout status`` does; the previous image is an annotation).

Plain functions over those tasks: the deploy and rollback flows record each call as a step.
"""

from __future__ import annotations

from dataclasses import dataclass

import docker.errors

from connectors.docker import docker_client, docker_errors
from opsflow.inventory import DeployService, DockerService, Environment
from opsflow.releases import require_deploy
from tasks.docker.deploy import (
    check_image_present,
    read_container_image,
    remove_previous_container,
    replace_container,
    restore_previous_container,
    wait_container_healthy,
)
from tasks.docker.recreate import PREVIOUS_SUFFIX
from tasks.kubernetes.rollout import read_deployment_image, set_deployment_image, wait_for_rollout


@dataclass(frozen=True)
class Live:
    """What one service runs now."""

    image: str
    deploy_id: str | None
    previous_image: str | None
    """The image it ran before the deploy that set this one, while that deploy is not done."""
    replicas: int | None
    revision: str | None
    target: str


def _docker_service(env: Environment, service: DeployService) -> DockerService:
    assert env.docker is not None  # the inventory's check_services made sure
    return next(s for s in env.docker.services if s.name == service.name)


def _container(env: Environment, service: DeployService) -> str:
    return service.container or service.workload


def describe(env: Environment, service: DeployService) -> str:
    if env.deploy is not None and env.deploy.target == "kubernetes":
        assert env.kubernetes is not None
        return f"deployment {env.kubernetes.namespace}/{service.workload}"
    return f"container {_docker_service(env, service).container}"


def _target(env: Environment) -> str:
    return str(require_deploy("", env).target)


def read_live(env: Environment, service: DeployService, *, in_flow: bool = True) -> Live:
    """What ``service`` runs now (``in_flow=False``: the plain functions, no task runs, for
    plans made outside a flow)."""
    if _target(env) == "kubernetes":
        assert env.kubernetes is not None
        read_k8s = read_deployment_image if in_flow else read_deployment_image.fn
        w = read_k8s(env.kubernetes, service.workload, _container(env, service))
        revision = None if w.revision is None else str(w.revision)
        previous = w.previous_image if w.deploy_id else None
        return Live(w.image, w.deploy_id, previous, w.replicas, revision, describe(env, service))
    assert env.docker is not None
    docker_service = _docker_service(env, service)
    read_docker = read_container_image if in_flow else read_container_image.fn
    c = read_docker(env.docker, docker_service)
    previous = _previous_container_image(env, docker_service) if c.deploy_id else None
    return Live(c.image, c.deploy_id, previous, None, None, describe(env, service))


def _previous_container_image(env: Environment, service: DockerService) -> str | None:
    """The image of ``<container>.opsflow-previous`` (the container a deploy replaced and
    keeps until it is verified), or None when there is none."""
    assert env.docker is not None
    client = docker_client(env.docker)
    try:
        with docker_errors(f"container {service.container}{PREVIOUS_SUFFIX}"):
            try:
                attrs = client.api.inspect_container(service.container + PREVIOUS_SUFFIX)
            except docker.errors.NotFound:
                return None
        return str((attrs.get("Config") or {}).get("Image") or "") or None
    finally:
        client.close()


def image_present(env: Environment, image: str) -> None:
    """Docker: the image is on the engine (InputError naming ``image`` if not). Called at plan
    time, outside any flow (``.fn``: no task run). Kubernetes pulls it itself: not checked."""
    if _target(env) == "docker":
        assert env.docker is not None
        check_image_present.fn(env.docker, image)


def set_image(env: Environment, service: DeployService, image: str, deploy_id: str) -> Live:
    """Set ``image`` (idempotent for ``deploy_id``: a rerun does not change it twice) and wait
    until it serves: the rollout (Kubernetes) or the container's health (Docker)."""
    deploy = env.deploy
    assert deploy is not None
    if _target(env) == "kubernetes":
        k8s = env.kubernetes
        assert k8s is not None
        container = _container(env, service)
        set_deployment_image(k8s, service.workload, container, image, deploy_id)
        wait_for_rollout(
            k8s,
            service.workload,
            timeout_seconds=deploy.rollout_timeout.total_seconds(),
            container=container,
        )
        return read_live(env, service)
    assert env.docker is not None
    docker_service = _docker_service(env, service)
    replace_container(env.docker, docker_service, image, deploy_id)
    wait_container_healthy(
        env.docker, docker_service, timeout_seconds=deploy.health_timeout.total_seconds()
    )
    return read_live(env, service)


def put_back(env: Environment, service: DeployService, previous: str, deploy_id: str) -> Live:
    """Roll one service back to ``previous`` and wait until it serves again: Docker renames
    the kept previous container back (its exact config and image); Kubernetes sets the
    previous image (a patch under the id ``<deploy_id>-rollback``) and follows the rollout."""
    deploy = env.deploy
    assert deploy is not None
    if _target(env) == "kubernetes":
        return set_image(env, service, previous, f"{deploy_id}-rollback")
    assert env.docker is not None
    docker_service = _docker_service(env, service)
    restore_previous_container(env.docker, docker_service)
    wait_container_healthy(
        env.docker, docker_service, timeout_seconds=deploy.health_timeout.total_seconds()
    )
    return read_live(env, service)


def restore_image(env: Environment, service: DeployService, image: str, rollback_id: str) -> Live:
    """Rollback to ``image``: Docker puts the kept previous container back when it runs that
    image (a rename: its exact config), else recreates the container with ``image``;
    Kubernetes sets the image and follows the rollout."""
    now = read_live(env, service)
    if _target(env) == "docker" and now.previous_image == image:
        return put_back(env, service, image, rollback_id)
    return set_image(env, service, image, rollback_id)


def keep_new(env: Environment, service: DeployService) -> str:
    """After a verified change: Docker removes the kept previous container (the image stays
    on the engine, so a later rollback recreates it); Kubernetes keeps nothing aside."""
    if _target(env) == "docker":
        assert env.docker is not None
        removed = remove_previous_container(env.docker, _docker_service(env, service))
        return "previous container removed" if removed else "no previous container"
    return "nothing kept aside"
