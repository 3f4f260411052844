"""Transports: how a command reaches the machine next to a database or an app.

One protocol (``Transport``: ``capture``, ``stream_out``, ``feed_in``), three implementations
— ``LocalProcess`` (this worker), ``DockerExec`` (a container), ``PodExec`` (a pod) — and one
kill-on-timeout (``Watchdog``) they all use. ``transport_for`` picks one from an inventory
entry's ``via``. Adding a way in (SSH, say) is one more class with these five methods.
"""

from __future__ import annotations

from collections.abc import Mapping

from connectors.transports.base import (
    CommandFailed,
    CommandTimedOut,
    Completed,
    Transport,
    Watchdog,
    stderr_tail,
)
from connectors.transports.docker_exec import DockerExec
from connectors.transports.local import LocalProcess
from connectors.transports.pod_exec import PodExec
from opsflow.errors import PermanentError
from opsflow.inventory import (
    Access,
    DirectAccess,
    DockerExecAccess,
    DockerTarget,
    KubernetesTarget,
)

__all__ = [
    "CommandFailed",
    "CommandTimedOut",
    "Completed",
    "DockerExec",
    "LocalProcess",
    "PodExec",
    "Transport",
    "Watchdog",
    "kubernetes_for",
    "stderr_tail",
    "transport_for",
    "via_name",
]


def via_name(via: Access) -> str:
    """``direct``, ``docker_exec`` or ``kubectl_exec``."""
    if isinstance(via, DirectAccess):
        return "direct"
    return "docker_exec" if isinstance(via, DockerExecAccess) else "kubectl_exec"


def kubernetes_for(name: str, kubernetes: KubernetesTarget | None, field: str) -> KubernetesTarget:
    """The environment's Kubernetes connection, required for ``via: kubectl_exec``."""
    if kubernetes is None:
        env_field = field.rsplit(".databases", 1)[0]
        raise PermanentError(
            f"{field}.via: {name} is reached through kubectl_exec but {env_field}.kubernetes "
            "is not set (fix: add kubernetes: {namespace: NS, api_url: ...} or a kubeconfig "
            "to the environment)"
        )
    return kubernetes


def transport_for(
    name: str,
    via: Access,
    field: str,
    docker: DockerTarget | None = None,
    kubernetes: KubernetesTarget | None = None,
    env: Mapping[str, str] | None = None,
) -> Transport:
    """The transport to the inventory entry ``name`` (at ``field``): a local process with
    ``env`` for ``via: direct``, ``docker exec`` in its container on the environment's
    ``docker`` engine, or exec in its pod/deployment through ``kubernetes``."""
    if isinstance(via, DirectAccess):
        return LocalProcess(env)
    if isinstance(via, DockerExecAccess):
        return DockerExec(docker or DockerTarget(), via.docker_exec)
    return PodExec(kubernetes_for(name, kubernetes, field), via.kubectl_exec, via.container)
