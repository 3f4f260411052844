"""Remediation actions on an environment's services: restart one, scale one to N replicas.

A *service* is named as the inventory names it and resolves (``resolve_service``, pure) to

* Docker: the entry of ``docker.services`` with that name (its container);
* Kubernetes (when no Docker service has the name): a Deployment of ``kubernetes.namespace`` —
  ``deploy.services[name].deployment`` when the deploy section lists it, else the Deployment of
  the same name, which must be ``kubernetes.deployment`` or a key of ``scaling``.

``restart_service``: Docker ``docker restart`` + wait up (healthy when it has a HEALTHCHECK);
Kubernetes ``kubectl rollout restart`` + rollout wait (``tasks.kubernetes.replicas``).
``scale_service``: bounded by ``scaling[service]`` (``check_scale``, pure: ``InputError``
naming ``replicas`` and the bounds); Kubernetes patches ``spec.replicas`` and waits for the
rollout; Docker scales a Compose-style service (``tasks.docker.replicas``: containers labelled
``com.docker.compose.service``/``project`` like the inventory container; up = copies of its
configuration, down = the newest removed first).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from opsflow.errors import InputError
from opsflow.inventory import DockerService, DockerTarget, Environment, KubernetesTarget
from tasks.docker.replicas import restart_container, running_count, scale_compose
from tasks.kubernetes.replicas import rollout_restart, set_replicas, spec_replicas
from tasks.policy import api_task

WAIT_S = 300.0
STABLE_S = 3.0
_DNS_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


@dataclass(frozen=True)
class ServiceTarget:
    """Where a service runs: one Docker container (service) or one Kubernetes Deployment."""

    kind: Literal["docker", "kubernetes"]
    service: str
    docker: DockerTarget | None = None
    docker_service: DockerService | None = None
    kubernetes: KubernetesTarget | None = None
    deployment: str | None = None

    @property
    def label(self) -> str:
        if self.kind == "docker":
            assert self.docker_service is not None
            return f"container {self.docker_service.container}"
        assert self.kubernetes is not None
        return f"deployment {self.kubernetes.namespace}/{self.deployment}"


class ScaleChange(BaseModel):
    """What ``scale_service`` did: ``target`` is the container group or Deployment."""

    service: str
    target: str
    from_replicas: int
    to_replicas: int
    changed: list[str] = []
    seconds: float = 0.0


def known_services(env: Environment) -> list[str]:
    """The service names ``resolve_service`` accepts in ``env``."""
    names: list[str] = [s.name for s in env.docker.services] if env.docker else []
    if env.kubernetes is not None:
        if env.deploy is not None and env.deploy.target == "kubernetes":
            names += [s.name for s in env.deploy.services]
        if env.kubernetes.deployment:
            names.append(env.kubernetes.deployment)
        names += list(env.scaling)
    return sorted(set(names))


def resolve_service(env: Environment, service: str) -> ServiceTarget:
    """The container or Deployment of ``service`` in ``env`` (pure: no I/O)."""
    if env.docker is not None:
        for entry in env.docker.services:
            if entry.name == service:
                return ServiceTarget("docker", service, docker=env.docker, docker_service=entry)
    k8s = env.kubernetes
    if k8s is not None and service in known_services(env):
        deployment = service
        if env.deploy is not None and env.deploy.target == "kubernetes":
            listed = {s.name: s.deployment for s in env.deploy.services}
            deployment = listed.get(service) or service
        if _DNS_NAME.match(deployment):
            return ServiceTarget("kubernetes", service, kubernetes=k8s, deployment=deployment)
    raise InputError(
        "service",
        f"{service!r:.80} is not a service of this environment",
        f"name one of {known_services(env) or 'none: add docker.services or kubernetes'}",
    )


def check_scale(env: Environment, service: str, replicas: int) -> None:
    """``replicas`` within ``scaling[service]``; ``InputError`` naming the field otherwise."""
    bounds = env.scaling.get(service)
    if bounds is None:
        raise InputError(
            "service",
            f"{service!r:.80} has no scaling bounds in this environment",
            f"add scaling: {{{service}: {{min: 1, max: 4}}}} to the inventory, or scale one of "
            f"{sorted(env.scaling) or 'none'}",
        )
    if isinstance(replicas, bool) or not isinstance(replicas, int):
        raise InputError("replicas", f"{replicas!r:.40} is not a whole number", "give e.g. 3")
    if not bounds.min <= replicas <= bounds.max:
        side = "below the minimum" if replicas < bounds.min else "above the maximum"
        raise InputError(
            "replicas",
            f"{replicas} is {side} for {service} (scaling bounds: min {bounds.min}, "
            f"max {bounds.max})",
            f"give a count from {bounds.min} to {bounds.max}, or change scaling.{service}",
        )


def current_replicas(env: Environment, service: str) -> int:
    """Running containers of a Compose-style Docker service; a Deployment's ``spec.replicas``."""
    where = resolve_service(env, service)
    if where.kind == "docker":
        assert where.docker is not None and where.docker_service is not None
        return running_count(where.docker, where.docker_service)
    assert where.kubernetes is not None and where.deployment is not None
    return spec_replicas(where.kubernetes, where.deployment)


def restart(env: Environment, service: str, wait_seconds: float = WAIT_S) -> str:
    """The plain function behind ``restart_service``."""
    where = resolve_service(env, service)
    if where.kind == "docker":
        assert where.docker is not None and where.docker_service is not None
        return restart_container(where.docker, where.docker_service, wait_seconds, STABLE_S)
    assert where.kubernetes is not None and where.deployment is not None
    stamp, status = rollout_restart(where.kubernetes, where.deployment, wait_seconds)
    return (
        f"{where.label} of service {service} restarted (restartedAt {stamp}): "
        f"{status.available}/{status.replicas} replicas available after {status.seconds:.1f} s"
    )


def scale(
    env: Environment, service: str, replicas: int, wait_seconds: float = WAIT_S
) -> ScaleChange:
    """The plain function behind ``scale_service``."""
    check_scale(env, service, replicas)
    where = resolve_service(env, service)
    if where.kind == "docker":
        assert where.docker is not None and where.docker_service is not None
        before, after, changed = scale_compose(
            where.docker, where.docker_service, replicas, wait_seconds, STABLE_S
        )
        return ScaleChange(
            service=service,
            target=f"compose service of {where.label}",
            from_replicas=before,
            to_replicas=after,
            changed=changed,
        )
    assert where.kubernetes is not None and where.deployment is not None
    before = spec_replicas(where.kubernetes, where.deployment)
    status = set_replicas(where.kubernetes, where.deployment, replicas, wait_seconds)
    return ScaleChange(
        service=service,
        target=where.label,
        from_replicas=before,
        to_replicas=status.available,
        seconds=status.seconds,
    )


@api_task("restart_service", timeout_seconds=WAIT_S + 120)
def restart_service(env: Environment, service: str) -> str:
    """Restart ``service`` and wait until it is up again; one line saying what was done."""
    return restart(env, service)


@api_task("scale_service", timeout_seconds=WAIT_S + 120)
def scale_service(env: Environment, service: str, replicas: int) -> ScaleChange:
    """Scale ``service`` to ``replicas`` (within ``scaling[service]``) and wait until they run."""
    return scale(env, service, replicas)
