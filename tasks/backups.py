"""Prefect tasks over stored backups: confirm a backup after writing it, check that a catalogued
backup is still in the store before a restore or drill, verify one end to end, delete what
retention expired, and grade the freshness of the newest good backup of each series."""

from __future__ import annotations

import builtins
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, Field
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from connectors.stores import open_store
from connectors.stores.base import MANIFEST_SUFFIX, StoredObject, backup_time, manifest_key
from connectors.stores.objects import DumpResult
from opsflow import catalog
from opsflow.catalog import CatalogEntry
from opsflow.durations import format_duration
from opsflow.errors import PermanentError, TransientError
from opsflow.inventory import BackupStore, Environment
from opsflow.ledger import BackupRow, Ledger
from opsflow.redaction import redact
from opsflow.results import CheckResult, Status
from tasks.policy import api_task, probe_task, transfer_task


@api_task("confirm_backup", timeout_seconds=360)  # a hung S3: 5 tries x 60 s read timeout
def confirm_backup(store: BackupStore, key: str, sha256: str, size: int) -> StoredObject:
    """HEAD a stored backup and its manifest: present, same size and sha256, else PermanentError."""
    backend = open_store(store)
    found = backend.head(key)
    if found is None:
        raise PermanentError(f"backup {backend.url}/{key} is not in the store after writing it")
    if found.size != size:
        raise PermanentError(
            f"backup {found.url} holds {found.size} bytes, {size} were written; "
            "do not use it, take a new backup"
        )
    if found.sha256 != sha256:
        raise PermanentError(
            f"backup {found.url} has sha256 {found.sha256}, {sha256} was written; "
            "do not use it, take a new backup"
        )
    if backend.head(manifest_key(key)) is None:
        raise PermanentError(f"backup {found.url} has no manifest at {manifest_key(key)}")
    return found


class RetentionResult(BaseModel):
    """What ``apply_retention`` did: the keys it deleted (each backup, then its manifest) and
    the old objects it left alone because no catalog entry names them."""

    deleted: builtins.list[str] = Field(default_factory=list)
    uncatalogued: builtins.list[str] = Field(default_factory=list)


@api_task("apply_retention", timeout_seconds=600)
def apply_retention(
    store: BackupStore,
    prefix: str,
    expired_keys: builtins.list[str],
    catalogued_keys: builtins.list[str] | None = None,
    now: datetime | None = None,
) -> RetentionResult:
    """Delete the backups ``expired_keys`` (and their manifests) under ``prefix``.

    What expires is the catalog's decision (``opsflow.catalog.retention``: never the newest
    verified or the newest backup of a series); this task only deletes, and the flow records
    each deletion in the ledger. Objects under ``prefix`` older than ``store.retention_days``
    that are not in ``catalogued_keys`` are reported, never deleted (they may belong to another
    ledger; without ``catalogued_keys`` nothing is reported). Also clears leftovers of killed
    writes older than a day. Idempotent: deleting a missing object is not an error, so an
    interrupted run is finished by the next one.
    """
    outside = [k for k in expired_keys if not k.startswith(prefix) or k.endswith(MANIFEST_SUFFIX)]
    if outside:
        raise PermanentError(
            f"retention was asked to delete {outside}, which are not backups under {prefix!r}; "
            "nothing was deleted"
        )
    backend = open_store(store)
    now = now or datetime.now(UTC)
    result = RetentionResult()
    for key in expired_keys:
        for each in (key, manifest_key(key)):
            backend.delete(each)
            result.deleted.append(each)
    if catalogued_keys is not None:
        known = set(catalogued_keys) | set(expired_keys)
        cutoff = now - timedelta(days=store.retention_days)
        result.uncatalogued = [
            obj.key
            for obj in backend.list(prefix)
            if not obj.key.endswith(MANIFEST_SUFFIX)
            and obj.key not in known
            and backup_time(obj) < cutoff
        ]
    backend.cleanup_incomplete(prefix=prefix)
    return result


@api_task("check_backup_present", timeout_seconds=360)  # a hung S3: 5 tries x 60 s read
def check_backup_present(store: BackupStore, source: CatalogEntry) -> StoredObject:
    """The cheap pre-check of a restore or drill, before any approval or scaling: the object
    ``source`` names is in the environment's store, with the catalogued size and sha256 (HEAD
    and its ``.sha256`` file; PermanentError naming the backup if not).

    This does not read the content: the restore stream checks the sha256 of every byte (and
    ``verify_backup`` reads the whole object first where a restore cannot be undone)."""
    backend = open_store(store)
    what = f"backup {source.backup_id} of {source.kind} {source.database!r}"
    fix = "choose another backup (`opsflow backups list --env ENV`) or take a new one"
    if source.store_url != store.url:
        raise PermanentError(
            f"{what} was stored in {source.store_url}, but the environment's backup_store is now "
            f"{store.url} (fix: {fix}, or point backup_store back at {source.store_url})"
        )
    found = backend.head(source.key)
    if found is None:
        raise PermanentError(
            f"{what} is not in the store: {backend.url}/{source.key} does not exist (fix: {fix})"
        )
    if found.sha256 != source.sha256 or found.size != source.bytes:
        raise PermanentError(
            f"{what} in the store is not the catalogued one: {found.url} holds {found.size} bytes "
            f"with sha256 {found.sha256 or '(no checksum file)'}, the catalog says {source.bytes} "
            f"bytes with sha256 {source.sha256} (fix: {fix})"
        )
    return found


@transfer_task("verify_backup", timeout_seconds=6 * 3600)
def verify_backup(store: BackupStore, key: str, expected_sha256: str) -> StoredObject:
    """Read a stored backup end to end and check its sha256 and size; PermanentError if not."""
    backend = open_store(store)
    found = backend.head(key)
    if found is None:
        raise PermanentError(f"backup {backend.url}/{key} does not exist")
    size = 0
    for chunk in backend.get_stream(key, expected_sha256=expected_sha256):
        size += len(chunk)
    if size != found.size:
        raise PermanentError(f"backup {found.url} read {size} bytes, expected {found.size}")
    return found


# --- freshness -----------------------------------------------------------------------------

SCAN_LIMIT = 1000
PG_CONNECT_TIMEOUT_S = 10


def grade_age(age: timedelta, max_age: timedelta) -> Status:
    """Degraded above ``max_age``, critical above twice that."""
    if age > 2 * max_age:
        return Status.CRITICAL
    if age > max_age:
        return Status.DEGRADED
    return Status.HEALTHY


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _with_timeout(url: str) -> str:
    """Bound the ledger connection time for PostgreSQL ledgers (SQLite has its own timeout)."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
        parsed = parsed.update_query_dict({"connect_timeout": str(PG_CONNECT_TIMEOUT_S)})
        return parsed.render_as_string(hide_password=False)
    return url


def _freshness(
    env_name: str, target: str, kind: str, entries: list[CatalogEntry], max_age: timedelta
) -> CheckResult:
    now = datetime.now(UTC)
    newest = catalog.newest(entries)
    if newest is None:
        return CheckResult(
            check="backup_freshness",
            target=target,
            status=Status.CRITICAL,
            summary=(
                f"no complete backup of {kind} {target!r} in {env_name} is catalogued "
                f"(fix: run the backup runbook for {env_name} and check that it succeeds)"
            ),
            details={"env": env_name, "kind": kind, "max_age_s": max_age.total_seconds()},
        )
    age = max(now - _utc(newest.created_at), timedelta(0))
    status = grade_age(age, max_age)
    summary = f"newest backup is {format_duration(age)} old ({newest.status}, {newest.backup_id})"
    if status is not Status.HEALTHY:
        limit = 2 * max_age if status is Status.CRITICAL else max_age
        summary += (
            f", older than {format_duration(limit)} (fix: check the scheduled backup runs of "
            f"{env_name} in the Prefect UI and run the backup runbook now)"
        )
    return CheckResult(
        check="backup_freshness",
        target=target,
        status=status,
        summary=summary,
        details={
            "env": env_name,
            "kind": kind,
            "backup_id": newest.backup_id,
            "created_at": _utc(newest.created_at).isoformat(),
            "age_s": round(age.total_seconds()),
            "max_age_s": max_age.total_seconds(),
            "status": newest.status,
            "bytes": newest.bytes,
            "key": newest.key,
        },
    )


@probe_task("check_backup_freshness", timeout_seconds=60)
def check_backup_freshness(
    env_name: str, env: Environment, ledger_url: str | None
) -> list[CheckResult]:
    """One result per database and Redis target: age of its newest complete backup."""
    started = time.monotonic()
    if env.backup_store is None:
        return [
            CheckResult(
                check="backup_freshness",
                target=env_name,
                status=Status.DEGRADED,
                summary=(
                    f"backups are not configured for {env_name} (fix: add backup_store: "
                    f"{{url: s3://bucket/prefix or file://dir}} under environments.{env_name})"
                ),
            )
        ]
    targets: list[tuple[str, str, str]] = [
        (db.name, db.kind, f"{db.kind} database") for db in env.databases
    ]
    targets += [(target.name, "redis", "redis") for target in env.redis]
    max_age = env.thresholds.backup_max_age
    try:
        ledger = Ledger(_with_timeout(ledger_url) if ledger_url else None)
    except ArgumentError:
        raise PermanentError(
            "the ledger URL cannot be parsed (fix: set OPSFLOW_LEDGER_URL to a SQLAlchemy URL, "
            "e.g. sqlite:///.opsflow/ledger.db or postgresql+psycopg://user@host/db)"
        ) from None
    except SQLAlchemyError as exc:
        raise TransientError(f"cannot open the ledger: {redact(str(exc))}") from None
    results: list[CheckResult] = []
    try:
        for name, kind, label in targets:
            rows = ledger.backups(env=env_name, database=name, limit=SCAN_LIMIT)
            series = catalog.by_series(catalog.fold(rows))
            entries = series.get(catalog.series_key(env_name, kind, name), [])
            result = _freshness(env_name, name, label, entries, max_age)
            result.duration_ms = int((time.monotonic() - started) * 1000)
            results.append(result)
    except SQLAlchemyError as exc:
        raise TransientError(f"cannot read backups from the ledger: {redact(str(exc))}") from None
    finally:
        ledger.close()
    return results


def catalogue_dump(
    ledger: Ledger,
    *,
    env: str,
    name: str,
    kind: str,
    store_url: str,
    dump: DumpResult,
    flow_run_id: str,
    details: dict[str, Any],
) -> BackupRow:
    """A stored and confirmed dump as a complete backup row of the catalog (its key, size,
    sha256, codec, manifest and time), with the caller's ``details`` (via, row counts, …)."""
    return ledger.record_backup(
        env=env,
        database=name,
        kind=kind,
        store_url=store_url,
        key=dump.key,
        bytes=dump.bytes,
        sha256=dump.sha256,
        status=catalog.COMPLETE,
        created_at=dump.created_at.astimezone(UTC).replace(tzinfo=None),
        duration_ms=int(dump.seconds * 1000),
        flow_run_id=flow_run_id,
        details={"codec": dump.codec, "manifest_key": dump.manifest_key, **details},
    )
