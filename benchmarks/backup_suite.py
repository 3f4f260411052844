"""The issue-4 part of ``python -m benchmarks``: PostgreSQL, the pgbench databases, and the
backup / restore / drill benchmarks of ``benchmarks.backup``, in that order."""

from __future__ import annotations

import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from rich.console import Console

from benchmarks import backup
from benchmarks.common import Row
from benchmarks.pgdb import PgbenchDb, PgServer, pgbench_database, postgres_server


def _databases(
    server: PgServer, scale: int, small_scale: int, with_small: bool, console: Console
) -> tuple[PgbenchDb, PgbenchDb | None]:
    dbs: list[PgbenchDb] = []
    for s in [scale] + ([small_scale] if with_small and small_scale > 0 else []):
        console.print(f"pgbench database, scale {s} (reused when complete)...")
        dbs.append(pgbench_database(server, s))
        db = dbs[-1]
        how = "reused" if db.reused else f"built in {db.build_s:.0f} s"
        console.print(f"  {db.name}: {db.size_bytes / 1e6:.0f} MB, {how}")
    return dbs[0], (dbs[1] if len(dbs) > 1 else None)


def run_backup_side(
    stack: ExitStack,
    workdir: Path,
    selected: list[str],
    report: dict[str, Any],
    console: Console,
    scale: int,
    small_scale: int,
    keep_db: bool,
) -> list[Row]:
    rows: list[Row] = []
    server = stack.enter_context(postgres_server())
    report["postgres"] = {"host": server.host, "port": server.port, "own_cluster": server.own}
    big, small = _databases(server, scale, small_scale, "backup" in selected, console)
    report["pgbench_databases"] = [
        {"name": d.name, "scale": d.scale, "bytes": d.size_bytes, "reused": d.reused}
        for d in (big, small)
        if d is not None
    ]
    if not keep_db and not server.own:  # an own cluster goes away as a whole

        def drop() -> None:
            for db in (big, small):
                if db is not None:
                    server.drop(db.name)

        stack.callback(drop)
    backup.write_inventory(workdir, [d for d in (big, small) if d is not None])
    if "backup" in selected:
        console.print(f"[bold]backup[/]: shell pipeline vs the backup flow, s{scale}...")
        started = time.monotonic()
        figures = backup.run_backup(workdir, big, small)
        report["backup"] = figures.as_dict() | {"wall_s": round(time.monotonic() - started, 1)}
        report["load_average_after_backup"] = _load()
        rows += figures.rows()
    if "restore" in selected:
        console.print(f"[bold]restore[/]: shell pipeline vs the restore flow, s{scale}...")
        started = time.monotonic()
        restored = backup.run_restore(workdir, big)
        report["restore"] = restored.as_dict() | {"wall_s": round(time.monotonic() - started, 1)}
        report["load_average_after_restore"] = _load()
        rows += restored.rows()
    if "drill" in selected:
        console.print(f"[bold]drill[/]: the dr-drill flow on s{scale}...")
        started = time.monotonic()
        drill = backup.run_drill(workdir, big)
        report["drill"] = drill.as_dict() | {"wall_s": round(time.monotonic() - started, 1)}
        report["load_average_after_drill"] = _load()
        rows += drill.rows()
    return rows


def _load() -> tuple[float, float, float]:
    import os

    return os.getloadavg()
