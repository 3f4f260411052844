"""Benchmarks 4-6 (issue 4): backup and restore throughput of a >= 1 GB pgbench database
against the shell pipelines they replace, the flow's peak memory at two database sizes, and
the DR drill's measured RTO/RPO.

Every flow runs in a child process of its own (``benchmarks.flow_child``) against the
benchmark's Prefect server, with a generated inventory: one environment per database size
(``bench-s<scale>``, one PostgreSQL database ``pgbench`` reached ``direct``, a ``file://`` store
in the run's temp dir, recovery targets RTO 1 h / RPO 15 min, seed 000's "critical" ones).

* backup: ``pg_dump <db> | zstd -3 > file`` vs the ``backup`` flow, interleaved; throughput is
  MB (10^6 bytes) of plain dump per second. Peak RSS of the flow process at both sizes.
* restore: ``createdb new && zstd -d < file | psql new`` vs the ``restore`` flow with
  ``target_db`` (a new database; nothing else is touched), from the same stored object.
* drill: the ``dr-drill`` flow on the big database; RTO/RPO from its report and ledger row.

Phase durations inside a flow (``dump_postgres``, ``restore_postgres``, ...) come from the
task runs the Prefect API recorded.
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchmarks.common import Row, median, stop_process_group, verdict
from benchmarks.flow_child import MARKER
from benchmarks.pgdb import PgbenchDb, PgServer
from tests.support.postgres_cluster import postgres_bin_dir

ROOT = Path(__file__).resolve().parent.parent
RATIO_GOAL = 0.9
RSS_GOAL_MB = 200.0
RSS_GROWTH_GOAL = 0.10  # "independent of size": the big database may cost at most 10 % more
CHILD_TIMEOUT_S = 3600
RTO_TARGET = "1h"
RPO_TARGET = "15m"


def env_name(db: PgbenchDb) -> str:
    return f"bench-s{db.scale}"


def dsn_var(db: PgbenchDb) -> str:
    return f"OPSFLOW_BENCH_DSN_S{db.scale}"


def store_dir(workdir: Path, db: PgbenchDb) -> Path:
    return workdir / f"store-s{db.scale}"


def mb(size: float) -> float:
    return size / 1e6


def write_inventory(workdir: Path, dbs: list[PgbenchDb]) -> Path:
    """One environment per database; points OPSFLOW_INVENTORY and the DSN variables at it."""
    envs: dict[str, Any] = {}
    for db in dbs:
        os.environ[dsn_var(db)] = db.dsn
        envs[env_name(db)] = {
            "databases": [{"name": "pgbench", "kind": "postgres", "dsn": f"env:{dsn_var(db)}"}],
            "backup_store": {"url": f"file://{store_dir(workdir, db)}"},
            "recovery": {"rto": RTO_TARGET, "rpo": RPO_TARGET},
        }
    path = workdir / "bench-backup-inventory.yaml"
    path.write_text(yaml.safe_dump({"environments": envs}, sort_keys=False), encoding="utf-8")
    os.environ["OPSFLOW_INVENTORY"] = str(path)
    return path


# --- running things ---------------------------------------------------------------------------


@dataclass
class ChildRun:
    """One flow in its own process."""

    wall_s: float  # process start to exit: interpreter, imports, flow, teardown
    maxrss_mb: float  # ru_maxrss of the child from wait4 (its own peak, or a waited descendant's)
    cpu_s: float  # user + system CPU of the process and the children it waited for (pg_dump, psql)
    data: dict[str, Any]
    tasks_s: dict[str, float] = field(default_factory=dict)

    @property
    def call_s(self) -> float:
        return float(self.data["call_s"])

    @property
    def call_cpu_s(self) -> float:
        """CPU of the flow call alone (no interpreter start or imports), pg_dump/psql included."""
        return float(self.data["call_cpu_s"])

    @property
    def hwm_mb(self) -> float:
        """VmHWM: the flow process's own peak resident set."""
        return int(self.data["VmHWM"]) / 1024

    @property
    def report(self) -> dict[str, Any]:
        return dict(self.data["report"])

    def as_dict(self) -> dict[str, Any]:
        return {
            "wall_s": round(self.wall_s, 3),
            "call_s": round(self.call_s, 3),
            "import_s": round(float(self.data["import_s"]), 3),
            "vm_hwm_mb": round(self.hwm_mb, 1),
            "ru_maxrss_mb": round(self.maxrss_mb, 1),
            "cpu_s": round(self.cpu_s, 3),
            "call_cpu_s": round(self.call_cpu_s, 3),
            "state": self.data["state"],
            "tasks_s": {k: round(v, 3) for k, v in self.tasks_s.items()},
            "report": self.report,
        }


def task_seconds(flow_run_id: str, timeout: float = 60) -> dict[str, float]:
    """Seconds per task name of a flow run, as the API recorded them (summed over calls)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            seen = client.read_task_runs(flow_run_filter=runs, limit=200)
            done = [t for t in seen if t.state is not None and t.state.is_final()]
            if (seen and len(done) == len(seen)) or time.monotonic() > deadline:
                break
            time.sleep(0.3)
    figures: dict[str, float] = {}
    for task_run in done:
        name = task_run.name.rsplit("-", 1)[0]
        if task_run.start_time and task_run.end_time:
            seconds = (task_run.end_time - task_run.start_time).total_seconds()
            figures[name] = figures.get(name, 0.0) + seconds
    return figures


def run_flow(workdir: Path, which: str, env: str, *extra: str) -> ChildRun:
    """``python -m benchmarks.flow_child which env ...`` in its own process group."""
    stamp = f"{which}-{env}-{time.monotonic_ns()}"
    out_path, err_path = workdir / f"{stamp}.out", workdir / f"{stamp}.err"
    argv = [sys.executable, "-m", "benchmarks.flow_child", which, env, *extra]
    with out_path.open("wb") as out, err_path.open("wb") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=ROOT, stdout=out, stderr=err, start_new_session=True)
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
        except BaseException:
            stop_process_group(proc)
            raise
        wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    lines = [
        line[len(MARKER) :]
        for line in out_path.read_text(errors="replace").splitlines()
        if line.startswith(MARKER)
    ]
    if not lines:
        tail = err_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{which} flow (exit {proc.returncode}) printed no result: {tail}")
    data = json.loads(lines[-1])
    if data["state"] != "Completed":
        raise RuntimeError(f"{which} flow on {env} ended {data['state']}: {data['message']}")
    run = ChildRun(wall, usage.ru_maxrss / 1024, usage.ru_utime + usage.ru_stime, data)
    run.tasks_s = task_seconds(data["flow_run_id"])
    return run


def idle_rss_mb(workdir: Path) -> float:
    """VmHWM of a child that only imports the three flows (Prefect included) and exits."""
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.flow_child", "idle", "-"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith(MARKER))
    return int(json.loads(line[len(MARKER) :])["VmHWM"]) / 1024


@dataclass
class Shell:
    seconds: float
    cpu_s: float  # user + system CPU of bash and its pipeline (pg_dump, zstd, psql)


def _bash(script: str, timeout: float = CHILD_TIMEOUT_S) -> Shell:
    """Run a bash pipeline (pipefail) in its own process group; its wall and CPU time.

    The whole group (bash, pg_dump, zstd, psql) is stopped on a timeout, Ctrl-C or SIGTERM.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(
        ["bash", "-c", "set -o pipefail; " + script],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _out, err = proc.communicate(timeout=timeout)
    except BaseException:
        stop_process_group(proc, timeout=5)
        raise
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"shell baseline failed ({proc.returncode}): {err[-2000:]}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return Shell(wall, cpu)


def _decompressed_size(path: Path) -> int:
    out = subprocess.run(
        ["bash", "-c", f"set -o pipefail; zstd -dc {shlex.quote(str(path))} | wc -c"],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=True,
    )
    return int(out.stdout.strip())


def _tool(name: str) -> str:
    return shlex.quote(str(postgres_bin_dir() / name))


def _conn(server: PgServer) -> str:
    return " ".join(shlex.quote(a) for a in server.args())


# --- backup -----------------------------------------------------------------------------------


@dataclass
class ShellBackup:
    seconds: float
    cpu_s: float
    raw_bytes: int
    stored_bytes: int


def shell_backup(db: PgbenchDb, out: Path) -> ShellBackup:
    """``pg_dump <db> | zstd -3 > file``, the pipeline of seed 001's daily-backup.sh."""
    script = (
        f"{_tool('pg_dump')} {_conn(db.server)} {shlex.quote(db.name)} "
        f"| zstd -3 -q > {shlex.quote(str(out))}"
    )
    run = _bash(script)
    shell = ShellBackup(run.seconds, run.cpu_s, _decompressed_size(out), out.stat().st_size)
    out.unlink()
    return shell


@dataclass
class SizeFigures:
    """Backups of one database: shell and flow, interleaved."""

    scale: int
    db_bytes: int
    shell: list[ShellBackup] = field(default_factory=list)
    flows: list[ChildRun] = field(default_factory=list)

    def _backup(self, run: ChildRun) -> dict[str, Any]:
        return dict(run.report["backups"][0])

    @property
    def raw_bytes(self) -> int:
        return int(self._backup(self.flows[-1])["raw_bytes"])

    @property
    def shell_rate(self) -> float:
        return median([mb(s.raw_bytes) / s.seconds for s in self.shell])

    @property
    def dump_rate(self) -> float:
        """The dump_postgres task: snapshot + row counts + pg_dump -> zstd -> sha256 -> store."""
        return median(
            [mb(self._backup(r)["raw_bytes"]) / r.tasks_s["dump_postgres"] for r in self.flows]
        )

    @property
    def call_rate(self) -> float:
        """The whole flow call: plan, dump, confirm, catalogue, retention, report."""
        return median([mb(self._backup(r)["raw_bytes"]) / r.call_s for r in self.flows])

    @property
    def hwm_mb(self) -> float:
        return max(r.hwm_mb for r in self.flows)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "database_bytes": self.db_bytes,
            "dump_raw_bytes": self.raw_bytes,
            "shell_mb_s_p50": round(self.shell_rate, 1),
            "flow_dump_task_mb_s_p50": round(self.dump_rate, 1),
            "flow_call_mb_s_p50": round(self.call_rate, 1),
            "flow_peak_rss_mb": round(self.hwm_mb, 1),
            "shell": [vars(s) for s in self.shell],
            "flows": [r.as_dict() for r in self.flows],
        }


@dataclass
class BackupFigures:
    big: SizeFigures
    small: SizeFigures | None
    idle_rss_mb: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "big": self.big.as_dict(),
            "small": self.small.as_dict() if self.small else None,
            "idle_process_peak_rss_mb": round(self.idle_rss_mb, 1),
            "ratio_goal": RATIO_GOAL,
            "rss_goal_mb": RSS_GOAL_MB,
        }

    def rows(self) -> list[Row]:
        big = self.big
        name = f"backup, pgbench s{big.scale} ({mb(big.db_bytes):.0f} MB db)"
        shell, n = big.shell_rate, len(big.flows)
        rows = [
            Row(name, "plain dump size (zstd -3 stored)", f"{mb(big.raw_bytes):.0f} MB"),
            Row(
                name,
                f"shell: pg_dump | zstd -3 > file, p50 of {len(big.shell)}",
                f"{shell:.1f} MB/s",
            ),
            Row(
                name,
                f"flow: dump_postgres task, p50 of {n}",
                f"{big.dump_rate:.1f} MB/s",
                f"{shell:.1f} MB/s",
                f"{big.dump_rate / shell:.2f}x",
                f">= {RATIO_GOAL}x",
                verdict(big.dump_rate / shell >= RATIO_GOAL),
            ),
            Row(
                name,
                "client CPU of the flow call (+ pg_dump), p50",
                f"{median([r.call_cpu_s for r in big.flows]):.1f} s",
                f"{median([x.cpu_s for x in big.shell]):.1f} s",
                "(shell: pg_dump + zstd)",
            ),
            Row(
                name,
                f"flow: whole flow call, p50 of {n}",
                f"{big.call_rate:.1f} MB/s",
                f"{shell:.1f} MB/s",
                f"{big.call_rate / shell:.2f}x",
            ),
        ]
        rows.append(
            Row(name, "floor: a process that only imports the flows", f"{self.idle_rss_mb:.0f} MB")
        )
        for size in (self.small, big):
            if size is None:
                continue
            rows.append(
                Row(
                    name,
                    f"flow process peak RSS, s{size.scale} ({mb(size.db_bytes):.0f} MB db)",
                    f"{size.hwm_mb:.0f} MB",
                    "",
                    "",
                    f"< {RSS_GOAL_MB:.0f} MB",
                    verdict(size.hwm_mb < RSS_GOAL_MB),
                )
            )
        if self.small is not None:
            growth = big.hwm_mb / self.small.hwm_mb - 1
            rows.append(
                Row(
                    name,
                    f"peak RSS s{big.scale} vs s{self.small.scale}",
                    f"{growth * 100:+.1f} %",
                    f"{self.small.hwm_mb:.0f} MB",
                    f"{big.hwm_mb / self.small.hwm_mb:.2f}x",
                    f"<= +{RSS_GROWTH_GOAL * 100:.0f} %",
                    verdict(growth <= RSS_GROWTH_GOAL),
                )
            )
        return rows


def measure_size(workdir: Path, db: PgbenchDb, repetitions: int) -> SizeFigures:
    figures = SizeFigures(db.scale, db.size_bytes)
    for _ in range(repetitions):  # interleaved, so load changes hit both
        figures.shell.append(shell_backup(db, workdir / f"shell-s{db.scale}.sql.zst"))
        figures.flows.append(run_flow(workdir, "backup", env_name(db)))
    return figures


def run_backup(
    workdir: Path, big: PgbenchDb, small: PgbenchDb | None, repetitions: int = 5
) -> BackupFigures:
    run_flow(workdir, "backup", env_name(big))  # warm-up: page cache, server-side registration
    small_figures = measure_size(workdir, small, 1) if small is not None else None
    big_figures = measure_size(workdir, big, repetitions)
    return BackupFigures(big_figures, small_figures, idle_rss_mb(workdir))


def latest_backup(workdir: Path, db: PgbenchDb) -> tuple[Path, int]:
    """The newest catalogued backup of ``db``: its file in the local store and raw size."""
    from opsflow.ledger import Ledger

    rows = Ledger().backups(env=env_name(db), database="pgbench", limit=1)
    if not rows:
        run_flow(workdir, "backup", env_name(db))
        rows = Ledger().backups(env=env_name(db), database="pgbench", limit=1)
    row = rows[0]
    return store_dir(workdir, db) / row.key, int(row.details["raw_bytes"])


# --- restore ----------------------------------------------------------------------------------


@dataclass
class RestoreFigures:
    scale: int
    raw_bytes: int
    stored_bytes: int
    shell: list[Shell] = field(default_factory=list)
    flows: list[ChildRun] = field(default_factory=list)
    verify_s: list[float] = field(default_factory=list)
    """Verification before use alone: the stored object spooled locally while hashed and
    compared with the catalog (``BackupStream``), the first part of every restore_postgres."""

    @property
    def shell_rate(self) -> float:
        return median([mb(self.raw_bytes) / s.seconds for s in self.shell])

    @property
    def task_rate(self) -> float:
        """restore_postgres: create the database, stream get -> sha256 -> unzstd -> psql."""
        return median([mb(self.raw_bytes) / f.tasks_s["restore_postgres"] for f in self.flows])

    @property
    def call_rate(self) -> float:
        return median([mb(self.raw_bytes) / f.call_s for f in self.flows])

    @property
    def hwm_mb(self) -> float:
        return max(f.hwm_mb for f in self.flows)

    def as_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "raw_bytes": self.raw_bytes,
            "stored_bytes": self.stored_bytes,
            "shell": [vars(s) for s in self.shell],
            "shell_mb_s_p50": round(self.shell_rate, 1),
            "flow_restore_task_mb_s_p50": round(self.task_rate, 1),
            "flow_call_mb_s_p50": round(self.call_rate, 1),
            "flow_peak_rss_mb": round(self.hwm_mb, 1),
            "verify_before_use_s": [round(s, 3) for s in self.verify_s],
            "flows": [f.as_dict() for f in self.flows],
        }

    def rows(self) -> list[Row]:
        name = f"restore, pgbench s{self.scale} ({mb(self.raw_bytes):.0f} MB dump)"
        shell, n = self.shell_rate, len(self.flows)
        return [
            Row(name, f"shell: createdb && zstd -d < file | psql, p50 of {n}", f"{shell:.1f} MB/s"),
            Row(
                name,
                f"flow: restore_postgres task (into a new db), p50 of {n}",
                f"{self.task_rate:.1f} MB/s",
                f"{shell:.1f} MB/s",
                f"{self.task_rate / shell:.2f}x",
                f">= {RATIO_GOAL}x",
                verdict(self.task_rate / shell >= RATIO_GOAL),
            ),
            Row(
                name,
                "client CPU of the flow call (+ psql), p50",
                f"{median([f.call_cpu_s for f in self.flows]):.1f} s",
                f"{median([x.cpu_s for x in self.shell]):.1f} s",
                "(shell: zstd -d + psql)",
            ),
            Row(
                name,
                f"flow: whole call (+ row-count verify), p50 of {n}",
                f"{self.call_rate:.1f} MB/s",
                f"{shell:.1f} MB/s",
                f"{self.call_rate / shell:.2f}x",
            ),
            Row(
                name,
                f"  of which verification before use (spool + sha256 of {mb(self.stored_bytes):.1f}"
                f" MB stored), p50 of {len(self.verify_s)}",
                f"{median(self.verify_s):.2f} s",
                "",
                f"{100 * median(self.verify_s) / (mb(self.raw_bytes) / self.task_rate):.1f}% "
                "of the task",
            ),
            Row(
                name,
                "restore flow process peak RSS",
                f"{self.hwm_mb:.0f} MB",
                "",
                "",
                f"< {RSS_GOAL_MB:.0f} MB",
                verdict(self.hwm_mb < RSS_GOAL_MB),
            ),
        ]


def verify_before_use(path: Path, root: Path) -> float:
    """Seconds ``BackupStream`` takes to copy the stored object into its spool while hashing it
    and to compare it with the catalogued sha256 and size (what a restore does first)."""
    import hashlib
    from datetime import UTC, datetime

    from connectors.stores.local import LocalStore
    from connectors.stores.objects import BackupStream
    from opsflow.catalog import CatalogEntry

    key = str(path.relative_to(root))
    entry = CatalogEntry(
        backup_id="bench",
        database="pgbench",
        kind="postgres",
        store_url=f"file://{root}",
        key=key,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        bytes=path.stat().st_size,
        codec="zstd",
        created_at=datetime.now(UTC),
    )
    started = time.perf_counter()
    stream = BackupStream(LocalStore(root), entry)
    seconds = time.perf_counter() - started
    stream.spool.close()
    return seconds


def run_restore(workdir: Path, db: PgbenchDb, repetitions: int = 4) -> RestoreFigures:
    path, raw = latest_backup(workdir, db)
    figures = RestoreFigures(db.scale, raw, path.stat().st_size)
    server = db.server
    shell_target, flow_target = f"{db.name}_shellrestore", f"{db.name}_flowrestore"
    script = (
        f"{_tool('createdb')} {_conn(server)} {shell_target} && "
        f"zstd -d < {shlex.quote(str(path))} "
        f"| {_tool('psql')} -X -q -v ON_ERROR_STOP=1 {_conn(server)} {shell_target} >/dev/null"
    )
    expected = db.scale * 100_000

    def shell() -> None:
        figures.shell.append(_bash(script))
        counted = server.execute("select count(*) from pgbench_accounts", shell_target)[0][0]
        if counted != expected:
            raise RuntimeError(f"the shell restore holds {counted} accounts, not {expected}")

    def flow() -> None:
        figures.flows.append(run_flow(workdir, "restore", env_name(db), flow_target))
        if figures.flows[-1].report["databases"][0]["status"] != "restored":
            raise RuntimeError(f"the restore flow did not restore: {figures.flows[-1].report}")

    figures.verify_s = [verify_before_use(path, store_dir(workdir, db)) for _ in range(3)]
    try:
        for i in range(repetitions):  # alternating order, each from a clean checkpoint
            for measure in (shell, flow) if i % 2 == 0 else (flow, shell):
                for name in (shell_target, flow_target):
                    server.drop(name)
                server.execute("checkpoint")  # the previous copy's writes do not bill this one
                measure()
    finally:
        for name in (shell_target, flow_target):
            server.drop(name)
    return figures


# --- DR drill ---------------------------------------------------------------------------------


@dataclass
class DrillFigures:
    scale: int
    db_bytes: int
    flow: ChildRun
    ledger_row: dict[str, Any]

    @property
    def drill(self) -> dict[str, Any]:
        return dict(self.flow.report["databases"][0])

    def as_dict(self) -> dict[str, Any]:
        return {
            "scale": self.scale,
            "database_bytes": self.db_bytes,
            "rto_s": self.drill["rto_seconds"],
            "rpo_s": self.drill["rpo_seconds"],
            "outcome": self.drill["outcome"],
            "checks": self.drill["checks"],
            "ledger_drill_row": self.ledger_row,
            "flow": self.flow.as_dict(),
        }

    def rows(self) -> list[Row]:
        name = f"DR drill, pgbench s{self.scale} ({mb(self.db_bytes):.0f} MB db)"
        d, t = self.drill, self.flow.tasks_s
        rto_target = float(self.flow.report["rto_target_seconds"])
        rpo_target = float(self.flow.report["rpo_target_seconds"])
        return [
            Row(
                name,
                "measured RTO (restore + verify), DrillRow",
                f"{d['rto_seconds']:.1f} s",
                f"{rto_target:.0f} s",
                "",
                f"<= {RTO_TARGET}",
                verdict(d["rto_seconds"] <= rto_target),
            ),
            Row(name, "  of which restore_postgres", f"{t.get('restore_postgres', 0):.1f} s"),
            Row(
                name,
                "  of which verify (row counts, pg_amcheck)",
                f"{t.get('verify_postgres_restore', 0):.1f} s",
            ),
            Row(
                name, "  teardown (drop scratch db)", f"{t.get('drop_postgres_database', 0):.1f} s"
            ),
            Row(
                name,
                "measured RPO (age of the backup)",
                f"{d['rpo_seconds']:.0f} s",
                f"{rpo_target:.0f} s",
                "",
                f"<= {RPO_TARGET}",
                verdict(d["rpo_seconds"] <= rpo_target),
            ),
            Row(name, "drill outcome", f"{d['outcome']}, {len(d['checks'])} check(s)"),
            Row(name, "whole flow call", f"{self.flow.call_s:.1f} s"),
        ]


def run_drill(workdir: Path, db: PgbenchDb) -> DrillFigures:
    from opsflow.ledger import Ledger

    latest_backup(workdir, db)  # a backup to drill (taken now when none was)
    db.server.execute("checkpoint")  # earlier benchmarks' writes do not bill the drill
    flow = run_flow(workdir, "drill", env_name(db))
    row = Ledger().drills(env=env_name(db), limit=1)[0]
    ledger_row = {
        "rto_seconds": row.rto_seconds,
        "rpo_seconds": row.rpo_seconds,
        "outcome": row.outcome,
        "targets": row.targets,
        "backup_id": row.backup_id,
    }
    leftovers = db.server.databases(f"{db.name}\\_drill\\_%")
    if leftovers:
        raise RuntimeError(f"the drill left scratch databases behind: {leftovers}")
    return DrillFigures(db.scale, db.size_bytes, flow, ledger_row)
