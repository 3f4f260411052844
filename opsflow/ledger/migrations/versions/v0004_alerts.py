"""Alerts: the chained table ``alerts`` (one row per Alertmanager alert the receiver took, and
what it did with it: started, deduplicated, rate_limited, unmatched, failed_to_start,
resolved) and its chain head. Existing tables and rows are untouched.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from opsflow.ledger.migrations.legacy import GENESIS

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("prev_hash", sa.String(64), nullable=False),
        sa.Column("row_hash", sa.String(64), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("payload_version", sa.Integer(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(), nullable=False),
        sa.Column("env", sa.String(64), nullable=False),
        sa.Column("alertname", sa.Text(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("group_key", sa.Text(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("annotations", sa.JSON(), nullable=False),
        sa.Column("starts_at", sa.DateTime(), nullable=False),
        sa.Column("ends_at", sa.DateTime(), nullable=False),
        sa.Column("runbook", sa.String(64), nullable=False),
        sa.Column("flow_run_id", sa.String(64), nullable=False),
        sa.Column("outcome", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.UniqueConstraint("seq", name="uq_alerts_seq"),
    )
    for column in ("row_hash", "env", "fingerprint", "flow_run_id"):
        op.create_index(f"ix_alerts_{column}", "alerts", [column])
    heads = sa.table(
        "chain_heads", sa.column("table_name"), sa.column("seq"), sa.column("row_hash")
    )
    op.get_bind().execute(sa.insert(heads).values(table_name="alerts", seq=0, row_hash=GENESIS))
