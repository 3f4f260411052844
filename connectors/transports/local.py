"""``LocalProcess``: commands as child processes of this worker (``via: direct``)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from collections.abc import Generator, Iterable, Mapping
from pathlib import Path
from typing import IO

from connectors.streams import iter_file
from connectors.transports.base import (
    TAIL_BYTES,
    CommandFailed,
    CommandTimedOut,
    Completed,
    Tail,
    Watchdog,
)

NOT_FOUND = 127  # what a shell answers for a missing command, like the exec transports


class LocalProcess:
    """Runs commands here, each in its own process group (a kill reaches its children too).

    ``env`` is added to this process's environment for every command: secrets such as
    PGPASSWORD travel there, never on the command line. It is left out of ``repr``.
    """

    where = "this worker"

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = dict(env or {})

    def __repr__(self) -> str:
        return f"LocalProcess(env={sorted(self._env)})"

    def pinned(self) -> LocalProcess:
        return self

    def close(self) -> None:
        return None

    def _start(self, argv: list[str], stdin: bool) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **self._env},
            start_new_session=True,
        )

    def capture(self, argv: list[str], timeout: float, stdin: bytes | None = None) -> Completed:
        try:
            proc = self._start(argv, stdin is not None)
        except OSError as exc:
            return _not_started(exc)
        with Watchdog(lambda: _kill(proc), timeout) as dog:
            out, err = proc.communicate(stdin)
        if dog.fired:
            raise _timed_out(argv, timeout)
        return Completed(proc.returncode, out, err)

    def stream_out(
        self, argv: list[str], timeout: float, idle_timeout: float | None = None
    ) -> Generator[bytes, None, None]:
        try:
            proc = self._start(argv, stdin=False)
        except OSError as exc:
            raise CommandFailed.of(_what(argv), NOT_FOUND, str(exc).encode()) from None
        assert proc.stdout is not None and proc.stderr is not None
        err = _Drain(proc.stderr)
        with Watchdog(lambda: _kill(proc), timeout, idle_timeout) as dog:
            try:
                for chunk in iter_file(proc.stdout):
                    dog.touch()
                    yield chunk
                code = proc.wait()
            finally:
                if proc.poll() is None:  # the consumer stopped reading, or failed
                    dog.kill()
                proc.wait()
                proc.stdout.close()
                err.join()
        if dog.fired:
            raise _timed_out(argv, timeout)
        if code != 0:
            raise CommandFailed.of(_what(argv), code, bytes(err.tail))

    def feed_in(self, argv: list[str], chunks: Iterable[bytes], timeout: float) -> Completed:
        try:
            proc = self._start(argv, stdin=True)
        except OSError as exc:
            return _not_started(exc)
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        out, err = _Drain(proc.stdout), _Drain(proc.stderr)
        with Watchdog(lambda: _kill(proc), timeout) as dog:
            try:
                try:
                    for chunk in chunks:
                        proc.stdin.write(chunk)
                except BrokenPipeError:
                    pass  # it stopped reading (or was killed): its exit code says why
                except BaseException:
                    dog.kill()  # before its input ends: nothing is committed
                    raise
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()
                code = proc.wait()
            finally:
                if proc.poll() is None:
                    dog.kill()
                proc.wait()
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()
                out.join()
                err.join()
        if dog.fired:
            raise _timed_out(argv, timeout)
        return Completed(code, bytes(out.tail), bytes(err.tail))


class _Drain(threading.Thread):
    """Reads a pipe to its end, keeping the last TAIL_BYTES."""

    def __init__(self, pipe: IO[bytes]) -> None:
        super().__init__(name="local-process-drain", daemon=True)
        self.pipe = pipe
        self.tail = Tail(TAIL_BYTES)
        self.start()

    def run(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            while data := self.pipe.read1(65536):  # type: ignore[attr-defined]
                self.tail.add(data)


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the command's process group (it leads one: ``start_new_session``)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)


def _what(argv: list[str]) -> str:
    return f"{Path(argv[0]).name!r} on this worker"


def _timed_out(argv: list[str], timeout: float) -> CommandTimedOut:
    return CommandTimedOut(f"{_what(argv)} did not finish within {timeout:g}s and was killed")


def _not_started(exc: OSError) -> Completed:
    return Completed(NOT_FOUND, b"", f"{exc}\n".encode())
