"""Used one-time approval codes: ``used_codes`` (approver, TOTP time step), whose primary key
makes each code count once, across runs and processes (docs/approvals.md). Existing rows are
untouched.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "used_codes",
        sa.Column("approver", sa.String(64), primary_key=True),
        sa.Column("step", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("flow_run_id", sa.String(64), nullable=False),
        sa.Column("used_at", sa.DateTime(), nullable=False),
    )
