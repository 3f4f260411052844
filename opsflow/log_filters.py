"""Logging filters that keep Prefect's noise out of a runbook's log: a warning on every threaded
task with a timeout, the traceback of bad input, and the slot-acquisition service's error on
every refused poll of the environment lock. Plain ``logging``: no Prefect import."""

from __future__ import annotations

import logging

from opsflow.errors import InputError


class _DropThreadTimeoutWarning(logging.Filter):
    """Prefect warns on every threaded task that has a timeout; our tasks enforce their own
    timeouts inside (socket, subprocess and HTTP deadlines), so the warning is only noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (message.startswith("Timeout of") and "worker thread" in message)


class _NoTracebackForBadInput(logging.Filter):
    """Bad input is one line: the flow engine's record of an ``InputError`` loses its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], InputError):
            record.exc_info, record.exc_text = None, None
        return True


_QUIET, _BAD_INPUT_FILTER = _DropThreadTimeoutWarning(), _NoTracebackForBadInput()


class _DropLockPollError(logging.Filter):
    """Prefect's slot-acquisition service logs an ERROR for every attempt that is refused; the
    environment lock polls with single attempts and reports the outcome itself (waiting: INFO,
    giving up: the run's error), so those records are only noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        service = record.args[0] if isinstance(record.args, tuple) and record.args else None
        return not (
            str(record.msg).startswith("Service %r failed to process item")
            and type(service).__name__ == "ConcurrencySlotAcquisitionWithLeaseService"
        )


QUIET_LOCK = _DropLockPollError()


def quiet_prefect_noise() -> None:
    """Add the thread-timeout and bad-input filters to the root and Prefect handlers."""
    for name in ("", "prefect", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            for quiet in (_QUIET, _BAD_INPUT_FILTER):
                if quiet not in handler.filters:
                    handler.addFilter(quiet)
