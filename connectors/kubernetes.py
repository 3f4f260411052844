"""Kubernetes API access: a client for the target, error translation, finding pods, and exec
in a pod over the websocket (capture, stream out, feed in).

Connection: ``kubernetes.api_url`` (+ ``token`` reference, ``verify_tls``) wins; else a
kubeconfig (``kubernetes.kubeconfig`` / ``context``, or ``KUBECONFIG`` / ``~/.kube/config``);
else the in-cluster service account. Every call carries a (connect, read) timeout; an
unreachable API, a 5xx, 409 or 429 is a ``TransientError``, a 404, 401 or 403 a
``PermanentError`` saying what to fix.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config
import urllib3.exceptions
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.stream import stream as kube_stream
from kubernetes.stream.ws_client import WSClient
from websocket import (
    ABNF,
    WebSocketConnectionClosedException,
    WebSocketException,
    WebSocketTimeoutException,
)

from opsflow.errors import (
    InputError,
    PermanentError,
    TransientError,
)
from opsflow.inventory import KubernetesTarget
from opsflow.redaction import redact
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
