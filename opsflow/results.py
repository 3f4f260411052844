"""Small result models that tasks return and that reports and the ledger understand."""

from __future__ import annotations

import time
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field

if TYPE_CHECKING:
    from opsflow.catalog import CatalogEntry


class Status(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return {"healthy": 0, "degraded": 1, "critical": 2}[self.value]


def worst(statuses: list[Status]) -> Status:
    """The overall status: the worst of the parts (healthy when there are none)."""
    return max(statuses, key=lambda s: s.rank, default=Status.HEALTHY)


def grade(value: float, degraded_at: float, critical_at: float | None = None) -> Status:
    """Grade a 'higher is worse' value against thresholds."""
    if critical_at is not None and value >= critical_at:
        return Status.CRITICAL
    if value >= degraded_at:
        return Status.DEGRADED
    return Status.HEALTHY


def note_restarts(restarts: int, limit: int, statuses: list[Status], notes: list[str]) -> None:
    """A container or pod that restarted more than ``limit`` times is degraded, with a note."""
    if restarts > limit:
        statuses.append(Status.DEGRADED)
        notes.append(f"{restarts} restarts (threshold {limit})")


class CheckResult(BaseModel):
    """The outcome of one health check against one target."""

    check: str = Field(description="what was checked, e.g. endpoint, postgres, disk")
    target: str = Field(description="which thing, e.g. the endpoint or database name")
    status: Status
    summary: str
    details: dict[str, Any] = Field(default_factory=dict)
    duration_ms: int = 0

    @classmethod
    def timed(
        cls,
        started: float,
        check: str,
        target: str,
        status: Status,
        summary: str,
        details: dict[str, Any] | None = None,
    ) -> CheckResult:
        """A result whose duration runs from ``started`` (``time.monotonic()``) until now."""
        return cls(
            check=check,
            target=target,
            status=status,
            summary=summary,
            details=details or {},
            duration_ms=int((time.monotonic() - started) * 1000),
        )

    @classmethod
    def failed(cls, check: str, target: str, error: BaseException | str) -> CheckResult:
        """A check that could not run at all is critical, with the reason as summary."""
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        return cls(check=check, target=target, status=Status.CRITICAL, summary=text)


# --- restores ----------------------------------------------------------------------------


class RestoreResult(BaseModel):
    database: str
    target: str
    backup_id: str
    key: str
    bytes: int
    raw_bytes: int
    seconds: float

    @classmethod
    def of(
        cls, source: CatalogEntry, target: str, size: int, raw: int, started: float
    ) -> RestoreResult:
        """``source`` restored into ``target``: ``size`` bytes read from the store, ``raw``
        bytes written, since ``started`` (``time.monotonic()``)."""
        return cls(
            database=source.database,
            target=target,
            backup_id=source.backup_id,
            key=source.key,
            bytes=size,
            raw_bytes=raw,
            seconds=round(time.monotonic() - started, 3),
        )


class VerifyResult(BaseModel):
    target: str
    ok: bool
    problems: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    checks: list[str] = Field(default_factory=list)
    row_counts: dict[str, int] = Field(default_factory=dict)
    table_checksums: dict[str, str] = Field(
        default_factory=dict, description="md5 per checksum table of the restored copy"
    )
    seconds: float = 0.0


def compare_counts(
    expected: dict[str, int], found: dict[str, int], exact: bool
) -> tuple[list[str], list[str]]:
    """(problems, warnings) from per-table row counts: missing tables and different counts are
    problems when the manifest's counts come from the dumped snapshot, warnings otherwise."""
    differences = []
    for table, count in sorted(expected.items()):
        if table not in found:
            differences.append(f"table {table} is missing (backup had {count} rows)")
        elif found[table] != count:
            differences.append(f"table {table} has {found[table]} rows, the backup had {count}")
    if exact:
        return differences, []
    return [], [d + " (counts taken outside the dump's snapshot)" for d in differences]


def compare_checksums(
    expected: dict[str, str], found: dict[str, str], exact: bool
) -> tuple[list[str], list[str]]:
    """(problems, warnings) from per-table content checksums, like ``compare_counts``: a missing
    table or a different checksum is a problem when the checksums were taken in the dumped
    snapshot, a warning otherwise."""
    differences = []
    for table, checksum in sorted(expected.items()):
        if table not in found:
            differences.append(f"checksum table {table} is missing in the restored copy")
        elif found[table] != checksum:
            differences.append(
                f"table {table} content checksum {found[table]} differs from the backup's "
                f"{checksum}"
            )
    if exact:
        return differences, []
    return [], [d + " (checksum taken outside the dump's snapshot)" for d in differences]


class DatabaseRestore(BaseModel):
    database: str
    kind: str
    backup_id: str
    key: str
    sha256: str
    target: str = ""
    status: Literal["restored", "failed", "skipped"] = "skipped"
    seconds: float = 0.0
    bytes: int = 0
    raw_bytes: int = 0
    aside: str = ""
    health: str = ""
    error: str | None = None

    @classmethod
    def of(cls, kind: str, source: CatalogEntry, **values: Any) -> DatabaseRestore:
        """The restore of catalogued backup ``source`` (a database of ``kind``)."""
        return cls(
            database=source.database,
            kind=kind,
            backup_id=source.backup_id,
            key=source.key,
            sha256=source.sha256,
            **values,
        )


class RestoreReport(BaseModel):
    env: str
    mode: str
    target_db: str | None = None
    databases: list[DatabaseRestore] = Field(default_factory=list)
    scaled: str = ""
    scaled_back: str = ""
    errors: list[str] = Field(default_factory=list)
    seconds: float = 0.0
    dry_run: bool = False

    @property
    def failed(self) -> bool:
        return bool(self.errors) or any(d.status == "failed" for d in self.databases)
