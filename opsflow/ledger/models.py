"""The ledger's tables (SQLAlchemy 2 models). The schema itself is made by the Alembic
migrations in ``opsflow/ledger/migrations``; these models must match the newest one
(``tests/integration/test_ledger.py`` compares them).

Every chained table has ``seq`` (1, 2, 3, … per table, no gaps), ``prev_hash`` (the
``row_hash`` of seq - 1, or ``GENESIS``), ``payload`` (the canonical JSON of the row as it was
written, see ``opsflow.ledger.chain``), ``payload_version`` and ``row_hash`` (the HMAC of
``prev_hash`` and ``payload``). ``chain_heads`` holds each table's last seq and hash (the lock
that serialises appends); ``ledger_meta`` holds the id of the key the ledger is signed with;
``used_codes`` holds the one-time approval codes already accepted (approver and TOTP time step,
never the code), whose primary key is what makes each code work once; ``alerts`` (revision
0004) holds the alerts the receiver took and what it did with each.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column

GENESIS = "0" * 64
VERIFIED = "verified"


class Base(DeclarativeBase):
    pass


class ChainHead(Base):
    __tablename__ = "chain_heads"
    table_name: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger, default=0)
    row_hash: Mapped[str] = mapped_column(String(64))


class LedgerMeta(Base):
    __tablename__ = "ledger_meta"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class UsedCode(Base):
    """A one-time code that opsflow has seen: (approver, TOTP time step). Inserted before the
    answer carrying it is judged, so the same code can never count twice (not chained: it is a
    register of what is spent, not a record; approvals are recorded in ``approvals``)."""

    __tablename__ = "used_codes"
    approver: Mapped[str] = mapped_column(String(64), primary_key=True)
    step: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    flow_run_id: Mapped[str] = mapped_column(String(64))
    used_at: Mapped[datetime] = mapped_column(DateTime)


class _Chained:
    """Columns every chained table has."""

    __tablename__: str

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    prev_hash: Mapped[str] = mapped_column(String(64))
    row_hash: Mapped[str] = mapped_column(String(64), index=True)
    payload: Mapped[str] = mapped_column(Text)
    payload_version: Mapped[int] = mapped_column(Integer)
    recorded_at: Mapped[datetime] = mapped_column(DateTime)

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        return (UniqueConstraint("seq", name=f"uq_{cls.__tablename__}_seq"),)


class RunRow(_Chained, Base):
    __tablename__ = "runs"
    flow_run_id: Mapped[str] = mapped_column(String(64), index=True)
    runbook: Mapped[str] = mapped_column(String(64), index=True)
    env: Mapped[str] = mapped_column(String(64), index=True)
    status: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[datetime] = mapped_column(DateTime)
    finished_at: Mapped[datetime] = mapped_column(DateTime)
    triggered_by: Mapped[str] = mapped_column(Text, default="")
    summary: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class StepRow(_Chained, Base):
    __tablename__ = "steps"
    flow_run_id: Mapped[str] = mapped_column(String(64), index=True)
    runbook: Mapped[str] = mapped_column(String(64))
    env: Mapped[str] = mapped_column(String(64))
    step: Mapped[str] = mapped_column(Text)
    target: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(32))
    summary: Mapped[str] = mapped_column(Text, default="")
    duration_ms: Mapped[int] = mapped_column(BigInteger, default=0)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ApprovalRow(_Chained, Base):
    """One event of an approval: ``requested``, then ``approved``/``rejected``/``timed_out``
    (``refused`` for answers that broke the policy or carried a wrong or used code,
    ``endorsed`` for a valid approval that does not yet make the ``required`` number)."""

    __tablename__ = "approvals"
    flow_run_id: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(64))
    env: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(32))
    requested_by: Mapped[str] = mapped_column(Text)
    actor: Mapped[str] = mapped_column(Text, default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    plan: Mapped[str] = mapped_column(Text, default="")


class BackupRow(_Chained, Base):
    """A backup object, catalogued only once complete and verified. ``bytes`` is 64-bit."""

    __tablename__ = "backups"
    backup_id: Mapped[str] = mapped_column(String(64), index=True)
    env: Mapped[str] = mapped_column(String(64), index=True)
    database: Mapped[str] = mapped_column(String(128), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    store_url: Mapped[str] = mapped_column(Text)
    key: Mapped[str] = mapped_column(Text)
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(DateTime)
    duration_ms: Mapped[int] = mapped_column(BigInteger, default=0)
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


class AlertRow(_Chained, Base):
    """One Alertmanager alert as the receiver took it (``opsflow.alerts``): its labels and
    annotations, the rule's runbook, and what became of it — ``outcome`` is ``started`` (a run
    was created: ``flow_run_id``), ``deduplicated`` or ``rate_limited`` (no run, ``reason``
    says why), ``unmatched`` (no rule), ``failed_to_start`` (the run could not be created),
    or ``resolved`` (Alertmanager's all-clear; ``flow_run_id`` is the run its firing started,
    which closes that incident's timeline). ``ends_at`` is Alertmanager's zero time
    (0001-01-01) while an alert fires."""

    __tablename__ = "alerts"
    env: Mapped[str] = mapped_column(String(64), index=True)
    alertname: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    fingerprint: Mapped[str] = mapped_column(String(64), index=True)
    group_key: Mapped[str] = mapped_column(Text)
    labels: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    annotations: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    starts_at: Mapped[datetime] = mapped_column(DateTime)
    ends_at: Mapped[datetime] = mapped_column(DateTime)
    runbook: Mapped[str] = mapped_column(String(64), default="")
    flow_run_id: Mapped[str] = mapped_column(String(64), index=True, default="")
    outcome: Mapped[str] = mapped_column(String(32))
    reason: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


Chained = _Chained
CHAINED: tuple[type[_Chained], ...] = (
    RunRow,
    StepRow,
    ApprovalRow,
    BackupRow,
    DrillRow,
    AlertRow,
)
BY_TABLE: dict[str, type[_Chained]] = {m.__tablename__: m for m in CHAINED}
CHAIN_COLUMNS = frozenset({"id", "seq", "prev_hash", "row_hash", "payload", "payload_version"})
"""Columns of the chain itself; every other column of a chained table is in its payload."""
Row = TypeVar("Row", bound=_Chained)


def utcnow() -> datetime:
    """Naive UTC (what SQLite gives back), so payloads are the same on every database."""
    return datetime.now(UTC).replace(tzinfo=None)


def domain_columns(model: type[_Chained]) -> tuple[str, ...]:
    """The columns of ``model`` that its payload holds (all but the chain's own)."""
    table = model.__table__  # type: ignore[attr-defined]
    return tuple(c.key for c in table.columns if c.key not in CHAIN_COLUMNS)
