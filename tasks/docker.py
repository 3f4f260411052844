"""Docker: container health, stats and logs, commands inside containers, config export.

Built on the docker SDK against ``target.host`` or ``DOCKER_HOST``. Every API call carries a
socket timeout; an unreachable daemon, a 5xx or a 409 is a ``TransientError``, a missing
container or a refused request a ``PermanentError``.

``exec_capture``/``exec_stream``/``exec_feed`` run a command in a container (the way the seed
manuals reach ``psql``/``pg_dump`` with ``docker exec``) and are plain functions, used by
other tasks: capture for small outputs, stream to pipe large stdout (``pg_dump``) without
buffering, feed to stream stdin into a command (``psql`` restore).
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import docker
import docker.errors
import requests.exceptions
from prefect import task
from prefect.cache_policies import NO_CACHE

from opsflow.durations import format_duration
from opsflow.errors import TRANSIENT_RETRIES, PermanentError, TransientError
from opsflow.inventory import DockerService, DockerTarget, Thresholds
from opsflow.redaction import redact
from opsflow.results import CheckResult, Status, grade, worst
from tasks.logs import grade_errors, summarize_errors

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
API_TIMEOUT = 10.0
STATS_TIMEOUT = 15.0
_RETRY: dict[str, Any] = {
    **TRANSIENT_RETRIES,
}
_STDOUT, _STDERR = 1, 2
_ERR_TAIL = 4096


def docker_host(target: DockerTarget) -> str:
    """The daemon URL the target points at: ``docker.host``, else DOCKER_HOST, else the default."""
    return target.host or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def docker_client(target: DockerTarget, timeout: float = API_TIMEOUT) -> docker.DockerClient:
    """A connected client; an unreachable daemon is a TransientError naming the host."""
    host = docker_host(target)
    try:
        client = docker.DockerClient(base_url=host, timeout=timeout)
        client.ping()
    except docker.errors.DockerException as exc:
        raise TransientError(
            redact(
                f"Docker daemon at {host} is unreachable ({exc}); check that it runs and that "
                "docker.host in the inventory (or DOCKER_HOST) points at it"
            )
        ) from None
    except requests.exceptions.RequestException as exc:
        raise TransientError(
            redact(f"Docker daemon at {host} did not answer ({type(exc).__name__}: {exc})")
        ) from None
    return client


@contextmanager
def docker_errors(what: str) -> Iterator[None]:
    """Translate docker SDK / HTTP failures into Transient/PermanentError about ``what``."""
    try:
        yield
    except docker.errors.NotFound as exc:
        raise PermanentError(redact(f"{what}: not found ({exc.explanation or exc})")) from None
    except docker.errors.APIError as exc:
        code = exc.status_code or 0
        message = redact(f"{what}: Docker API error {code}: {exc.explanation or exc}")
        if code >= 500 or code in (408, 409, 429):
            raise TransientError(message) from None
        raise PermanentError(message) from None
    except (requests.exceptions.RequestException, OSError) as exc:
        raise TransientError(redact(f"{what}: {type(exc).__name__}: {exc}")) from None


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
        return CheckResult(
            check="container",
            target=service.name,
            status=status,
            summary=summary,
            details=details,
            duration_ms=int((time.monotonic() - started) * 1000),
        )

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

    if restarts > thresholds.restarts:
        statuses.append(Status.DEGRADED)
        notes.append(f"{restarts} restarts (threshold {thresholds.restarts})")

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


@task(name="check_containers", timeout_seconds=120, **_RETRY)
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


@task(name="scan_container_logs", timeout_seconds=120, **_RETRY)
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
                CheckResult(
                    check="container_logs",
                    target=service.name,
                    status=status,
                    summary=redact(
                        f"{name}: {summary.count} line(s) matching {pattern!r} in the last "
                        f"{format_duration(window)}" + (f"; top: {top}" if top else "")
                    ),
                    details={
                        "container": name,
                        "count": summary.count,
                        "top": [[redact(m), c] for m, c in summary.top],
                        "since": since.isoformat(),
                        "pattern": pattern,
                    },
                    duration_ms=int((time.monotonic() - started) * 1000),
                )
            )
    finally:
        client.close()
    return results


# --- exec --------------------------------------------------------------------------------------


class _ExecSession:
    """One ``exec`` over a hijacked connection: raw socket (stdin, timeouts) + buffered reader.

    Reading the hijacked socket ourselves (instead of docker-py's stream helpers, which turn
    the socket timeout off) keeps every read bounded by a deadline.
    """

    def __init__(
        self, client: docker.DockerClient, container: str, argv: list[str], stdin: bool
    ) -> None:
        self.client = client
        self.what = f"exec {argv[0]!r} in container {container}"
        with docker_errors(self.what):
            self.exec_id = client.api.exec_create(container, argv, stdin=stdin)["Id"]
            sock = client.api.exec_start(self.exec_id, socket=True)
        self.raw: socket.socket = getattr(sock, "_sock", sock)
        # docker-py keeps the HTTP response on the socket; its buffered reader may already hold
        # the first output bytes, so read through it rather than from the raw socket.
        response = getattr(sock, "_response", None)
        self.reader: Any = response.raw._fp.fp if response is not None else sock

    def read_frames(self, deadline: Callable[[], float]) -> Iterator[tuple[int, bytes]]:
        """Yield (stream, data) frames of Docker's multiplexed stream until EOF.

        ``deadline()`` is asked before each frame: a fixed instant bounds the whole run, a
        moving one (now + idle) bounds the silence between frames.
        """
        while True:
            until = deadline()
            header = self._read_exactly(8, until)
            if header is None:
                return
            size = int.from_bytes(header[4:8], "big")
            data = self._read_exactly(size, until) if size else b""
            if data is None:
                return
            yield header[0], data

    def _read_exactly(self, size: int, deadline: float) -> bytes | None:
        data = b""
        while len(data) < size:
            self.raw.settimeout(max(deadline - time.monotonic(), 0.001))
            try:
                chunk = self.reader.read1(size - len(data))
            except TimeoutError:
                raise TransientError(f"{self.what}: timed out waiting for output") from None
            if not chunk:
                return None
            data += chunk
        return data

    def exit_code(self) -> int | None:
        """The exit code (None if the process still runs a moment after its output ended)."""
        with docker_errors(self.what):
            for _ in range(50):
                info = self.client.api.exec_inspect(self.exec_id)
                if not info.get("Running"):
                    return int(info.get("ExitCode") or 0)
                time.sleep(0.05)
        return None

    def close(self) -> None:
        try:
            self.raw.close()
        except OSError:
            return


def exec_feed(
    client: docker.DockerClient,
    container: str,
    argv: list[str],
    chunks: Iterable[bytes],
    timeout: float,
    keep: int = _ERR_TAIL,
) -> tuple[int, bytes, bytes]:
    """Run ``argv`` with ``chunks`` streamed to its stdin; return (exit code, stdout, stderr).

    Constant memory: stdin is streamed as it comes and only the last ``keep`` bytes of stdout
    and stderr are kept (``keep=0`` keeps everything — that is exec_capture).
    ``timeout`` bounds the whole run; exceeding it raises TransientError.
    """
    end = time.monotonic() + timeout
    session = _ExecSession(client, container, argv, stdin=True)
    out, err = bytearray(), bytearray()
    failure: list[BaseException] = []

    def write() -> None:
        try:
            for chunk in chunks:
                if chunk:
                    session.raw.sendall(chunk)
            session.raw.shutdown(socket.SHUT_WR)
        except OSError as exc:  # e.g. the command exited before reading all of its input
            failure.append(exc)

    writer = threading.Thread(target=write, name=f"exec-stdin-{container}", daemon=True)
    writer.start()
    try:
        for stream, data in session.read_frames(lambda: end):
            buffer = out if stream == _STDOUT else err
            buffer += data
            if keep and len(buffer) > keep:
                del buffer[: len(buffer) - keep]
        writer.join(max(end - time.monotonic(), 0.001))
        code = session.exit_code()
    finally:
        session.close()
    if code is None:
        raise TransientError(f"{session.what}: output ended but the process still runs")
    if failure and code == 0:
        raise TransientError(f"{session.what}: writing stdin failed: {failure[0]}")
    return code, bytes(out), bytes(err)


def exec_capture(
    client: docker.DockerClient,
    container: str,
    argv: list[str],
    timeout: float,
    stdin: bytes | None = None,
) -> tuple[int, bytes, bytes]:
    """Run ``argv`` in ``container``; return (exit code, stdout, stderr), all in memory."""
    return exec_feed(client, container, argv, [stdin] if stdin else [], timeout, keep=0)


def exec_stream(
    client: docker.DockerClient, container: str, argv: list[str], idle_timeout: float = 300
) -> Iterator[bytes]:
    """Yield the stdout chunks of ``argv`` as they come; raise if it exits non-zero.

    Nothing is buffered but the last 4 KiB of stderr (for the error message). More than
    ``idle_timeout`` seconds without output raises TransientError. A non-zero exit raises
    PermanentError with the redacted stderr tail — after the stdout already yielded, so a
    consumer must treat what it got as incomplete when this raises.
    """
    session = _ExecSession(client, container, argv, stdin=False)
    err = bytearray()
    try:
        for stream, data in session.read_frames(lambda: time.monotonic() + idle_timeout):
            if stream == _STDOUT:
                yield data
            else:
                err += data
                del err[: max(len(err) - _ERR_TAIL, 0)]
        code = session.exit_code()
    finally:
        session.close()
    if code != 0:
        tail = redact(err.decode("utf-8", errors="replace").strip())[-1000:]
        shown = "unknown (still running)" if code is None else str(code)
        raise PermanentError(f"{session.what} exited with code {shown}: {tail or '(no stderr)'}")


# --- configuration export -------------------------------------------------------------------

_CONFIG_FIELDS = ("Image", "Env", "Labels", "Healthcheck", "Cmd", "Entrypoint", "User")
_HOST_CONFIG_FIELDS = ("RestartPolicy", "PortBindings", "Binds", "NetworkMode", "Privileged")


def container_config(attrs: dict[str, Any]) -> dict[str, Any]:
    """What it takes to recreate a container, from its ``docker inspect``.

    Image, env, command, labels, healthcheck, mounts, ports, restart policy and networks.
    ``Env`` often holds secrets: the result is only ever stored encrypted.
    """
    config = attrs.get("Config") or {}
    host = attrs.get("HostConfig") or {}
    networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
    return {
        "id": attrs.get("Id"),
        "name": str(attrs.get("Name") or "").lstrip("/"),
        "image_id": attrs.get("Image"),
        "config": {field: config.get(field) for field in (*_CONFIG_FIELDS, "WorkingDir")},
        "exposed_ports": sorted(config.get("ExposedPorts") or {}),
        "host_config": {field: host.get(field) for field in _HOST_CONFIG_FIELDS},
        "mounts": [
            {
                key: mount.get(key)
                for key in ("Type", "Name", "Source", "Destination", "Mode", "RW")
                if key in mount
            }
            for mount in attrs.get("Mounts") or []
        ],
        "networks": sorted(networks),
    }


@task(
    name="export_docker_config",
    timeout_seconds=120,
    cache_policy=NO_CACHE,
    persist_result=False,  # the result holds container env (secrets): never written to disk
    **_RETRY,
)
def export_docker_config(target: DockerTarget) -> dict[str, Any]:
    """Each inventory service's container configuration (see ``container_config``).

    Returns ``{"host": ..., "containers": {service: config}, "missing": [service, ...]}``;
    a service whose container does not exist is listed in ``missing`` instead of failing the
    export. The values include secrets (env): pass the result only to ``store_config_export``.
    """
    client = docker_client(target)
    containers: dict[str, Any] = {}
    missing: list[str] = []
    try:
        for service in target.services:
            try:
                with docker_errors(f"container {service.container}"):
                    attrs = client.api.inspect_container(service.container)
            except PermanentError as exc:
                if "not found" not in str(exc):
                    raise
                missing.append(service.name)
                continue
            containers[service.name] = container_config(attrs)
    finally:
        client.close()
    return {"host": redact(docker_host(target)), "containers": containers, "missing": missing}
