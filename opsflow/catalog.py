"""The backup catalog: what the ledger's ``backups`` rows say about each backup (pure).

The ledger is append-only, so one backup can have several rows (``complete`` when it was
catalogued, a later copy with status ``verified`` when a DR drill restored and checked it).
``fold`` reduces the rows to one ``CatalogEntry`` per backup, its latest state; everything
that reads the catalog (restore, the DR drill, retention, the freshness check, ``opsflow
backups list``) goes through it and through the helpers below. No Prefect, no I/O: callers
query the ledger (``Ledger.backups``) and hand the rows in.

Series: which backups belong together (a restore or drill picks the newest of a series,
retention keeps the newest of a series) is decided by ``series_key`` alone: a series is the
(environment, kind, name) of what was backed up, so a PostgreSQL database and a Redis target
that share a name (or a database named like the configuration export) never mix.

Deletion is a state too: retention appends a ``deleting`` row before it deletes an object and a
``deleted`` row after. Both take the backup out for good (a later row does not bring it back),
so nothing deleted, or about to be, is ever offered.

Archives: rows of kind ``log`` (``LOG_KIND``: log files the maintenance runbook archived,
``tasks/log_archive.py``) are catalogued like backups, so retention applies to them, but they
are never restorable: ``restorable`` (and so ``newest_by_series`` and ``choose``, what restore
and the DR drill pick from) leaves every kind in ``ARCHIVE_KINDS`` out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from opsflow.errors import InputError
from opsflow.ledger.models import VERIFIED, BackupRow

if TYPE_CHECKING:  # the inventory (and through its secrets, Prefect) only for type hints
    from opsflow.inventory import Database, Environment

COMPLETE = "complete"
GOOD_STATUSES: frozenset[str] = frozenset({COMPLETE, VERIFIED})
"""States of a backup that may be restored, drilled, counted as fresh and kept by retention."""
DELETING, DELETED = "deleting", "deleted"
GONE_STATUSES: frozenset[str] = frozenset({DELETING, DELETED})
"""States of a backup that retention removed (or is removing): final, whatever comes after."""

LOG_KIND = "log"
"""The kind of a log file archived by the maintenance runbook (series ``(env, "log", "logs")``)."""
ARCHIVE_KINDS: frozenset[str] = frozenset({LOG_KIND})
"""Kinds catalogued for retention only: never offered to a restore or a DR drill."""

Codec = Literal["zstd", "gzip", "none"]
"""The compression of a stored backup (``connectors.streams`` uses this one definition)."""


class SeriesKey(NamedTuple):
    """What a series of backups is of: the thing named ``name`` of ``kind`` (postgres, sqlite,
    redis, config) in environment ``env``."""

    env: str
    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.env}/{self.kind}/{self.name}"


def is_good(status: str) -> bool:
    return status in GOOD_STATUSES


def codec_of(key: str, recorded: str | None = None) -> Codec:
    """The compression of a stored backup: the catalogued codec, else its key's extension."""
    if recorded in ("zstd", "gzip", "none"):
        return recorded  # type: ignore[return-value]
    if key.endswith(".zst"):
        return "zstd"
    if key.endswith(".gz"):
        return "gzip"
    return "none"


def series_key(env: str, kind: str, name: str) -> SeriesKey:
    """The series of backups of the thing named ``name`` (of ``kind``) in ``env``: the one
    function that decides which backups belong together."""
    return SeriesKey(env, kind, name)


class CatalogEntry(BaseModel):
    """One catalogued backup in its latest state: where it is, what it must hash to, and what
    a restore or drill checks it against. Tasks know it as ``RestoreSource``."""

    model_config = ConfigDict(frozen=True)

    backup_id: str
    env: str = ""
    database: str
    kind: str
    store_url: str
    key: str
    sha256: str
    bytes: int
    codec: Codec
    via: str = ""
    created_at: datetime
    manifest_key: str = ""
    row_counts: dict[str, int] = Field(default_factory=dict)
    table_checksums: dict[str, str] = Field(default_factory=dict)
    verified: bool = False
    status: str = COMPLETE
    verified_at: str | None = None
    duration_ms: int = 0
    flow_run_id: str = ""

    @property
    def good(self) -> bool:
        return is_good(self.status)

    @property
    def series(self) -> SeriesKey:
        return series_of(self)

    @property
    def exact_counts(self) -> bool:
        """Counts taken in the dumped snapshot (direct pg_dump, SQLite copy) must match exactly;
        docker_exec/kubectl_exec counts were taken just before the dump and may differ under
        writes."""
        return self.kind == "sqlite" or self.via in ("direct", "file")


RestoreSource = CatalogEntry
"""The name the restore tasks use for the catalog entry they restore from."""


def series_of(entry: CatalogEntry) -> SeriesKey:
    return series_key(entry.env, entry.kind, entry.database)


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass
class _Backup:
    """The rows of one backup seen so far, in ledger order."""

    first_id: int
    latest: BackupRow
    verified: bool = False
    verified_at: str | None = None
    gone: str | None = None

    def order(self) -> tuple[datetime, int, str]:
        """Newest first: by when it was taken, then by when it was catalogued."""
        return _utc(self.latest.created_at), self.first_id, self.latest.backup_id


def fold(
    rows: Iterable[BackupRow], *, manifest_of: Callable[[str], str] | None = None
) -> list[CatalogEntry]:
    """One entry per backup in its latest state (its last row in ledger order), newest first.

    Verified wins: once a row said ``verified``, the backup stays verified (a later
    ``complete`` row of it does not undo the drill). Gone wins over everything: once a row said
    ``deleting`` or ``deleted``, that is its state (a drill that verified it meanwhile does not
    bring the object back). ``manifest_of`` names the manifest of a
    key, for rows that did not record their ``manifest_key`` (the store's key layout is not the
    catalog's business); without it such entries have ``manifest_key`` "".
    """
    backups: dict[str, _Backup] = {}
    for row in sorted(rows, key=lambda r: r.id or 0):
        seen = backups.get(row.backup_id)
        if seen is None:
            seen = backups[row.backup_id] = _Backup(first_id=row.id or 0, latest=row)
        seen.latest = row
        if row.status == VERIFIED:
            seen.verified = True
            seen.verified_at = _text((row.details or {}).get("verified_at")) or seen.verified_at
        if row.status in GONE_STATUSES:
            seen.gone = row.status
    ordered = sorted(backups.values(), key=_Backup.order, reverse=True)
    return [_entry(seen, manifest_of) for seen in ordered]


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _entry(seen: _Backup, manifest_of: Callable[[str], str] | None) -> CatalogEntry:
    row = seen.latest
    details = row.details or {}
    status = VERIFIED if seen.verified and row.status == COMPLETE else row.status
    status = seen.gone or status
    recorded_manifest = str(details.get("manifest_key") or "")
    return CatalogEntry(
        backup_id=row.backup_id,
        env=row.env or "",
        database=row.database,
        kind=row.kind,
        store_url=row.store_url,
        key=row.key,
        sha256=row.sha256,
        bytes=row.bytes,
        codec=codec_of(row.key, details.get("codec")),
        via=str(details.get("via") or ""),
        created_at=row.created_at,
        manifest_key=recorded_manifest or (manifest_of(row.key) if manifest_of else ""),
        row_counts={str(k): int(v) for k, v in (details.get("row_counts") or {}).items()},
        table_checksums={str(k): str(v) for k, v in (details.get("table_checksums") or {}).items()},
        verified=seen.verified,
        status=status,
        verified_at=seen.verified_at,
        duration_ms=row.duration_ms or 0,
        flow_run_id=row.flow_run_id or "",
    )


def good(entries: Iterable[CatalogEntry]) -> list[CatalogEntry]:
    """The entries that may be used (complete or verified), in their order."""
    return [entry for entry in entries if entry.good]


def by_series(entries: Iterable[CatalogEntry]) -> dict[SeriesKey, list[CatalogEntry]]:
    """Entries grouped by series, each group newest first (ties keep their given order)."""
    grouped: dict[SeriesKey, list[CatalogEntry]] = {}
    for entry in entries:
        grouped.setdefault(series_of(entry), []).append(entry)
    for members in grouped.values():
        members.sort(key=lambda e: _utc(e.created_at), reverse=True)
    return grouped


def restorable(entries: Iterable[CatalogEntry]) -> dict[SeriesKey, list[CatalogEntry]]:
    """What a restore or drill may choose from: the good entries of each series, newest first;
    archives (``ARCHIVE_KINDS``: log files) are never restorable."""
    return by_series(entry for entry in good(entries) if entry.kind not in ARCHIVE_KINDS)


def newest(entries: Iterable[CatalogEntry]) -> CatalogEntry | None:
    """The newest good entry (on equal times, the first given: ``fold`` ranks ties)."""
    return max(good(entries), key=lambda e: _utc(e.created_at), default=None)


def newest_by_series(entries: Iterable[CatalogEntry]) -> dict[SeriesKey, CatalogEntry]:
    """The newest good entry of each series."""
    return {key: members[0] for key, members in restorable(entries).items()}


@dataclass(frozen=True)
class Retention:
    """What retention does with the backups of one store (``retention``)."""

    kept: list[CatalogEntry]
    """Kept whatever their age: the newest verified and the newest backup of each series."""
    expired: list[CatalogEntry]
    """To delete, oldest first: older than the retention period and not kept (entries already
    ``deleting`` after an interrupted run are in here again, to be finished)."""


def retention(
    entries: Iterable[CatalogEntry], store_url: str, retention_days: int, now: datetime
) -> Retention:
    """Decide retention for the backups catalogued in the store at ``store_url``, per series.

    Each series keeps its newest verified backup and its newest backup (complete or verified)
    whatever their age; any other good backup taken more than ``retention_days`` before ``now``
    expires. An object that a kept or younger entry also names (the same key catalogued twice)
    is never deleted. Backups in other stores are left alone."""
    if retention_days < 1:
        raise InputError("retention_days", f"{retention_days} is below 1", "use 1 or more")
    if now.tzinfo is None:
        raise ValueError("retention needs a timezone-aware `now`")
    in_store = [entry for entry in entries if entry.store_url == store_url]
    kept: dict[str, CatalogEntry] = {}
    for members in by_series(good(in_store)).values():  # archives (logs) too
        kept[members[0].backup_id] = members[0]
        verified = next((entry for entry in members if entry.verified), None)
        if verified is not None:
            kept[verified.backup_id] = verified
    cutoff = now - timedelta(days=retention_days)

    def old(entry: CatalogEntry) -> bool:
        return entry.backup_id not in kept and _utc(entry.created_at) < cutoff

    needed = {entry.key for entry in good(in_store) if not old(entry)}
    expired = [
        entry
        for entry in in_store
        if entry.key not in needed and ((entry.good and old(entry)) or entry.status == DELETING)
    ]
    expired.sort(key=lambda e: (_utc(e.created_at), e.backup_id))
    return Retention(kept=sorted(kept.values(), key=lambda e: e.backup_id), expired=expired)


def choose(
    series: dict[SeriesKey, list[CatalogEntry]],
    env_name: str,
    env: Environment,
    database: str = "all",
    backup_id: str | None = None,
) -> list[tuple[int, Database, CatalogEntry]]:
    """(inventory index, database, backup) to restore from ``series`` (``restorable(...)``):
    the newest good backup of each chosen database, or the one ``backup_id`` names.
    ``InputError`` naming the parameter when something is missing."""
    names = [db.name for db in env.databases]
    if database != "all" and database not in names:
        raise InputError(
            "database",
            f"{database!r} is not a database of {env_name}",
            f"choose one of: {', '.join(names) or '(none listed)'} or all",
        )
    chosen: list[tuple[int, Database, CatalogEntry]] = []
    for index, db in enumerate(env.databases):
        if database not in ("all", db.name):
            continue
        sources = series.get(series_key(env_name, db.kind, db.name), [])
        if backup_id:
            match = [s for s in sources if s.backup_id == backup_id]
            if not match:
                if database == "all" and len(env.databases) > 1:
                    continue
                raise InputError(
                    "backup_id",
                    f"no complete backup {backup_id!r} of {db.name} in {env_name} is catalogued",
                    f"list them with `opsflow backups list --env {env_name}`",
                )
            chosen.append((index, db, match[0]))
        elif sources:
            chosen.append((index, db, sources[0]))
        else:
            raise InputError(
                "database",
                f"{db.name} in {env_name} has no complete backup in the catalog",
                f"run `opsflow run backup --env {env_name}` first, or restore another database",
            )
    if not chosen:
        raise InputError(
            "backup_id" if backup_id else "database",
            f"nothing to restore in {env_name}"
            + (f": backup {backup_id!r} is not catalogued" if backup_id else ""),
            f"list the backups with `opsflow backups list --env {env_name}`",
        )
    return chosen
