"""Kubernetes configuration export: the namespace's ConfigMaps and Secrets, ready to re-apply."""

from __future__ import annotations

from typing import Any

import kubernetes.client
import kubernetes.config

from connectors.kubernetes import REQUEST_TIMEOUT, kube_api, kube_errors
from opsflow.inventory import KubernetesTarget
from tasks.policy import api_task

_SERVER_FIELDS = ("uid", "resourceVersion", "creationTimestamp", "managedFields", "selfLink")


def exportable(api: kubernetes.client.ApiClient, obj: Any) -> dict[str, Any]:
    """An object as JSON ready to re-apply: server-managed metadata removed."""
    data: dict[str, Any] = api.sanitize_for_serialization(obj)
    meta = data.get("metadata") or {}
    for field in _SERVER_FIELDS:
        meta.pop(field, None)
    return data


# persist_result=False: the result holds Secrets, never written to disk
@api_task("export_kubernetes_config", timeout_seconds=120, persist_result=False)
def export_kubernetes_config(target: KubernetesTarget) -> dict[str, Any]:
    """All ConfigMaps and Secrets of the target's namespace, as re-appliable JSON objects.

    Returns ``{"namespace": ..., "configmaps": [...], "secrets": [...]}``. The values include
    Secret data: pass the result only to ``store_config_export`` (which encrypts it).
    """
    with kube_api(target) as api:
        core = kubernetes.client.CoreV1Api(api)
        with kube_errors(api, f"configmaps in namespace {target.namespace}"):
            configmaps = core.list_namespaced_config_map(
                target.namespace, _request_timeout=REQUEST_TIMEOUT
            ).items
        with kube_errors(api, f"secrets in namespace {target.namespace}"):
            secrets = core.list_namespaced_secret(
                target.namespace, _request_timeout=REQUEST_TIMEOUT
            ).items
        return {
            "namespace": target.namespace,
            "configmaps": [exportable(api, item) for item in configmaps],
            "secrets": [exportable(api, item) for item in secrets],
        }
