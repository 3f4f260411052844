"""Alembic environment: migrate the connection ``opsflow.ledger.schema`` hands over (it holds
the transaction and the lock; nothing here commits)."""

from __future__ import annotations

from alembic import context

context.configure(connection=context.config.attributes["connection"])
with context.begin_transaction():
    context.run_migrations()
