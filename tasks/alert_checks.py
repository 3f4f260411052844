"""Diagnostics of the alert runbooks, each a read-only task returning a ``Finding``.

* ``find_memory_hog``: the container (Docker: ``docker stats`` of the service's container, or
  of every ``docker.services`` container when no service is named) or pod (Kubernetes:
  PodMetrics against the containers' limits) using the most memory, and whether it is at or
  above ``thresholds.memory_pct`` of its limit (reuses the health checks' readings);
* ``memory_snapshot``: that container's memory figures and its top processes by RSS (Docker:
  ``docker top … aux``, no exec needed; Kubernetes: ``ps aux`` by exec in the pod when the image
  has ``ps``, else said so);
* ``service_diagnostics``: state, exit code, OOM kill, restart count and image of the service's
  container or pods, its last log lines (errors counted, messages redacted), Kubernetes events;
* ``error_analysis``: the top error messages of the application's logs and, per Prometheus
  metrics endpoint, the request series with 5xx answers (per endpoint and status);
* ``slowest_endpoints``: the 95th percentile per series of each request-duration histogram.

Texts from the systems (log lines, command lines, event messages) are redacted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import closing
from typing import Any

import kubernetes.client

from connectors.docker import docker_client, docker_errors
from connectors.kubernetes import REQUEST_TIMEOUT, kube_api, kube_errors
from connectors.transports.pod_exec import PodExec
from opsflow.alert_runbooks import Finding
from opsflow.errors import OpsflowError
from opsflow.inventory import DockerTarget, Environment, KubernetesTarget
from opsflow.redaction import redact
from opsflow.units import format_bytes
from tasks.app_logs import read_app_log_tails
from tasks.docker.checks import check_containers, tail_container_logs
from tasks.http.metrics import histogram_quantile, request_counter, request_histograms
from tasks.http.metrics import scrape_metrics as scrape
from tasks.kubernetes.checks import check_pod_resources, check_pods, tail_pod_logs
from tasks.policy import probe_task
from tasks.remediation import ServiceTarget, resolve_service

TOP_PROCESSES = 5
LAST_LINES = 20
EVENTS = 20


def _timed(started: float, finding: Finding) -> Finding:
    finding.seconds = round(time.monotonic() - started, 3)
    return finding


def _docker_only(target: DockerTarget, names: list[str]) -> DockerTarget:
    return target.model_copy(update={"services": [s for s in target.services if s.name in names]})


def _k8s_of(where: ServiceTarget) -> KubernetesTarget:
    assert where.kubernetes is not None
    return where.kubernetes.model_copy(update={"deployment": where.deployment})


# --- memory -----------------------------------------------------------------------------------


def memory_candidates(env: Environment, service: str | None) -> list[dict[str, Any]]:
    """Every container/pod container looked at, most memory (percent of limit) first."""
    rows: list[dict[str, Any]] = []
    where = resolve_service(env, service) if service else None
    if env.docker is not None and (where is None or where.kind == "docker"):
        names = [where.service] if where else [s.name for s in env.docker.services]
        for result in check_containers.fn(_docker_only(env.docker, names), env.thresholds):
            d = result.details
            rows.append(
                {
                    "service": result.target,
                    "name": d.get("container", result.target),
                    "memory_pct": d.get("memory_pct"),
                    "memory_bytes": d.get("memory_bytes"),
                    "memory_limit_bytes": d.get("memory_limit_bytes"),
                }
            )
    if env.kubernetes is not None and (where is None or where.kind == "kubernetes"):
        target = _k8s_of(where) if where else env.kubernetes
        svc = where.service if where else (env.kubernetes.deployment or "")
        for result in check_pod_resources.fn(target, env.thresholds):
            for cname, info in (result.details.get("containers") or {}).items():
                rows.append(
                    {
                        "service": svc,
                        "name": result.target,
                        "container": cname,
                        "memory_pct": info.get("memory_pct"),
                        "memory_bytes": info.get("memory_bytes"),
                        "memory_limit_bytes": info.get("memory_limit_bytes"),
                    }
                )
    rows.sort(key=lambda r: -(r["memory_pct"] if r["memory_pct"] is not None else -1.0))
    return rows


def _figure(row: dict[str, Any]) -> str:
    if row.get("memory_pct") is None:
        return f"{row['name']}: memory not measurable (not running, or no limit)"
    return (
        f"{row['name']}: {format_bytes(int(row['memory_bytes'] or 0))} of its "
        f"{format_bytes(int(row['memory_limit_bytes'] or 0))} limit ({row['memory_pct']:.0f}%)"
    )


@probe_task("find_memory_hog", timeout_seconds=120)
def find_memory_hog(env: Environment, service: str | None) -> Finding:
    """The container or pod using the most of its memory limit, and whether it is over
    ``thresholds.memory_pct`` (``details.over``: its row, or None)."""
    started = time.monotonic()
    threshold = env.thresholds.memory_pct
    rows = memory_candidates(env, service)
    top = rows[0] if rows and rows[0]["memory_pct"] is not None else None
    over = top if top is not None and top["memory_pct"] >= threshold else None
    if over is not None:
        summary = f"{_figure(over)}, at or above the {threshold:g}% threshold"
    elif top is not None:
        summary = f"none over the {threshold:g}% threshold; highest {_figure(top)}"
    else:
        summary = "no container or pod memory could be measured"
    return _timed(
        started,
        Finding(
            step="find_memory_hog",
            target=service or "all services",
            summary=summary,
            details={"over": over, "threshold_pct": threshold, "table": rows},
        ),
    )


def _top(titles: list[str], processes: list[list[str]]) -> list[dict[str, Any]]:
    """``ps aux``-style rows, largest RSS first, command lines redacted."""
    if "RSS" not in titles:
        return []
    rss = titles.index("RSS")
    rows = []
    for proc in processes:
        if len(proc) < len(titles):
            continue
        row: dict[str, Any] = dict(zip(titles, proc[: len(titles) - 1], strict=False))
        row["COMMAND"] = redact(" ".join(proc[len(titles) - 1 :]))[:200]
        row["RSS"] = int(proc[rss]) if proc[rss].isdigit() else 0
        rows.append(row)
    rows.sort(key=lambda r: -int(r["RSS"]))
    return [
        {k: r.get(k, "") for k in ("PID", "USER", "%MEM", "RSS", "COMMAND")}
        for r in rows[:TOP_PROCESSES]
    ]


def _parse_ps(text: str) -> list[dict[str, Any]]:
    lines = [line.split() for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    return _top(lines[0], lines[1:])


def _docker_snapshot(target: DockerTarget, container: str) -> dict[str, Any]:
    with closing(docker_client(target)) as client:
        with docker_errors(f"stats of container {container}"):
            stats = client.api.stats(container, stream=False)
        mem = stats.get("memory_stats") or {}
        detail = mem.get("stats") or {}
        try:
            with docker_errors(f"processes of container {container}"):
                top = client.api.top(container, ps_args="aux")
            processes = _top(list(top.get("Titles") or []), list(top.get("Processes") or []))
            note = ""
        except OpsflowError as exc:
            processes, note = [], redact(str(exc))[:200]
    return {
        "usage_bytes": mem.get("usage"),
        "max_usage_bytes": mem.get("max_usage"),
        "limit_bytes": mem.get("limit"),
        "anon_bytes": detail.get("anon", detail.get("total_rss")),
        "file_bytes": detail.get("file", detail.get("total_cache")),
        "shmem_bytes": detail.get("shmem"),
        "processes": processes,
        "processes_note": note,
    }


def _pod_snapshot(target: KubernetesTarget, pod: str, container: str | None) -> dict[str, Any]:
    name = pod.split("/", 1)[-1]
    try:
        done = PodExec(target, name, container, pod=name).capture(["ps", "aux"], 20.0)
        if done.code != 0:
            return {"processes": [], "processes_note": f"ps exit {done.code}: {done.stderr_tail()}"}
        text = done.stdout.decode("utf-8", errors="replace")
        return {"processes": _parse_ps(text), "processes_note": ""}
    except OpsflowError as exc:
        return {"processes": [], "processes_note": f"exec not possible: {redact(str(exc))[:200]}"}


@probe_task("memory_snapshot", timeout_seconds=120)
def memory_snapshot(env: Environment, service: str, row: dict[str, Any]) -> Finding:
    """Memory figures and top processes of the container/pod ``row`` (``find_memory_hog``'s)."""
    started = time.monotonic()
    where = resolve_service(env, service)
    if where.kind == "docker":
        assert where.docker is not None
        details = _docker_snapshot(where.docker, str(row["name"]))
    else:
        details = _pod_snapshot(_k8s_of(where), str(row["name"]), row.get("container"))
        details |= {k: row.get(k) for k in ("memory_bytes", "memory_limit_bytes", "memory_pct")}
    procs = details["processes"]
    biggest = (
        f"; largest process {procs[0]['COMMAND']!r} RSS {format_bytes(int(procs[0]['RSS']) * 1024)}"
        if procs
        else f"; no process list ({details['processes_note'] or 'none'})"
    )
    details["table"] = procs
    return _timed(
        started,
        Finding(
            step="memory_snapshot",
            target=str(row["name"]),
            summary=_figure(row) + biggest,
            details=details,
        ),
    )


# --- service down -----------------------------------------------------------------------------


def _kube_events(target: KubernetesTarget) -> list[dict[str, Any]]:
    with kube_api(target) as api:
        core = kubernetes.client.CoreV1Api(api)
        with kube_errors(api, f"events in namespace {target.namespace}"):
            listing: Any = core.list_namespaced_event(
                target.namespace, _request_timeout=REQUEST_TIMEOUT
            )
    prefix = f"{target.deployment}-"
    rows = [
        {
            "object": f"{e.involved_object.kind}/{e.involved_object.name}",
            "type": e.type or "",
            "reason": e.reason or "",
            "count": e.count or 1,
            "message": redact(e.message or "")[:200],
        }
        for e in listing.items
        if e.involved_object is not None
        and str(e.involved_object.name or "").startswith((prefix, str(target.deployment)))
    ]
    return rows[-EVENTS:]


@probe_task("service_diagnostics", timeout_seconds=180)
def service_diagnostics(env: Environment, service: str, lines: int) -> Finding:
    """State, exit code, restarts, image, last log lines (and events) of the service."""
    started = time.monotonic()
    where = resolve_service(env, service)
    pattern = env.logs.pattern
    details: dict[str, Any] = {}
    if where.kind == "docker":
        assert where.docker is not None and where.docker_service is not None
        only = _docker_only(where.docker, [service])
        state = check_containers.fn(only, env.thresholds)[0]
        tails = tail_container_logs(only, lines, pattern)
        details |= {k: state.details.get(k) for k in ("state", "exit_code", "oom_killed")}
        details |= {
            "restart_count": state.details.get("restart_count"),
            "image": state.details.get("image"),
        }
        status_line = state.summary
    else:
        target = _k8s_of(where)
        results = check_pods.fn(target, env.thresholds)
        tails = tail_pod_logs(target, lines, pattern)
        pods = [r for r in results if r.check == "pod"]
        details["pods"] = [{"pod": r.target, "status": r.status.value, **r.details} for r in pods]
        details["restart_count"] = sum(int(r.details.get("restarts") or 0) for r in pods)
        try:
            details["events"] = _kube_events(target)
        except OpsflowError as exc:
            details["events_error"] = redact(str(exc))[:200]
        status_line = "; ".join(r.summary for r in results)[:500]
    details["logs"] = [t.model_dump(mode="json") for t in tails]
    errors = sum(t.errors for t in tails)
    summary = f"{status_line}; {errors} error line(s) in the last {lines} log line(s)"
    top = [m for t in tails for m in t.top][:1]
    if top:
        summary += f", most {top[0][1]}x {top[0][0]!r}"
    return _timed(
        started,
        Finding(
            step="service_diagnostics",
            target=where.label,
            summary=redact(summary),
            details=details,
        ),
    )


# --- metrics ----------------------------------------------------------------------------------


def _each_source(env: Environment, read: Callable[[list[Any]], list[dict[str, Any]]]) -> Finding:
    rows: list[dict[str, Any]] = []
    problems: list[str] = []
    for source in env.metrics:
        try:
            rows += [{"source": source.name, **r} for r in read(scrape(source))]
        except OpsflowError as exc:
            problems.append(f"{source.name}: {redact(str(exc))[:200]}")
    return Finding(
        step="",
        target=", ".join(s.name for s in env.metrics) or "no metrics",
        details={"table": rows, "problems": problems},
    )


def _error_series(families: list[Any]) -> list[dict[str, Any]]:
    counter = request_counter(families)
    if counter is None:
        return []
    errors = set(counter["errors"])
    rows = [
        {"series": key, "requests": int(value), "error": key in errors}
        for key, value in counter["series"].items()
    ]
    rows.sort(key=lambda r: (not r["error"], -r["requests"]))
    return rows[:10]


def _p95_series(families: list[Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for metric, buckets in request_histograms(families).items():
        for series, counts in buckets.items():
            q = histogram_quantile(0.95, [(float(le), c) for le, c in counts.items()])
            if q is not None:
                total = counts.get("+Inf", max(counts.values(), default=0))
                rows.append(
                    {
                        "metric": metric,
                        "series": series,
                        "p95_ms": round(q * 1000, 1),
                        "requests": int(total),
                    }
                )
    rows.sort(key=lambda r: -r["p95_ms"])
    return rows[:10]


@probe_task("error_analysis", timeout_seconds=180)
def error_analysis(env: Environment, lines: int) -> Finding:
    """Top error messages of the application logs; request series with 5xx from metrics."""
    started = time.monotonic()
    tails = read_app_log_tails(env, lines)
    metrics = _each_source(env, _error_series)
    messages: dict[str, int] = {}
    for tail in tails:
        for message, count in tail.top:
            messages[message] = messages.get(message, 0) + count
    top = sorted(messages.items(), key=lambda kv: -kv[1])[:5]
    failing = [r for r in metrics.details["table"] if r["error"]]
    parts = [f"{sum(t.errors for t in tails)} error line(s) in {len(tails)} log tail(s)"]
    if top:
        parts.append(f"most {top[0][1]}x {top[0][0]!r}")
    if failing:
        worst = max(failing, key=lambda r: r["requests"])
        parts.append(f"{len(failing)} 5xx series, most {worst['requests']} at {worst['series']}")
    elif env.metrics:
        parts.append("no 5xx series in the metrics")
    return _timed(
        started,
        Finding(
            step="error_analysis",
            target=metrics.target,
            summary=redact("; ".join(parts)),
            details={
                "top_errors": top,
                "logs": [t.model_dump(mode="json") for t in tails],
                "table": metrics.details["table"],
                "problems": metrics.details["problems"],
            },
        ),
    )


@probe_task("slowest_endpoints", timeout_seconds=120)
def slowest_endpoints(env: Environment) -> Finding:
    """The request series with the highest 95th percentile, from each metrics endpoint."""
    started = time.monotonic()
    found = _each_source(env, _p95_series)
    rows = sorted(found.details["table"], key=lambda r: -r["p95_ms"])
    if rows:
        summary = f"slowest p95 {rows[0]['p95_ms']:.0f} ms at {rows[0]['series']}"
    else:
        summary = "no request-duration histogram found" + (
            "" if env.metrics else " (no metrics endpoints in the inventory)"
        )
    if found.details["problems"]:
        summary += "; " + "; ".join(found.details["problems"])
    return _timed(
        started,
        Finding(
            step="slowest_endpoints",
            target=found.target,
            status="degraded" if found.details["problems"] else "complete",
            summary=redact(summary),
            details={"table": rows, "problems": found.details["problems"]},
        ),
    )
