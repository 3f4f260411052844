"""Benchmark 1: the daily health check over 50 HTTP targets that each answer in 200 ms.

The real ``health_check`` flow runs in this process against the benchmark's Prefect server on a
generated inventory (environment ``bench``: 50 endpoints, ``disks: []``, nothing else). The
baseline is what seed 001 did: a bash loop of ``curl`` over the same URLs, one after another.
Its slowest request is the floor a concurrent check can reach.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import Row, median, verdict, wait_task_runs_recorded

ENV = "bench"
CURL_LOOP = (
    'for u in "$@"; do '
    "curl -s -o /dev/null --max-time 10 -w '%{http_code} %{time_total}\\n' \"$u\"; "
    "done"
)


@dataclass
class ShellBaseline:
    wall_s: float
    slowest_s: float
    codes: list[str]


@dataclass
class ThreadsBaseline:
    """The same 50 GETs through tasks.http.http_get in plain Python threads (no Prefect)."""

    workers: int  # flows.health_check.MAX_PARALLEL_CHECKS
    fresh_context_s: float  # what check_endpoint does: verify=True, a new SSL context per call
    shared_context_s: float  # the same calls sharing one SSL context


@dataclass
class FlowRun:
    checks_s: float  # the flow's own report: start of the run to the last check collected
    call_s: float  # the whole in-process flow call, engine setup and teardown included
    recorded_s: float  # call start until the API shows every check's task run Completed
    overall: str
    checks: int
    healthy: int
    slowest_check_ms: float


@dataclass
class HealthFigures:
    targets: int
    shell: ShellBaseline
    threads: ThreadsBaseline
    first: FlowRun
    runs: list[FlowRun] = field(default_factory=list)

    @property
    def checks_s(self) -> float:
        return median([r.checks_s for r in self.runs])

    @property
    def call_s(self) -> float:
        return median([r.call_s for r in self.runs])

    def as_dict(self) -> dict[str, Any]:
        return {
            "targets": self.targets,
            "target_delay_ms": 200,
            "shell_sequential_wall_s": round(self.shell.wall_s, 3),
            "shell_slowest_target_s": round(self.shell.slowest_s, 3),
            "flow_checks_wall_s_p50": round(self.checks_s, 3),
            "flow_call_wall_s_p50": round(self.call_s, 3),
            "until_recorded_s_p50": round(median([r.recorded_s for r in self.runs]), 3),
            "speedup_checks_vs_sequential": round(self.shell.wall_s / self.checks_s, 2),
            "speedup_call_vs_sequential": round(self.shell.wall_s / self.call_s, 2),
            "threads_fresh_ssl_context_wall_s": round(self.threads.fresh_context_s, 3),
            "threads_shared_ssl_context_wall_s": round(self.threads.shared_context_s, 3),
            "first_run": vars(self.first),
            "runs": [vars(r) for r in self.runs],
        }

    def rows(self) -> list[Row]:
        shell, checks, call = self.shell.wall_s, self.checks_s, self.call_s
        floor = self.shell.slowest_s + 1.0
        name = f"health check, {self.targets} x 200 ms"
        n = len(self.runs)
        return [
            Row(name, "shell: curl loop, one by one", f"{shell:.2f} s"),
            Row(name, "slowest single target (curl)", f"{self.shell.slowest_s:.3f} s"),
            Row(
                name,
                f"no Prefect: http_get in {self.threads.workers} threads",
                f"{self.threads.fresh_context_s:.2f} s",
                f"{shell:.2f} s",
                f"{shell / self.threads.fresh_context_s:.1f}x faster",
            ),
            Row(
                name,
                "  same, one shared SSL context",
                f"{self.threads.shared_context_s:.2f} s",
                f"{shell:.2f} s",
                f"{shell / self.threads.shared_context_s:.1f}x faster",
            ),
            Row(
                name,
                f"flow: checks wall, p50 of {n}",
                f"{checks:.2f} s",
                f"{shell:.2f} s",
                f"{shell / checks:.1f}x faster",
                ">= 8x faster",
                verdict(shell / checks >= 8),
            ),
            Row(
                name,
                "  same, against the slowest target",
                f"{checks:.2f} s",
                f"{self.shell.slowest_s:.2f} s",
                f"+{checks - self.shell.slowest_s:.2f} s",
                f"<= {floor:.2f} s (slowest + 1 s)",
                verdict(checks <= floor),
            ),
            Row(
                name,
                f"flow: whole call, p50 of {n}",
                f"{call:.2f} s",
                f"{shell:.2f} s",
                f"{shell / call:.1f}x faster",
            ),
            Row(
                name,
                f"flow: call -> all recorded, p50 of {n}",
                f"{median([r.recorded_s for r in self.runs]):.2f} s",
            ),
            Row(name, "flow: first call of the process", f"{self.first.call_s:.2f} s"),
            Row(
                name,
                "checks healthy (worst run)",
                f"{min(r.healthy for r in self.runs)}/{self.targets}",
            ),
        ]


def write_inventory(path: Path, urls: list[str]) -> None:
    endpoints = [{"name": f"target-{i:02d}", "url": url} for i, url in enumerate(urls)]
    data = {"environments": {ENV: {"endpoints": endpoints, "disks": []}}}
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")


def shell_baseline(urls: list[str]) -> ShellBaseline:
    """A bash loop of curl over every URL, one after another (seed 001's way)."""
    start = time.perf_counter()
    out = subprocess.run(
        ["bash", "-c", CURL_LOOP, "bash", *urls],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    wall = time.perf_counter() - start
    lines = [line.split() for line in out.splitlines()]
    codes = [code for code, _ in lines]
    if len(lines) != len(urls) or set(codes) != {"200"}:
        raise RuntimeError(f"the shell baseline did not get 200 from every target: {codes}")
    return ShellBaseline(wall, max(float(t) for _, t in lines), codes)


def threads_baseline(urls: list[str]) -> ThreadsBaseline:
    """opsflow's own HTTP call (tasks.http.http_get) over the URLs, in as many plain threads as
    the flow's task runner has; once with a fresh SSL context per call (as check_endpoint does)
    and once with one shared context. The difference is the cost of building SSL contexts,
    which the GIL serialises."""
    from flows.health_check import MAX_PARALLEL_CHECKS
    from tasks.http import http_get, tls_verify

    timeout = timedelta(seconds=10)
    shared = ssl.create_default_context()

    def fresh(url: str) -> int:
        return http_get(url, timeout, tls_verify(True, None)).status_code

    def reuse(url: str) -> int:
        return http_get(url, timeout, shared).status_code

    walls = []
    for get in (fresh, reuse):
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=MAX_PARALLEL_CHECKS) as pool:
            codes = list(pool.map(get, urls))
        walls.append(time.perf_counter() - start)
        if set(codes) != {200}:
            raise RuntimeError(f"plain-thread GETs did not all answer 200: {codes}")
    return ThreadsBaseline(MAX_PARALLEL_CHECKS, *walls)


def run_flow_once() -> FlowRun:
    """One in-process call of the real health_check flow on the bench environment."""
    from flows.health_check import HealthReport, health_check

    start = time.perf_counter()
    state = health_check(env=ENV, notify=False, requested_by="benchmark", return_state=True)
    call = time.perf_counter() - start
    report = state.result(raise_on_failure=False)
    if not isinstance(report, HealthReport):
        raise RuntimeError(f"health_check ended {state.name}: {report!r}")
    # the next run must not start while the server still writes this one's task runs
    recorded = wait_task_runs_recorded(state.state_details.flow_run_id, len(report.results))
    healthy = sum(r.status.value == "healthy" for r in report.results)
    slowest = max((r.duration_ms for r in report.results), default=0.0)
    return FlowRun(
        checks_s=report.seconds,
        call_s=call,
        recorded_s=recorded - start,
        overall=report.overall.value,
        checks=len(report.results),
        healthy=healthy,
        slowest_check_ms=slowest,
    )


def run(urls: list[str], workdir: Path, repetitions: int = 5) -> HealthFigures:
    inventory = workdir / "bench-inventory.yaml"
    write_inventory(inventory, urls)
    os.environ["OPSFLOW_INVENTORY"] = str(inventory)
    shell = shell_baseline(urls)
    threads = threads_baseline(urls)
    first = run_flow_once()  # warm-up: imports, flow and task registration
    runs = [run_flow_once() for _ in range(repetitions)]
    for r in [first, *runs]:
        if r.checks != len(urls):
            raise RuntimeError(f"expected {len(urls)} check results, got {r}")
    return HealthFigures(len(urls), shell, threads, first, runs)
