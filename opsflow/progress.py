"""Progress of long transfers (dumps, uploads, restores).

A ``TransferProgress`` is fed byte counts by the task doing the transfer. It tells every
registered listener (how the CLI draws its bars for an in-process run) and logs a progress line
(``<label>: 1.2 GiB in 10s (120.0 MiB/s)``) every ``log_every`` bytes or ``LOG_SECONDS`` seconds,
whichever comes first: the Prefect UI shows the progress of a long transfer, and `opsflow run`
following a served run reads those lines back (``parse_line``) to draw the same bars.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

from opsflow.units import format_bytes, format_rate, parse_bytes

Listener = Callable[[str, int, float], None]  # label, bytes done, seconds elapsed
LOG_EVERY = 256 * 1024 * 1024
LOG_SECONDS = 5.0
_LINE = re.compile(r"^(?P<label>.+): (?P<size>[0-9.]+ [KMGTP]?i?B) in (?P<secs>[0-9]+)s \(")

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
        self._next_log_at = self.started + LOG_SECONDS
        self._log = _logger()

    def __call__(self, size: int) -> None:
        self.bytes += size
        elapsed = time.monotonic() - self.started
        with _lock:
            listeners = list(_listeners)
        for listener in listeners:
            listener(self.label, self.bytes, elapsed)
        if self.bytes >= self._next_log or self.started + elapsed >= self._next_log_at:
            while self._next_log <= self.bytes:
                self._next_log += self.log_every
            self._next_log_at = self.started + elapsed + LOG_SECONDS
            self._log.info("%s: %s", self.label, self.describe())

    def describe(self) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        return f"{format_bytes(self.bytes)} in {elapsed:.0f}s ({format_rate(self.bytes, elapsed)})"


def parse_line(message: str) -> tuple[str, int, float] | None:
    """(label, bytes, seconds) of a progress line this module logged, else None."""
    found = _LINE.match(message)
    if found is None:
        return None
    return found["label"], parse_bytes(found["size"]), float(found["secs"])
