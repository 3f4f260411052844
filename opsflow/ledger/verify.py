"""Verification of the ledger: every chain row by row, the database's own chain heads, and the
heads published outside the database (``opsflow ledger verify`` and ``Ledger.verify``).

A row is good when its ``seq`` follows the previous row's, its ``prev_hash`` is that row's
``row_hash``, its ``row_hash`` is the HMAC of its stored payload (so it was written with the
key), and the payload says what the row's columns say. A table is good when ``chain_heads``
names its last row; and it is not shorter, nor rewritten, where a published head says it
reached: that is what catches a cut tail or a table emptied together with its head.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from sqlalchemy import func, inspect, select
from sqlalchemy.orm import Session

from opsflow.ledger.chain import heads_problem, payload_problems, row_mac
from opsflow.ledger.heads import PublishedHeads
from opsflow.ledger.keys import LedgerKey
from opsflow.ledger.models import (
    BY_TABLE,
    CHAINED,
    GENESIS,
    Chained,
    ChainHead,
    LedgerMeta,
    domain_columns,
)

MAX_PER_TABLE = 50
"""Problems listed per table; the rest are counted."""


@dataclass(frozen=True)
class ChainProblem:
    table: str
    seq: int | None
    problem: str

    def __str__(self) -> str:
        where = f"row seq {self.seq}" if self.seq is not None else "table"
        return f"{self.table} {where}: {self.problem}"


@dataclass
class VerifyReport:
    rows: int
    problems: list[ChainProblem]
    heads_checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _mac_ok(key: LedgerKey, row: Chained) -> bool:
    expected = row_mac(key.secret, row.payload_version, row.prev_hash, row.payload)
    return hmac.compare_digest(expected, row.row_hash)


def check_key(session: Session, key: LedgerKey) -> list[ChainProblem]:
    """The key against the ledger's key id; a single "wrong key" problem stops verification
    (every row would fail), a changed key-id record with the right key does not."""
    stored = session.get(LedgerMeta, "key_id")
    first = None
    for model in CHAINED:
        first = session.scalars(select(model).order_by(model.seq).limit(1)).first()
        if first is not None:
            break
    if stored is not None and stored.value == key.key_id:
        return []
    if first is None:
        return []  # nothing signed yet
    if not _mac_ok(key, first):
        return [
            ChainProblem(
                "ledger_meta",
                None,
                f"wrong key: the ledger is signed with key id "
                f"{stored.value if stored else '(record missing)'}, the key from {key.source} "
                f"has key id {key.key_id} and does not verify its rows (fix: verify with the "
                "ledger's key: OPSFLOW_LEDGER_KEY=env:VAR|secret:NAME or OPSFLOW_LEDGER_KEY_FILE)",
            )
        ]
    what = "is missing" if stored is None else f"says {stored.value}"
    return [ChainProblem("ledger_meta", None, f"the key id record {what}: it was changed")]


def verify_table(
    session: Session, model: type[Chained], key: LedgerKey
) -> tuple[int, list[ChainProblem]]:
    """(rows, problems) of one chained table."""
    problems: list[tuple[int | None, str]] = []
    expected, prev, count = 1, GENESIS, 0
    columns = domain_columns(model)
    rows = session.scalars(select(model).order_by(model.seq).execution_options(yield_per=1000))
    for row in rows:
        count += 1
        if row.seq > expected:
            gap = f"{expected}" if row.seq == expected + 1 else f"{expected}..{row.seq - 1}"
            problems.append((expected, f"rows seq {gap} are missing: deleted"))
        elif row.seq < expected:
            problems.append((row.seq, "this seq appears twice: a row was copied or inserted"))
        elif row.prev_hash != prev:
            problems.append((row.seq, "its prev_hash is not the hash of the row before it"))
        if not _mac_ok(key, row):
            problems.append(
                (
                    row.seq,
                    "its hash does not match its stored payload: the payload or the hash was "
                    "changed, or the row was written without the ledger key",
                )
            )
        values = {name: getattr(row, name) for name in columns}
        for problem in payload_problems(
            model.__tablename__, row.seq, row.payload_version, row.payload, values
        ):
            problems.append((row.seq, f"{problem}: the row was edited"))
        prev, expected = row.row_hash, max(expected, row.seq + 1)
    last_seq = expected - 1
    head = session.get(ChainHead, model.__tablename__)
    if head is None:
        problems.append((None, "its chain head is missing"))
    elif head.seq > last_seq:
        problems.append(
            (
                None,
                f"its chain head says it ends at seq {head.seq}, the last row is seq "
                f"{last_seq}: rows at the end were removed",
            )
        )
    elif head.seq < last_seq:
        problems.append(
            (None, f"its chain head ends at seq {head.seq}, rows up to {last_seq} exist")
        )
    elif head.row_hash != prev:
        problems.append((head.seq, "the chain head's hash is not the last row's hash"))
    table = model.__tablename__
    return count, [ChainProblem(table, seq, text) for seq, text in problems]


def verify_tables(session: Session, key: LedgerKey) -> tuple[int, list[ChainProblem]]:
    total, found = 0, []
    present = set(inspect(session.connection()).get_table_names())
    for model in CHAINED:
        table = model.__tablename__
        if table not in present:
            found.append(ChainProblem(table, None, "the table is missing: it was dropped"))
            continue
        count, problems = verify_table(session, model, key)
        total += count
        found += problems[:MAX_PER_TABLE]
        if len(problems) > MAX_PER_TABLE:
            more = len(problems) - MAX_PER_TABLE
            found.append(ChainProblem(table, None, f"and {more} more problems"))
    return total, found


def check_published(
    session: Session, key: LedgerKey, published: PublishedHeads
) -> list[ChainProblem]:
    """The database against one published heads document."""
    source = published.source
    if published.doc is None:
        return [ChainProblem("heads", None, f"published heads {source} {published.error}")]
    why = heads_problem(key.secret, published.doc)
    if why:
        return [ChainProblem("heads", None, f"published heads {source} {why}")]
    when = f"published {published.doc.get('published_at')} in {source}"
    present = set(inspect(session.connection()).get_table_names())
    problems = []
    for table, head in sorted(published.doc["heads"].items()):
        model = BY_TABLE.get(table)
        seq = head["seq"]
        if model is None or seq == 0:
            continue
        if table not in present:
            dropped = f"the table is missing, the heads {when} say it had {seq} rows: dropped"
            problems.append(ChainProblem(table, None, dropped))
            continue
        row = session.scalars(select(model).where(model.seq == seq)).first()
        if row is None:
            last = session.scalar(select(func.max(model.seq))) or 0
            if last < seq:
                cut = f"{last + 1}" if last + 1 == seq else f"{last + 1}..{seq}"
                problems.append(
                    ChainProblem(
                        table,
                        seq,
                        f"the table ends at seq {last}, but the heads {when} reach seq {seq}: "
                        f"rows {cut} were removed (the tail cut, or the table emptied)",
                    )
                )
            else:
                problems.append(
                    ChainProblem(table, seq, f"the row the heads {when} end at is missing")
                )
        elif row.row_hash != head["row_hash"]:
            problems.append(
                ChainProblem(
                    table, seq, f"the row is not the one the heads {when} end at: rewritten"
                )
            )
    return problems
