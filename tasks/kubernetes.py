"""Kubernetes: pod/deployment health, resource use, logs, exec in a pod, ConfigMap/Secret export.

Built on the official ``kubernetes`` client. Connection: ``kubernetes.api_url`` (+ ``token``
reference, ``verify_tls``) wins; else a kubeconfig (``kubernetes.kubeconfig`` / ``context``,
or ``KUBECONFIG`` / ``~/.kube/config``); else the in-cluster service account. Every call carries
a (connect, read) timeout; an unreachable API, a 5xx, 409 or 429 is a ``TransientError``, a
404, 401 or 403 a ``PermanentError`` saying what to fix.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.stream import stream as kube_stream
from kubernetes.stream.ws_client import WSClient
from kubernetes.utils.quantity import parse_quantity
from prefect import task
from prefect.cache_policies import NO_CACHE
from websocket import (
    ABNF,
    WebSocketConnectionClosedException,
    WebSocketException,
    WebSocketTimeoutException,
)

from opsflow.durations import format_duration
from opsflow.errors import (
    TRANSIENT_RETRIES,
    InputError,
    PermanentError,
    TransientError,
)
from opsflow.inventory import KubernetesTarget, Thresholds
from opsflow.redaction import redact
from opsflow.results import CheckResult, Status, grade, worst
from opsflow.secrets import resolve
from tasks.logs import grade_errors, summarize_errors

REQUEST_TIMEOUT = (5, 30)  # connect, read (seconds)
_RETRY: dict[str, Any] = {
    **TRANSIENT_RETRIES,
}
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


def _selector(api: kubernetes.client.ApiClient, target: KubernetesTarget) -> tuple[str, Any | None]:
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


def _list_pods(api: kubernetes.client.ApiClient, target: KubernetesTarget, selector: str) -> Any:
    core = kubernetes.client.CoreV1Api(api)
    with kube_errors(api, f"pods {selector!r} in namespace {target.namespace}"):
        return core.list_namespaced_pod(
            target.namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT
        ).items


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
    if restarts > thresholds.restarts:
        statuses.append(Status.DEGRADED)
        notes.append(f"{restarts} restarts (threshold {thresholds.restarts})")
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
    return CheckResult(
        check="deployment",
        target=f"{meta.namespace}/{meta.name}",
        status=worst(statuses),
        summary=f"deployment {meta.name}: " + ", ".join(notes),
        details=details,
        duration_ms=int((time.monotonic() - started) * 1000),
    )


@task(name="check_pods", timeout_seconds=60, **_RETRY)
def check_pods(target: KubernetesTarget, thresholds: Thresholds) -> list[CheckResult]:
    """One result per pod of the deployment (or label selector), plus the deployment's."""
    started = time.monotonic()
    with kube_api(target) as api:
        selector, deployment = _selector(api, target)
        pods = _list_pods(api, target, selector)
    results: list[CheckResult] = []
    if deployment is not None:
        results.append(_deployment_result(deployment, started))
    for pod in pods:
        status, notes, details = pod_status(pod, thresholds)
        results.append(
            CheckResult(
                check="pod",
                target=f"{target.namespace}/{pod.metadata.name}",
                status=status,
                summary=f"pod {pod.metadata.name}: " + ", ".join(notes),
                details=details,
                duration_ms=int((time.monotonic() - started) * 1000),
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


@task(name="check_pod_resources", timeout_seconds=60, **_RETRY)
def check_pod_resources(target: KubernetesTarget, thresholds: Thresholds) -> list[CheckResult]:
    """Memory and CPU use (metrics.k8s.io PodMetrics) against each container's limits."""
    started = time.monotonic()
    with kube_api(target) as api:
        selector, _ = _selector(api, target)
        pods = {p.metadata.name: p for p in _list_pods(api, target, selector)}
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
                CheckResult(
                    check="pod_resources",
                    target=target.namespace,
                    status=Status.DEGRADED,
                    summary="the metrics.k8s.io API is not served: metrics-server is missing "
                    "(fix: install metrics-server in the cluster to get pod CPU/memory use)",
                    duration_ms=int((time.monotonic() - started) * 1000),
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
                level = grade(pct, threshold)
                statuses.append(level)
                label = "memory" if kind == "memory" else "CPU"
                notes.append(
                    f"{cname} {label} {pct:.0f}% of limit"
                    + (f" (threshold {threshold:g}%)" if level is not Status.HEALTHY else "")
                )
            containers[cname] = info
        results.append(
            CheckResult(
                check="pod_resources",
                target=f"{target.namespace}/{name}",
                status=worst(statuses),
                summary=f"pod {name}: " + ", ".join(notes),
                details={"containers": containers},
                duration_ms=int((time.monotonic() - started) * 1000),
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


@task(name="scan_pod_logs", timeout_seconds=120, **_RETRY)
def scan_pod_logs(
    target: KubernetesTarget, window: timedelta, pattern: str, thresholds: Thresholds
) -> list[CheckResult]:
    """Count lines matching ``pattern`` in each started pod's logs of the last ``window``."""
    since = datetime.now(UTC) - window
    results: list[CheckResult] = []
    with kube_api(target) as api:
        selector, _ = _selector(api, target)
        core = kubernetes.client.CoreV1Api(api)
        for pod in _list_pods(api, target, selector):
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
                CheckResult(
                    check="pod_logs",
                    target=f"{target.namespace}/{name}",
                    status=grade_errors(summary, thresholds),
                    summary=redact(
                        f"pod {name}: {summary.count} line(s) matching {pattern!r} in the last "
                        f"{format_duration(window)}" + (f"; top: {top}" if top else "")
                    ),
                    details={
                        "count": summary.count,
                        "lines": summary.lines,
                        "top": [[m, c] for m, c in summary.top],
                        "pattern": pattern,
                        "since": since.isoformat(),
                    },
                    duration_ms=int((time.monotonic() - started) * 1000),
                )
            )
    return results


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
    selector, _ = _selector(api, target)
    pods = _list_pods(api, target, selector)
    for pod in pods:
        if pod_status(pod, Thresholds())[2]["ready"]:
            return str(pod.metadata.name)
    raise PermanentError(
        f"deployment {namespace}/{name} has no Ready pod to run the command in "
        f"({len(pods)} pod(s) found)"
    )


def pod_exec_capture(
    api: kubernetes.client.ApiClient,
    namespace: str,
    pod: str,
    argv: list[str],
    timeout: float,
    container: str | None = None,
    stdin: bytes | None = None,
) -> tuple[int, bytes, bytes]:
    """``kubectl exec``: run ``argv`` in a pod; return (exit code, stdout, stderr).

    Uses the exec websocket (v5.channel.k8s.io, so stdin can be closed; v4 servers get stdin
    without an end-of-input signal). Output is held in memory: for small commands.
    """
    what = f"exec {argv[0]!r} in pod {namespace}/{pod}"
    ws = _exec_socket(api, namespace, pod, argv, container, stdin is not None, what)
    with kube_errors(api, what):
        try:
            if stdin is not None:
                ws.write_stdin(stdin)
                ws.close_channel(0)
            ws.run_forever(timeout=timeout)
            if ws.is_open():
                raise TransientError(f"{what}: timed out after {timeout:g}s")
            code = ws.returncode
            out, err = ws.read_stdout() or b"", ws.read_stderr() or b""
        finally:
            ws.close()
    return int(code), bytes(out), bytes(err)


# --- streaming exec (backups and restores through kubectl_exec) --------------------------------

_STDIN, _STDOUT, _STDERR, _ERROR = 0, 1, 2, 3
_EXEC_TAIL = 4000
_V5 = "v5.channel.k8s.io"


def _exec_socket(
    api: kubernetes.client.ApiClient,
    namespace: str,
    pod: str,
    argv: list[str],
    container: str | None,
    stdin: bool,
    what: str,
) -> WSClient:
    """Open the exec websocket (the client offers v5.channel.k8s.io, then v4)."""
    core = kubernetes.client.CoreV1Api(api)
    kwargs: dict[str, Any] = {"container": container} if container else {}
    with kube_errors(api, what):
        try:
            ws: WSClient = kube_stream(
                core.connect_get_namespaced_pod_exec,
                pod,
                namespace,
                command=argv,
                stderr=True,
                stdout=True,
                stdin=stdin,
                tty=False,
                _preload_content=False,
                binary=True,
                _request_timeout=REQUEST_TIMEOUT,
                **kwargs,
            )
        except ApiException as exc:
            if exc.status:
                raise
            text = redact(str(exc.reason or exc))  # websocket handshake: status only in the text
            if "404" in text:
                raise PermanentError(f"{what}: pod not found ({text})") from None
            if "401" in text or "403" in text:
                raise PermanentError(f"{what}: not allowed ({text})") from None
            raise TransientError(f"{what}: {text}") from None
    return ws


def _frames(ws: WSClient, what: str, deadline: Callable[[], float]) -> Iterator[tuple[int, bytes]]:
    """Yield (channel, data) frames, one at a time, until the server closes the websocket.

    Frames are read from the client's websocket directly: ``WSClient.update()`` drains every
    frame already waiting into one growing buffer (and keeps a copy of all output for
    ``read_all``), so a dump produced faster than it is stored would be held in memory.
    ``deadline()`` is asked before each frame (now + idle: an idle timeout; a fixed instant:
    a timeout for the whole run).
    """
    sock = ws.sock
    while True:
        remaining = deadline() - time.monotonic()
        if remaining <= 0:
            raise TransientError(f"{what}: timed out waiting for output")
        try:
            sock.settimeout(remaining)
            opcode, frame = sock.recv_data_frame(True)
        except (TimeoutError, WebSocketTimeoutException):
            raise TransientError(f"{what}: no output for {remaining:.0f}s; stopped") from None
        except WebSocketConnectionClosedException:
            return
        except (WebSocketException, OSError) as exc:
            raise TransientError(
                redact(f"{what}: the exec connection broke ({type(exc).__name__}: {exc})")
            ) from None
        if opcode == ABNF.OPCODE_CLOSE:
            return
        if opcode not in (ABNF.OPCODE_BINARY, ABNF.OPCODE_TEXT) or not frame.data:
            continue
        data = frame.data if isinstance(frame.data, bytes) else str(frame.data).encode()
        if data[0] == 255:  # v5: the server closed one of its channels
            continue
        yield data[0], data[1:]


def _exit_code(status: bytes | None, what: str) -> int:
    """The exit code from the error channel's Status (v4/v5); raise when there is none."""
    if status is None:
        raise TransientError(
            f"{what}: the exec connection ended without an exit status (the API server or "
            "kubelet dropped it); the output is incomplete"
        )
    try:
        parsed = json.loads(status.decode("utf-8", errors="replace"))
    except ValueError:
        raise TransientError(f"{what}: unreadable exit status {status[:200]!r}") from None
    if parsed.get("status") == "Success":
        return 0
    for cause in (parsed.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            return int(cause.get("message") or 1)
    message = redact(str(parsed.get("message") or parsed))[:500]
    raise PermanentError(f"{what}: the command could not run: {message}")


def _producer_failed(failure: list[BaseException]) -> bool:
    """True when the stdin producer raised (not the connection)."""
    return bool(failure) and not isinstance(failure[0], WebSocketException | OSError)


def pod_exec_stream(
    api: kubernetes.client.ApiClient,
    namespace: str,
    pod: str,
    argv: list[str],
    container: str | None = None,
    idle_timeout: float = 300.0,
) -> Iterator[bytes]:
    """``kubectl exec`` streaming: yield ``argv``'s stdout chunks as they arrive.

    Constant memory: one websocket frame at a time, plus the last 4 KiB of stderr. After the
    last chunk the exit status (error channel) is read: non-zero raises PermanentError with
    the redacted stderr tail — after the stdout already yielded, so a consumer must treat what
    it got as incomplete when this raises. More than ``idle_timeout`` seconds without a frame,
    or a connection that ends without an exit status, raises TransientError.
    """
    what = f"exec {argv[0]!r} in pod {namespace}/{pod}"
    ws = _exec_socket(api, namespace, pod, argv, container, False, what)
    err = bytearray()
    status: bytes | None = None
    try:
        for channel, data in _frames(ws, what, lambda: time.monotonic() + idle_timeout):
            if channel == _STDOUT:
                yield data
            elif channel == _STDERR:
                err += data
                del err[: max(len(err) - _EXEC_TAIL, 0)]
            elif channel == _ERROR:
                status = (status or b"") + data
    finally:
        ws.close(timeout=0)
    code = _exit_code(status, what)
    if code != 0:
        tail = redact(err.decode("utf-8", errors="replace").strip())[-1000:]
        raise PermanentError(f"{what} exited with code {code}: {tail or '(no stderr)'}")


def pod_exec_feed(
    api: kubernetes.client.ApiClient,
    namespace: str,
    pod: str,
    argv: list[str],
    chunks: Iterable[bytes],
    container: str | None = None,
    timeout: float = 3600.0,
) -> tuple[int, bytes, bytes]:
    """``kubectl exec -i``: stream ``chunks`` into ``argv``'s stdin, close it, and return
    (exit code, last 4 KiB of stdout, last 4 KiB of stderr).

    Needs the v5 exec protocol (Kubernetes >= 1.30) to signal the end of stdin; a v4-only
    server is a PermanentError before anything is sent. ``timeout`` bounds the whole run
    (TransientError). If ``chunks`` raises, the websocket is closed and the error re-raised;
    the command then sees its stdin end early, so a caller that must not commit a partial
    input ends its stream with something that makes the command fail instead.
    """
    end = time.monotonic() + timeout
    what = f"exec {argv[0]!r} in pod {namespace}/{pod}"
    ws = _exec_socket(api, namespace, pod, argv, container, True, what)
    out, err = bytearray(), bytearray()
    status: bytes | None = None
    failure: list[BaseException] = []

    def write() -> None:
        try:
            for chunk in chunks:
                if chunk:
                    ws.write_stdin(bytes(chunk))
            ws.close_channel(_STDIN)
        except (WebSocketException, OSError) as exc:  # the command exited before reading all
            failure.append(exc)
        except BaseException as exc:  # noqa: BLE001 - the producer failed: re-raised below
            failure.append(exc)
            ws.close(timeout=0)  # ends the reader below at once

    writer = threading.Thread(target=write, name=f"kube-exec-stdin-{pod}", daemon=True)
    try:
        if ws.subprotocol != _V5:
            raise PermanentError(
                f"{what}: the API server does not speak {_V5} (Kubernetes >= 1.30), so the end "
                "of the input cannot be signalled (fix: upgrade the cluster, or use via: direct)"
            )
        writer.start()
        try:
            for channel, data in _frames(ws, what, lambda: end):
                if channel == _ERROR:
                    status = (status or b"") + data
                    continue
                buffer = out if channel == _STDOUT else err
                buffer += data
                del buffer[: max(len(buffer) - _EXEC_TAIL, 0)]
        except TransientError:
            if not _producer_failed(failure):
                raise
        writer.join(max(end - time.monotonic(), 0.001))
    finally:
        ws.close(timeout=0)
    if _producer_failed(failure):
        raise failure[0]
    code = _exit_code(status, what)
    if failure and code == 0:
        raise TransientError(f"{what}: writing stdin failed: {failure[0]}")
    return code, bytes(out), bytes(err)


# --- configuration export -------------------------------------------------------------------

_SERVER_FIELDS = ("uid", "resourceVersion", "creationTimestamp", "managedFields", "selfLink")


def exportable(api: kubernetes.client.ApiClient, obj: Any) -> dict[str, Any]:
    """An object as JSON ready to re-apply: server-managed metadata removed."""
    data: dict[str, Any] = api.sanitize_for_serialization(obj)
    meta = data.get("metadata") or {}
    for field in _SERVER_FIELDS:
        meta.pop(field, None)
    return data


@task(
    name="export_kubernetes_config",
    timeout_seconds=120,
    cache_policy=NO_CACHE,
    persist_result=False,  # the result holds Secret values: never written to disk
    **_RETRY,
)
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
