"""Alembic migrations of the ledger, run in code by ``opsflow.ledger.schema`` (no alembic.ini).

Add a revision: copy the newest file in ``versions/`` to ``vNNNN_<what>.py``, set ``revision``
and ``down_revision``, write ``upgrade()`` (batch operations, so it runs on SQLite too), bump
``opsflow.ledger.schema.HEAD`` and the models, and add a test that upgrades a ledger of the
previous revision and verifies it.
"""
