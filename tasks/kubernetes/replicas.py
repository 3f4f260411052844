"""Restarting and scaling a Kubernetes Deployment, the kubectl way.

* restart = ``kubectl rollout restart``: a merge patch that sets the pod template's annotation
  ``kubectl.kubernetes.io/restartedAt`` to now (UTC, RFC 3339): a new template, so the
  Deployment replaces every pod; then ``tasks.kubernetes.rollout.wait_for_rollout``;
* ``restart_deployment``: the restart as a task of its own (secret rotation);
* scale = ``kubectl scale``: a merge patch of ``spec.replicas``, then the same rollout wait (it
  is done when the updated, ready and total replicas all equal the new count).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import kubernetes.client

from connectors.kubernetes import REQUEST_TIMEOUT, kube_api, kube_errors
from opsflow.inventory import KubernetesTarget
from tasks.kubernetes.rollout import (
    MERGE_PATCH,
    ROLLOUT_BACKSTOP_S,
    WAIT_TASK_TIMEOUT_S,
    RolloutStatus,
    deployment_json,
    wait_for_rollout,
)
from tasks.policy import api_task

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"


def _patch(target: KubernetesTarget, deployment: str, body: Any, what: str) -> dict[str, Any]:
    ns = target.namespace
    with kube_api(target) as api:
        apps = kubernetes.client.AppsV1Api(api)
        with kube_errors(api, f"{what} deployment {ns}/{deployment}"):
            response: Any = apps.patch_namespaced_deployment(
                deployment,
                ns,
                body,
                _content_type=MERGE_PATCH,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
            data: dict[str, Any] = json.loads(response.data)
    return data


def spec_replicas(target: KubernetesTarget, deployment: str) -> int:
    """The Deployment's desired replicas (``spec.replicas``; 1 when unset, as the API does)."""
    with kube_api(target) as api:
        spec = deployment_json(api, target.namespace, deployment).get("spec") or {}
    return int(spec["replicas"]) if spec.get("replicas") is not None else 1


def rollout_restart(
    target: KubernetesTarget, deployment: str, timeout_seconds: float, stamp: str | None = None
) -> tuple[str, RolloutStatus]:
    """Set the restartedAt annotation (now, to the second, or ``stamp``: two restarts within
    one second need a finer one); return it and the finished rollout."""
    stamp = stamp or datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    body = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}}
    _patch(target, deployment, body, "restart")
    return stamp, wait_for_rollout.fn(target, deployment, timeout_seconds=timeout_seconds)


def set_replicas(
    target: KubernetesTarget, deployment: str, replicas: int, timeout_seconds: float
) -> RolloutStatus:
    """Patch ``spec.replicas`` and wait until the Deployment has that many ready replicas."""
    _patch(target, deployment, {"spec": {"replicas": replicas}}, "scale")
    return wait_for_rollout.fn(target, deployment, timeout_seconds=timeout_seconds)


@api_task("restart_deployment", timeout_seconds=WAIT_TASK_TIMEOUT_S + 60)
def restart_deployment(
    target: KubernetesTarget, deployment: str, timeout_seconds: float = ROLLOUT_BACKSTOP_S
) -> RolloutStatus:
    """``kubectl rollout restart`` and the rollout followed to its end (its pods read a
    changed Secret again): the restartedAt stamp to the microsecond, so a restart right after
    another (a rotation, then its rollback) is a new template too."""
    stamp = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return rollout_restart(target, deployment, timeout_seconds, stamp)[1]
