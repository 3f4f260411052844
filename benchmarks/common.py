"""Shared helpers: free ports, percentiles, process shutdown, the figures table rows."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any

from deployments.up import stop_process_group
from tests.support.net import free_port

__all__ = ["Row", "free_port", "median", "percentile", "stop_process_group"]


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (p50 of 10 values is the 5th smallest, p90 the 9th)."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    """The true median (mean of the two middle values for an even count)."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2


@dataclass
class Row:
    """One line of the results table (and of latest.json)."""

    benchmark: str
    measure: str
    value: str
    baseline: str = ""
    ratio: str = ""
    goal: str = ""
    result: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


Timed = tuple[str, float, str, str, float | None]
"""(measure, seconds, baseline, ratio, goal in seconds or None) of a timing table."""


def timed_rows(benchmark: str, runs: int, table: tuple[Timed, ...]) -> list[Row]:
    """The rows of a table of p50 timings, each with its goal and verdict when it has one."""
    return [
        Row(
            benchmark,
            f"{measure}, p50 of {runs}",
            f"{value:.2f} s",
            baseline=baseline,
            ratio=ratio,
            goal="" if goal is None else f"<= {goal:g} s",
            result="" if goal is None else verdict(value <= goal),
        )
        for measure, value, baseline, ratio, goal in table
    ]


def wait_task_runs_recorded(flow_run_id: Any, count: int, timeout: float = 120) -> float:
    """Poll the API until ``count`` task runs of the flow run are Completed there; return the
    ``time.perf_counter()`` when they were seen. The server records task-run states from events
    after the flow call has returned, so this is when orchestration work really ended."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType

    runs = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    done = TaskRunFilter(
        state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.COMPLETED]))
    )
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            seen = client.read_task_runs(flow_run_filter=runs, task_run_filter=done, limit=count)
            if len(seen) >= count:
                return time.perf_counter()
            time.sleep(0.1)
    raise RuntimeError(f"flow run {flow_run_id}: {count} task runs not recorded in {timeout} s")
