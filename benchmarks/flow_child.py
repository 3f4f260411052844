"""Run one backup-side flow in this (child) process and print its figures as one JSON line.

``python -m benchmarks.flow_child backup|restore|drill|idle ENV [TARGET_DB]``

The benchmark runs each flow in a process of its own so that the process's peak resident
memory (``VmHWM`` of /proc/self/status, read here just before exiting) is the flow's alone.
The environment (inventory, ledger, Prefect API) comes from the parent.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

MARKER = "BENCH-RESULT "


def memory_kb() -> dict[str, int]:
    """VmHWM (peak resident set) and VmRSS of this process, in kB."""
    figures: dict[str, int] = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            figures[key] = int(value.split()[0])
    return figures


def cpu_s() -> float:
    """User + system CPU of this process and of the children it waited for (pg_dump, psql)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv: list[str]) -> int:
    which, env = argv[0], argv[1]
    imported = time.perf_counter()
    if which == "idle":  # the floor: what importing the three flows (and Prefect) costs
        import flows.backup
        import flows.dr_drill
        import flows.restore  # noqa: F401

        print(
            MARKER
            + json.dumps(
                {"flow": which, "import_s": time.perf_counter() - imported, **memory_kb()}
            ),
            flush=True,
        )
        return 0
    if which == "backup":
        from flows.backup import backup

        started, cpu = time.perf_counter(), cpu_s()
        state = backup(env=env, requested_by="benchmark", return_state=True)
    elif which == "restore":
        from flows.restore import restore

        started, cpu = time.perf_counter(), cpu_s()
        state = restore(
            env=env,
            database="pgbench",
            target_db=argv[2],
            requested_by="benchmark",
            return_state=True,
        )
    elif which == "drill":
        from flows.dr_drill import dr_drill

        started, cpu = time.perf_counter(), cpu_s()
        state = dr_drill(env=env, requested_by="benchmark", return_state=True)
    else:
        raise SystemExit(f"unknown flow {which!r}")
    call_s, call_cpu_s = time.perf_counter() - started, cpu_s() - cpu
    report: Any = state.result(raise_on_failure=False)
    out = {
        "flow": which,
        "state": state.name,
        "message": state.message,
        "call_s": call_s,
        "call_cpu_s": call_cpu_s,
        "import_s": started - imported,
        "flow_run_id": str(state.state_details.flow_run_id),
        "report": report.model_dump(mode="json") if hasattr(report, "model_dump") else repr(report),
        **memory_kb(),
    }
    print(MARKER + json.dumps(out), flush=True)
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
