"""The three kinds of task, each with its retry policy (``opsflow.errors``), an explicit timeout
and no result caching (a runbook step acts on the present, never on a remembered result).

    @probe_task("check_disk", timeout_seconds=30)      # a quick look at one target
    @api_task("scale_down_app", timeout_seconds=600)   # an API call that reads or changes state
    @transfer_task("dump_postgres", timeout_seconds=…) # a long stream of data

The timeout is also enforced inside each task (socket, subprocess and exec deadlines): Prefect
cannot interrupt a blocking call in a worker thread. Every task raises through
``opsflow.redaction.redacted_errors``: a failed task's state message, events and logged
traceback never carry a secret.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from prefect import Task, task
from prefect.cache_policies import NO_CACHE

from opsflow.errors import API_RETRIES, PROBE_RETRIES, TRANSFER_RETRIES
from opsflow.redaction import redacted_errors

P = ParamSpec("P")
R = TypeVar("R")


def _task(
    policy: dict[str, Any], name: str, timeout_seconds: float, options: dict[str, Any]
) -> Callable[[Callable[P, R]], Task[P, R]]:
    make: Callable[[Callable[P, R]], Task[P, R]] = task(
        name=name,
        timeout_seconds=timeout_seconds,
        cache_policy=NO_CACHE,
        **policy,
        # runbook flows persist their result; their tasks must not inherit that
        **({"persist_result": False} | options),
    )

    def decorator(fn: Callable[P, R]) -> Task[P, R]:
        return make(redacted_errors(fn))

    return decorator


def probe_task(
    name: str, *, timeout_seconds: float, **options: Any
) -> Callable[[Callable[P, R]], Task[P, R]]:
    """A quick look at one target (``PROBE_RETRIES``)."""
    return _task(PROBE_RETRIES, name, timeout_seconds, options)


def api_task(
    name: str, *, timeout_seconds: float, **options: Any
) -> Callable[[Callable[P, R]], Task[P, R]]:
    """An API call that reads or changes state (``API_RETRIES``)."""
    return _task(API_RETRIES, name, timeout_seconds, options)


def transfer_task(
    name: str, *, timeout_seconds: float, **options: Any
) -> Callable[[Callable[P, R]], Task[P, R]]:
    """A long stream of data (``TRANSFER_RETRIES``)."""
    return _task(TRANSFER_RETRIES, name, timeout_seconds, options)
