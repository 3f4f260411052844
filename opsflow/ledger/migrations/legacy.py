"""The ledger as opsflow wrote it before migrations (revision 0001), frozen here: its tables,
and its unkeyed chain (sha256 of the previous hash and every column but the chain's own), which
revision 0002 checks before it re-signs the rows."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

GENESIS = "0" * 64
CHAINED = ("runs", "steps", "approvals", "backups", "drills")


def _chained(name: str, *columns: sa.Column[Any]) -> sa.Table:
    return sa.Table(
        name,
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("row_hash", sa.String(64), nullable=False, index=True),
        sa.Column("recorded_at", sa.DateTime, nullable=False),
        *columns,
    )


def _c(name: str, type_: Any, index: bool = False) -> sa.Column[Any]:
    return sa.Column(name, type_, nullable=False, index=index)


TABLES: dict[str, sa.Table] = {
    "chain_heads": sa.Table(
        "chain_heads",
        sa.MetaData(),
        sa.Column("table_name", sa.String(64), primary_key=True),
        sa.Column("row_hash", sa.String(64), nullable=False),
        sa.Column("rows", sa.Integer, nullable=False),
    ),
    "runs": _chained(
        "runs",
        _c("flow_run_id", sa.String(64), index=True),
        _c("runbook", sa.String(64), index=True),
        _c("env", sa.String(64), index=True),
        _c("status", sa.String(32)),
        _c("started_at", sa.DateTime),
        _c("finished_at", sa.DateTime),
        _c("triggered_by", sa.String(128)),
        _c("summary", sa.Text),
        _c("details", sa.JSON),
    ),
    "steps": _chained(
        "steps",
        _c("flow_run_id", sa.String(64), index=True),
        _c("runbook", sa.String(64)),
        _c("env", sa.String(64)),
        _c("step", sa.String(128)),
        _c("target", sa.String(256)),
        _c("status", sa.String(32)),
        _c("summary", sa.Text),
        _c("duration_ms", sa.Integer),
        _c("details", sa.JSON),
    ),
    "approvals": _chained(
        "approvals",
        _c("flow_run_id", sa.String(64), index=True),
        _c("action", sa.String(64)),
        _c("env", sa.String(64)),
        _c("event", sa.String(32)),
        _c("requested_by", sa.String(128)),
        _c("actor", sa.String(128)),
        _c("reason", sa.Text),
        _c("plan", sa.Text),
    ),
    "backups": _chained(
        "backups",
        _c("backup_id", sa.String(64), index=True),
        _c("env", sa.String(64), index=True),
        _c("database", sa.String(128), index=True),
        _c("kind", sa.String(32)),
        _c("store_url", sa.String(512)),
        _c("key", sa.String(512)),
        _c("bytes", sa.Integer),
        _c("sha256", sa.String(64)),
        _c("status", sa.String(32)),
        _c("created_at", sa.DateTime),
        _c("duration_ms", sa.Integer),
        _c("flow_run_id", sa.String(64)),
        _c("details", sa.JSON),
    ),
    "drills": _chained(
        "drills",
        _c("flow_run_id", sa.String(64), index=True),
        _c("env", sa.String(64), index=True),
        _c("database", sa.String(128), index=True),
        _c("backup_id", sa.String(64)),
        _c("rto_seconds", sa.Float),
        _c("rpo_seconds", sa.Float),
        _c("targets", sa.JSON),
        _c("outcome", sa.String(32)),
        _c("details", sa.JSON),
    ),
}


def _canonical(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.isoformat(timespec="microseconds")
    return value


def legacy_hash(prev: str, row: Mapping[str, Any]) -> str:
    """The old ``row_hash``: sha256 of ``prev`` and every column but id/prev_hash/row_hash."""
    payload = {
        name: _canonical(value)
        for name, value in row.items()
        if name not in ("id", "prev_hash", "row_hash")
    }
    body = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256((prev + body).encode()).hexdigest()
