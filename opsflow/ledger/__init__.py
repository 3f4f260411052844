"""The ledger: an append-only, HMAC-chained record of runs, steps, approvals, backups, drills
and alerts.

SQLAlchemy 2; SQLite under ``OPSFLOW_HOME`` by default, PostgreSQL (or anything SQLAlchemy
speaks) through ``OPSFLOW_LEDGER_URL``; the schema is kept by Alembic migrations
(``schema.py``). Each table is a chain: every row stores its canonical payload and the HMAC of
that payload and the previous row's hash, under a key kept outside the database (``keys.py``),
so editing, inserting or deleting rows is caught by ``verify()``; the chain heads published
after each run (``heads()``) also catch a cut tail or a table emptied with its head. Values
are redacted before they are written: the ledger never holds a secret. See docs/ledger.md.

Modules: ``models`` (tables), ``chain`` (payloads, HMAC, signed heads), ``keys``, ``schema``
(engine, errors, migrations), ``heads`` (published copies), ``verify``.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, String, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from opsflow.errors import InputError
from opsflow.ledger.chain import (
    PAYLOAD_VERSION,
    build_payload,
    canonical,
    json_safe,
    row_mac,
    sign_heads,
)
from opsflow.ledger.errors import LedgerIntegrityError, LedgerSchemaError, LedgerUnavailable
from opsflow.ledger.heads import (
    PublishedHeads,
    local_heads_path,
    read_heads_file,
    write_heads_file,
)
from opsflow.ledger.keys import LedgerKey, load_key
from opsflow.ledger.models import (
    CHAINED,
    GENESIS,
    VERIFIED,
    AlertRow,
    ApprovalRow,
    BackupRow,
    Base,
    Chained,
    ChainHead,
    DrillRow,
    LedgerMeta,
    Row,
    RunRow,
    StepRow,
    UsedCode,
    domain_columns,
    utcnow,
)
from opsflow.ledger.schema import display_url, ensure_schema, make_engine, translated
from opsflow.ledger.verify import (
    ChainProblem,
    VerifyReport,
    check_key,
    check_published,
    verify_tables,
)
from opsflow.redaction import redact, redact_data
from opsflow.settings import get_settings

__all__ = [
    "CHAINED",
    "GENESIS",
    "VERIFIED",
    "AlertRow",
    "ApprovalRow",
    "BackupRow",
    "Base",
    "ChainHead",
    "ChainProblem",
    "DrillRow",
    "Ledger",
    "LedgerIntegrityError",
    "LedgerKey",
    "LedgerSchemaError",
    "LedgerUnavailable",
    "PublishedHeads",
    "RunRow",
    "StepRow",
    "UsedCode",
    "VerifyReport",
    "utcnow",
]

_REDACTED_TEXT = (
    "summary",
    "reason",
    "plan",
    "step",
    "target",
    "triggered_by",
    "requested_by",
    "actor",
    "store_url",
)
"""Free-text columns, redacted before a row is chained and written (JSON columns too)."""


class Ledger:
    """One ledger database. ``key`` overrides the configured key (tests, tools)."""

    def __init__(
        self, url: str | None = None, *, key: LedgerKey | None = None, timeout: float | None = None
    ) -> None:
        self.settings = get_settings()
        self.url = url or self.settings.resolved_ledger_url()
        self.display_url = display_url(self.url)
        self.timeout = timeout or self.settings.ledger_timeout
        self._key = key
        self._key_checked = False
        with translated(self.display_url, self.timeout):
            self.engine = make_engine(self.url, self.timeout)
            ensure_schema(self.engine, self.display_url, self._migration_key)
        if self._key is not None and key is None:  # old rows were re-signed just now
            self.save_local_heads(self.heads())

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with (
            translated(self.display_url, self.timeout),
            Session(self.engine, expire_on_commit=False) as session,
            session.begin(),
        ):
            yield session

    # ----- the key -------------------------------------------------------------------------
    def _migration_key(self) -> bytes:
        if self._key is None:
            self._key = load_key(self.settings, create=True)
        return self._key.secret

    def signing_key(self) -> LedgerKey:
        """The key, checked once against the key id the ledger records (recorded on first
        use). A different key is refused: its rows would not verify."""
        if self._key_checked and self._key is not None:
            return self._key
        with self._session() as session:
            stored = session.get(LedgerMeta, "key_id")
            recorded = stored.value if stored else None
        key = self._key or load_key(self.settings, create=recorded is None)
        if recorded is None:
            try:
                with self._session() as session:
                    session.add(LedgerMeta(name="key_id", value=key.key_id))
                recorded = key.key_id
            except IntegrityError:  # another process recorded its key first
                with self._session() as session:
                    stored = session.get(LedgerMeta, "key_id")
                    recorded = stored.value if stored else None
        if recorded != key.key_id:
            raise InputError(
                "OPSFLOW_LEDGER_KEY",
                f"the key from {key.source} (key id {key.key_id}) is not the key the ledger "
                f"{self.display_url} is signed with (key id {recorded})",
                "give every process that writes this ledger the same key: the same "
                "OPSFLOW_LEDGER_KEY reference or a copy of its key file (docs/ledger.md)",
            )
        self._key, self._key_checked = key, True
        return key

    def check_writable(self) -> None:
        """Fail now, before a runbook's first side effect, when the ledger cannot be written
        (unreachable, locked, read-only) or the key is wrong: ``LedgerUnavailable`` or
        ``InputError``. Writes nothing."""
        self.signing_key()
        with translated(self.display_url, self.timeout), self.engine.connect() as conn:
            conn.execute(
                update(ChainHead).where(ChainHead.table_name == "").values(seq=ChainHead.seq)
            )
            conn.rollback()

    # ----- writing -------------------------------------------------------------------------
    def append(self, row: Row) -> Row:
        """Add ``row`` at the end of its table's chain (serialised by locking the chain head)."""
        return self.append_many([row])[0]

    def append_many(self, rows: Sequence[Row]) -> list[Row]:
        """Add ``rows`` at the ends of their chains, in order, in one transaction (one commit:
        all or none), e.g. the alerts of the requests a receiver took at once."""
        for row in rows:
            _prepare(row)
        key = self.signing_key()
        with self._session() as session:
            for row in rows:
                table = row.__tablename__
                # The first statement is a write: it takes the lock before the head is read.
                head = session.execute(
                    update(ChainHead)
                    .where(ChainHead.table_name == table)
                    .values(seq=ChainHead.seq + 1)
                    .returning(ChainHead.seq, ChainHead.row_hash)
                ).first()
                if head is None:
                    raise LedgerIntegrityError(
                        f"the chain head of {table} is missing from the ledger "
                        f"{self.display_url}, so nothing can be appended (fix: run `opsflow "
                        "ledger verify` and investigate: the ledger was tampered with)"
                    )
                row.seq, row.prev_hash = int(head.seq), str(head.row_hash)
                row.payload_version = PAYLOAD_VERSION
                values = {name: getattr(row, name) for name in domain_columns(type(row))}
                row.payload = build_payload(table, row.seq, values)
                row.row_hash = row_mac(key.secret, PAYLOAD_VERSION, row.prev_hash, row.payload)
                session.add(row)
                session.flush()
                session.execute(
                    update(ChainHead)
                    .where(ChainHead.table_name == table)
                    .values(row_hash=row.row_hash)
                )
        return list(rows)

    def record_run(self, **values: Any) -> RunRow:
        return self.append(RunRow(**values))

    def record_step(self, **values: Any) -> StepRow:
        return self.append(StepRow(**values))

    def record_approval(self, **values: Any) -> ApprovalRow:
        return self.append(ApprovalRow(**values))

    def use_code(self, approver: str, step: int, flow_run_id: str) -> bool:
        """Spend the one-time code of ``approver`` for TOTP time step ``step``: True the first
        time, False when it was spent before (by any run or process: the primary key decides)."""
        try:
            with self._session() as session:
                session.add(
                    UsedCode(
                        approver=approver, step=step, flow_run_id=flow_run_id, used_at=utcnow()
                    )
                )
        except IntegrityError:
            return False
        return True

    def record_backup(self, **values: Any) -> BackupRow:
        values.setdefault("backup_id", uuid.uuid4().hex[:16])
        return self.append(BackupRow(**values))

    def record_drill(self, **values: Any) -> DrillRow:
        return self.append(DrillRow(**values))

    def record_alert(self, **values: Any) -> AlertRow:
        """One alert the receiver took (``AlertRow``: labels and annotations redacted)."""
        return self.append(AlertRow(**values))

    def mark_verified(
        self, backup: BackupRow, *, verified_at: datetime, flow_run_id: str, how: str
    ) -> BackupRow:
        """Catalogue that ``backup`` was restored and checked: the chain is append-only, so this
        appends a copy of its row with status ``verified`` and ``verified_at`` in details."""
        return self.record_backup_state(
            backup,
            VERIFIED,
            verified_at=canonical(verified_at),
            verified_by={"flow_run_id": flow_run_id, "how": how},
        )

    def record_backup_state(self, backup: BackupRow, status: str, **details: Any) -> BackupRow:
        """Append a new state of ``backup`` (the chain is append-only): a copy of its row with
        ``status`` and ``details`` added to its details."""
        copied = {
            name: getattr(backup, name)
            for name in domain_columns(BackupRow)
            if name not in ("status", "details", "recorded_at")
        }
        merged = {**(backup.details or {}), **details}
        return self.append(BackupRow(**copied, status=status, details=merged))

    # ----- reading -------------------------------------------------------------------------
    def runs(
        self, env: str | None = None, runbook: str | None = None, limit: int = 50
    ) -> list[RunRow]:
        return self._latest(RunRow, RunRow.seq, limit, env=env, runbook=runbook)

    def steps(self, flow_run_id: str) -> list[StepRow]:
        query = select(StepRow).where(StepRow.flow_run_id == flow_run_id).order_by(StepRow.seq)
        with self._session() as session:
            return list(session.scalars(query))

    def step_history(
        self,
        env: str,
        step: str,
        *,
        runbook: str | None = None,
        since: datetime | None = None,
        limit: int = 1000,
    ) -> list[StepRow]:
        """One step's rows of an environment, newest first (``since``: recorded at or after
        it, naive UTC like every ledger time): trends and step durations read these."""
        query = (
            select(StepRow)
            .where(StepRow.env == env, StepRow.step == step)
            .order_by(StepRow.seq.desc())
            .limit(limit)
        )
        if runbook:
            query = query.where(StepRow.runbook == runbook)
        if since is not None:
            query = query.where(StepRow.recorded_at >= since)
        with self._session() as session:
            return list(session.scalars(query))

    def approval_events(self, flow_run_id: str) -> list[ApprovalRow]:
        query = (
            select(ApprovalRow)
            .where(ApprovalRow.flow_run_id == flow_run_id)
            .order_by(ApprovalRow.seq)
        )
        with self._session() as session:
            return list(session.scalars(query))

    def pending_approval(self, flow_run_id: str) -> ApprovalRow | None:
        """The open request of a run: its last ``requested`` event with no decision after it
        (``endorsed`` and ``refused`` answers leave it open)."""
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
        return self._latest(DrillRow, DrillRow.seq, limit, env=env, database=database)

    def alerts(
        self,
        env: str | None = None,
        fingerprint: str | None = None,
        group_key: str | None = None,
        flow_run_id: str | None = None,
        since: datetime | None = None,
        limit: int | None = 100,
        outcome: str | None = None,
    ) -> list[AlertRow]:
        """Alert rows, latest written first (``since``: recorded at or after it, naive UTC;
        ``limit=None``: all): the receiver's dedup and rate limit and an incident's timeline
        read these."""
        query = select(AlertRow).order_by(AlertRow.seq.desc()).limit(limit)
        for column, value in (
            (AlertRow.env, env),
            (AlertRow.fingerprint, fingerprint),
            (AlertRow.group_key, group_key),
            (AlertRow.flow_run_id, flow_run_id),
            (AlertRow.outcome, outcome),
        ):
            if value:
                query = query.where(column == value)
        if since is not None:
            query = query.where(AlertRow.recorded_at >= _naive(since))
        with self._session() as session:
            return list(session.scalars(query))

    def _latest(
        self, model: type[Row], newest: Any, limit: int | None, **equal: str | None
    ) -> list[Row]:
        """Rows of ``model``, ``newest`` column descending (ties: latest written first),
        filtered by the given columns' values (a None or empty value does not filter)."""
        query = select(model).order_by(newest.desc(), model.seq.desc()).limit(limit)
        for column, value in equal.items():
            if value:
                query = query.where(getattr(model, column) == value)
        with self._session() as session:
            return list(session.scalars(query))

    # ----- heads and integrity -------------------------------------------------------------
    def heads(self, flow_run_id: str = "") -> dict[str, Any]:
        """The signed heads document: each table's last seq and row hash, now."""
        key = self.signing_key()
        heads: dict[str, dict[str, Any]] = {}
        with self._session() as session:
            for model in CHAINED:
                last = session.execute(
                    select(model.seq, model.row_hash).order_by(model.seq.desc()).limit(1)
                ).first()
                heads[model.__tablename__] = (
                    {"seq": int(last.seq), "row_hash": str(last.row_hash)}
                    if last
                    else {"seq": 0, "row_hash": GENESIS}
                )
        return sign_heads(
            key.secret,
            heads,
            ledger=self.display_url,
            published_at=datetime.now(UTC),
            flow_run_id=flow_run_id,
        )

    def local_heads(self) -> PublishedHeads | None:
        """The heads last published in ``$OPSFLOW_HOME`` for this ledger, if any."""
        return read_heads_file(local_heads_path(self.settings, self.display_url))

    def save_local_heads(self, doc: dict[str, Any]) -> bool:
        return write_heads_file(local_heads_path(self.settings, self.display_url), doc)

    def check_heads(self, published: PublishedHeads) -> list[ChainProblem]:
        """Does the database still hold what ``published`` says it held? ([] when it does)."""
        key = self._key if self._key is not None else load_key(self.settings, create=False)
        with self._session() as session:
            return check_published(session, key, published)

    def verify(self, published: Sequence[PublishedHeads] = ()) -> VerifyReport:
        """Check every chain, the database's chain heads, and each published heads document.
        Never creates a key: verifying needs the ledger's own."""
        try:
            key = self._key if self._key is not None else load_key(self.settings, create=False)
        except InputError:
            with self._session() as session:
                if session.get(LedgerMeta, "key_id") is None and not _has_rows(session):
                    return VerifyReport(0, [])  # nothing signed yet, nothing to check
            raise
        with self._session() as session:
            problems = check_key(session, key)
            if problems and problems[0].problem.startswith("wrong key"):
                return VerifyReport(0, problems)
            rows, found = verify_tables(session, key)
            problems += found
            for doc in published:
                problems += check_published(session, key, doc)
        return VerifyReport(rows, problems, [p.source for p in published])


def _naive(when: datetime) -> datetime:
    return when.astimezone(UTC).replace(tzinfo=None) if when.tzinfo is not None else when


def _has_rows(session: Session) -> bool:
    return any(session.scalars(select(m.seq).limit(1)).first() is not None for m in CHAINED)


def _prepare(row: Chained) -> None:
    """Make the row exactly what will be stored and read back, on every database: redacted
    text, JSON values as JSON gives them back, defaults filled, naive-UTC times, no NUL
    characters, lengths within the column's."""
    model = type(row)
    for attr in _REDACTED_TEXT:
        if isinstance(getattr(row, attr, None), str):
            setattr(row, attr, redact(getattr(row, attr)))
    row.recorded_at = utcnow()
    for column in model.__table__.columns:  # type: ignore[attr-defined]
        name = column.key
        if name in ("id", "seq", "prev_hash", "row_hash", "payload", "payload_version"):
            continue
        value = getattr(row, name)
        if value is None and column.default is not None:
            arg = column.default.arg
            value = arg(None) if column.default.is_callable else arg
        if value is None:
            raise ValueError(f"{model.__tablename__}.{name}: a value is required")
        if isinstance(column.type, JSON):
            value = json_safe(redact_data(value))
        elif isinstance(value, datetime) and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        elif isinstance(value, str):
            value = value.replace("\x00", "\ufffd")
            length = column.type.length if isinstance(column.type, String) else None
            if length is not None and len(value) > length:
                raise ValueError(
                    f"{model.__tablename__}.{name}: {len(value)} characters, at most {length}"
                )
        elif isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{model.__tablename__}.{name}: {value} is not a finite number")
        setattr(row, name, value)
