"""What runbooks read from their environment the same way: the backup store, how to reach a
PostgreSQL database, the application a restore stops."""

from __future__ import annotations

from typing import Any, Protocol

from opsflow.errors import InputError
from opsflow.inventory import BackupStore, Database, Environment


def require_store(env_name: str, env: Environment) -> BackupStore:
    if env.backup_store is None:
        raise InputError(
            f"environments.{env_name}.backup_store",
            "is missing: there is nowhere to put backups",
            'add backup_store: {url: "file:///var/backups/opsflow"} or an s3:// URL',
        )
    return env.backup_store


class InEnvironment(Protocol):
    """What knows its environment: a ``RunbookRun``, or a plan being built before one."""

    @property
    def env_name(self) -> str: ...

    @property
    def env(self) -> Environment: ...


def pg_reach(run: InEnvironment, index: int, db: Database) -> dict[str, Any]:
    """The arguments every PostgreSQL task takes to reach database ``index`` of the run's
    environment: the database, its inventory path, and the environment's Docker engine and
    Kubernetes cluster (for ``docker_exec`` / ``kubectl_exec``)."""
    return {
        "db": db,
        "field": f"environments.{run.env_name}.databases[{index}]",
        "docker": run.env.docker,
        "kubernetes": run.env.kubernetes,
    }


def scales(env: Environment) -> bool:
    """The environment has an application a restore stops: a deployment or Docker services."""
    k8s = env.kubernetes is not None and bool(env.kubernetes.deployment)
    return k8s or (env.docker is not None and bool(env.docker.services))


def app_target(env: Environment) -> str:
    """The application a restore stops, as shown in plans and reports."""
    if env.kubernetes is not None and env.kubernetes.deployment:
        return f"deployment {env.kubernetes.namespace}/{env.kubernetes.deployment}"
    if env.docker is not None:
        return "containers " + ", ".join(s.container for s in env.docker.services)
    return "-"
