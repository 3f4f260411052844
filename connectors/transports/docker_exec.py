"""``DockerExec``: commands in a running container through the Docker engine's exec API (the way
the seed manuals reach ``psql``/``pg_dump`` with ``docker exec``).

Docker has no call to stop an exec'd process, and closing the exec connection does not stop it
(a reader sees its input end, a writer blocks). So every exec carries a random tag in its
environment (``OPSFLOW_EXEC_ID``), inherited by its children, and a kill is a second exec that
SIGKILLs every process in the container whose environment holds that tag (``sh`` and ``tr``
must exist in the image; without them only the connection is closed).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid
from collections.abc import Generator, Iterable, Iterator
from typing import Any

import docker
import docker.errors
import requests.exceptions

from connectors.docker import docker_client, docker_errors
from connectors.transports.base import (
    TAIL_BYTES,
    CommandFailed,
    CommandTimedOut,
    Completed,
    Tail,
    Watchdog,
)
from opsflow.errors import TransientError
from opsflow.inventory import DockerTarget
from opsflow.redaction import redact

TAG_VAR = "OPSFLOW_EXEC_ID"
_STDOUT = 1
KILL_WAIT_S = 5.0  # for the killed exec to be reported ended
_KILL_SCRIPT = (
    "for p in /proc/[0-9]*; do "
    'case "$(tr "\\0" " " < "$p/environ" 2>/dev/null)" in '
    '*"{var}={tag} "*) kill -KILL "${{p#/proc/}}" 2>/dev/null;; '
    "esac; done"
)


class DockerExec:
    """Runs commands in ``container`` on the engine of ``target`` (client opened on first use)."""

    def __init__(
        self, target: DockerTarget, container: str, client: docker.DockerClient | None = None
    ) -> None:
        self.target = target
        self.container = container
        self.where = f"container {container}"
        self._client = client
        self._owned = client is None

    def __repr__(self) -> str:
        return f"DockerExec({self.container!r})"

    def client(self) -> docker.DockerClient:
        if self._client is None:
            self._client = docker_client(self.target)
        return self._client

    def pinned(self) -> DockerExec:
        return self

    def close(self) -> None:
        if self._owned and self._client is not None:
            self._client.close()
            self._client = None

    def capture(self, argv: list[str], timeout: float, stdin: bytes | None = None) -> Completed:
        return self._run(argv, [stdin] if stdin else [], timeout, keep=None)

    def feed_in(self, argv: list[str], chunks: Iterable[bytes], timeout: float) -> Completed:
        return self._run(argv, chunks, timeout, keep=TAIL_BYTES)

    def stream_out(
        self, argv: list[str], timeout: float, idle_timeout: float | None = None
    ) -> Generator[bytes, None, None]:
        session = _Session(self.client(), self.container, argv, stdin=False)
        err = Tail()
        code: int | None = None
        with Watchdog(session.kill, timeout, idle_timeout) as dog:
            try:
                for stream, data in session.frames(dog):
                    if stream == _STDOUT:
                        yield data
                    else:
                        err.add(data)
                if not dog.killed:
                    code = session.exit_code()
            finally:
                if code is None:  # the consumer stopped, a read failed, or it still runs
                    dog.kill()
                session.close()
        if dog.fired:
            raise CommandTimedOut(f"{session.what}: timed out waiting for output")
        if code != 0:
            raise CommandFailed.of(session.what, code, bytes(err))

    def _run(
        self, argv: list[str], chunks: Iterable[bytes], timeout: float, keep: int | None
    ) -> Completed:
        """Stream ``chunks`` to stdin (from a thread) while reading the output frames."""
        session = _Session(self.client(), self.container, argv, stdin=True)
        out, err = Tail(keep), Tail(keep)
        broken: list[OSError] = []  # writing stdin failed: the command exited before reading
        failed: list[BaseException] = []  # the producer of ``chunks`` raised
        code: int | None = None

        def write(dog: Watchdog) -> None:
            try:
                for chunk in chunks:
                    if chunk:
                        session.raw.sendall(chunk)
                session.raw.shutdown(socket.SHUT_WR)
            except OSError as exc:
                broken.append(exc)
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after the kill
                failed.append(exc)
                dog.kill()

        with Watchdog(session.kill, timeout) as dog:
            writer = threading.Thread(target=write, args=(dog,), daemon=True, name="exec-stdin")
            writer.start()
            try:
                for stream, data in session.frames(dog):
                    (out if stream == _STDOUT else err).add(data)
                writer.join(max(dog.remaining(), 0.001))
                if not dog.killed:
                    code = session.exit_code()
            finally:
                if code is None:
                    dog.kill()
                session.close()
        if failed:
            raise failed[0]
        if dog.fired:
            raise CommandTimedOut(f"{session.what}: timed out waiting for output")
        if code is None:
            raise TransientError(f"{session.what}: output ended but the process still runs")
        if broken and code == 0:
            raise TransientError(f"{session.what}: writing stdin failed: {broken[0]}")
        return Completed(code, bytes(out), bytes(err))


class _Session:
    """One exec over a hijacked connection: raw socket (stdin, shutdown) + buffered reader.

    Reading the hijacked socket ourselves (instead of docker-py's stream helpers) keeps every
    read interruptible: the watchdog's kill shuts the socket down.
    """

    def __init__(
        self, client: docker.DockerClient, container: str, argv: list[str], stdin: bool
    ) -> None:
        self.client = client
        self.container = container
        self.stdin = stdin
        self.tag = uuid.uuid4().hex
        self.what = f"exec {argv[0]!r} in container {container}"
        with docker_errors(self.what):
            self.exec_id = client.api.exec_create(
                container, argv, stdin=stdin, environment={TAG_VAR: self.tag}
            )["Id"]
            sock = client.api.exec_start(self.exec_id, socket=True)
        self.raw: socket.socket = getattr(sock, "_sock", sock)
        self.raw.settimeout(None)  # reads block until output, end of output or the kill
        # docker-py keeps the HTTP response on the socket; its buffered reader may already hold
        # the first output bytes, so read through it rather than from the raw socket.
        response = getattr(sock, "_response", None)
        self.reader: Any = response.raw._fp.fp if response is not None else sock

    def frames(self, dog: Watchdog) -> Iterator[tuple[int, bytes]]:
        """Yield (stream, data) frames of Docker's multiplexed stream until EOF (or the kill)."""
        while True:
            header = self._read_exactly(8, dog)
            if header is None:
                return
            size = int.from_bytes(header[4:8], "big")
            data = self._read_exactly(size, dog) if size else b""
            if data is None:
                return
            dog.touch()
            yield header[0], data

    def _read_exactly(self, size: int, dog: Watchdog) -> bytes | None:
        data = b""
        while len(data) < size:
            try:
                chunk = self.reader.read1(size - len(data))
            except (OSError, ValueError) as exc:
                if dog.killed:
                    return None
                raise TransientError(
                    redact(f"{self.what}: the exec connection broke ({type(exc).__name__}: {exc})")
                ) from None
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

    def kill(self) -> None:
        """SIGKILL the tagged processes in the container, then shut the connection down.

        With stdin attached that order matters (a command that commits at the end of its input
        must not see it end first); without, the output is cut first: the engine holds up other
        execs in the container while the output of this one is not read.
        """
        if not self.stdin:
            self._shutdown()
        script = _KILL_SCRIPT.format(var=TAG_VAR, tag=self.tag)
        with contextlib.suppress(
            docker.errors.DockerException, requests.exceptions.RequestException
        ):
            killer = self.client.api.exec_create(self.container, ["sh", "-c", script])["Id"]
            self.client.api.exec_start(killer, detach=True)  # no output to wait for
            deadline = time.monotonic() + KILL_WAIT_S
            while time.monotonic() < deadline:
                if not self.client.api.exec_inspect(self.exec_id).get("Running"):
                    break
                time.sleep(0.05)
        self._shutdown()

    def _shutdown(self) -> None:
        with contextlib.suppress(OSError):
            self.raw.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.raw.close()
