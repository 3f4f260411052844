"""The Prefect flow of a runbook (``runbook_flow``) and the redaction around what it leaves in
Prefect."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from prefect import Flow, flow
from prefect.client.schemas.objects import State
from prefect.utilities.hashing import file_hash

from opsflow.redaction import redact, redacted_errors

P = ParamSpec("P")
R = TypeVar("R")


def runbook_flow(
    name: str, description: str, *, timeout_seconds: float = 12 * 3600, **options: Any
) -> Callable[[Callable[P, R]], Flow[P, R]]:
    """The Prefect flow of a runbook: its name, the description the UI shows, a run timeout,
    ``print`` going to the run's log, secrets masked in what its run leaves in Prefect (an
    exception it raises, the message of a state it returns: ``redacted_flow``), and its result
    (the report, already redacted) persisted as JSON, so `opsflow run` following a served run
    can print it (``--json``)."""

    def decorator(fn: Callable[P, R]) -> Flow[P, R]:
        made: Flow[P, R] = flow(
            name=name,
            description=description,
            timeout_seconds=timeout_seconds,
            log_prints=True,
            persist_result=True,
            result_serializer="json",
            version=file_hash(inspect.getsourcefile(fn) or ""),  # the runbook's file, as
            **options,  # Prefect's default would hash the wrapper's file
        )(redacted_flow(fn))
        return made

    return decorator


def redacted_flow(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` raising through ``redacted_errors``, with the message of a state it returns
    redacted (a runbook that ends ``Failed(message=...)`` itself)."""
    return redacted_errors(fn, on_result=_redact_state)


def _redact_state(result: R) -> R:
    if isinstance(result, State) and result.message:
        result.message = redact(result.message)
    return result
