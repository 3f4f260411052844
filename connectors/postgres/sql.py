"""SQL text opsflow sends to PostgreSQL, ``psql`` command lines, and parsing their answers."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from opsflow.errors import PermanentError

STATEMENT_TIMEOUT_MS = 15_000

Row = Sequence[Any]
Execute = Callable[[str], Sequence[Row]]

_PG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$")

ROW_COUNTS_SQL = """\
select n.nspname || '.' || c.relname,
       (xpath('/row/c/text()', query_to_xml(
            format('select count(*) as c from %I.%I', n.nspname, c.relname),
            false, true, '')))[1]::text::bigint
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where c.relkind in ('r', 'p')
  and n.nspname not in ('pg_catalog', 'information_schema')
  and n.nspname not like 'pg_toast%'
  and n.nspname not like 'pg_temp%'
order by 1"""


def ident(name: str) -> str:
    """``name`` as one quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def literal(text: str) -> str:
    """``text`` as a quoted SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def quote_table(name: str) -> str:
    """``schema.table`` or ``table`` as quoted SQL identifiers (exact, case-sensitive names)."""
    return ".".join(ident(part) for part in name.split("."))


def checksum_sql(tables: Sequence[str]) -> str:
    """One row ``(name, md5)`` per table: md5 of its rows as text, sorted, newline-joined.

    The same SQL runs at backup time (in the dump's snapshot for ``via: direct``) and on the
    restored copy, so equal checksums mean equal table content.
    """
    return "\nunion all\n".join(
        f"select {literal(name)}, "
        "md5(coalesce(string_agg(t::text, E'\\n' order by t::text), '')) "
        f"from {quote_table(name)} t"
        for name in tables
    )


def missing_tables_sql(tables: Sequence[str]) -> str:
    """The names among ``tables`` that do not resolve to a relation (``to_regclass``)."""
    values = ", ".join(f"({literal(name)}, {literal(quote_table(name))})" for name in tables)
    return f"select n from (values {values}) v(n, q) where to_regclass(q) is null order by n"


def parse_checksums(rows: Sequence[Row]) -> dict[str, str]:
    """``{table: md5}`` from the rows of ``checksum_sql`` (native or psql text values)."""
    return {str(row[0]): str(row[1]).strip() for row in rows if len(row) == 2}


def parse_row_counts(rows: Sequence[Row]) -> dict[str, int]:
    """``{table: rows}`` from the rows of ``ROW_COUNTS_SQL``."""
    return {str(row[0]): int(row[1]) for row in rows if len(row) == 2}


def psql_argv(sql: str, dbname: str | None = None, user: str | None = None) -> list[str]:
    """``psql`` command for exec paths: unaligned tuples-only output, stop on error."""
    argv = ["psql", "-X", "-tA", "-v", "ON_ERROR_STOP=1"]
    if user:
        argv += ["-U", user]
    if dbname:
        argv += ["-d", dbname]
    argv += ["-c", f"set statement_timeout = {STATEMENT_TIMEOUT_MS}; {sql}"]
    return argv


def parse_psql_rows(output: str, separator: str = "|") -> list[tuple[str, ...]]:
    """Rows of ``psql -tA`` output (the ``SET`` line of ``psql_argv`` is dropped)."""
    return [
        tuple(line.split(separator))
        for line in output.splitlines()
        if line.strip() and line.strip() != "SET"
    ]


def check_pg_name(name: str, field: str) -> str:
    if not _PG_NAME.match(name):
        raise PermanentError(
            f"{field}: {name!r} is not a usable database name (fix: use letters, digits, '_', "
            "'$' or '-', at most 63 characters, starting with a letter or '_')"
        )
    return name


def scratch_name(dbname: str, purpose: str, stamp: str) -> str:
    """``<db>_<purpose>_<stamp>`` shortened to PostgreSQL's 63-byte limit."""
    suffix = f"_{purpose}_{stamp}"
    return dbname[: 63 - len(suffix)] + suffix
