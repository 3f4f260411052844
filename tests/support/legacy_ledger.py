"""The ledger module exactly as opsflow shipped it before migrations (opsflow/ledger.py at
b8daf8e), kept to make "old" ledgers that the migration tests upgrade. Do not change it.

The original docstring:

The ledger: an append-only, hash-chained record of runs, steps, approvals and backups.

SQLAlchemy 2; SQLite under ``.opsflow/`` by default, PostgreSQL (or anything SQLAlchemy
speaks) through ``OPSFLOW_LEDGER_URL``. Each table is a chain: a row's ``row_hash`` is the
sha256 of the previous row's hash and the row's own values, and ``chain_heads`` holds the
last hash of each table, so editing, inserting or deleting rows is caught by ``verify()``.
Values are redacted before they are written: the ledger never holds a secret.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    Integer,
    String,
    Text,
    create_engine,
    event,
    select,
    update,
)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from opsflow.redaction import redact, redact_data
from opsflow.settings import get_settings

GENESIS = "0" * 64


class Base(DeclarativeBase):
    pass


class ChainHead(Base):
    __tablename__ = "chain_heads"
    table_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    row_hash: Mapped[str] = mapped_column(String(64))
    rows: Mapped[int] = mapped_column(Integer, default=0)


class _Chained:
    """Columns every chained table has."""

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    prev_hash: Mapped[str] = mapped_column(String(64))
    row_hash: Mapped[str] = mapped_column(String(64), index=True)
    recorded_at: Mapped[datetime] = mapped_column(DateTime)


class RunRow(_Chained, Base):
    __tablename__ = "runs"
    flow_run_id: Mapped[str] = mapped_column(String(64), index=True)
    runbook: Mapped[str] = mapped_column(String(64), index=True)
    env: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime] = mapped_column(DateTime)
    triggered_by: Mapped[str] = mapped_column(String(128), default="")
    summary: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class StepRow(_Chained, Base):
    __tablename__ = "steps"
    flow_run_id: Mapped[str] = mapped_column(String(64), index=True)
    runbook: Mapped[str] = mapped_column(String(64))
    env: Mapped[str] = mapped_column(String(64))
    step: Mapped[str] = mapped_column(String(128))
    target: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(32))
    summary: Mapped[str] = mapped_column(Text, default="")
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ApprovalRow(_Chained, Base):
    """One event of an approval: ``requested``, then ``approved``/``rejected``/``timed_out``
    (and ``refused`` for answers that broke the policy)."""

    __tablename__ = "approvals"
    flow_run_id: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(64))
    env: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(32))
    requested_by: Mapped[str] = mapped_column(String(128))
    actor: Mapped[str] = mapped_column(String(128), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    plan: Mapped[str] = mapped_column(Text, default="")


class BackupRow(_Chained, Base):
    """A backup object, catalogued only once complete and verified."""

    __tablename__ = "backups"
    backup_id: Mapped[str] = mapped_column(String(64), index=True)
    env: Mapped[str] = mapped_column(String(64), index=True)
    database: Mapped[str] = mapped_column(String(128), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    store_url: Mapped[str] = mapped_column(String(512))
    key: Mapped[str] = mapped_column(String(512))
    bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)
    flow_run_id: Mapped[str] = mapped_column(String(64), default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class DrillRow(_Chained, Base):
    """One database of a DR drill: the backup restored into a scratch target, measured RTO
    (restore + verify wall time) and RPO (age of that backup) against the targets."""

    __tablename__ = "drills"
    flow_run_id: Mapped[str] = mapped_column(String(64), index=True)
    env: Mapped[str] = mapped_column(String(64), index=True)
    database: Mapped[str] = mapped_column(String(128), index=True)
    backup_id: Mapped[str] = mapped_column(String(64), default="")
    rto_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    rpo_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    targets: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    outcome: Mapped[str] = mapped_column(String(32))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


CHAINED: tuple[type[_Chained], ...] = (RunRow, StepRow, ApprovalRow, BackupRow, DrillRow)
VERIFIED = "verified"
Row = TypeVar("Row", bound=_Chained)


def utcnow() -> datetime:
    """Naive UTC (what SQLite gives back), so hashes are stable across databases."""
    return datetime.now(UTC).replace(tzinfo=None)


def _canonical(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.isoformat(timespec="microseconds")
    return value


def _row_payload(row: _Chained) -> dict[str, Any]:
    skip = {"id", "prev_hash", "row_hash"}
    return {
        col.key: _canonical(getattr(row, col.key))
        for col in row.__table__.columns  # type: ignore[attr-defined]
        if col.key not in skip
    }


def _apply_defaults(row: _Chained) -> None:
    """Fill column defaults now, so the hash covers exactly what is stored."""
    for col in row.__table__.columns:  # type: ignore[attr-defined]
        if getattr(row, col.key) is None and col.default is not None:
            arg = col.default.arg
            setattr(row, col.key, arg(None) if col.default.is_callable else arg)


def _hash(prev: str, payload: dict[str, Any]) -> str:
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256((prev + body).encode()).hexdigest()


@dataclass(frozen=True)
class ChainProblem:
    table: str
    row_id: int | None
    problem: str


@dataclass(frozen=True)
class VerifyReport:
    rows: int
    problems: list[ChainProblem]

    @property
    def ok(self) -> bool:
        return not self.problems


class Ledger:
    def __init__(self, url: str | None = None) -> None:
        self.url = url or get_settings().resolved_ledger_url()
        parsed = make_url(self.url)
        if parsed.get_backend_name() == "sqlite" and parsed.database:
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(
                self.url, connect_args={"timeout": 60}, pool_pre_ping=True
            )
            event.listen(self.engine, "connect", _sqlite_pragmas)
        else:
            self.engine = create_engine(self.url, pool_pre_ping=True)
        Base.metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    def append(self, row: Row) -> Row:
        """Add ``row`` at the end of its table's chain (serialised by locking the chain head)."""
        table = row.__tablename__  # type: ignore[attr-defined]
        for attr in ("summary", "reason", "plan"):
            if isinstance(getattr(row, attr, None), str):
                setattr(row, attr, redact(getattr(row, attr)))
        if isinstance(getattr(row, "details", None), dict):
            row.details = redact_data(row.details)  # type: ignore[attr-defined]
        row.recorded_at = utcnow()
        _apply_defaults(row)
        with self._session() as session:
            # The first statement is a write: it takes the lock before we read the head.
            result = session.execute(
                update(ChainHead)
                .where(ChainHead.table_name == table)
                .values(rows=ChainHead.rows + 1)
            )
            if result.rowcount == 0:  # type: ignore[attr-defined]
                session.add(ChainHead(table_name=table, row_hash=GENESIS, rows=1))
                session.flush()
            head = session.get(ChainHead, table, populate_existing=True)
            assert head is not None
            row.prev_hash = head.row_hash
            row.row_hash = _hash(row.prev_hash, _row_payload(row))
            session.add(row)
            head.row_hash = row.row_hash
        return row

    # ----- writers -------------------------------------------------------------------------
    def record_run(self, **values: Any) -> RunRow:
        return self.append(RunRow(**values))

    def record_step(self, **values: Any) -> StepRow:
        return self.append(StepRow(**values))

    def record_approval(self, **values: Any) -> ApprovalRow:
        return self.append(ApprovalRow(**values))

    def record_backup(self, **values: Any) -> BackupRow:
        values.setdefault("backup_id", uuid.uuid4().hex[:16])
        return self.append(BackupRow(**values))

    def record_drill(self, **values: Any) -> DrillRow:
        return self.append(DrillRow(**values))

    def mark_verified(
        self, backup: BackupRow, *, verified_at: datetime, flow_run_id: str, how: str
    ) -> BackupRow:
        """Catalogue that ``backup`` was restored and checked: the chain is append-only, so this
        appends a copy of its row with status ``verified`` and ``verified_at`` in details."""
        details = {**(backup.details or {}), "verified_at": _canonical(verified_at)}
        details["verified_by"] = {"flow_run_id": flow_run_id, "how": how}
        copied = {
            column.key: getattr(backup, column.key)
            for column in BackupRow.__table__.columns
            if column.key not in ("id", "status", "details", "recorded_at", "prev_hash", "row_hash")
        }
        return self.append(BackupRow(**copied, status=VERIFIED, details=details))

    # ----- readers -------------------------------------------------------------------------
    def runs(
        self, env: str | None = None, runbook: str | None = None, limit: int = 50
    ) -> list[RunRow]:
        return self._latest(RunRow, RunRow.id, limit, env=env, runbook=runbook)

    def steps(self, flow_run_id: str) -> list[StepRow]:
        query = select(StepRow).where(StepRow.flow_run_id == flow_run_id).order_by(StepRow.id)
        with self._session() as session:
            return list(session.scalars(query))

    def approval_events(self, flow_run_id: str) -> list[ApprovalRow]:
        query = (
            select(ApprovalRow)
            .where(ApprovalRow.flow_run_id == flow_run_id)
            .order_by(ApprovalRow.id)
        )
        with self._session() as session:
            return list(session.scalars(query))

    def pending_approval(self, flow_run_id: str) -> ApprovalRow | None:
        """The open request of a run: its last ``requested`` event with no decision after it."""
        pending: ApprovalRow | None = None
        for row in self.approval_events(flow_run_id):
            if row.event == "requested":
                pending = row
            elif row.event in {"approved", "rejected", "timed_out"}:
                pending = None
        return pending

    def backups(
        self, env: str | None = None, database: str | None = None, limit: int | None = 100
    ) -> list[BackupRow]:
        """Backup rows, newest backup first (``limit=None``: all). Every state of a backup is a
        row; ``opsflow.catalog.fold`` turns them into one entry per backup."""
        return self._latest(BackupRow, BackupRow.created_at, limit, env=env, database=database)

    def drills(
        self, env: str | None = None, database: str | None = None, limit: int = 100
    ) -> list[DrillRow]:
        return self._latest(DrillRow, DrillRow.id, limit, env=env, database=database)

    def _latest(
        self, model: type[Row], newest: Any, limit: int | None, **equal: str | None
    ) -> list[Row]:
        """Rows of ``model``, ``newest`` column descending, filtered by the given columns'
        values (a None or empty value does not filter)."""
        query = select(model).order_by(newest.desc()).limit(limit)
        for column, value in equal.items():
            if value:
                query = query.where(getattr(model, column) == value)
        with self._session() as session:
            return list(session.scalars(query))

    # ----- integrity -----------------------------------------------------------------------
    def verify(self) -> VerifyReport:
        problems: list[ChainProblem] = []
        total = 0
        with self._session() as session:
            heads = {h.table_name: h for h in session.scalars(select(ChainHead))}
            for model in CHAINED:
                table = model.__tablename__  # type: ignore[attr-defined]
                prev = GENESIS
                count = 0
                for row in session.scalars(select(model).order_by(model.id)):
                    count += 1
                    if row.prev_hash != prev:
                        problems.append(ChainProblem(table, row.id, "row missing before it"))
                    if _hash(row.prev_hash, _row_payload(row)) != row.row_hash:
                        problems.append(ChainProblem(table, row.id, "row content was changed"))
                    prev = row.row_hash
                total += count
                head = heads.get(table)
                head_hash = head.row_hash if head else GENESIS
                head_rows = head.rows if head else 0
                if head_hash != prev or head_rows != count:
                    problems.append(
                        ChainProblem(
                            table,
                            None,
                            f"chain head expects {head_rows} rows, "
                            f"found {count}: rows were removed or added",
                        )
                    )
        return VerifyReport(rows=total, problems=problems)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.close()
