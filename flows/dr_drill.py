"""DR drill (seeds 003 DR plan, 004 recovery procedures, 000 RTO/RPO targets): prove that the
newest backup of every database restores, and how long that takes.

Per database: the newest complete (or verified) backup in the catalog of its series
(environment, kind, name) is first checked to be in the store with its catalogued size and
sha256 (a missing or different object fails that database's drill before anything is
restored), then restored into a scratch target (PostgreSQL: a database ``<db>_drill_<stamp>``
on the same server; SQLite: a temp file), checked (row counts per table against the manifest,
content checksums of the inventory's ``checksum_tables`` against those recorded at backup time,
``pg_amcheck`` / ``PRAGMA quick_check``) and torn down again, always. Measured: **RTO** =
restore + verify wall time, **RPO** = age of that backup; both against the environment's
``recovery`` targets. A backup that passed its checks is marked ``verified`` in the catalog;
every database gets a ``DrillRow`` in the ledger.

The run ends Failed, naming the database and the missed target, when a target is missed, a
check fails or a database has no backup. Report artifact ``dr-drill-<env>``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect.states import Completed, Failed, State
from pydantic import BaseModel, Field

from connectors.postgres import database_name, scratch_name
from connectors.stores.base import manifest_key
from flows.common import (
    CATALOG_SCAN,
    LOCK_WAIT_SECONDS,
    LockWait,
    RunbookRun,
    pg_reach,
    require_store,
    runbook_flow,
)
from opsflow import catalog
from opsflow.catalog import RestoreSource
from opsflow.durations import format_duration
from opsflow.inventory import BackupStore, Database, Environment
from opsflow.ledger import utcnow
from opsflow.plans import Plan, PlanStep
from opsflow.redaction import redact
from opsflow.reports import publish_markdown, report_header
from opsflow.results import RestoreResult, VerifyResult
from tasks.backups import check_backup_present
from tasks.postgres.restore import drop_postgres_database, restore_postgres, verify_postgres_restore
from tasks.sqlite import drill_sqlite

RUNBOOK = "dr-drill"


class DatabaseDrill(BaseModel):
    database: str
    kind: str
    backup_id: str = ""
    key: str = ""
    scratch: str = ""
    outcome: str = "failed"
    rto_seconds: float = 0.0
    rpo_seconds: float = 0.0
    checks: list[str] = Field(default_factory=list)
    checksums: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="per checksum table: the md5 recorded at backup time and the restored one",
    )
    problems: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    torn_down: bool = False


class DrillReport(BaseModel):
    env: str
    rto_target_seconds: float
    rpo_target_seconds: float
    databases: list[DatabaseDrill] = Field(default_factory=list)
    seconds: float = 0.0
    dry_run: bool = False

    @property
    def failed(self) -> list[str]:
        return [d.database for d in self.databases if d.outcome != "passed"]


def plan_dr_drill(
    env_name: str,
    env: Environment,
    sources: dict[catalog.SeriesKey, RestoreSource] | None = None,
    stamp: str = "<stamp>",
) -> Plan:
    """One restore + check + teardown per database (pure: no I/O); ``sources`` is the newest
    backup of each catalog series (``catalog.newest_by_series``)."""
    sources = sources or {}
    target = env.recovery
    steps: list[PlanStep] = []
    notes = [
        f"Targets: RTO {format_duration(target.rto)} (restore + verify), "
        f"RPO {format_duration(target.rpo)} (age of the newest backup). A miss fails the drill.",
    ]
    for db in env.databases:
        source = sources.get(catalog.series_key(env_name, db.kind, db.name))
        what = (
            f"backup {source.backup_id} (`{source.key}`, taken {source.created_at:%Y-%m-%d %H:%M} "
            "UTC)"
            if source
            else "the newest complete backup"
        )
        if db.kind == "sqlite":
            steps.append(
                PlanStep(
                    action="drill_sqlite",
                    target=db.name,
                    why=f"restore {what} into a temp file, quick_check, row counts; removed after",
                )
            )
            continue
        scratch = f"<db>_drill_{stamp}"
        steps += [
            PlanStep(
                action="restore_postgres",
                target=f"{db.name} -> {scratch}",
                why=f"restore {what} into a scratch database on the same server",
                changes=True,
            ),
            PlanStep(
                action="verify_postgres_restore",
                target=scratch,
                why="row counts per table and checksums of checksum_tables against the "
                "catalog, pg_amcheck when available",
            ),
            PlanStep(
                action="drop_postgres_database",
                target=scratch,
                why="tear the scratch database down (always)",
                changes=True,
            ),
        ]
    if not env.databases:
        notes.append("The environment lists no databases: the drill has nothing to restore.")
    notes.append("The live databases and the application are never touched.")
    return Plan(runbook=RUNBOOK, env=env_name, steps=steps, notes=notes)


def missed_targets(
    rto: float, rpo: float, rto_target: timedelta, rpo_target: timedelta
) -> list[str]:
    """Operator-facing lines for each missed target (empty when both are met)."""
    missed = []
    if rto > rto_target.total_seconds():
        missed.append(
            f"RTO target missed: restore + verify took {format_duration(rto)}, "
            f"target {format_duration(rto_target)}"
        )
    if rpo > rpo_target.total_seconds():
        missed.append(
            f"RPO target missed: the newest backup is {format_duration(rpo)} old, "
            f"target {format_duration(rpo_target)}"
        )
    return missed


def _age(created_at: datetime) -> float:
    when = created_at.replace(tzinfo=UTC) if created_at.tzinfo is None else created_at
    return max((datetime.now(UTC) - when).total_seconds(), 0.0)


def _drill_postgres(
    run: RunbookRun, index: int, db: Database, source: RestoreSource, stamp: str
) -> tuple[VerifyResult, str, bool, str | None]:
    """(verify result, scratch name, torn down, teardown error)."""
    field = f"environments.{run.env_name}.databases[{index}]"
    store = require_store(run.env_name, run.env)
    reach = pg_reach(run, index, db)
    live = database_name(db, field)
    scratch = scratch_name(live, "drill", stamp)
    try:
        restored: RestoreResult = restore_postgres(
            **reach,
            store=store,
            source=source,
            into=scratch,
            like=live,
        )
        run.logger.info("%s: restored %d bytes into %s", db.name, restored.raw_bytes, scratch)
        checked: VerifyResult = verify_postgres_restore(
            **reach,
            source=source,
            dbname=scratch,
            amcheck=True,
        )
    finally:
        teardown = drop_postgres_database(**reach, dbname=scratch, return_state=True)
    error = (
        None if teardown.is_completed() else redact(str(teardown.result(raise_on_failure=False)))
    )
    return checked, scratch, teardown.is_completed(), error


def compared_checksums(
    recorded: dict[str, str], restored: dict[str, str]
) -> dict[str, dict[str, str]]:
    """``{table: {backup, restored}}`` for the report and the ledger ("" when missing)."""
    return {
        table: {"backup": checksum, "restored": restored.get(table, "")}
        for table, checksum in sorted(recorded.items())
    }


def render_drill_report(report: DrillReport, started: datetime) -> str:
    verdict = "FAILED" if report.failed else "PASSED"
    lines = [
        *report_header(
            f"DR drill: `{report.env}` **{verdict}**",
            started,
            report.seconds,
            f"Targets: RTO {format_duration(report.rto_target_seconds)}, "
            f"RPO {format_duration(report.rpo_target_seconds)}.",
        ),
        "",
        "| database | backup | outcome | RTO | RPO | checks | scratch torn down |",
        "|---|---|---|---|---|---|---|",
    ]
    for d in report.databases:
        lines.append(
            f"| {d.database} | {d.backup_id or '-'} | {d.outcome} | "
            f"{format_duration(d.rto_seconds)} | {format_duration(d.rpo_seconds)} | "
            f"{'; '.join(d.checks) or '-'} | {'yes' if d.torn_down else 'NO'} |"
        )
    compared = [(d.database, t, c) for d in report.databases for t, c in d.checksums.items()]
    if compared:
        lines += [
            "",
            "## Table checksums",
            "",
            "| database | table | at backup | restored | match |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {name} | {table} | `{c['backup']}` | `{c['restored'] or 'missing'}` | "
            f"{'yes' if c['backup'] == c['restored'] else 'NO'} |"
            for name, table, c in compared
        ]
    problems = [(d.database, p) for d in report.databases for p in d.problems]
    if problems:
        lines += ["", "## Problems", ""] + [f"- **{name}**: {p}" for name, p in problems]
    warnings = [(d.database, w) for d in report.databases for w in d.warnings]
    if warnings:
        lines += ["", "## Warnings", ""] + [f"- {name}: {w}" for name, w in warnings]
    return redact("\n".join(lines) + "\n")


@runbook_flow(
    RUNBOOK,
    "DR drill: restore the newest backup of every database into a scratch target, "
    "check it, tear it down, and measure RTO and RPO against the environment's targets.",
)
def dr_drill(
    env: str = "local",
    *,
    requested_by: str,
    dry_run: bool = False,
    wait_for_lock: LockWait = LOCK_WAIT_SECONDS,
) -> State[Any]:
    """Run the DR drill for ``env``.

    Args:
        env: environment name from the inventory.
        dry_run: only publish the plan.
        requested_by: who asks for this run (shown in the ledger; required: the UI's run
            form asks for it, schedules send `scheduler`).
        wait_for_lock: seconds to wait while another run holds the environment (0: fail at
            once, naming it).
    """
    run = RunbookRun.start(RUNBOOK, env, requested_by)
    store = require_store(env, run.env)
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    rows = run.ledger.backups(env=env, limit=CATALOG_SCAN)
    newest = catalog.newest_by_series(catalog.fold(rows, manifest_of=manifest_key))
    plan = plan_dr_drill(env, run.env, newest, stamp)
    run.publish_plan(plan)
    targets = run.env.recovery
    report = DrillReport(
        env=env,
        rto_target_seconds=targets.rto.total_seconds(),
        rpo_target_seconds=targets.rpo.total_seconds(),
        dry_run=dry_run,
    )
    if dry_run:
        return Completed(message="dry run: plan published", data=report)
    with run.exclusive(wait_for_lock):
        return _drill(run, store, newest, report, stamp)


def _drill(
    run: RunbookRun,
    store: BackupStore,
    newest: dict[catalog.SeriesKey, RestoreSource],
    report: DrillReport,
    stamp: str,
) -> State[Any]:
    """The drill itself, under the environment's lock."""
    env, targets = run.env_name, run.env.recovery
    target_values = {
        "rto_seconds": report.rto_target_seconds,
        "rpo_seconds": report.rpo_target_seconds,
    }

    for index, db in enumerate(run.env.databases):
        drill = DatabaseDrill(database=db.name, kind=db.kind)
        report.databases.append(drill)
        source = newest.get(catalog.series_key(env, db.kind, db.name))
        if source is None:
            drill.problems.append(
                f"no complete backup is catalogued (fix: run `opsflow run backup --env {env}`)"
            )
        else:
            drill.backup_id, drill.key = source.backup_id, source.key
            try:
                check_backup_present(store=store, source=source)
            except Exception as exc:  # noqa: BLE001 - this database's drill fails, the rest go on
                drill.problems.append(f"nothing restored: {redact(str(exc))}")
        if source is None or drill.problems:
            run.ledger.record_drill(
                flow_run_id=run.flow_run_id,
                env=env,
                database=db.name,
                backup_id=drill.backup_id,
                targets=target_values,
                outcome="failed",
                details={"key": drill.key, "problems": drill.problems},
            )
            continue
        started = time.monotonic()
        try:
            if db.kind == "sqlite":
                _restored, checked = drill_sqlite(store=store, source=source)
                drill.torn_down = True  # the temp directory is gone with the task
            else:
                checked, drill.scratch, drill.torn_down, teardown_error = _drill_postgres(
                    run, index, db, source, stamp
                )
                if teardown_error:
                    drill.problems.append(
                        f"scratch database {drill.scratch} was not dropped: {teardown_error} "
                        "(fix: drop it by hand)"
                    )
            drill.rto_seconds = round(time.monotonic() - started, 3)
            drill.checks, drill.warnings = checked.checks, checked.warnings
            drill.checksums = compared_checksums(source.table_checksums, checked.table_checksums)
            drill.problems += checked.problems
        except Exception as exc:  # noqa: BLE001 - the drill reports it and fails
            drill.rto_seconds = round(time.monotonic() - started, 3)
            drill.problems.append(f"restore failed: {redact(str(exc))}")
            # restore_postgres drops a scratch it could not fill, the drill drops it in a
            # `finally`, and a SQLite drill's temp directory goes with its task
            drill.torn_down = True
        drill.rpo_seconds = round(_age(source.created_at), 3)
        integrity_ok = not drill.problems
        drill.problems += missed_targets(
            drill.rto_seconds, drill.rpo_seconds, targets.rto, targets.rpo
        )
        drill.outcome = "passed" if not drill.problems else "failed"
        run.ledger.record_drill(
            flow_run_id=run.flow_run_id,
            env=env,
            database=db.name,
            backup_id=source.backup_id,
            rto_seconds=drill.rto_seconds,
            rpo_seconds=drill.rpo_seconds,
            targets=target_values,
            outcome=drill.outcome,
            details={
                "key": source.key,
                "scratch": drill.scratch,
                "checks": drill.checks,
                "checksums": drill.checksums,
                "problems": drill.problems,
                "warnings": drill.warnings,
                "torn_down": drill.torn_down,
            },
        )
        if integrity_ok:
            row = next(
                r
                for r in run.ledger.backups(env=env, database=db.name, limit=CATALOG_SCAN)
                if r.backup_id == source.backup_id
            )
            run.ledger.mark_verified(
                row, verified_at=utcnow(), flow_run_id=run.flow_run_id, how="dr-drill"
            )
        level = 20 if drill.outcome == "passed" else 40
        run.logger.log(
            level,
            "%s: drill %s, RTO %s, RPO %s%s",
            db.name,
            drill.outcome,
            format_duration(drill.rto_seconds),
            format_duration(drill.rpo_seconds),
            (": " + "; ".join(drill.problems)) if drill.problems else "",
        )

    report.seconds = round(run.elapsed, 3)
    publish_markdown(run.key, render_drill_report(report, run.started_at), f"DR drill of {env}")
    passed = len(report.databases) - len(report.failed)
    summary = f"{passed}/{len(report.databases)} database(s) passed"
    if report.failed:
        reasons = [f"{d.database}: {'; '.join(d.problems)}" for d in report.databases if d.problems]
        summary += " - FAILED " + " | ".join(reasons)
    run.finish(
        "failed" if report.failed else "passed",
        summary,
        {"drills": [d.model_dump(mode="json") for d in report.databases], "targets": target_values},
    )
    if report.failed:
        return Failed(message=f"DR drill of {env}: {summary}", data=report)
    return Completed(message=f"DR drill of {env}: {summary}", data=report)
