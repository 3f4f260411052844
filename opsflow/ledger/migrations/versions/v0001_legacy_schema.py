"""The ledger schema as opsflow created it before migrations existed.

A new database gets these tables; a ledger made by that older opsflow already has them (and
no ``alembic_version``), so existing tables are kept as they are and the ledger continues at
revision 0002.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from opsflow.ledger.migrations.legacy import TABLES

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    existing = set(sa.inspect(bind).get_table_names())
    for name, table in TABLES.items():
        if name not in existing:
            table.create(bind)
