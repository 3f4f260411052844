"""How an environment is deployed: the ``deploy:`` section of an environment.

    deploy:
      target: docker            # or kubernetes; default: the one connection the env has
      services: [web, worker]   # in deploy order; default: every docker.services entry /
                                # the kubernetes.deployment
      rollout_timeout: 10m      # per service: the rollout (Kubernetes) or container start
      health_timeout: 2m        # per Docker service: its healthcheck / health_url
      verify: {duration: 2m, interval: 10s, failure_limit: 3, max_error_rate_pct: 5}
      on_busy: fail             # another deploy of this environment runs: fail, or wait
      busy_wait: 30m            # how long `wait` waits
      require_window: false     # deploy only inside the maintenance window
      backup: true              # a backup of the environment before the image changes

A Kubernetes service is ``{name, deployment, container}`` (``deployment`` defaults to
``name``, ``container`` to the deployment's only container); a Docker service is the name of
an entry of the environment's ``docker.services``. The cross-checks against the
environment's connections are ``check_services``, called by ``Environment``'s validator
(this module imports nothing of ``models``)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from opsflow.inventory.changes import Verification
from opsflow.inventory.fields import Model, positive_duration

K8S_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
K8S_NAME_FIX = "use a Kubernetes object name: lowercase letters, digits and '-', e.g. web-api"


class DeployService(Model):
    """One thing a deploy changes, in order."""

    name: str = Field(min_length=1, max_length=253)
    deployment: str | None = Field(None, description="Kubernetes Deployment (default: name)")
    container: str | None = Field(
        None, description="container of the Deployment (default: its only container)"
    )

    @model_validator(mode="before")
    @classmethod
    def _short(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @property
    def workload(self) -> str:
        return self.deployment or self.name


class Deploy(Model):
    target: Literal["kubernetes", "docker"] | None = Field(
        None, description="default: the environment's only connection (docker or kubernetes)"
    )
    services: list[DeployService] = Field(default_factory=list)
    rollout_timeout: timedelta = Field(default=timedelta(minutes=10))
    health_timeout: timedelta = Field(default=timedelta(minutes=2))
    verify: Verification | None = Field(
        default_factory=Verification, description="null: no verification window"
    )
    on_busy: Literal["fail", "wait"] = "fail"
    busy_wait: timedelta = Field(default=timedelta(minutes=30))
    require_window: bool = False
    backup: bool = True
    health_check: bool = Field(True, description="run the health-check runbook after the change")

    @field_validator("rollout_timeout", "health_timeout", "busy_wait", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> timedelta:
        return positive_duration(value)

    @model_validator(mode="after")
    def _unique(self) -> Deploy:
        names = [s.name for s in self.services]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"services lists {dupes} twice (fix: list each service once)")
        return self


def check_services(
    deploy: Deploy,
    *,
    docker_services: list[str] | None,
    kubernetes: bool,
    k8s_default: tuple[str | None, str | None] = (None, None),
    metrics: list[str] | None = None,
) -> Deploy:
    """The deploy section against the environment's connections: the target exists, every
    service is one of that target's, at least one service. Returns it with ``target`` and
    ``services`` filled in; raises ValueError (with its fix) otherwise."""
    unknown_metrics = [
        m for m in (deploy.verify.metrics if deploy.verify else []) if m not in (metrics or [])
    ]
    if unknown_metrics:
        raise ValueError(
            f"deploy.verify.metrics names {unknown_metrics}, which are not metrics of this "
            f"environment (fix: choose among {metrics or 'none: add metrics first'}, or leave "
            "it empty for all)"
        )
    target: str | None = deploy.target
    if target is None:
        found = (("docker", docker_services is not None), ("kubernetes", kubernetes))
        have = [name for name, ok in found if ok]
        if len(have) != 1:
            problem = "the environment has both" if have else "the environment has neither"
            raise ValueError(
                f"deploy.target is not set and {problem} a docker: and a kubernetes: "
                "connection (fix: write deploy: {target: docker} or {target: kubernetes})"
            )
        target = have[0]
    services = list(deploy.services)
    if target == "docker":
        if docker_services is None:
            raise ValueError(
                "deploy.target is docker but the environment has no docker: connection (fix: "
                "add docker: {services: [{name: web, container: web-1}]})"
            )
        unknown = [s.name for s in services if s.name not in docker_services]
        if unknown:
            raise ValueError(
                f"deploy.services {unknown} are not docker.services of this environment (fix: "
                f"choose among {docker_services or 'none: add docker.services first'})"
            )
        if any(s.deployment or s.container for s in services):
            raise ValueError(
                "deploy.services of a docker target are docker.services names; deployment "
                "and container are Kubernetes fields (fix: write services: [web, worker])"
            )
        services = services or [DeployService(name=n) for n in docker_services]
    elif not kubernetes:
        raise ValueError(
            "deploy.target is kubernetes but the environment has no kubernetes: connection "
            "(fix: add kubernetes: {namespace: ..., api_url: ...} or kubeconfig)"
        )
    else:
        bad = [s.workload for s in services if not K8S_NAME.match(s.workload)]
        if bad:
            raise ValueError(
                f"deploy.services: {bad} are not Deployment names (fix: {K8S_NAME_FIX})"
            )
        deployment, container = k8s_default
        if not services and deployment:
            services = [DeployService(name=deployment, container=container)]
    if not services:
        raise ValueError(
            "deploy has no services to deploy (fix: list deploy.services, or name "
            "kubernetes.deployment / docker.services)"
        )
    return deploy.model_copy(update={"target": target, "services": services})
