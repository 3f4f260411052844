"""What every transport shares: the ``Transport`` protocol, its result and errors, the bounded
output buffers and the one kill-on-timeout (``Watchdog``)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterable
from typing import NamedTuple, Protocol

from opsflow.errors import PermanentError, TransientError
from opsflow.redaction import redact

TAIL_BYTES = 4096  # of stdout/stderr kept by stream_out and feed_in (the end)
HEAD_BYTES = 1024  # ... and the start: a cause comes first (pg_dump: error: ... FATAL: ...)
SHOWN_CHARS = 1000  # of a (redacted) stderr shown in an error: its start and its end
DROPPED = b"\n[...]\n"


class Completed(NamedTuple):
    """A command that ran to its end: exit code and output (in full or the last TAIL_BYTES)."""

    code: int
    stdout: bytes
    stderr: bytes

    def stderr_tail(self) -> str:
        return stderr_tail(self.stderr)


def stderr_tail(data: bytes) -> str:
    """A command's stderr for an error message, with secrets masked: all of it, or its start
    (where the cause usually is) and its end."""
    text = redact(data.decode("utf-8", errors="replace").strip())
    if len(text) <= SHOWN_CHARS:
        return text
    return f"{text[: SHOWN_CHARS * 3 // 5]} [...] {text[-SHOWN_CHARS * 2 // 5 :]}"


class CommandFailed(PermanentError):
    """``stream_out``: the command exited non-zero (after the chunks it yielded)."""

    def __init__(self, message: str, code: int | None = None, stderr: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.stderr = stderr

    @classmethod
    def of(cls, what: str, code: int | None, stderr: bytes) -> CommandFailed:
        tail = stderr_tail(stderr)
        shown = "unknown (still running)" if code is None else str(code)
        return cls(f"{what} exited with code {shown}: {tail or '(no stderr)'}", code, tail)


class CommandTimedOut(TransientError):
    """The deadline (or the idle timeout) passed; the command was killed."""


class Transport(Protocol):
    """Runs commands beside a database or an app: on this worker, in a container, in a pod.

    Every method kills the command when its ``timeout`` (seconds, whole run) passes and then
    raises ``CommandTimedOut``. Connection and start failures raise Transient/PermanentError
    naming ``where``.
    """

    where: str  # "this worker", "container NAME", "pod NS/POD" or "NS/DEPLOYMENT"

    def capture(self, argv: list[str], timeout: float, stdin: bytes | None = None) -> Completed:
        """Run ``argv`` (``stdin`` as its whole input); its output held in memory."""
        ...

    def stream_out(
        self, argv: list[str], timeout: float, idle_timeout: float | None = None
    ) -> Generator[bytes, None, None]:
        """Yield ``argv``'s stdout as it comes (memory: one chunk and a stderr tail).

        After the last chunk a non-zero exit raises ``CommandFailed`` with the stderr tail, so
        a consumer must treat what it got as incomplete when this raises. The command is killed
        when the consumer stops early (closes the generator), when ``timeout`` passes, or when
        no output came for ``idle_timeout`` seconds.
        """
        ...

    def feed_in(self, argv: list[str], chunks: Iterable[bytes], timeout: float) -> Completed:
        """Stream ``chunks`` into ``argv``'s stdin, end it, wait for the exit; output tails.

        If ``chunks`` raises, the command is killed before its input ends (a command that
        commits at end of input commits nothing) and the error re-raised.
        """
        ...

    def pinned(self) -> Transport:
        """This transport, bound to one place for a run of commands (a Kubernetes deployment
        resolved to one Ready pod); the others return themselves."""
        ...

    def close(self) -> None:
        """Release the client connection (when the transport opened it)."""
        ...


class Tail:
    """The first ``HEAD_BYTES`` and the last ``keep`` bytes added, with ``DROPPED`` between
    them when bytes in the middle were let go (all of them when ``keep`` is None)."""

    def __init__(self, keep: int | None = TAIL_BYTES) -> None:
        self.keep = keep
        self.head = bytearray()
        self.data = bytearray()
        self.dropped = False

    def add(self, data: bytes) -> None:
        if self.keep is not None and len(self.head) < HEAD_BYTES:
            room = HEAD_BYTES - len(self.head)
            self.head += data[:room]
            data = data[room:]
        self.data += data
        if self.keep is not None and len(self.data) > self.keep:
            del self.data[: len(self.data) - self.keep]
            self.dropped = True

    def __bytes__(self) -> bytes:
        return bytes(self.head + (DROPPED if self.dropped else b"") + self.data)


class Watchdog:
    """The one kill-on-timeout of every transport.

    ``kill`` stops the command (SIGKILL to its process group, a kill inside the container,
    closing the exec connection) and must make blocked reads and writes on it return. It is
    called once, from a background thread, when ``timeout`` seconds passed since the start or
    ``idle`` seconds passed since the last ``touch()``; ``fired`` then says which
    ("timeout"/"idle"). ``kill()`` does the same at once, for a consumer that stopped or an
    input that failed. Leaving the ``with`` block disarms it.
    """

    def __init__(self, kill: Callable[[], None], timeout: float, idle: float | None = None) -> None:
        self._kill = kill
        self.timeout = timeout
        self.idle = idle
        self._start = self._last = time.monotonic()
        self._cond = threading.Condition()
        self._disarmed = False
        self.killed = False
        self.fired: str | None = None
        self._thread = threading.Thread(target=self._watch, name="transport-watchdog", daemon=True)

    def __enter__(self) -> Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.disarm()

    def touch(self) -> None:
        """Output arrived: the idle timeout starts again."""
        self._last = time.monotonic()

    def remaining(self) -> float:
        return max(self._start + self.timeout - time.monotonic(), 0.0)

    def _due(self) -> tuple[float, str]:
        end = self._start + self.timeout
        if self.idle is not None and self._last + self.idle < end:
            return self._last + self.idle, "idle"
        return end, "timeout"

    def _watch(self) -> None:
        with self._cond:
            while True:
                if self._disarmed:
                    return
                due, reason = self._due()
                now = time.monotonic()
                if now >= due:
                    self.fired = reason
                    break
                self._cond.wait(due - now)
        self.kill()

    def kill(self) -> None:
        """Kill the command now (once; later calls do nothing)."""
        with self._cond:
            if self.killed:
                return
            self.killed = True
        self._kill()

    def disarm(self) -> None:
        with self._cond:
            self._disarmed = True
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
