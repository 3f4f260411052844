"""``make bench``: start a Prefect server and 50 slow HTTP targets, run the three benchmarks of
issue 3, the fixed cost of `opsflow run` (issue 10, ``benchmarks/oncall.py``), the Docker
deploy target (issue 11, ``benchmarks/docker_deploy.py``) and the three of issue 4 (backup,
restore and DR drill of a >= 1 GB pgbench database), print the table and write
``benchmarks/results/latest.json``. Everything started here is stopped here, also on
Ctrl-C or SIGTERM; the pgbench databases are dropped unless --keep-db.

The Kubernetes rollout wait of issue 11 (``benchmarks/rollout.py``, mock API) runs too, and
the maintenance VACUUM step against ``vacuumdb --analyze`` (issue 12,
``benchmarks/maintenance_vacuum.py``, its own pgbench database of ``--scale``), and the alert
receiver of issue 13 (``benchmarks/receiver.py``: POST → 2xx under 100 alerts/s, alert →
first task running).

Usage: ``python -m benchmarks [--only health,overhead,trigger,oncall,docker_deploy,deploy_flow,
rollout,backup,restore,drill,maintenance,receiver] [--scale 70] [--small-scale 10] [--keep-db]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console
from rich.table import Table

from benchmarks.common import Row, free_port
from benchmarks.targets import start_slow_targets

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
ALL = (
    "health",
    "overhead",
    "trigger",
    "oncall",
    "docker_deploy",
    "deploy_flow",
    "rollout",
    "backup",
    "restore",
    "drill",
    "maintenance",
    "receiver",
)
BACKUP_SIDE = ("backup", "restore", "drill")
TARGETS = 50


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through every cleanup below


def machine() -> dict[str, Any]:
    model = ""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import prefect

    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "prefect": prefect.__version__,
        "platform": platform.platform(),
    }


def isolate(workdir: Path) -> None:
    """Point this process and its children at temporary homes (before prefect is imported)."""
    if "prefect" in sys.modules:
        raise RuntimeError("prefect was imported before the benchmark environment was set")
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.update(
        {
            "PREFECT_HOME": str(workdir / "prefect-client"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            # flow/task logs still go to the API at INFO; the console shows errors only (every
            # check_endpoint run warns that its timeout cannot cut a call in a worker thread)
            "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "ERROR",
            "OPSFLOW_HOME": str(workdir / "opsflow"),
            "OPSFLOW_LEDGER_URL": f"sqlite:///{workdir / 'ledger.db'}",
        }
    )


def table(rows: list[Row]) -> Table:
    out = Table(title="opsflow benchmarks (issues 3, 4, 10, 11, 12 and 13)", show_lines=False)
    for column in ("benchmark", "measure", "value", "baseline", "ratio", "goal", "result"):
        out.add_column(column, no_wrap=column in ("measure", "value", "baseline", "ratio"))
    previous = ""
    for row in rows:
        color = {"PASS": "green", "FAIL": "red"}.get(row.result, "")
        result = f"[{color}]{row.result}[/]" if color else row.result
        name = row.benchmark if row.benchmark != previous else ""
        out.add_row(name, row.measure, row.value, row.baseline, row.ratio, row.goal, result)
        previous = row.benchmark
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--only", default=",".join(ALL), help="comma list of " + ", ".join(ALL))
    parser.add_argument(
        "--scale", type=int, default=70, help="pgbench scale of the big database (70: ~1.05 GB)"
    )
    parser.add_argument(
        "--small-scale",
        type=int,
        default=10,
        help="pgbench scale of the second size for the backup's peak RSS (0: skip it)",
    )
    parser.add_argument(
        "--keep-db",
        action="store_true",
        help="keep the pgbench databases for the next run (reused when complete)",
    )
    args = parser.parse_args(argv)
    selected = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = set(selected) - set(ALL)
    if unknown:
        parser.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {', '.join(ALL)}")

    console = Console()
    console.width = max(console.width, 170)  # the table stays readable in logs and CI
    signal.signal(signal.SIGTERM, _on_sigterm)
    workdir = Path(tempfile.mkdtemp(prefix="opsflow-bench-"))
    isolate(workdir)
    started = time.monotonic()
    report: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_before": os.getloadavg(),
    }
    rows: list[Row] = []
    ok = False
    try:
        with ExitStack() as stack:
            from deployments.up import (
                drain_prefect_workers,
                start_embedded_server,
                stop_process_group,
            )

            port = free_port()
            server = start_embedded_server(workdir / "prefect-server", port, console)
            stack.callback(stop_process_group, server)
            stack.callback(drain_prefect_workers)  # runs first: callbacks unwind in reverse
            api = f"http://127.0.0.1:{port}/api"
            os.environ["PREFECT_API_URL"] = api
            console.print(f"Prefect server up at {api}")
            report["machine"] = machine()

            if "health" in selected:
                from benchmarks import health

                urls, stop_targets = start_slow_targets(TARGETS)
                stack.callback(stop_targets)
                console.print(f"[bold]1/3[/] health check over {TARGETS} targets of 200 ms...")
                figures = health.run(urls, workdir)
                report["health_check"] = figures.as_dict()
                rows += figures.rows()
            if "overhead" in selected:
                from benchmarks import overhead

                console.print("[bold]2/3[/] per-task overhead of a 100-task flow...")
                over = overhead.run()
                report["orchestration_overhead"] = over.as_dict()
                rows += over.rows()
            if "trigger" in selected:
                from benchmarks import trigger

                console.print("[bold]3/3[/] trigger -> first task of a served deployment...")
                trig = trigger.run(workdir)
                report["trigger_latency"] = trig.as_dict()
                rows += trig.rows()
            if "oncall" in selected:
                from benchmarks import oncall

                console.print("[bold]issue 10[/] fixed cost of `opsflow run` (local, served)...")
                fixed = oncall.run(workdir)
                report["oncall"] = fixed.as_dict()
                rows += fixed.rows()
            if "docker_deploy" in selected:
                from benchmarks import docker_deploy

                console.print("[bold]issue 11[/] Docker deploy: rollback, replace, downtime...")
                deploy = docker_deploy.run()
                report["docker_deploy"] = deploy.as_dict()
                rows += deploy.rows()
            if "deploy_flow" in selected:
                from benchmarks import deploy_flow

                console.print("[bold]issue 11[/] the deploy runbook on Docker, whole flow...")
                flow_figures = deploy_flow.run()
                report["deploy_flow"] = flow_figures.as_dict()
                rows += flow_figures.rows()
            if "rollout" in selected:
                from benchmarks import rollout

                console.print("[bold]issue 11[/] Kubernetes rollout wait (mock API)...")
                wait = rollout.run()
                report["rollout"] = wait.as_dict()
                rows += wait.rows()
            if set(selected) & set(BACKUP_SIDE):
                from benchmarks.backup_suite import run_backup_side

                rows += run_backup_side(
                    stack,
                    workdir,
                    selected,
                    report,
                    console,
                    args.scale,
                    args.small_scale,
                    args.keep_db,
                )
            if "maintenance" in selected:
                from benchmarks import maintenance_vacuum

                console.print(
                    f"[bold]issue 12[/] VACUUM step vs vacuumdb --analyze, "
                    f"pgbench -s {args.scale}..."
                )
                vacuum = maintenance_vacuum.run(args.scale, args.keep_db)
                report["maintenance_vacuum"] = vacuum.as_dict()
                rows += vacuum.rows()
            if "receiver" in selected:
                from benchmarks import receiver

                console.print(
                    "[bold]issue 13[/] alert receiver: POST -> 2xx at 100/s, alert -> task..."
                )
                intake = receiver.run(workdir)
                report["receiver"] = intake.as_dict()
                rows += intake.rows()
            console.print("stopping the processes started for the benchmark...")
        ok = True
    finally:
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            console.print(f"[red]benchmark failed[/]; logs kept in {workdir}")

    report["load_average_after"] = os.getloadavg()
    report["wall_s"] = round(time.monotonic() - started, 1)
    report["rows"] = [row.as_dict() for row in rows]
    report["goals_met"] = all(row.result != "FAIL" for row in rows)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    console.print(table(rows))
    load = ", ".join(f"{v:.1f}" for v in report["load_average_before"])
    console.print(
        f"{report['machine']['cpus']} CPUs, load average at start {load}; "
        f"total {report['wall_s']} s; figures in {RESULTS}"
    )
    return 0 if report["goals_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
