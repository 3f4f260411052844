"""Restore (seeds 001 restore-database.sh, 002 Restore procedures, 004 recovery procedures):
put a catalogued backup back, the "overwrite? yes/no" of the seed being a recorded approval.

Order: plan (backup id, object key, sha256, size, target, mode) -> each backup's object is in
the store with its catalogued size and sha256 (else the run fails: no approval, no scaling)
-> approval on protected environments (rejection or timeout changes nothing) -> scale the
application down -> per database: stream the backup into a fresh database (``swap``, the
default) or into the dropped-and-recreated database (``drop-recreate``, after reading the whole
object once to check its sha256) -> row counts against the manifest -> swap -> scale back up
(always, also after a failure) -> health check of the restored database.

``target_db`` restores one database elsewhere (another database on the same server, or another
SQLite file) and touches neither the original nor the application.

Outcome: a markdown report artifact ``restore-<env>``, a ledger run with one step per action.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from prefect.states import Completed, Failed, State

from connectors.postgres import check_pg_name, database_name, scratch_name
from connectors.stores.base import manifest_key
from flows.common import (
    CATALOG_SCAN,
    LOCK_WAIT_SECONDS,
    ApprovalWait,
    LockWait,
    RunbookRun,
    app_target,
    pg_reach,
    require_store,
    runbook_flow,
    scales,
)
from opsflow import catalog
from opsflow.catalog import RestoreSource
from opsflow.errors import InputError, PermanentError
from opsflow.inventory import Database, DirectAccess, Environment, KubectlExecAccess
from opsflow.ledger import BackupRow, Ledger
from opsflow.plans import Plan, PlanStep
from opsflow.redaction import redact
from opsflow.reports import publish_markdown, render_restore_report
from opsflow.results import DatabaseRestore, RestoreReport
from opsflow.secrets import is_reference
from opsflow.units import format_bytes
from tasks.backups import check_backup_present, verify_backup
from tasks.postgres.checks import check_postgres
from tasks.postgres.restore import (
    drop_postgres_database,
    restore_postgres,
    swap_postgres_database,
    verify_postgres_restore,
)
from tasks.scaling import ScaleState, scale_down_app, scale_up_app
from tasks.sqlite import check_sqlite, restore_sqlite

RUNBOOK = "restore"
Mode = Literal["swap", "drop-recreate"]
MODES: tuple[str, ...] = ("swap", "drop-recreate")
Chosen = list[tuple[int, Database, RestoreSource]]


# --- choosing backups (pure) -----------------------------------------------------------------


def _choose(
    rows: list[BackupRow], env_name: str, env: Environment, database: str, backup_id: str | None
) -> list[tuple[int, Database, RestoreSource]]:
    series = catalog.restorable(catalog.fold(rows, manifest_of=manifest_key))
    return catalog.choose(series, env_name, env, database, backup_id)


def _check_target(target_db: str, db: Database, on_runner: bool = False) -> None:
    """``target_db`` names a new place: never empty, never the live database or file. What
    only the place the run executes knows (the live name behind a DSN reference, the SQLite
    target's directory) is checked ``on_runner``: in the flow, before any side effect."""
    fix = "leave target_db out to restore in place, or name a new database (PostgreSQL) or file"
    if not target_db.strip():
        raise InputError("target_db", "is empty, so it names no new place to restore into", fix)
    if db.kind == "sqlite":
        if (
            db.path is not None
            and Path(target_db).expanduser().resolve() == Path(db.path).expanduser().resolve()
        ):
            raise InputError("target_db", f"{target_db!r} is the live file of {db.name}", fix)
        path = Path(target_db).expanduser()
        if on_runner and (path.is_dir() or not path.parent.is_dir()):
            problem = "is a directory" if path.is_dir() else f"{path.parent} does not exist"
            raise InputError(
                "target_db", f"{target_db!r}: {problem}", fix + " in an existing directory"
            )
        return
    try:
        check_pg_name(target_db, "target_db")
    except PermanentError:
        raise InputError(
            "target_db",
            f"{target_db!r} is not a usable PostgreSQL database name",
            "use letters, digits, '_', '$' or '-', at most 63 characters, starting with a "
            "letter or '_'",
        ) from None
    if db.dsn is not None and is_reference(db.dsn) and not on_runner:
        return  # the live database's name is in the secret: the flow checks it at its start
    if db.dsn is not None and target_db == database_name(db, "database"):
        raise InputError("target_db", f"{target_db!r} is the live database of {db.name}", fix)


def build_restore_plan(
    env_name: str,
    env: Environment,
    chosen: list[tuple[int, Database, RestoreSource]],
    *,
    mode: str = "swap",
    target_db: str | None = None,
    stamp: str = "<stamp>",
    on_runner: bool = False,
) -> Plan:
    """The ordered steps of a restore (pure: no I/O but, ``on_runner``, the ``target_db``
    checks of ``_check_target``); bad parameters raise InputError here."""
    if mode not in MODES:
        raise InputError("mode", f"unknown mode {mode!r}", "use swap (default) or drop-recreate")
    if target_db is not None and len(chosen) != 1:
        raise InputError(
            "target_db",
            "restoring elsewhere works for one database at a time",
            "also pass database=<name>",
        )
    if target_db is not None:
        _check_target(target_db, chosen[0][1], on_runner)
    steps: list[PlanStep] = []
    notes: list[str] = []
    if env.protected and env.approvals is not None:
        steps.append(
            PlanStep(
                action="request_approval",
                target=env_name,
                why=f"protected environment: one of {', '.join(env.approvals.approvers)} "
                "must approve (not the requester) before anything is touched",
            )
        )
    scale = target_db is None and scales(env)
    if scale:
        steps.append(
            PlanStep(
                action="scale_down_app",
                target=app_target(env),
                why="nothing may write during the restore (the replica count / running "
                "containers are remembered)",
                changes=True,
            )
        )
    health: list[PlanStep] = []
    for _index, db, source in chosen:
        backup = (
            f"backup {source.backup_id} (`{source.key}`, sha256 {source.sha256}, "
            f"{format_bytes(source.bytes)}, taken {source.created_at:%Y-%m-%d %H:%M} UTC"
            f"{', verified by a drill' if source.verified else ''})"
        )
        if db.kind == "sqlite":
            target = target_db or str(db.path)
            steps.append(
                PlanStep(
                    action="restore_sqlite",
                    target=target,
                    why=f"stream {backup} into a temp file next to {target}, check "
                    "integrity_check and row counts, then rename it over the target (the old "
                    f"file stays as {target}.before-{stamp})",
                    changes=True,
                )
            )
        elif target_db is not None:
            steps.append(
                PlanStep(
                    action="restore_postgres",
                    target=f"{db.name} -> new database {target_db}",
                    why=f"stream {backup} into the new database {target_db} on the same server; "
                    "the original database is not touched",
                    changes=True,
                )
            )
        elif mode == "swap":
            scratch = f"<db>_restore_{stamp}"
            steps += [
                PlanStep(
                    action="restore_postgres",
                    target=f"{db.name} -> {scratch}",
                    why=f"stream {backup} into a fresh database {scratch}; its sha256 is "
                    "checked at the end of the stream, before the live database is touched",
                    changes=True,
                ),
                PlanStep(
                    action="verify_postgres_restore",
                    target=scratch,
                    why="row count of every table equals the backup's manifest",
                ),
                PlanStep(
                    action="swap_postgres_database",
                    target=db.name,
                    why=f"rename the live database to <db>_before_{stamp} (kept for rollback) "
                    f"and {scratch} into its place, in one transaction",
                    changes=True,
                ),
            ]
        else:
            steps += [
                PlanStep(
                    action="verify_backup",
                    target=source.key,
                    why="read the whole object once and check its sha256 before dropping anything",
                ),
                PlanStep(
                    action="restore_postgres",
                    target=db.name,
                    why=f"DROP the live database, recreate it empty (same owner and encoding) "
                    f"and stream {backup} into it; it is empty until the stream ends and stays "
                    "empty if the restore fails (no copy is kept)",
                    changes=True,
                ),
                PlanStep(
                    action="verify_postgres_restore",
                    target=db.name,
                    why="row count of every table equals the backup's manifest",
                ),
            ]
        if target_db is None:
            check = "check_postgres" if db.kind == "postgres" else "check_sqlite"
            health.append(
                PlanStep(action=check, target=db.name, why="the restored database is healthy")
            )
    if scale:
        steps.append(
            PlanStep(
                action="scale_up_app",
                target=app_target(env),
                why="back to the previous replica count / start the stopped containers "
                "(also when a step above fails)",
                changes=True,
            )
        )
    steps += health
    if target_db is not None:
        notes.append(
            f"Restoring into {target_db}: the original database and the application are not "
            "touched (no scaling)."
        )
    elif scales(env) and env.kubernetes is not None:
        scaled_db = [
            db.name
            for _i, db, _s in chosen
            if isinstance(db.via, KubectlExecAccess)
            and db.via.kubectl_exec == env.kubernetes.deployment
        ]
        if scaled_db:
            notes.append(
                f"{', '.join(scaled_db)} run(s) in deployment {env.kubernetes.deployment}, which "
                "is scaled down for the restore: the restore will find no Ready pod and fail "
                "(fix: point kubernetes.deployment at the application, not the database)"
            )
    elif not scales(env):
        notes.append(
            "The environment lists no Kubernetes deployment or Docker services: nothing is "
            "scaled down; make sure nothing writes to the database during the restore."
        )
    if any(db.kind == "sqlite" for _i, db, _s in chosen) and mode != "swap":
        notes.append("SQLite files are always restored by an atomic rename (mode is ignored).")
    if mode == "swap" and target_db is None:
        notes.append(
            f"After a successful swap the previous data stays in <db>_before_{stamp}; drop it "
            "once the application works (`drop database ...`)."
        )
    return Plan(
        runbook=RUNBOOK,
        env=env_name,
        steps=steps,
        parameters={
            "database": ",".join(db.name for _i, db, _s in chosen),
            "mode": mode,
            "target_db": target_db or "",
        },
        notes=notes,
    )


def plan_restore(
    env_name: str,
    env: Environment,
    rows: list[BackupRow] | None = None,
    database: str = "all",
    backup_id: str | None = None,
    target_db: str | None = None,
    mode: str = "swap",
    stamp: str = "<stamp>",
) -> Plan:
    """The restore plan; without ``rows`` the catalog is read from the ledger (read only)."""
    if rows is None:
        rows = Ledger().backups(env=env_name, limit=CATALOG_SCAN)
    chosen = _choose(rows, env_name, env, database, backup_id)
    return build_restore_plan(env_name, env, chosen, mode=mode, target_db=target_db, stamp=stamp)


# --- applying ----------------------------------------------------------------------------------


def _restore_one(
    run: RunbookRun,
    index: int,
    db: Database,
    source: RestoreSource,
    mode: str,
    target_db: str | None,
    stamp: str,
) -> DatabaseRestore:
    outcome = DatabaseRestore.of(db.kind, source)
    store = require_store(run.env_name, run.env)
    field = f"environments.{run.env_name}.databases[{index}]"
    started = time.monotonic()
    if db.kind == "sqlite":
        outcome.target = target_db or str(db.path)
        with run.step("restore_sqlite", outcome.target) as step:
            result = step.result(
                restore_sqlite(
                    db=db, store=store, source=source, target=outcome.target, stamp=stamp
                )
            )
        outcome.aside = f"{result.target}.before-{stamp}"
    else:
        reach = pg_reach(run, index, db)
        live = database_name(db, field)
        if target_db is not None:
            into, replace = target_db, False
        elif mode == "swap":
            into, replace = scratch_name(live, "restore", stamp), False
        else:
            into, replace = live, True
            with run.step("verify_backup", source.key) as step:
                step.result(
                    verify_backup(store=store, key=source.key, expected_sha256=source.sha256)
                )
        outcome.target = into
        with run.step("restore_postgres", f"{db.name} -> {into}") as step:
            result = step.result(
                restore_postgres(
                    **reach,
                    store=store,
                    source=source,
                    into=into,
                    like=live,
                    replace=replace,
                )
            )
        with run.step("verify_postgres_restore", into) as step:
            checked = step.result(
                verify_postgres_restore(
                    **reach,
                    source=source,
                    dbname=into,
                    amcheck=False,
                )
            )
        if not checked.ok:
            if not replace and target_db is None:
                with run.step("drop_postgres_database", into) as step:
                    step.result(drop_postgres_database(**reach, dbname=into))
            raise RuntimeError(
                f"the restored copy of {db.name} does not match its backup: "
                f"{'; '.join(checked.problems)}. The live database was not replaced."
            )
        if target_db is None and mode == "swap":
            aside = scratch_name(live, "before", stamp)
            with run.step("swap_postgres_database", db.name) as step:
                step.result(
                    swap_postgres_database(
                        **reach,
                        restored=into,
                        aside=aside,
                    )
                )
            outcome.aside, outcome.target = aside, live
    outcome.status = "restored"
    outcome.bytes, outcome.raw_bytes = result.bytes, result.raw_bytes
    outcome.seconds = round(time.monotonic() - started, 3)
    return outcome


def _health(run: RunbookRun, index: int, db: Database) -> str:
    field = f"environments.{run.env_name}.databases[{index}]"
    th = run.env.thresholds
    if db.kind == "sqlite":
        with run.step("check_sqlite", db.name) as step:
            result = step.result(check_sqlite(db=db, thresholds=th, field=field))
    elif isinstance(db.via, DirectAccess):
        with run.step("check_postgres", db.name) as step:
            result = step.result(check_postgres(db=db, thresholds=th, field=field))
    else:
        return "not checked (check_postgres needs via: direct); row counts matched the manifest"
    return f"{result.status.value}: {result.summary}"


@runbook_flow(
    RUNBOOK,
    "Restore a catalogued backup (latest by default): plan, approval on protected "
    "environments, scale down, stream into a fresh database and swap, scale up, health check.",
)
def restore(
    env: str = "local",
    *,
    requested_by: str,
    database: str = "all",
    backup_id: str | None = None,
    target_db: str | None = None,
    mode: Mode = "swap",
    dry_run: bool = False,
    approval_timeout_seconds: ApprovalWait = None,
    wait_for_lock: LockWait = LOCK_WAIT_SECONDS,
) -> State[Any]:
    """Restore databases of ``env`` from their backups.

    Args:
        env: environment name from the inventory.
        database: inventory database name, or all.
        backup_id: catalogued backup id (default: the newest complete or verified one).
        target_db: restore into this new database (PostgreSQL) or file (SQLite) instead,
            leaving the original and the application untouched (one database only).
        mode: swap (restore into a fresh database, then swap it in) or drop-recreate.
        dry_run: only publish the plan.
        requested_by: who asks for this run (required: the UI's run form asks for it; on a
            protected environment the approvers must be others, docs/approvals.md).
        approval_timeout_seconds: how long to wait for approval (default: the inventory's).
        wait_for_lock: seconds to wait for the environment lock after approval (0: fail at once).
    """
    run = RunbookRun.start(RUNBOOK, env, requested_by)
    require_store(env, run.env)
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    rows = run.ledger.backups(env=env, limit=CATALOG_SCAN)
    chosen = _choose(rows, env, run.env, database, backup_id)
    plan = build_restore_plan(
        env, run.env, chosen, mode=mode, target_db=target_db, stamp=stamp, on_runner=True
    )
    run.publish_plan(plan)
    report = RestoreReport(env=env, mode=mode, target_db=target_db, dry_run=dry_run)
    if dry_run:
        return Completed(message="dry run: plan published", data=report)
    report.errors = _missing_backups(run, chosen)
    if report.errors:  # before any approval or scaling: nothing was asked for or changed
        return _conclude(run, report)
    if run.env.protected and run.env.approvals is not None:
        run.approve(plan, approval_timeout_seconds)  # a rejection is recorded and raised
    with run.exclusive(wait_for_lock):  # everything that changes something, under the lock
        return _apply(run, chosen, report, stamp)


def _apply(run: RunbookRun, chosen: Chosen, report: RestoreReport, stamp: str) -> State[Any]:
    mode, target_db = report.mode, report.target_db
    scale = target_db is None and scales(run.env)
    k8s, docker = run.env.kubernetes, run.env.docker
    scaled = ScaleState(kind="none")
    restored: list[tuple[int, Database]] = []
    try:
        if scale:
            with run.step("scale_down_app", app_target(run.env)) as step:
                scaled = step.result(scale_down_app(kubernetes_target=k8s, docker_target=docker))
            report.scaled = f"{scaled.target} (was {scaled.replicas} replica(s))"
            if scaled.kind == "docker":
                report.scaled = f"stopped {', '.join(scaled.stopped) or 'nothing (none running)'}"
        for index, db, source in chosen:
            try:
                outcome = _restore_one(run, index, db, source, mode, target_db, stamp)
            except Exception as exc:  # noqa: BLE001 - reported, and the remaining ones skipped
                report.errors.append(f"{db.name}: {redact(str(exc))}")
                failed = DatabaseRestore.of(db.kind, source, status="failed")
                report.databases.append(failed.model_copy(update={"error": redact(str(exc))}))
                break
            report.databases.append(outcome)
            restored.append((index, db))
    except Exception as exc:  # noqa: BLE001 - scaling down failed: nothing was restored
        report.errors.append(f"scale down: {redact(str(exc))}")
    finally:
        if scale:  # also after a failed scale-down: scale_up_app finds what it had stopped
            try:
                with run.step("scale_up_app", app_target(run.env)) as step:
                    report.scaled_back = step.result(
                        scale_up_app(state=scaled, kubernetes_target=k8s, docker_target=docker)
                    )
            except Exception as exc:  # noqa: BLE001 - reported loudly, the run fails
                report.errors.append(
                    f"scaling back up failed: {redact(str(exc))} (fix: scale "
                    f"{app_target(run.env)} back by hand, see docs/runbooks/restore.md)"
                )

    if target_db is None:
        for index, db in restored:
            outcome = next(d for d in report.databases if d.database == db.name)
            try:
                outcome.health = _health(run, index, db)
            except Exception as exc:  # noqa: BLE001 - a failed check fails the run
                outcome.health = f"critical: {redact(str(exc))}"
            if outcome.health.startswith("critical"):
                report.errors.append(f"{db.name}: health check after restore: {outcome.health}")

    return _conclude(run, report)


def _missing_backups(
    run: RunbookRun, chosen: list[tuple[int, Database, RestoreSource]]
) -> list[str]:
    """The pre-check: each chosen backup's object is in the store as catalogued (HEAD + its
    sha256 file), else one error per database. Read-only, so no step rows: a run rejected or
    stopped here has recorded no step, as nothing was done."""
    store = require_store(run.env_name, run.env)
    errors: list[str] = []
    for _index, db, source in chosen:
        try:
            check_backup_present(store=store, source=source)
        except Exception as exc:  # noqa: BLE001 - every missing backup is reported
            errors.append(f"{db.name}: {redact(str(exc))}. Nothing was changed.")
    return errors


def _conclude(run: RunbookRun, report: RestoreReport) -> State[Any]:
    """Publish the report, record the run and end it Completed or Failed."""
    env = run.env_name
    report.seconds = round(run.elapsed, 3)
    publish_markdown(run.key, render_restore_report(report, run.started_at), f"Restore of {env}")
    done = [d.database for d in report.databases if d.status == "restored"]
    summary = f"restored {', '.join(done) or 'nothing'}"
    if report.errors:
        summary += "; " + " | ".join(report.errors)
    run.finish(
        "failed" if report.failed else "complete",
        summary,
        {"databases": [d.model_dump(mode="json") for d in report.databases], "mode": report.mode},
    )
    if report.failed:
        return Failed(message=f"restore of {env} failed: {summary}", data=report)
    return Completed(message=f"restore of {env}: {summary}", data=report)
