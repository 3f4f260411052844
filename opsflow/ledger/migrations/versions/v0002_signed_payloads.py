"""Signed, versioned payloads: seq per table, the stored canonical payload and its HMAC;
64-bit byte counts and durations; free-text columns without a length limit; the key id.

Existing rows are migrated, not dropped: the old unkeyed chain is verified first (a ledger
whose old chain is broken is not migrated: the upgrade fails and changes nothing), then every
row gets ``seq`` (in id order), its version-1 payload (which records its old hash under
``migrated``) and a new HMAC chain with the ledger key, so old rows verify after the
migration.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import sqlalchemy as sa
from alembic import op

from opsflow.ledger.chain import build_payload, key_id, row_mac
from opsflow.ledger.errors import LedgerIntegrityError
from opsflow.ledger.migrations.legacy import CHAINED, GENESIS, TABLES, legacy_hash

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

PAGE = 1000
SHOWN = 5
WIDENED: dict[str, dict[str, Any]] = {
    "runs": {"triggered_by": sa.Text()},
    "steps": {"step": sa.Text(), "target": sa.Text(), "duration_ms": sa.BigInteger()},
    "approvals": {"requested_by": sa.Text(), "actor": sa.Text()},
    "backups": {
        "store_url": sa.Text(),
        "key": sa.Text(),
        "bytes": sa.BigInteger(),
        "duration_ms": sa.BigInteger(),
    },
    "drills": {},
}
NEW_COLUMNS = (("seq", sa.BigInteger()), ("payload", sa.Text()), ("payload_version", sa.Integer()))


def _pages(bind: sa.Connection, table: sa.Table) -> Iterator[dict[str, Any]]:
    """Every row of ``table`` in id order, read a page at a time."""
    last = 0
    while True:
        query = sa.select(table).where(table.c.id > last).order_by(table.c.id).limit(PAGE)
        rows = bind.execute(query).mappings().all()
        if not rows:
            return
        yield from (dict(row) for row in rows)
        last = rows[-1]["id"]


def _legacy_problems(bind: sa.Connection, name: str) -> list[str]:
    prev, count, problems = GENESIS, 0, []
    for row in _pages(bind, TABLES[name]):
        count += 1
        if row["prev_hash"] != prev:
            problems.append(f"{name} row {row['id']}: a row before it is missing")
        if legacy_hash(row["prev_hash"], row) != row["row_hash"]:
            problems.append(f"{name} row {row['id']}: its content was changed")
        prev = row["row_hash"]
    heads = TABLES["chain_heads"]
    head = bind.execute(sa.select(heads).where(heads.c.table_name == name)).mappings().first()
    head_hash, head_rows = (head["row_hash"], head["rows"]) if head else (GENESIS, 0)
    if head_hash != prev or head_rows != count:
        problems.append(f"{name}: the chain head expects {head_rows} rows, found {count}")
    return problems


def _resign(bind: sa.Connection, name: str, key: bytes | None) -> tuple[int, str]:
    """Give every row of ``name`` its seq, payload and HMAC; the new (seq, hash) head."""
    target = sa.table(
        name,
        *(sa.column(c) for c in ("id", "seq", "prev_hash", "row_hash", "payload")),
        sa.column("payload_version"),
    )
    statement = (
        sa.update(target)
        .where(target.c.id == sa.bindparam("b_id"))
        .values(
            seq=sa.bindparam("b_seq"),
            prev_hash=sa.bindparam("b_prev"),
            row_hash=sa.bindparam("b_hash"),
            payload=sa.bindparam("b_payload"),
            payload_version=1,
        )
    )
    seq, prev, batch = 0, GENESIS, []
    for row in _pages(bind, TABLES[name]):
        assert key is not None  # rows exist, so the caller resolved the key
        seq += 1
        payload = build_payload(name, seq, row, version=1, migrated_from=row["row_hash"])
        new = row_mac(key, 1, prev, payload)
        batch.append(
            {"b_id": row["id"], "b_seq": seq, "b_prev": prev, "b_hash": new, "b_payload": payload}
        )
        prev = new
        if len(batch) >= PAGE:
            bind.execute(statement, batch)
            batch = []
    if batch:
        bind.execute(statement, batch)
    return seq, prev


def upgrade() -> None:
    bind = op.get_bind()
    problems = [p for name in CHAINED for p in _legacy_problems(bind, name)]
    if problems:
        more = f" and {len(problems) - SHOWN} more" if len(problems) > SHOWN else ""
        raise LedgerIntegrityError(
            "the ledger's old (sha256) hash chain does not verify, so it was not upgraded: "
            + "; ".join(problems[:SHOWN])
            + more
            + " (fix: restore the ledger database from a backup, or keep this one as "
            "evidence and point OPSFLOW_LEDGER_URL at a new database)"
        )
    count = sa.select(sa.func.count()).select_from
    has_rows = any(bind.execute(count(TABLES[name])).scalar_one() for name in CHAINED)
    key: bytes | None = None
    if has_rows:
        config = op.get_context().config
        assert config is not None
        provider: Callable[[], bytes] = config.attributes["ledger_key"]
        key = provider()

    op.create_table(
        "ledger_meta",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )
    heads: dict[str, tuple[int, str]] = {}
    for name in CHAINED:
        legacy = TABLES[name]
        with op.batch_alter_table(name) as batch:
            for column, type_ in NEW_COLUMNS:
                batch.add_column(sa.Column(column, type_, nullable=True))
            for column, type_ in WIDENED[name].items():
                batch.alter_column(
                    column,
                    type_=type_,
                    existing_type=legacy.c[column].type,
                    existing_nullable=False,
                )
        heads[name] = _resign(bind, name, key)
        with op.batch_alter_table(name) as batch:
            for column, type_ in NEW_COLUMNS:
                batch.alter_column(column, existing_type=type_, nullable=False)
            batch.create_unique_constraint(f"uq_{name}_seq", ["seq"])

    with op.batch_alter_table("chain_heads") as batch:
        batch.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
        batch.drop_column("rows")
    chain_heads = sa.table(
        "chain_heads", sa.column("table_name"), sa.column("seq"), sa.column("row_hash")
    )
    bind.execute(sa.delete(chain_heads))
    bind.execute(
        sa.insert(chain_heads),
        [{"table_name": n, "seq": s, "row_hash": h} for n, (s, h) in heads.items()],
    )
    with op.batch_alter_table("chain_heads") as batch:
        batch.alter_column("seq", existing_type=sa.BigInteger(), nullable=False)
    if key is not None:
        meta = sa.table("ledger_meta", sa.column("name"), sa.column("value"))
        bind.execute(sa.insert(meta).values(name="key_id", value=key_id(key)))
