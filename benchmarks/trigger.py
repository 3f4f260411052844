"""Benchmark 3: trigger -> first task running, for a served deployment.

``python -m benchmarks.served_flow`` serves a one-task flow (``flow.serve``, what
``opsflow up`` does for every runbook) with ``PREFECT_RUNNER_POLL_FREQUENCY=1``. This process
triggers it with ``run_deployment(timeout=0)`` (as the CLI, the UI or the API would) and waits
for the task's marker file and the run's end before the next trigger. Latency = the task's
``time.time()`` at its first line minus ``time.time()`` just before ``run_deployment``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import Row, percentile, stop_process_group
from benchmarks.served_flow import DEPLOYMENT_NAME, FLOW_NAME

POLL_FREQUENCY_S = 1
READY_SECONDS = 120
RUN_SECONDS = 60


@dataclass
class Trigger:
    to_flow_s: float
    to_task_s: float
    run_s: float  # trigger to the flow run's final state (polled every 0.2 s)
    to_pending_s: float  # the server's Pending state: the runner has picked the run up
    to_running_s: float  # the server's Running state: the run's process has started


@dataclass
class TriggerFigures:
    warmup: Trigger
    runs: list[Trigger]

    def _p(self, attr: str, pct: float) -> float:
        return percentile([getattr(r, attr) for r in self.runs], pct)

    def as_dict(self) -> dict[str, Any]:
        return {
            "poll_frequency_s": POLL_FREQUENCY_S,
            "runs": len(self.runs),
            "trigger_to_task_s_p50": round(self._p("to_task_s", 50), 3),
            "trigger_to_task_s_p90": round(self._p("to_task_s", 90), 3),
            "trigger_to_flow_s_p50": round(self._p("to_flow_s", 50), 3),
            "trigger_to_final_state_s_p50": round(self._p("run_s", 50), 3),
            "trigger_to_pending_s_p50": round(self._p("to_pending_s", 50), 3),
            "trigger_to_running_s_p50": round(self._p("to_running_s", 50), 3),
            "warmup": vars(self.warmup),
            "all": [vars(r) for r in self.runs],
        }

    def rows(self) -> list[Row]:
        name = f"served deployment, poll {POLL_FREQUENCY_S} s"
        n = len(self.runs)
        measures = (
            ("trigger -> first task runs", "to_task_s", 50),
            ("trigger -> first task runs", "to_task_s", 90),
            ("  runner picked it up (Pending)", "to_pending_s", 50),
            ("  run process started (Running)", "to_running_s", 50),
            ("  flow's first line", "to_flow_s", 50),
            ("trigger -> run finished", "run_s", 50),
        )
        return [
            Row(name, f"{label}, p{pct} of {n}", f"{self._p(attr, pct):.2f} s")
            for label, attr, pct in measures
        ]


def start_served(workdir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PREFECT_RUNNER_POLL_FREQUENCY": str(POLL_FREQUENCY_S)}
    with (workdir / "served.log").open("wb") as log:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "benchmarks.served_flow"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_for_deployment(proc: subprocess.Popen[bytes], workdir: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    deadline = time.monotonic() + READY_SECONDS
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            try:
                client.read_deployment_by_name(f"{FLOW_NAME}/{DEPLOYMENT_NAME}")
                return
            except ObjectNotFound:
                time.sleep(0.5)
    tail = (workdir / "served.log").read_text(errors="replace")[-3000:]
    raise RuntimeError(f"the served deployment did not appear:\n{tail}")


def _trigger_once(markers: Path, run: str) -> Trigger:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    marker = markers / f"{run}.json"
    triggered = time.time()
    flow_run: Any = run_deployment(
        f"{FLOW_NAME}/{DEPLOYMENT_NAME}",
        parameters={"marker_dir": str(markers), "run": run},
        timeout=0,
    )
    deadline = time.monotonic() + RUN_SECONDS
    while not marker.exists():  # a cheap local poll: no load on the server while waiting
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run}: its task did not start within {RUN_SECONDS} s")
        time.sleep(0.01)
    seen = json.loads(marker.read_text())
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            state = client.read_flow_run(flow_run.id).state
            if state is not None and state.is_final():
                ended = time.time()
                if not state.is_completed():
                    raise RuntimeError(f"run {run} ended {state.name}")
                history = {
                    s.type.value: s.timestamp.timestamp()
                    for s in reversed(client.read_flow_run_states(flow_run.id))
                }  # reversed: the first state of each type wins
                return Trigger(
                    to_flow_s=seen["flow_started"] - triggered,
                    to_task_s=seen["task_started"] - triggered,
                    run_s=ended - triggered,
                    to_pending_s=history["PENDING"] - triggered,
                    to_running_s=history["RUNNING"] - triggered,
                )
            time.sleep(0.2)
    raise RuntimeError(f"run {run} did not finish within {RUN_SECONDS} s")


def run(workdir: Path, runs: int = 10) -> TriggerFigures:
    markers = workdir / "markers"
    markers.mkdir()
    proc = start_served(workdir)
    try:
        _wait_for_deployment(proc, workdir)
        warmup = _trigger_once(markers, "warmup")
        measured = [_trigger_once(markers, f"run-{i:02d}") for i in range(runs)]
    finally:
        stop_process_group(proc)  # before the server: the runner pauses its deployment on exit
    return TriggerFigures(warmup, measured)
