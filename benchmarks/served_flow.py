"""The tiny deployment of benchmark 3, served by ``python -m benchmarks.served_flow``.

Its first task writes ``{"flow_started": ..., "task_started": ...}`` (``time.time()``) to
``<marker_dir>/<run>.json``; the benchmark compares those with the moment it triggered the run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from prefect import flow, task

FLOW_NAME = "bench-trigger"
DEPLOYMENT_NAME = "bench"


@task(name="mark_started", timeout_seconds=30)
def mark_started(marker_dir: str, run: str, flow_started: float) -> None:
    task_started = time.time()
    path = Path(marker_dir) / f"{run}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"flow_started": flow_started, "task_started": task_started}))
    tmp.rename(path)  # atomic: the benchmark never reads half a file


@flow(name=FLOW_NAME)
def bench_trigger(marker_dir: str, run: str) -> None:
    flow_started = time.time()
    mark_started(marker_dir, run, flow_started)


if __name__ == "__main__":
    bench_trigger.serve(name=DEPLOYMENT_NAME, print_starting_message=False)
