"""Revisions of the ledger schema (loaded by Alembic from this directory)."""
