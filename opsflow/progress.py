"""Progress of long transfers (dumps, uploads, restores).

A ``TransferProgress`` is fed byte counts by the task doing the transfer. It logs a line every
``log_every`` bytes (so the Prefect UI shows progress of a long backup) and tells every
registered listener, which is how the CLI draws a rich progress bar for in-process runs.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from opsflow.units import format_bytes, format_rate

Listener = Callable[[str, int, float], None]  # label, bytes done, seconds elapsed
LOG_EVERY = 256 * 1024 * 1024

_lock = threading.Lock()
_listeners: list[Listener] = []


def add_listener(listener: Listener) -> None:
    with _lock:
        _listeners.append(listener)


def remove_listener(listener: Listener) -> None:
    with _lock:
        if listener in _listeners:
            _listeners.remove(listener)


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a run context: a plain logger will do
        return logging.getLogger("opsflow.progress")


class TransferProgress:
    """Counts bytes of one transfer; call it with each chunk's size, then ``done()``."""

    def __init__(self, label: str, log_every: int = LOG_EVERY) -> None:
        self.label = label
        self.log_every = log_every
        self.bytes = 0
        self.started = time.monotonic()
        self._next_log = log_every
        self._log = _logger()

    def __call__(self, size: int) -> None:
        self.bytes += size
        elapsed = time.monotonic() - self.started
        with _lock:
            listeners = list(_listeners)
        for listener in listeners:
            listener(self.label, self.bytes, elapsed)
        if self.bytes >= self._next_log:
            self._next_log += self.log_every
            self._log.info("%s: %s", self.label, self.describe())

    def describe(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return f"{format_bytes(self.bytes)} in {elapsed:.0f}s ({format_rate(self.bytes, elapsed)})"
