"""Database management on a PostgreSQL server through a ``Postgres`` connector: existence,
properties, create, drop, swap, and what a restore is verified with (row counts, table
checksums, ``pg_amcheck``). Statements run on the maintenance database unless told otherwise.
"""

from __future__ import annotations

from connectors.postgres.client import VERIFY_TIMEOUT_S, Postgres, local_binary
from connectors.postgres.sql import (
    ROW_COUNTS_SQL,
    checksum_sql,
    ident,
    literal,
    missing_tables_sql,
    parse_checksums,
    parse_row_counts,
)
from connectors.transports import CommandTimedOut, stderr_tail
from opsflow.errors import PermanentError


def exists(pg: Postgres, dbname: str) -> bool:
    return bool(pg.run_sql(f"select 1 from pg_database where datname = {literal(dbname)}"))


def properties(pg: Postgres, like: str) -> tuple[str, str | None]:
    """CREATE DATABASE options copying ``like``'s encoding and locale, and the owner role to
    create and restore as (None: the connecting role). Empty when ``like`` is missing."""
    rows = pg.run_sql(
        "select pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, "
        "datctype, pg_has_role(datdba, 'MEMBER') and pg_get_userbyid(datdba) <> current_user "
        f"from pg_database where datname = {literal(like)}"
    )
    if not rows:
        return "", None
    role, encoding, collate, ctype, member = rows[0]
    options = (
        f" encoding {literal(encoding)} lc_collate {literal(collate)} lc_ctype {literal(ctype)}"
    )
    if member in ("t", "True", "true"):
        return options + f" owner {ident(role)}", role
    return options, None


def create(pg: Postgres, dbname: str, options: str) -> None:
    pg.run_sql(f"create database {ident(dbname)} template template0{options}")


def drop(pg: Postgres, dbname: str) -> None:
    pg.run_sql(f"drop database if exists {ident(dbname)} with (force)")


def swap(pg: Postgres, original: str, restored: str, aside: str) -> None:
    """Rename ``original`` to ``aside`` and ``restored`` to ``original`` in one transaction,
    after closing connections to ``original``."""
    present = exists(pg, original)
    if present:
        pg.run_sql(f"alter database {ident(original)} allow_connections false")
    try:
        if present:
            pg.run_sql(
                "select pg_terminate_backend(pid) from pg_stat_activity "
                f"where datname = {literal(original)} and pid <> pg_backend_pid()"
            )
            pg.run_sql(
                f"begin; alter database {ident(original)} rename to {ident(aside)}; "
                f"alter database {ident(restored)} rename to {ident(original)}; commit;"
            )
        else:
            pg.run_sql(f"alter database {ident(restored)} rename to {ident(original)}")
    except BaseException:
        if present and exists(pg, original) and not exists(pg, aside):
            pg.run_sql(f"alter database {ident(original)} allow_connections true")
        raise
    if present:
        pg.run_sql(f"alter database {ident(aside)} allow_connections true")


def row_counts(pg: Postgres, dbname: str) -> dict[str, int]:
    return parse_row_counts(pg.run_sql(ROW_COUNTS_SQL, dbname, timeout=VERIFY_TIMEOUT_S))


def table_checksums(pg: Postgres, dbname: str, tables: list[str]) -> dict[str, str]:
    """``{table: md5}`` of the ``tables`` that exist in ``dbname`` (missing ones left out)."""
    if not tables:
        return {}
    missing = {row[0] for row in pg.run_sql(missing_tables_sql(tables), dbname)}
    present = [t for t in tables if t not in missing]
    if not present:
        return {}
    return parse_checksums(pg.run_sql(checksum_sql(present), dbname, VERIFY_TIMEOUT_S))


def amcheck(pg: Postgres, dbname: str) -> tuple[str, str]:
    """Run ``pg_amcheck --install-missing``: ("ok"|"corrupt"|"unavailable", detail)."""
    if pg.direct:  # host, port, user and password come from the environment (PGHOST, ...)
        binary = local_binary("pg_amcheck")
        if binary is None:
            return "unavailable", "pg_amcheck is not installed on this worker"
        argv = [binary, "--install-missing", dbname]
    else:
        argv = ["pg_amcheck", "--install-missing", "-U", pg.user, dbname]
    try:
        done = pg.transport.capture(argv, VERIFY_TIMEOUT_S)
    except CommandTimedOut:
        if not pg.direct:
            raise
        return "unavailable", f"pg_amcheck did not finish within {VERIFY_TIMEOUT_S:.0f}s"
    except PermanentError as exc:
        return "unavailable", str(exc)
    code, text = done.code, stderr_tail(done.stdout + done.stderr)
    if code == 0:
        return "ok", "pg_amcheck found no corruption"
    if code in (126, 127) or "executable file not found" in text or "not found" in text:
        return "unavailable", f"pg_amcheck could not run: {text}"
    if code == 2 or "corrupt" in text.lower():
        return "corrupt", f"pg_amcheck reports corruption: {text}"
    return "unavailable", f"pg_amcheck could not run (exit {code}): {text}"
