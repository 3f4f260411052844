"""Docker health: container state, health, restarts, stats and logs of the inventory's services."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import docker
import docker.errors

from connectors.docker import docker_client, docker_errors
from opsflow.durations import format_duration
from opsflow.errors import PermanentError
from opsflow.inventory import DockerService, DockerTarget, Thresholds
from opsflow.redaction import redact
from opsflow.results import CheckResult, Status, grade, note_restarts, worst
from tasks.logs import LogTail, grade_errors, summarize_errors, summarize_tail
from tasks.policy import probe_task

STATS_TIMEOUT = 15.0


def _memory_pct(stats: dict[str, Any]) -> tuple[float, int, int] | None:
    """(percent, usage without page cache, limit) like ``docker stats`` computes it."""
    mem = stats.get("memory_stats") or {}
    usage, limit = mem.get("usage"), mem.get("limit")
    if not usage or not limit:
        return None
    detail = mem.get("stats") or {}
    cache = detail.get("total_inactive_file", detail.get("inactive_file", 0))
    used = max(int(usage) - int(cache), 0)
    return used * 100.0 / int(limit), used, int(limit)


def _cpu_pct(stats: dict[str, Any], nano_cpus: int) -> float | None:
    """CPU use as a percent of what the container may use (its --cpus limit, else the host)."""
    cpu, pre = stats.get("cpu_stats") or {}, stats.get("precpu_stats") or {}
    try:
        cpu_delta = cpu["cpu_usage"]["total_usage"] - pre["cpu_usage"]["total_usage"]
        system_delta = cpu["system_cpu_usage"] - pre["system_cpu_usage"]
    except KeyError:
        return None
    if system_delta <= 0:
        return None
    online = cpu.get("online_cpus") or len(cpu["cpu_usage"].get("percpu_usage") or []) or 1
    used_cpus = cpu_delta / system_delta * online
    allowed = nano_cpus / 1e9 if nano_cpus else online
    return max(used_cpus, 0.0) * 100.0 / allowed


def _check_service(
    client: docker.DockerClient, service: DockerService, thresholds: Thresholds
) -> CheckResult:
    started = time.monotonic()
    name = service.container

    def result(status: Status, summary: str, details: dict[str, Any]) -> CheckResult:
        return CheckResult.timed(started, "container", service.name, status, summary, details)

    try:
        container = client.containers.get(name)
    except docker.errors.NotFound:
        return result(Status.CRITICAL, f"container {name} does not exist", {"container": name})
    with docker_errors(f"container {name}"):
        container.reload()
    attrs = container.attrs
    state = attrs.get("State") or {}
    restarts = int(attrs.get("RestartCount") or 0)
    details: dict[str, Any] = {
        "container": name,
        "state": state.get("Status"),
        "exit_code": state.get("ExitCode"),
        "oom_killed": bool(state.get("OOMKilled")),
        "restart_count": restarts,
        "image": (attrs.get("Config") or {}).get("Image"),
    }
    statuses: list[Status] = []
    notes: list[str] = []
    running = state.get("Status") == "running"
    if state.get("Status") == "restarting" or (running and state.get("Restarting")):
        statuses.append(Status.CRITICAL)
        notes.append(f"restarting (last exit code {state.get('ExitCode')})")
    elif state.get("Status") in ("exited", "dead"):
        statuses.append(Status.CRITICAL)
        oom = ", OOM-killed" if state.get("OOMKilled") else ""
        notes.append(f"{state.get('Status')} with exit code {state.get('ExitCode')}{oom}")
    elif not running:
        statuses.append(Status.DEGRADED)
        notes.append(str(state.get("Status")))
    else:
        notes.append("running")

    health = (state.get("Health") or {}).get("Status")
    if health:
        details["health"] = health
        if health == "unhealthy":
            log = (state.get("Health") or {}).get("Log") or []
            last = redact(str(log[-1].get("Output", "")).strip())[:200] if log else ""
            details["health_output"] = last
            statuses.append(Status.CRITICAL)
            notes.append(f"healthcheck unhealthy{': ' + last if last else ''}")
        elif health == "starting":
            statuses.append(Status.DEGRADED)
            notes.append("healthcheck starting")
        else:
            notes.append(f"healthcheck {health}")

    note_restarts(restarts, thresholds.restarts, statuses, notes)

    if service.image and details["image"] != service.image:
        statuses.append(Status.DEGRADED)
        notes.append(f"runs image {details['image']}, inventory expects {service.image}")

    if running and not state.get("Restarting"):
        with docker_errors(f"stats of container {name}"):
            stats = client.api.stats(container.id, stream=False)
        memory = _memory_pct(stats)
        if memory is not None:
            pct, used, limit = memory
            details.update(memory_pct=round(pct, 2), memory_bytes=used, memory_limit_bytes=limit)
            mem_status = grade(pct, thresholds.memory_pct)
            statuses.append(mem_status)
            if mem_status is not Status.HEALTHY:
                notes.append(f"memory {pct:.0f}% of limit (threshold {thresholds.memory_pct:g}%)")
        nano_cpus = int((attrs.get("HostConfig") or {}).get("NanoCpus") or 0)
        cpu = _cpu_pct(stats, nano_cpus)
        if cpu is not None:
            details["cpu_pct"] = round(cpu, 2)
            cpu_status = grade(cpu, thresholds.cpu_pct)
            statuses.append(cpu_status)
            if cpu_status is not Status.HEALTHY:
                notes.append(f"CPU {cpu:.0f}% (threshold {thresholds.cpu_pct:g}%)")

    status = worst(statuses)
    return result(status, f"{name}: " + ", ".join(notes), details)


@probe_task("check_containers", timeout_seconds=120)
def check_containers(target: DockerTarget, thresholds: Thresholds) -> list[CheckResult]:
    """One result per inventory service: state, exit code, health, restarts, memory and CPU."""
    client = docker_client(target, timeout=STATS_TIMEOUT)
    try:  # a stats sample takes ~1-2 s (the daemon waits for a second reading): run in parallel
        with ThreadPoolExecutor(max_workers=min(8, len(target.services) or 1)) as pool:
            return list(
                pool.map(
                    lambda service: _check_service(client, service, thresholds), target.services
                )
            )
    finally:
        client.close()


def _log_lines(chunks: Iterable[bytes]) -> Iterator[str]:
    """Split a stream of log chunks into text lines (without the newline)."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", errors="replace").rstrip("\r")
    if pending:
        yield pending.decode("utf-8", errors="replace").rstrip("\r")


@probe_task("scan_container_logs", timeout_seconds=120)
def scan_container_logs(
    target: DockerTarget, window: timedelta, pattern: str, thresholds: Thresholds
) -> list[CheckResult]:
    """Count lines matching ``pattern`` in each service's logs of the last ``window``."""
    client = docker_client(target)
    since = datetime.now(UTC) - window
    results: list[CheckResult] = []
    try:
        for service in target.services:
            started = time.monotonic()
            name = service.container
            try:
                with docker_errors(f"logs of container {name}"):
                    chunks = client.api.logs(
                        name, stream=True, follow=False, since=since, timestamps=True
                    )
                    summary = summarize_errors(_log_lines(chunks), pattern, since)
            except PermanentError as exc:
                results.append(CheckResult.failed("container_logs", service.name, str(exc)))
                continue
            status = grade_errors(summary, thresholds)
            top = "; ".join(f"{count}x {message}" for message, count in summary.top[:3])
            results.append(
                CheckResult.timed(
                    started,
                    "container_logs",
                    service.name,
                    status,
                    redact(
                        f"{name}: {summary.count} line(s) matching {pattern!r} in the last "
                        f"{format_duration(window)}" + (f"; top: {top}" if top else "")
                    ),
                    {
                        "container": name,
                        "count": summary.count,
                        "top": [[redact(m), c] for m, c in summary.top],
                        "since": since.isoformat(),
                        "pattern": pattern,
                    },
                )
            )
    finally:
        client.close()
    return results


def tail_container_logs(target: DockerTarget, lines: int, pattern: str) -> list[LogTail]:
    """The last ``lines`` lines (stdout and stderr) of each service's container, summarized
    (``summarize_tail``); a container that cannot be read gets its (redacted) ``error``. An
    unreachable daemon raises ``TransientError``."""
    client = docker_client(target)
    tails: list[LogTail] = []
    try:
        for service in target.services:
            name = service.container
            try:
                with docker_errors(f"logs of container {name}"):
                    chunks = client.api.logs(
                        name, stream=True, follow=False, tail=lines, timestamps=True
                    )
                    tails.append(summarize_tail("container", name, _log_lines(chunks), pattern))
            except PermanentError as exc:
                tails.append(LogTail(source="container", name=name, error=redact(str(exc))))
    finally:
        client.close()
    return tails
