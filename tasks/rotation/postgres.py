"""A PostgreSQL role's password: set it (``ALTER ROLE … PASSWORD`` with a SCRAM verifier,
composed with psycopg's ``sql.Identifier``/``sql.Literal``) over the admin database's direct
connection, and log in as the role over the same host and port.

PostgreSQL keeps one password per role: the ALTER replaces the old one at once. Sessions
already logged in keep working; new logins need the new value, which is why the consumers are
rolled right after it (and the old value is set back if anything fails)."""

from __future__ import annotations

import psycopg
from psycopg import sql

from connectors.postgres import CONNECT_TIMEOUT_S, PgDsn
from connectors.postgres.errors import classify
from opsflow.errors import PermanentError
from opsflow.inventory import Database
from opsflow.rotation import SecretValue, scram_sha256_verifier
from tasks.policy import api_task, probe_task

STATEMENT_TIMEOUT_MS = 30_000


def _admin(db: Database, field: str) -> PgDsn:
    if db.kind != "postgres" or db.dsn is None:
        raise PermanentError(f"{field}: {db.name} is not a PostgreSQL database")
    return PgDsn.of(db, field)


@api_task("set_postgres_password", timeout_seconds=90)
def set_postgres_password(db: Database, field: str, role: str, value: SecretValue) -> str:
    """``ALTER ROLE <role> PASSWORD '<SCRAM-SHA-256 verifier of value>'`` over ``db``'s
    connection (a role that does not exist is a ``PermanentError``: nothing is created)."""
    dsn = _admin(db, field)
    where = f"database {db.name!r} ({dsn.where})"
    statement = sql.SQL("ALTER ROLE {} PASSWORD {}").format(
        sql.Identifier(role), sql.Literal(scram_sha256_verifier(value).reveal())
    )
    try:
        with psycopg.connect(dsn.conninfo(), password=dsn.password, autocommit=True) as conn:
            conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
            found = conn.execute(
                "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (role,)
            ).fetchone()
            if found is None:
                raise PermanentError(
                    f"{where}: role {role!r} does not exist (fix: name an existing login role "
                    "in the secret's `role`)"
                )
            conn.execute(statement)
    except psycopg.Error as exc:
        raise classify(exc, where, field) from None
    return f"password of role {role} set on {dsn.where} (SCRAM-SHA-256 verifier)"


@probe_task("check_postgres_login", timeout_seconds=60)
def check_postgres_login(db: Database, field: str, role: str, value: SecretValue) -> str:
    """Log in as ``role`` with ``value`` to ``db``'s host, port and database (``select 1``):
    a refused password is a ``PermanentError`` naming the role, never the value."""
    dsn = _admin(db, field)
    params = {k: v for k, v in dsn.params.items() if k not in ("user", "passfile")}
    params.setdefault("connect_timeout", str(CONNECT_TIMEOUT_S))
    conninfo = psycopg.conninfo.make_conninfo(**params, user=role)
    where = f"role {role} on {dsn.where}"
    try:
        with psycopg.connect(conninfo, password=value.reveal(), autocommit=True) as conn:
            conn.execute("select 1")
    except psycopg.Error as exc:
        raise classify(exc, where, field) from None
    return f"{where}: logged in"
