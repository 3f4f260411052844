"""Benchmark 2: per-task orchestration overhead of a 100-task flow against the local server.

``hundred_tasks`` runs 100 trivial tasks either submitted to a ThreadPoolTaskRunner (how the
health check fans out) or called one after another, and times its own task loop. Two figures
per mode, each divided by 100:

* in the flow: the loop's wall time, what a flow waits for its tasks;
* until recorded: loop start until the API shows all 100 task runs Completed. The client sends
  task-run states as events and the server writes them after the flow has returned; a next run
  started before that waits for the backlog, so this is the sustained cost.

Every repetition waits until its task runs are recorded, so repetitions do not slow each other.
The shell baseline is the smallest step a shell runbook takes: one fork/exec of ``/bin/true``.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from benchmarks.common import Row, median, wait_task_runs_recorded

TASKS = 100
WORKERS = 32  # the health check's MAX_PARALLEL_CHECKS
Mode = Literal["submit", "sequential"]
LABELS: dict[Mode, str] = {
    "submit": f"submit, {WORKERS} threads",
    "sequential": "sequential calls",
}


@dataclass
class ModeFigures:
    mode: Mode
    loop_s: list[float] = field(default_factory=list)
    recorded_s: list[float] = field(default_factory=list)
    call_s: list[float] = field(default_factory=list)

    @property
    def loop_ms_per_task(self) -> float:
        return median(self.loop_s) * 1000 / TASKS

    @property
    def recorded_ms_per_task(self) -> float:
        return median(self.recorded_s) * 1000 / TASKS

    def as_dict(self) -> dict[str, Any]:
        return {
            "in_flow_ms_per_task_p50": round(self.loop_ms_per_task, 2),
            "until_recorded_ms_per_task_p50": round(self.recorded_ms_per_task, 2),
            "flow_call_s_p50": round(median(self.call_s), 3),
            "loop_s": [round(v, 4) for v in self.loop_s],
            "recorded_s": [round(v, 4) for v in self.recorded_s],
            "call_s": [round(v, 4) for v in self.call_s],
        }


@dataclass
class OverheadFigures:
    modes: dict[Mode, ModeFigures]
    shell_ms_per_step: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "tasks": TASKS,
            "workers": WORKERS,
            "repetitions": len(self.modes["submit"].loop_s),
            **{mode: fig.as_dict() for mode, fig in self.modes.items()},
            "shell_fork_exec_ms_per_step": round(self.shell_ms_per_step, 3),
        }

    def rows(self) -> list[Row]:
        name = f"orchestration, {TASKS}-task flow"
        shell = self.shell_ms_per_step
        reps = len(self.modes["submit"].loop_s)
        rows = [Row(name, "shell: fork/exec of /bin/true", f"{shell:.2f} ms/step")]
        for mode, fig in self.modes.items():
            for what, value in (
                ("in the flow", fig.loop_ms_per_task),
                ("until recorded", fig.recorded_ms_per_task),
            ):
                rows.append(
                    Row(
                        name,
                        f"{LABELS[mode]}: {what}, p50 of {reps}",
                        f"{value:.2f} ms/task",
                        f"{shell:.2f} ms/step",
                        f"{value / shell:.1f}x shell",
                    )
                )
            rows.append(
                Row(name, f"{LABELS[mode]}: whole flow call, p50", f"{median(fig.call_s):.2f} s")
            )
        return rows


def _define_flow() -> Any:
    from prefect import flow, task
    from prefect.context import get_run_context
    from prefect.task_runners import ThreadPoolTaskRunner

    @task(name="noop")
    def noop(i: int) -> int:
        return i

    runner: Any = ThreadPoolTaskRunner(max_workers=WORKERS)

    @flow(name="bench-hundred-tasks", task_runner=runner)
    def hundred_tasks(mode: str) -> tuple[float, float, Any]:
        start = time.perf_counter()
        if mode == "submit":
            futures = [noop.submit(i) for i in range(TASKS)]
            values = [f.result() for f in futures]
        else:
            values = [noop(i) for i in range(TASKS)]
        end = time.perf_counter()
        if values != list(range(TASKS)):
            raise RuntimeError("tasks returned wrong values")
        return start, end, get_run_context().flow_run.id  # type: ignore[union-attr]

    return hundred_tasks


def shell_ms_per_step(steps: int = TASKS) -> float:
    start = time.perf_counter()
    subprocess.run(
        ["bash", "-c", 'for i in $(seq "$1"); do /bin/true; done', "bash", str(steps)],
        check=True,
        timeout=60,
    )
    return (time.perf_counter() - start) * 1000 / steps


def _measure(hundred_tasks: Any, mode: Mode, fig: ModeFigures | None) -> None:
    called = time.perf_counter()
    start, end, flow_run_id = hundred_tasks(mode=mode)
    returned = time.perf_counter()
    recorded = wait_task_runs_recorded(flow_run_id, TASKS)
    if fig is not None:
        fig.loop_s.append(end - start)
        fig.recorded_s.append(recorded - start)
        fig.call_s.append(returned - called)


def run(repetitions: int = 5) -> OverheadFigures:
    hundred_tasks = _define_flow()
    _measure(hundred_tasks, "submit", None)  # warm-up: flow and task registration, threads
    modes: dict[Mode, ModeFigures] = {
        "submit": ModeFigures("submit"),
        "sequential": ModeFigures("sequential"),
    }
    for _ in range(repetitions):
        for mode, fig in modes.items():  # interleaved, so load changes hit both modes
            _measure(hundred_tasks, mode, fig)
    shell = median([shell_ms_per_step() for _ in range(3)])
    return OverheadFigures(modes, shell)
