"""Nightly backup (seeds 001 daily-backup.sh, 002 component backups, 003 pg_dump backups, 004
backup strategy): every database (PostgreSQL, SQLite) and Redis target of the environment is
dumped, compressed and stored, and the configuration (inventory, Kubernetes ConfigMaps and
Secrets, Docker container configs) is exported encrypted when the store has an encryption key;
each
backup is catalogued in the ledger only after it is complete, has its manifest and was
confirmed in the store. Then retention deletes backups older than ``retention_days`` but never
the newest verified one.

Outcome: a markdown report artifact ``backup-<env>`` (sizes, rates, durations), a ledger run
with one step per database plus retention, and one ledger backup row per stored backup. One
database failing does not stop the others; the run then ends Failed naming it.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, Literal

from prefect import flow
from prefect.states import Completed, Failed, State
from pydantic import BaseModel, Field

from connectors.stores.objects import DumpResult
from connectors.streams import CODECS
from flows.common import CATALOG_SCAN, LOCK_WAIT_SECONDS, RunbookRun, require_store
from opsflow import catalog
from opsflow.errors import InputError
from opsflow.inventory import BackupStore, Database, DirectAccess, DockerExecAccess, Environment
from opsflow.plans import Plan, PlanStep
from opsflow.redaction import redact
from opsflow.reports import publish_markdown
from opsflow.units import format_bytes, format_rate
from tasks.backups import apply_retention, confirm_backup
from tasks.config_export import export_inventory, store_config_export
from tasks.docker.config import export_docker_config
from tasks.kubernetes.config import export_kubernetes_config
from tasks.postgres.backup import dump_postgres
from tasks.redis import dump_redis
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


class BackupReport(BaseModel):
    env: str
    store_url: str = ""
    backups: list[DatabaseBackup] = Field(default_factory=list)
    deleted: list[str] = Field(default_factory=list)
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
            why=f"delete backups older than {store.retention_days} days, "
            "never the newest verified one",
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
        return dump_postgres(**common, docker=run.env.docker, kubernetes=run.env.kubernetes)
    return dump_sqlite(**common)


def _dump_config(run: RunbookRun, store: BackupStore, when: datetime) -> State[Any]:
    """Collect the configuration (each collector a task) and store it encrypted."""
    parts: dict[str, Any] = {"inventory": export_inventory()}
    if run.env.kubernetes is not None:
        parts["kubernetes"] = export_kubernetes_config(run.env.kubernetes)
    if run.env.docker is not None:
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
    row = run.ledger.record_backup(
        env=run.env_name,
        database=name,
        kind=kind,
        store_url=store.url,
        key=dump.key,
        bytes=dump.bytes,
        sha256=dump.sha256,
        status=catalog.COMPLETE,
        created_at=dump.created_at.astimezone(UTC).replace(tzinfo=None),
        duration_ms=int(dump.seconds * 1000),
        flow_run_id=run.flow_run_id,
        details={
            "via": via,
            "codec": dump.codec,
            "raw_bytes": dump.raw_bytes,
            "manifest_key": dump.manifest_key,
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


def _verified_keys(run: RunbookRun, store: BackupStore) -> list[str]:
    rows = run.ledger.backups(env=run.env_name, limit=CATALOG_SCAN)
    return catalog.good_keys(catalog.fold(rows), store.url)


def render_backup_report(report: BackupReport, started: datetime) -> str:
    done = [b for b in report.backups if b.status == "complete"]
    verdict = "FAILED" if report.failed or report.retention_error else "OK"
    lines = [
        f"# Backup: `{report.env}` **{verdict}**",
        "",
        f"Started {started:%Y-%m-%d %H:%M:%S} UTC, took {report.seconds:.1f}s. "
        f"{len(done)}/{len(report.backups)} database(s) backed up to `{report.store_url}`, "
        f"{format_bytes(sum(b.bytes for b in done))} stored.",
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
        lines += [f"- deleted `{key}`" for key in report.deleted]
    else:
        lines.append("- nothing was old enough to delete")
    lines += [
        "",
        "rate is the dump rate (uncompressed bytes per second; 1 MiB = 1024 KiB = 2^20 bytes).",
    ]
    return redact("\n".join(lines) + "\n")


@flow(
    name=RUNBOOK,
    description="Nightly backup: dump every database of the environment (compressed, "
    "streamed), store it with a manifest, catalogue it once confirmed, then apply retention.",
    timeout_seconds=12 * 3600,
    log_prints=True,
)
def backup(
    env: str = "local",
    codec: Literal["zstd", "gzip"] = "zstd",
    dry_run: bool = False,
    requested_by: str = "",
    wait_for_lock: int = LOCK_WAIT_SECONDS,
) -> State[Any]:
    """Back up every database of ``env``.

    Args:
        env: environment name from the inventory.
        codec: compression of the dumps (zstd, or gzip for tools that lack zstd).
        dry_run: only publish the plan (what would be backed up).
        requested_by: who asked for this run (shown in the ledger).
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
        retention = apply_retention(
            store=store,
            prefix=f"{env}/",
            verified_keys=_verified_keys(run, store),
            return_state=True,
        )
        if retention.is_completed():
            report.deleted = list(retention.result())
            step.summary = f"deleted {len(report.deleted)} object(s)"
        else:
            report.retention_error = _failure(retention)
            step.fail(report.retention_error)
        step.details = {"deleted": report.deleted}

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
        {"backups": [b.model_dump(mode="json") for b in report.backups], "deleted": report.deleted},
    )
    if failed:
        return Failed(message=f"backup of {env}: {summary}", data=report)
    return Completed(message=f"backup of {env}: {summary}", data=report)
