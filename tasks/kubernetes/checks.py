"""Kubernetes health: pod/deployment status, resource use against limits, and pod logs."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import kubernetes.client
import kubernetes.config
from kubernetes.utils.quantity import parse_quantity

from connectors.kubernetes import REQUEST_TIMEOUT, kube_api, kube_errors, list_pods, pod_selector
from opsflow.durations import format_duration
from opsflow.errors import (
    PermanentError,
)
from opsflow.inventory import KubernetesTarget, Thresholds
from opsflow.redaction import redact
from opsflow.results import CheckResult, Status, grade, note_restarts, worst
from tasks.logs import LogTail, grade_errors, summarize_errors, summarize_tail
from tasks.policy import probe_task

BAD_WAITING = {
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "CreateContainerConfigError",
    "CreateContainerError",
    "InvalidImageName",
    "RunContainerError",
}
METRICS = ("metrics.k8s.io", "v1beta1")


def pod_status(pod: Any, thresholds: Thresholds) -> tuple[Status, list[str], dict[str, Any]]:
    """Grade one pod: phase, readiness, waiting reasons, OOM kills and restarts."""
    status = pod.status
    statuses: list[Status] = []
    notes: list[str] = []
    containers = list(status.init_container_statuses or []) + list(status.container_statuses or [])
    restarts = sum(int(c.restart_count or 0) for c in containers)
    details: dict[str, Any] = {
        "phase": status.phase,
        "restarts": restarts,
        "node": pod.spec.node_name,
    }
    for container in containers:
        waiting = container.state.waiting if container.state else None
        if waiting is not None and waiting.reason in BAD_WAITING:
            statuses.append(Status.CRITICAL)
            notes.append(f"{container.name} {waiting.reason}")
            details.setdefault("reasons", []).append(waiting.reason)
        terminated = [
            s.terminated for s in (container.state, container.last_state) if s and s.terminated
        ]
        if any(t.reason == "OOMKilled" for t in terminated):
            statuses.append(Status.CRITICAL)
            notes.append(f"{container.name} OOMKilled")
            details.setdefault("reasons", []).append("OOMKilled")
    ready = any(c.type == "Ready" and c.status == "True" for c in status.conditions or [])
    details["ready"] = ready
    if status.phase == "Failed":
        statuses.append(Status.CRITICAL)
        notes.append(f"Failed: {status.reason or status.message or 'pod failed'}")
    elif status.phase in ("Pending", "Unknown"):
        statuses.append(Status.DEGRADED)
        unscheduled = next(
            (
                c
                for c in status.conditions or []
                if c.type == "PodScheduled" and c.status == "False"
            ),
            None,
        )
        why = f" ({unscheduled.reason}: {unscheduled.message})" if unscheduled else ""
        notes.append(f"{status.phase}{why}")
    elif status.phase == "Running" and not ready:
        statuses.append(Status.DEGRADED)
        notes.append("running but not ready")
    else:
        notes.append(f"{status.phase}{', ready' if ready else ''}")
    note_restarts(restarts, thresholds.restarts, statuses, notes)
    if pod.metadata.deletion_timestamp is not None:
        statuses.append(Status.DEGRADED)
        notes.append("terminating")
    return worst(statuses), notes, details


def _deployment_result(deployment: Any, started: float) -> CheckResult:
    spec, status, meta = deployment.spec, deployment.status, deployment.metadata
    desired = int(spec.replicas if spec.replicas is not None else 1)
    ready = int(status.ready_replicas or 0)
    updated = int(status.updated_replicas or 0)
    available = int(status.available_replicas or 0)
    details: dict[str, Any] = {
        "desired": desired,
        "ready": ready,
        "updated": updated,
        "available": available,
        "generation": meta.generation,
        "observed_generation": status.observed_generation,
        "images": [c.image for c in spec.template.spec.containers],
    }
    statuses: list[Status] = []
    notes = [f"{ready}/{desired} ready, {updated} updated"]
    if desired > 0 and ready == 0:
        statuses.append(Status.CRITICAL)
    elif ready < desired:
        statuses.append(Status.DEGRADED)
    progressing = next((c for c in status.conditions or [] if c.type == "Progressing"), None)
    if progressing is not None and progressing.reason == "ProgressDeadlineExceeded":
        statuses.append(Status.CRITICAL)
        notes.append("rollout exceeded its progress deadline")
    elif (status.observed_generation or 0) < (meta.generation or 0) or updated < desired:
        statuses.append(Status.DEGRADED)
        notes.append("rollout in progress")
    return CheckResult.timed(
        started,
        "deployment",
        f"{meta.namespace}/{meta.name}",
        worst(statuses),
        f"deployment {meta.name}: " + ", ".join(notes),
        details,
    )


@probe_task("check_pods", timeout_seconds=90)  # a hung API: 2 tries x 30 s read, + slack
def check_pods(target: KubernetesTarget, thresholds: Thresholds) -> list[CheckResult]:
    """One result per pod of the deployment (or label selector), plus the deployment's."""
    started = time.monotonic()
    with kube_api(target) as api:
        selector, deployment = pod_selector(api, target)
        pods = list_pods(api, target, selector)
    results: list[CheckResult] = []
    if deployment is not None:
        results.append(_deployment_result(deployment, started))
    for pod in pods:
        status, notes, details = pod_status(pod, thresholds)
        results.append(
            CheckResult.timed(
                started,
                "pod",
                f"{target.namespace}/{pod.metadata.name}",
                status,
                f"pod {pod.metadata.name}: " + ", ".join(notes),
                details,
            )
        )
    if not pods and deployment is None:
        results.append(
            CheckResult(
                check="pod",
                target=f"{target.namespace}/{selector}",
                status=Status.CRITICAL,
                summary=f"no pods match {selector!r} in namespace {target.namespace}",
            )
        )
    return results


def _limits(pod: Any) -> dict[str, tuple[Decimal | None, Decimal | None]]:
    """container name -> (cpu limit in cores, memory limit in bytes)."""
    limits: dict[str, tuple[Decimal | None, Decimal | None]] = {}
    for container in pod.spec.containers:
        values = (container.resources.limits if container.resources else None) or {}
        cpu, memory = values.get("cpu"), values.get("memory")
        limits[container.name] = (
            parse_quantity(cpu) if cpu else None,
            parse_quantity(memory) if memory else None,
        )
    return limits


@probe_task("check_pod_resources", timeout_seconds=90)
def check_pod_resources(target: KubernetesTarget, thresholds: Thresholds) -> list[CheckResult]:
    """Memory and CPU use (metrics.k8s.io PodMetrics) against each container's limits."""
    started = time.monotonic()
    with kube_api(target) as api:
        selector, _ = pod_selector(api, target)
        pods = {p.metadata.name: p for p in list_pods(api, target, selector)}
        custom = kubernetes.client.CustomObjectsApi(api)
        try:
            with kube_errors(api, f"pod metrics in namespace {target.namespace}"):
                listing: Any = custom.list_namespaced_custom_object(
                    *METRICS,
                    target.namespace,
                    "pods",
                    label_selector=selector,
                    _request_timeout=REQUEST_TIMEOUT,
                )
                metrics = listing["items"]
        except PermanentError as exc:
            if "not found (404)" not in str(exc):
                raise
            return [
                CheckResult.timed(
                    started,
                    "pod_resources",
                    target.namespace,
                    Status.DEGRADED,
                    "the metrics.k8s.io API is not served: metrics-server is missing "
                    "(fix: install metrics-server in the cluster to get pod CPU/memory use)",
                )
            ]
    results: list[CheckResult] = []
    for item in metrics:
        name = item["metadata"]["name"]
        pod = pods.get(name)
        if pod is None:
            continue
        limits = _limits(pod)
        statuses: list[Status] = []
        notes: list[str] = []
        containers: dict[str, dict[str, Any]] = {}
        for usage in item.get("containers", []):
            cname = usage["name"]
            if target.container and cname != target.container:
                continue
            cpu_used = parse_quantity(usage["usage"].get("cpu", "0"))
            mem_used = parse_quantity(usage["usage"].get("memory", "0"))
            cpu_limit, mem_limit = limits.get(cname, (None, None))
            info: dict[str, Any] = {"cpu_cores": float(cpu_used), "memory_bytes": int(mem_used)}
            for kind, used, limit, threshold in (
                ("memory", mem_used, mem_limit, thresholds.memory_pct),
                ("cpu", cpu_used, cpu_limit, thresholds.cpu_pct),
            ):
                if not limit:
                    notes.append(f"{cname} {kind}: no limit set")
                    continue
                pct = float(used * 100 / limit)
                info[f"{kind}_pct"] = round(pct, 1)
                if kind == "memory":  # the capacity report's limit (tasks/capacity.py)
                    info["memory_limit_bytes"] = int(limit)
                level = grade(pct, threshold)
                statuses.append(level)
                label = "memory" if kind == "memory" else "CPU"
                notes.append(
                    f"{cname} {label} {pct:.0f}% of limit"
                    + (f" (threshold {threshold:g}%)" if level is not Status.HEALTHY else "")
                )
            containers[cname] = info
        results.append(
            CheckResult.timed(
                started,
                "pod_resources",
                f"{target.namespace}/{name}",
                worst(statuses),
                f"pod {name}: " + ", ".join(notes),
                {"containers": containers},
            )
        )
    return results


def _lines(response: Any) -> Iterator[str]:
    pending = b""
    for chunk in response.stream(65536):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", errors="replace")
    if pending:
        yield pending.decode("utf-8", errors="replace")


@probe_task("scan_pod_logs", timeout_seconds=120)
def scan_pod_logs(
    target: KubernetesTarget, window: timedelta, pattern: str, thresholds: Thresholds
) -> list[CheckResult]:
    """Count lines matching ``pattern`` in each started pod's logs of the last ``window``."""
    since = datetime.now(UTC) - window
    results: list[CheckResult] = []
    with kube_api(target) as api:
        selector, _ = pod_selector(api, target)
        core = kubernetes.client.CoreV1Api(api)
        for pod in list_pods(api, target, selector):
            name = pod.metadata.name
            if pod.status.phase == "Pending":
                continue  # nothing has run yet: no logs to read
            started = time.monotonic()
            kwargs: dict[str, Any] = {"container": target.container} if target.container else {}
            try:
                with kube_errors(api, f"logs of pod {target.namespace}/{name}"):
                    response: Any = core.read_namespaced_pod_log(
                        name,
                        target.namespace,
                        since_seconds=max(math.ceil(window.total_seconds()), 1),
                        timestamps=True,
                        _preload_content=False,
                        _request_timeout=REQUEST_TIMEOUT,
                        **kwargs,
                    )
                    try:
                        summary = summarize_errors(_lines(response), pattern, since)
                    finally:
                        response.release_conn()
            except PermanentError as exc:
                results.append(
                    CheckResult.failed("pod_logs", f"{target.namespace}/{name}", str(exc))
                )
                continue
            top = "; ".join(f"{count}x {message}" for message, count in summary.top[:3])
            results.append(
                CheckResult.timed(
                    started,
                    "pod_logs",
                    f"{target.namespace}/{name}",
                    grade_errors(summary, thresholds),
                    redact(
                        f"pod {name}: {summary.count} line(s) matching {pattern!r} in the last "
                        f"{format_duration(window)}" + (f"; top: {top}" if top else "")
                    ),
                    {
                        "count": summary.count,
                        "lines": summary.lines,
                        "top": [[m, c] for m, c in summary.top],
                        "pattern": pattern,
                        "since": since.isoformat(),
                    },
                )
            )
    return results


def tail_pod_logs(target: KubernetesTarget, lines: int, pattern: str) -> list[LogTail]:
    """The last ``lines`` lines of each started pod of the target (its ``container`` if set),
    summarized (``summarize_tail``); a pod whose log cannot be read gets its (redacted)
    ``error``; Pending pods have no log and are left out."""
    tails: list[LogTail] = []
    with kube_api(target) as api:
        selector, _ = pod_selector(api, target)
        core = kubernetes.client.CoreV1Api(api)
        for pod in list_pods(api, target, selector):
            if pod.status.phase == "Pending":
                continue
            name = f"{target.namespace}/{pod.metadata.name}"
            kwargs: dict[str, Any] = {"container": target.container} if target.container else {}
            try:
                with kube_errors(api, f"logs of pod {name}"):
                    response: Any = core.read_namespaced_pod_log(
                        pod.metadata.name,
                        target.namespace,
                        tail_lines=lines,
                        timestamps=True,
                        _preload_content=False,
                        _request_timeout=REQUEST_TIMEOUT,
                        **kwargs,
                    )
                    try:
                        tails.append(summarize_tail("pod", name, _lines(response), pattern))
                    finally:
                        response.release_conn()
            except PermanentError as exc:
                tails.append(LogTail(source="pod", name=name, error=redact(str(exc))))
    return tails
