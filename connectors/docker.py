"""Docker engine access: a connected client, error translation, and commands inside containers.

Built on the docker SDK against ``target.host`` or ``DOCKER_HOST``. Every API call carries a
socket timeout; an unreachable daemon, a 5xx or a 409 is a ``TransientError``, a missing
container or a refused request a ``PermanentError``.

``exec_capture``/``exec_stream``/``exec_feed`` run a command in a container (the way the seed
manuals reach ``psql``/``pg_dump`` with ``docker exec``): capture for small outputs, stream to
pipe large stdout (``pg_dump``) without buffering, feed to stream stdin into a command.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import docker
import docker.errors
import requests.exceptions

from opsflow.errors import PermanentError, TransientError
from opsflow.inventory import DockerTarget
from opsflow.redaction import redact

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
API_TIMEOUT = 10.0


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
