"""Nightly backup (seeds 001 daily-backup.sh, 002 component backups, 003 pg_dump backups, 004
backup strategy): every database (PostgreSQL, SQLite) and Redis target of the environment is
dumped, compressed and stored, and the configuration (inventory, Kubernetes ConfigMaps and
Secrets, Docker container configs) is exported encrypted when the store has an encryption key;
each backup is catalogued in the ledger only after it is complete, has its manifest and was
confirmed in the store. Then retention, decided from the catalog per series (environment, kind,
name), deletes backups older than ``retention_days`` but never the newest verified nor the
newest backup of a series, and records each deletion in the ledger (``deleting`` before the
object goes, ``deleted`` after).

Outcome: a markdown report artifact ``backup-<env>`` (sizes, rates, durations), a ledger run
with one step per database plus retention, one ledger backup row per stored backup and one
per state a deleted backup went through. One
database failing does not stop the others; the run then ends Failed naming it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal

from prefect.states import Completed, Failed, State
from pydantic import BaseModel, Field

from connectors.stores.base import manifest_key
from connectors.stores.objects import DumpResult
from connectors.streams import CODECS
from flows.common import (
    CATALOG_SCAN,
    LOCK_WAIT_SECONDS,
    LockWait,
    RunbookRun,
    require_store,
    runbook_flow,
)
from opsflow import catalog
from opsflow.errors import InputError
from opsflow.inventory import BackupStore, Database, DirectAccess, DockerExecAccess, Environment
from opsflow.plans import Plan, PlanStep
from opsflow.redaction import redact
from opsflow.reports import publish_markdown, report_header
from opsflow.units import format_bytes, format_rate
from tasks.backups import RetentionResult, apply_retention, catalogue_dump, confirm_backup
from tasks.config_export import export_inventory, store_config_export
from tasks.sqlite import dump_sqlite

RUNBOOK = "backup"


class DatabaseBackup(BaseModel):
    """What happened to one database in this run."""

    database: str
    kind: str
    via: str
    status: Literal["complete", "failed"]
    key: str | None = None
    bytes: int = 0
    raw_bytes: int = 0
    sha256: str | None = None
    seconds: float = 0.0
    rate_mib_s: float = 0.0
    backup_id: str | None = None
    error: str | None = None


class DeletedBackup(BaseModel):
    """A catalogued backup that retention deleted (its ledger now says ``deleted``)."""

    backup_id: str
    kind: str
    name: str
    key: str
    created_at: datetime


class BackupReport(BaseModel):
    env: str
    store_url: str = ""
    backups: list[DatabaseBackup] = Field(default_factory=list)
    deleted: list[str] = Field(default_factory=list, description="keys deleted by retention")
    deleted_backups: list[DeletedBackup] = Field(default_factory=list)
    uncatalogued: list[str] = Field(
        default_factory=list, description="old objects no catalog entry names: left in place"
    )
    retention_error: str | None = None
    seconds: float = 0.0
    dry_run: bool = False

    @property
    def failed(self) -> list[str]:
        return [b.database for b in self.backups if b.status == "failed"]


def _via(db: Database) -> str:
    if db.kind == "sqlite":
        return "file"
    if isinstance(db.via, DirectAccess):
        return "direct"
    if isinstance(db.via, DockerExecAccess):
        return f"docker_exec {db.via.docker_exec}"
    return f"kubectl_exec {db.via.kubectl_exec}"


def plan_backup(env_name: str, env: Environment, codec: str = "zstd") -> Plan:
    """One dump step per database, then retention (pure: no I/O; bad input raises here)."""
    if codec not in CODECS or codec == "none":
        raise InputError("codec", f"unknown codec {codec!r}", "use zstd (default) or gzip")
    store = require_store(env_name, env)
    steps: list[PlanStep] = []
    notes: list[str] = []
    for db in env.databases:
        how = _via(db)
        if db.kind == "postgres":
            why = f"pg_dump (plain, --no-owner) via {how}, {codec}, to {store.url}"
            action = "dump_postgres"
        else:
            why = f"SQLite online backup of {db.path}, {codec}, to {store.url}"
            action = "dump_sqlite"
        steps.append(PlanStep(action=action, target=db.name, why=why, changes=True))
        if how.startswith("kubectl_exec") and env.kubernetes is None:
            notes.append(
                f"{db.name}: via kubectl_exec needs the environment's kubernetes connection "
                "(namespace, api_url or kubeconfig); this database will fail without it"
            )
    for target in env.redis:
        steps.append(
            PlanStep(
                action="dump_redis",
                target=target.name,
                changes=True,
                why=f"RDB snapshot (replication SYNC), {codec}, to {store.url}",
            )
        )
    sources = (
        ["inventory"]
        + (["kubernetes ConfigMaps/Secrets"] if env.kubernetes else [])
        + (["docker container configs"] if env.docker else [])
    )
    if store.encryption_key:
        steps.append(
            PlanStep(
                action="store_config_export",
                target="config",
                changes=True,
                why=f"{', '.join(sources)}, AES-256-GCM encrypted in process, to {store.url}",
            )
        )
    else:
        notes.append(
            "Configuration export skipped: set backup_store.encryption_key "
            "(env:VAR or secret:NAME) to back up the inventory, ConfigMaps, Secrets "
            "and container configs encrypted."
        )
    if not env.databases and not env.redis:
        notes.append("The environment lists no databases: only retention will run.")
    steps.append(
        PlanStep(
            action="apply_retention",
            target=store.url,
            why=f"delete backups older than {store.retention_days} days, never the newest "
            "verified nor the newest backup of a database; each deletion goes into the ledger",
            changes=True,
        )
    )
    notes.append(
        "Each backup is catalogued only after it is stored complete with its manifest and "
        "confirmed (size and sha256); a failed dump leaves nothing visible."
    )
    return Plan(
        runbook=RUNBOOK, env=env_name, steps=steps, parameters={"codec": codec}, notes=notes
    )


def _failure(state: State[Any]) -> str:
    """The redacted error of a task that did not complete."""
    error = state.result(raise_on_failure=False)
    if isinstance(error, BaseException):
        return redact(str(error) or type(error).__name__)
    return redact(f"task ended {state.name or state.type.value}")


def _dump_database(
    run: RunbookRun, store: BackupStore, index: int, db: Database, codec: Any, when: datetime
) -> State[Any]:
    field = f"environments.{run.env_name}.databases[{index}]"
    common: dict[str, Any] = {"db": db, "store": store, "env_name": run.env_name, "when": when}
    common.update(codec=codec, field=field, return_state=True)
    if db.kind == "postgres":
        from tasks.postgres.backup import dump_postgres  # psycopg only when needed

        return dump_postgres(**common, docker=run.env.docker, kubernetes=run.env.kubernetes)
    return dump_sqlite(**common)


def _dump_config(run: RunbookRun, store: BackupStore, when: datetime) -> State[Any]:
    """Collect the configuration (each collector a task) and store it encrypted."""
    parts: dict[str, Any] = {"inventory": export_inventory()}
    if run.env.kubernetes is not None:
        from tasks.kubernetes.config import export_kubernetes_config

        parts["kubernetes"] = export_kubernetes_config(run.env.kubernetes)
    if run.env.docker is not None:
        from tasks.docker.config import export_docker_config

        parts["docker"] = export_docker_config(run.env.docker)
    return store_config_export(
        env_name=run.env_name,
        parts=parts,
        store=store,
        encryption_key_ref=store.encryption_key,
        when=when,
        return_state=True,
    )


def _collect_config(run: RunbookRun, store: BackupStore, when: datetime) -> State[Any]:
    try:
        return _dump_config(run, store, when)
    except Exception as exc:  # noqa: BLE001 - a collector that failed fails this item only
        return Failed(message=redact(str(exc)), data=exc)


def _catalog(
    run: RunbookRun,
    store: BackupStore,
    name: str,
    kind: str,
    via: str,
    state: State[Any],
    started: float,
) -> DatabaseBackup:
    """Confirm a finished dump in the store, then catalogue it (never before)."""
    failed = DatabaseBackup(database=name, kind=kind, via=via, status="failed")
    if not state.is_completed():
        failed.error = _failure(state)
        failed.seconds = round(time.monotonic() - started, 3)
        return failed
    dump: DumpResult = state.result()
    check = confirm_backup(
        store=store, key=dump.key, sha256=dump.sha256, size=dump.bytes, return_state=True
    )
    if not check.is_completed():
        failed.error = _failure(check)
        failed.key = dump.key
        return failed
    row = catalogue_dump(
        run.ledger,
        env=run.env_name,
        name=name,
        kind=kind,
        store_url=store.url,
        dump=dump,
        flow_run_id=run.flow_run_id,
        details={
            "via": via,
            "raw_bytes": dump.raw_bytes,
            "row_counts": dump.row_counts,
            "table_checksums": dump.table_checksums,
        },
    )
    return DatabaseBackup(
        database=name,
        kind=kind,
        via=via,
        status="complete",
        key=dump.key,
        bytes=dump.bytes,
        raw_bytes=dump.raw_bytes,
        sha256=dump.sha256,
        seconds=dump.seconds,
        rate_mib_s=round(dump.rate_mib_s, 1),
        backup_id=row.backup_id,
    )


def _retention(run: RunbookRun, store: BackupStore, report: BackupReport) -> str:
    """Apply retention as the catalog decides it; returns the step summary (raises on failure).

    Crash-safe order: each expired backup is recorded ``deleting`` (no longer offered) before
    its object is deleted, and ``deleted`` once it is gone; a run interrupted in between leaves
    ``deleting`` entries, which the next run deletes (again: deleting is idempotent) and
    records. Nothing deleted or being deleted is ever offered to a restore or drill."""
    rows = run.ledger.backups(env=run.env_name, limit=CATALOG_SCAN)
    entries = catalog.fold(rows, manifest_of=manifest_key)
    now = datetime.now(UTC)
    decided = catalog.retention(entries, store.url, store.retention_days, now)
    prefix = f"{run.env_name}/"
    expired = [entry for entry in decided.expired if entry.key.startswith(prefix)]
    latest = {row.backup_id: row for row in sorted(rows, key=lambda r: r.id or 0)}
    why = {
        "retention_days": store.retention_days,
        "by": {"flow_run_id": run.flow_run_id, "how": "retention"},
    }
    for entry in expired:
        if entry.status != catalog.DELETING:
            run.ledger.record_backup_state(latest[entry.backup_id], catalog.DELETING, deleting=why)
    state = apply_retention(
        store=store,
        prefix=prefix,
        expired_keys=sorted({entry.key for entry in expired}),
        catalogued_keys=sorted({entry.key for entry in entries}),
        now=now,
        return_state=True,
    )
    if not state.is_completed():
        raise RuntimeError(
            f"{_failure(state)} (the expired backups stay recorded as `deleting`, never offered; "
            "the next backup run finishes deleting them)"
        )
    result: RetentionResult = state.result()
    report.deleted, report.uncatalogued = result.deleted, result.uncatalogued
    for entry in expired:
        if entry.key in result.deleted:
            gone = {"at": now.isoformat(), **why}
            run.ledger.record_backup_state(latest[entry.backup_id], catalog.DELETED, deleted=gone)
            report.deleted_backups.append(
                DeletedBackup(
                    backup_id=entry.backup_id,
                    kind=entry.kind,
                    name=entry.database,
                    key=entry.key,
                    created_at=entry.created_at,
                )
            )
    summary = f"deleted {len(report.deleted_backups)} backup(s), {len(result.deleted)} object(s)"
    if result.uncatalogued:
        summary += f"; {len(result.uncatalogued)} old uncatalogued object(s) left in place"
    return summary


def render_backup_report(report: BackupReport, started: datetime) -> str:
    done = [b for b in report.backups if b.status == "complete"]
    verdict = "FAILED" if report.failed or report.retention_error else "OK"
    lines = [
        *report_header(
            f"Backup: `{report.env}` **{verdict}**",
            started,
            report.seconds,
            f"{len(done)}/{len(report.backups)} database(s) backed up to `{report.store_url}`, "
            f"{format_bytes(sum(b.bytes for b in done))} stored.",
        ),
        "",
        "| database | kind | via | status | stored | dumped | ratio | seconds | rate | key |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for b in report.backups:
        ratio = f"{b.raw_bytes / b.bytes:.1f}x" if b.bytes else "-"
        lines.append(
            f"| {b.database} | {b.kind} | {b.via} | {b.status} | {format_bytes(b.bytes)} "
            f"| {format_bytes(b.raw_bytes)} | {ratio} | {b.seconds:.2f} "
            f"| {format_rate(b.raw_bytes, b.seconds)} "
            f"| `{b.key or '-'}` |"
        )
    failures = [b for b in report.backups if b.error]
    if failures:
        lines += ["", "## Failed", ""]
        lines += [f"- **{b.database}**: {b.error}" for b in failures]
    lines += ["", "## Retention", ""]
    if report.retention_error:
        lines.append(f"- retention failed: {report.retention_error}")
    elif report.deleted:
        lines += [
            f"- deleted backup {d.backup_id} ({d.kind} {d.name}, taken "
            f"{d.created_at:%Y-%m-%d %H:%M} UTC) `{d.key}` and its manifest"
            for d in report.deleted_backups
        ]
    else:
        lines.append("- nothing was old enough to delete")
    if report.uncatalogued:
        lines.append(
            f"- {len(report.uncatalogued)} object(s) older than the retention period are in no "
            "catalog entry of this ledger and were left in place: "
            + ", ".join(f"`{key}`" for key in report.uncatalogued)
        )
    lines += [
        "",
        "rate is the dump rate (uncompressed bytes per second; 1 MiB = 1024 KiB = 2^20 bytes).",
    ]
    return redact("\n".join(lines) + "\n")


@runbook_flow(
    RUNBOOK,
    "Nightly backup: dump every database of the environment (compressed, "
    "streamed), store it with a manifest, catalogue it once confirmed, then apply retention.",
)
def backup(
    env: str = "local",
    *,
    requested_by: str,
    codec: Literal["zstd", "gzip"] = "zstd",
    dry_run: bool = False,
    wait_for_lock: LockWait = LOCK_WAIT_SECONDS,
) -> State[Any]:
    """Back up every database of ``env``.

    Args:
        env: environment name from the inventory.
        codec: compression of the dumps (zstd, or gzip for tools that lack zstd).
        dry_run: only publish the plan (what would be backed up).
        requested_by: who asks for this run (shown in the ledger; required: the UI's run
            form asks for it, schedules send `scheduler`).
        wait_for_lock: seconds to wait while another run holds the environment (0: fail at
            once, naming it).
    """
    run = RunbookRun.start(RUNBOOK, env, requested_by)
    plan = plan_backup(env, run.env, codec)
    run.publish_plan(plan)
    store = require_store(env, run.env)
    if dry_run:
        report = BackupReport(env=env, store_url=store.url, dry_run=True)
        return Completed(message="dry run: plan published", data=report)
    with run.exclusive(wait_for_lock):
        return _back_up(run, store, codec)


def _back_up(run: RunbookRun, store: BackupStore, codec: Any) -> State[Any]:
    """The changing part of the backup, under the environment's lock."""
    env = run.env_name
    when = datetime.now(UTC).replace(microsecond=0)
    report = BackupReport(env=env, store_url=store.url)
    items: list[tuple[str, str, str, str, Any]] = [
        (
            db.name,
            db.kind,
            _via(db),
            "dump_postgres" if db.kind == "postgres" else "dump_sqlite",
            lambda i=i, db=db: _dump_database(run, store, i, db, codec, when),
        )
        for i, db in enumerate(run.env.databases)
    ]
    if run.env.redis:
        from tasks.redis import dump_redis  # the Redis client only when there is Redis
    items += [
        (
            t.name,
            "redis",
            "direct",
            "dump_redis",
            lambda i=i, t=t: dump_redis(
                target=t,
                store=store,
                env_name=env,
                when=when,
                codec=codec,
                field=f"environments.{env}.redis[{i}]",
                return_state=True,
            ),
        )
        for i, t in enumerate(run.env.redis)
    ]
    if store.encryption_key:
        items.append(
            (
                "config",
                "config",
                "export",
                "store_config_export",
                lambda: _collect_config(run, store, when),
            )
        )
    for name, kind, via, action, dump in items:
        with run.step(action, name) as step:
            started = time.monotonic()
            outcome = _catalog(run, store, name, kind, via, dump(), started)
            report.backups.append(outcome)
            if outcome.status == "failed":
                step.fail(outcome.error or "")
            else:
                step.summary = f"{format_bytes(outcome.bytes)} at {outcome.key}"
            step.details = {"key": outcome.key, "sha256": outcome.sha256, "bytes": outcome.bytes}

    with run.step("apply_retention", store.url) as step:
        try:
            step.summary = _retention(run, store, report)
        except Exception as exc:  # noqa: BLE001 - reported; the run then fails
            report.retention_error = redact(str(exc))
            step.fail(report.retention_error)
        step.details = {
            "deleted": report.deleted,
            "deleted_backups": [d.backup_id for d in report.deleted_backups],
            "uncatalogued": report.uncatalogued,
        }

    report.seconds = round(run.elapsed, 3)
    publish_markdown(run.key, render_backup_report(report, run.started_at), f"Backups of {env}")
    done = len(report.backups) - len(report.failed)
    summary = f"{done}/{len(report.backups)} database(s) backed up"
    if report.failed:
        summary += f"; failed: {', '.join(report.failed)}"
    if report.retention_error:
        summary += "; retention failed"
    failed = bool(report.failed or report.retention_error)
    run.finish(
        "failed" if failed else "complete",
        summary,
        {
            "backups": [b.model_dump(mode="json") for b in report.backups],
            "deleted": report.deleted,
            "deleted_backups": [d.backup_id for d in report.deleted_backups],
        },
    )
    if failed:
        return Failed(message=f"backup of {env}: {summary}", data=report)
    return Completed(message=f"backup of {env}: {summary}", data=report)
