"""Kubernetes API access: a client for the target, error translation and finding pods (commands
in a pod run through ``connectors.transports.PodExec``).

Connection: ``kubernetes.api_url`` (+ ``token`` reference, ``verify_tls``) wins; else a
kubeconfig (``kubernetes.kubeconfig`` / ``context``, or ``KUBECONFIG`` / ``~/.kube/config``);
else the in-cluster service account. Every call carries a (connect, read) timeout; an
unreachable API, a 5xx, 409 or 429 is a ``TransientError``, a 404, 401 or 403 a
``PermanentError`` saying what to fix.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from opsflow.errors import (
    InputError,
    PermanentError,
    TransientError,
)
from opsflow.inventory import KubernetesTarget
from opsflow.redaction import redact, register_secret
from opsflow.secrets import resolve

REQUEST_TIMEOUT = (5, 30)  # connect, read (seconds)


def kube_api(target: KubernetesTarget) -> kubernetes.client.ApiClient:
    """An API client for the target (api_url > kubeconfig > in-cluster)."""
    config = kubernetes.client.Configuration()
    if target.api_url:
        config.host = target.api_url.rstrip("/")
        config.verify_ssl = target.verify_tls
        if target.token:
            token = resolve(target.token, field="kubernetes.token")
            config.api_key = {"authorization": token}
            config.api_key_prefix = {"authorization": "Bearer"}
    else:
        kubeconfig = target.kubeconfig or os.environ.get("KUBECONFIG")
        default = Path.home() / ".kube" / "config"
        if kubeconfig or target.context or default.exists():
            try:
                kubernetes.config.load_kube_config(
                    config_file=os.path.expanduser(kubeconfig) if kubeconfig else None,
                    context=target.context,
                    client_configuration=config,
                )
            except (ConfigException, OSError) as exc:
                raise InputError(
                    "kubernetes.kubeconfig",
                    f"cannot use kubeconfig {kubeconfig or default}"
                    f"{' context ' + target.context if target.context else ''}: {exc}",
                    "point kubernetes.kubeconfig at a readable kubeconfig file and "
                    "kubernetes.context at one of its contexts, or set kubernetes.api_url",
                ) from None
        else:
            try:
                kubernetes.config.load_incluster_config(client_configuration=config)
            except ConfigException:
                raise InputError(
                    "kubernetes",
                    "no api_url, no kubeconfig (KUBECONFIG or ~/.kube/config) and not running "
                    "inside a cluster",
                    "set kubernetes.api_url (+ token: secret:NAME) or kubernetes.kubeconfig",
                ) from None
    config.retries = 1
    for value in (*config.api_key.values(), config.password):  # a kubeconfig's token, password
        if value:
            register_secret(value.rsplit(" ", 1)[-1])  # "Bearer <token>": the token itself
    return kubernetes.client.ApiClient(config)


@contextmanager
def kube_errors(api: kubernetes.client.ApiClient, what: str) -> Iterator[None]:
    """Translate client failures into Transient/PermanentError about ``what``."""
    host = api.configuration.host
    try:
        yield
    except ApiException as exc:
        status = int(exc.status or 0)
        reason = redact(str(exc.reason or ""))
        if status == 404:
            raise PermanentError(f"{what}: not found (404) on {host}") from None
        if status in (401, 403):
            raise PermanentError(
                f"{what}: {status} {reason} from {host} (fix: check kubernetes.token / the "
                "kubeconfig credentials and the RBAC rights of that identity)"
            ) from None
        message = f"{what}: Kubernetes API answered {status} {reason}"
        if status >= 500 or status in (408, 409, 429):
            raise TransientError(message) from None
        raise PermanentError(message) from None
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        raise TransientError(
            redact(
                f"{what}: Kubernetes API at {host} is unreachable ({type(exc).__name__}); check "
                "kubernetes.api_url / the kubeconfig server and the network"
            )
        ) from None


def pod_selector(
    api: kubernetes.client.ApiClient, target: KubernetesTarget
) -> tuple[str, Any | None]:
    """(label selector, deployment or None) for the target's pods."""
    apps = kubernetes.client.AppsV1Api(api)
    if target.deployment:
        with kube_errors(api, f"deployment {target.namespace}/{target.deployment}"):
            deployment = apps.read_namespaced_deployment(
                target.deployment, target.namespace, _request_timeout=REQUEST_TIMEOUT
            )
        labels = deployment.spec.selector.match_labels or {}
        terms = [f"{k}={v}" for k, v in sorted(labels.items())]
        for expr in deployment.spec.selector.match_expressions or []:
            values = ",".join(expr.values or [])
            terms.append(
                {
                    "In": f"{expr.key} in ({values})",
                    "NotIn": f"{expr.key} notin ({values})",
                    "Exists": expr.key,
                    "DoesNotExist": f"!{expr.key}",
                }[expr.operator]
            )
        return target.label_selector or ",".join(terms), deployment
    if target.label_selector:
        return target.label_selector, None
    raise InputError(
        "kubernetes.deployment",
        "neither deployment nor label_selector is set, so the pods cannot be found",
        "add deployment: NAME (or label_selector: app=NAME) under kubernetes",
    )


def list_pods(api: kubernetes.client.ApiClient, target: KubernetesTarget, selector: str) -> Any:
    core = kubernetes.client.CoreV1Api(api)
    with kube_errors(api, f"pods {selector!r} in namespace {target.namespace}"):
        return core.list_namespaced_pod(
            target.namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT
        ).items


def pod_is_ready(pod: Any) -> bool:
    """The pod's Ready condition is True."""
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def find_pod(api: kubernetes.client.ApiClient, namespace: str, name: str) -> str:
    """``name`` if it is a pod, else a Ready pod of the deployment called ``name``."""
    core = kubernetes.client.CoreV1Api(api)
    try:
        with kube_errors(api, f"pod {namespace}/{name}"):
            core.read_namespaced_pod(name, namespace, _request_timeout=REQUEST_TIMEOUT)
        return name
    except PermanentError as exc:
        if "not found (404)" not in str(exc):
            raise
    target = KubernetesTarget(namespace=namespace, deployment=name)
    selector, _ = pod_selector(api, target)
    pods = list_pods(api, target, selector)
    for pod in pods:
        if pod_is_ready(pod):
            return str(pod.metadata.name)
    raise PermanentError(
        f"deployment {namespace}/{name} has no Ready pod to run the command in "
        f"({len(pods)} pod(s) found)"
    )
