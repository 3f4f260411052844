"""``PodExec``: commands in a pod through the Kubernetes exec websocket (``kubectl exec``).

The client offers v5.channel.k8s.io (stdin can be closed, needed to feed input) and v4. Frames
are read from the websocket one at a time (``WSClient.update()`` would drain every waiting
frame into one growing buffer), so a dump produced faster than it is stored is never held in
memory. Kubernetes has no call to stop an exec'd process: a kill closes the websocket, and the
kubelet/runtime is left to stop the command (its stdin ends, its output goes nowhere).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Generator, Iterable, Iterator
from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException
from kubernetes.stream import stream as kube_stream
from kubernetes.stream.ws_client import WSClient
from websocket import ABNF, WebSocketConnectionClosedException, WebSocketException

from connectors.kubernetes import REQUEST_TIMEOUT, find_pod, kube_api, kube_errors
from connectors.transports.base import (
    CommandFailed,
    CommandTimedOut,
    Completed,
    Tail,
    Watchdog,
)
from opsflow.errors import PermanentError, TransientError
from opsflow.inventory import KubernetesTarget
from opsflow.redaction import redact

_STDIN, _STDOUT, _STDERR, _ERROR = 0, 1, 2, 3
_V5 = "v5.channel.k8s.io"


class PodExec:
    """Runs commands in container ``container`` of pod ``ref`` in ``target.namespace`` — or, when
    ``ref`` names a deployment, of one of its Ready pods (looked up for every command, unless
    ``pinned()``). The API client is opened on first use."""

    def __init__(
        self,
        target: KubernetesTarget,
        ref: str,
        container: str | None = None,
        *,
        pod: str | None = None,
        api: kubernetes.client.ApiClient | None = None,
    ) -> None:
        self.target = target
        self.namespace = target.namespace
        self.ref = ref
        self.container = container
        self.pod = pod
        self.where = f"pod {self.namespace}/{pod}" if pod else f"{self.namespace}/{ref}"
        self._api = api
        self._owned = api is None

    def __repr__(self) -> str:
        return f"PodExec({self.namespace}/{self.pod or self.ref}, container={self.container!r})"

    def api(self) -> kubernetes.client.ApiClient:
        if self._api is None:
            self._api = kube_api(self.target)
        return self._api

    def pinned(self) -> PodExec:
        return PodExec(self.target, self.ref, self.container, pod=self._find_pod(), api=self.api())

    def close(self) -> None:
        if self._owned and self._api is not None:
            self._api.close()
            self._api = None

    def _find_pod(self) -> str:
        return self.pod or find_pod(self.api(), self.namespace, self.ref)

    def _open(self, argv: list[str], stdin: bool) -> tuple[WSClient, str]:
        pod = self._find_pod()
        what = f"exec {argv[0]!r} in pod {self.namespace}/{pod}"
        return _exec_socket(
            self.api(), self.namespace, pod, argv, self.container, stdin, what
        ), what

    def capture(self, argv: list[str], timeout: float, stdin: bytes | None = None) -> Completed:
        ws, what = self._open(argv, stdin is not None)
        out, err, status = Tail(None), Tail(None), Tail(None)
        with Watchdog(ws.sock.abort, timeout) as dog:
            try:
                with kube_errors(self.api(), what):
                    if stdin is not None:
                        ws.write_stdin(stdin)
                        ws.close_channel(_STDIN)
                for channel, data in _frames(ws, what, dog):
                    (out if channel == _STDOUT else err if channel == _STDERR else status).add(data)
            finally:
                ws.close(timeout=0)
        if dog.fired:
            raise CommandTimedOut(f"{what}: timed out after {timeout:g}s")
        return Completed(_exit_code(bytes(status) or None, what), bytes(out), bytes(err))

    def stream_out(
        self, argv: list[str], timeout: float, idle_timeout: float | None = None
    ) -> Generator[bytes, None, None]:
        ws, what = self._open(argv, stdin=False)
        err, status = Tail(), Tail(None)
        with Watchdog(ws.sock.abort, timeout, idle_timeout) as dog:
            try:
                for channel, data in _frames(ws, what, dog):
                    if channel == _STDOUT:
                        yield data
                    elif channel == _STDERR:
                        err.add(data)
                    elif channel == _ERROR:
                        status.add(data)
            finally:
                ws.close(timeout=0)  # the consumer stopped or it failed: this ends the exec
        if dog.fired == "idle":
            raise CommandTimedOut(f"{what}: no output for {idle_timeout:.0f}s; stopped")
        if dog.fired:
            raise CommandTimedOut(f"{what}: timed out waiting for output")
        code = _exit_code(bytes(status) or None, what)
        if code != 0:
            raise CommandFailed.of(what, code, bytes(err))

    def feed_in(self, argv: list[str], chunks: Iterable[bytes], timeout: float) -> Completed:
        """Needs the v5 protocol (Kubernetes >= 1.30) to signal the end of stdin: a v4-only
        server is a PermanentError before anything is sent."""
        ws, what = self._open(argv, stdin=True)
        out, err, status = Tail(), Tail(), Tail(None)
        broken: list[BaseException] = []  # the connection failed while writing
        failed: list[BaseException] = []  # the producer of ``chunks`` raised

        def write(dog: Watchdog) -> None:
            try:
                for chunk in chunks:
                    if chunk:
                        try:
                            ws.write_stdin(bytes(chunk))
                        except (WebSocketException, OSError) as exc:
                            broken.append(exc)  # the command exited before reading all
                            return
                ws.close_channel(_STDIN)
            except (WebSocketException, OSError) as exc:
                broken.append(exc)
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after the kill
                failed.append(exc)
                dog.kill()

        try:
            if ws.subprotocol != _V5:
                raise PermanentError(
                    f"{what}: the API server does not speak {_V5} (Kubernetes >= 1.30), so the "
                    "end of the input cannot be signalled (fix: upgrade the cluster, or use via: "
                    "direct)"
                )
            with Watchdog(ws.sock.abort, timeout) as dog:
                writer = threading.Thread(target=write, args=(dog,), daemon=True, name="pod-stdin")
                writer.start()
                for channel, data in _frames(ws, what, dog):
                    (out if channel == _STDOUT else err if channel == _STDERR else status).add(data)
                writer.join(max(dog.remaining(), 0.001))
        finally:
            ws.close(timeout=0)
        if failed:
            raise failed[0]
        if dog.fired:
            raise CommandTimedOut(f"{what}: timed out waiting for output")
        code = _exit_code(bytes(status) or None, what)
        if broken and code == 0:
            raise TransientError(f"{what}: writing stdin failed: {broken[0]}")
        return Completed(code, bytes(out), bytes(err))


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
    ws.sock.settimeout(None)  # reads block until a frame, the close or the watchdog's abort
    return ws


def _frames(ws: WSClient, what: str, dog: Watchdog) -> Iterator[tuple[int, bytes]]:
    """Yield (channel, data) frames, one at a time, until the server closes the websocket or
    the watchdog aborts it."""
    sock = ws.sock
    while True:
        try:
            opcode, frame = sock.recv_data_frame(True)
        except WebSocketConnectionClosedException:
            return
        except (WebSocketException, OSError) as exc:
            if dog.killed:
                return
            raise TransientError(
                redact(f"{what}: the exec connection broke ({type(exc).__name__}: {exc})")
            ) from None
        if dog.killed:
            return
        dog.touch()
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
