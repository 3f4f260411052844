"""Benchmark of issue 10: the fixed cost of `opsflow run`, a one-step backup of an empty SQLite
database, whole process (the real console script in a child process, as an operator runs it):

* ``--local`` with the benchmark's Prefect server up (goal <= 1.5 s);
* ``--local`` with no server configured: the first command starts the ``OPSFLOW_HOME`` server
  (cold), the next ones reuse it (goal <= 5 s); `opsflow down` stops it;
* through the deployment `opsflow up` serves: CLI start -> first task running (the task run's
  Running state on the server) p50 <= 1.5 s, whole command <= 3 s.
"""

from __future__ import annotations

import os
import resource
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from benchmarks.common import Row, median, stop_process_group, verdict
from tests.support.cli import OPSFLOW

RUNS = 5
CPU: list[float] = []
"""CPU seconds (user + system) of each command, less sensitive than wall time to other load."""
REPO = Path(__file__).resolve().parent.parent


@dataclass
class OncallFigures:
    local_server_s: list[float] = field(default_factory=list)
    local_server_cpu_s: list[float] = field(default_factory=list)
    no_server_cold_s: float = 0.0
    no_server_warm_s: list[float] = field(default_factory=list)
    served_to_task_s: list[float] = field(default_factory=list)
    served_whole_s: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items()}

    def rows(self) -> list[Row]:
        name = "opsflow run backup, empty SQLite"
        p50 = median
        return [
            Row(
                name,
                f"--local, server up: whole process, p50 of {len(self.local_server_s)}",
                f"{p50(self.local_server_s):.2f} s",
                goal="<= 1.5 s",
                result=verdict(p50(self.local_server_s) <= 1.5),
            ),
            Row(
                name,
                f"--local, server up: CPU of the process, p50 of {len(self.local_server_cpu_s)}",
                f"{p50(self.local_server_cpu_s):.2f} s",
            ),
            Row(
                name,
                "--local, no server: first command (starts the home server)",
                f"{self.no_server_cold_s:.2f} s",
                goal="<= 5 s",
                result=verdict(self.no_server_cold_s <= 5),
            ),
            Row(
                name,
                f"--local, no server: next commands, p50 of {len(self.no_server_warm_s)}",
                f"{p50(self.no_server_warm_s):.2f} s",
                goal="<= 5 s",
                result=verdict(p50(self.no_server_warm_s) <= 5),
            ),
            Row(
                name,
                f"served: CLI start -> first task running, p50 of {len(self.served_to_task_s)}",
                f"{p50(self.served_to_task_s):.2f} s",
                goal="<= 1.5 s",
                result=verdict(p50(self.served_to_task_s) <= 1.5),
            ),
            Row(
                name,
                f"served: whole command, p50 of {len(self.served_whole_s)}",
                f"{p50(self.served_whole_s):.2f} s",
                goal="<= 3 s",
                result=verdict(p50(self.served_whole_s) <= 3),
            ),
        ]


def write_inventory(workdir: Path) -> Path:
    db = workdir / "oncall-empty.db"
    with sqlite3.connect(db) as conn:
        conn.execute("create table if not exists t (x integer)")
    conn.close()
    inventory = workdir / "oncall-inventory.yaml"
    inventory.write_text(f"""
environments:
  bench:
    databases: [{{name: empty, kind: sqlite, path: "{db}"}}]
    backup_store: {{url: "file://{workdir}/oncall-backups"}}
  local:
    disks: ["{workdir}"]
""")
    return inventory


def _cli(env: dict[str, str], *args: str) -> tuple[float, float, str]:
    """(wall seconds, start time.time(), stdout) of one `opsflow` command; it must succeed."""
    started_at = time.time()
    started = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(
        [*OPSFLOW, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    if result.returncode != 0:
        raise RuntimeError(f"opsflow {' '.join(args)}: {result.returncode}\n{result.stderr}")
    return wall, started_at, result.stderr


def _first_task_running(api: str, stderr: str) -> float:
    """time.time() of the Running state of the run's first task run (the run id is on the
    first line `opsflow run` prints)."""
    run_id = stderr.split(": run ", 1)[1].split()[0]
    response = httpx.post(
        f"{api}/task_runs/filter",
        json={"flow_runs": {"id": {"any_": [run_id]}}, "sort": "EXPECTED_START_TIME_ASC"},
        timeout=30,
    )
    response.raise_for_status()
    starts = [r["start_time"] for r in response.json() if r.get("start_time")]
    return min(datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() for s in starts)


def run(workdir: Path, runs: int = RUNS) -> OncallFigures:
    api = os.environ["PREFECT_API_URL"]
    inventory = write_inventory(workdir)
    # each OPSFLOW_HOME below has its own ledger (and key) inside it, as an operator's would
    base = {k: v for k, v in os.environ.items() if k != "OPSFLOW_LEDGER_URL"}
    base["OPSFLOW_INVENTORY"] = str(inventory)
    figures = OncallFigures()
    backup = ("run", "backup", "--env", "bench")

    with_server = {**base, "OPSFLOW_HOME": str(workdir / "oncall-home")}
    _cli(with_server, *backup, "--local")  # warm-up: the ledger is created
    CPU.clear()
    figures.local_server_s = [_cli(with_server, *backup, "--local")[0] for _ in range(runs)]
    figures.local_server_cpu_s = list(CPU)

    alone = {k: v for k, v in base.items() if k != "PREFECT_API_URL"}
    alone["OPSFLOW_HOME"] = str(workdir / "oncall-alone")
    try:
        figures.no_server_cold_s = _cli(alone, *backup, "--local")[0]
        figures.no_server_warm_s = [_cli(alone, *backup, "--local")[0] for _ in range(runs)]
    finally:
        subprocess.run([*OPSFLOW, "down"], cwd=REPO, env=alone, capture_output=True, timeout=120)

    up_env = with_server  # the runner polls every OPSFLOW_RUNNER_POLL_SECONDS (0.5 s)
    with (workdir / "oncall-up.log").open("wb") as log:
        served = subprocess.Popen(
            [*OPSFLOW, "up"],
            cwd=REPO,
            env=up_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_served(api, served)
        _cli(with_server, *backup)  # warm-up
        for _ in range(runs):
            wall, started_at, stderr = _cli(with_server, *backup)
            figures.served_whole_s.append(wall)
            figures.served_to_task_s.append(_first_task_running(api, stderr) - started_at)
    finally:
        stop_process_group(served, timeout=20)
    return figures


def _wait_served(api: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        response = httpx.get(f"{api}/deployments/name/backup/nightly", timeout=10)
        if response.status_code == 200 and response.json().get("status") == "READY":
            return
        time.sleep(0.5)
    raise RuntimeError("opsflow up did not serve backup/nightly")


if __name__ == "__main__":  # python -m benchmarks.oncall (with PREFECT_API_URL set)
    import tempfile

    figures = run(Path(tempfile.mkdtemp(prefix="opsflow-oncall-")))
    for row in figures.rows():
        print(row.measure, row.value, row.result, file=sys.stderr)
