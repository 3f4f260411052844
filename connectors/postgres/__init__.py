"""PostgreSQL below the tasks.

``dsn``     the one DSN parser (``PgDsn``: parameters, password apart and redacted)
``sql``     SQL text opsflow sends, psql command lines and parsing their output
``errors``  psycopg and pg_dump failures as Transient/PermanentErrors
``client``  ``Postgres``: one inventory database over a transport — run_sql, feed (restores)
``admin``   exists / properties / create / drop / swap / row counts / checksums / pg_amcheck
``dump``    ``open_dump``: row counts and checksums, then the pg_dump stream
``restrict`` psql's restricted mode around every restore stream (no backslash commands)
"""

from connectors.postgres.client import (
    ADMIN_TIMEOUT_S,
    MAINTENANCE_DB,
    VERIFY_TIMEOUT_S,
    Postgres,
    postgres_for,
    session,
)
from connectors.postgres.dsn import CONNECT_TIMEOUT_S, PgDsn, database_name
from connectors.postgres.dump import DUMP_TIMEOUT_S, Dump, open_dump, pg_dump_argv
from connectors.postgres.errors import classify
from connectors.postgres.sql import (
    ROW_COUNTS_SQL,
    STATEMENT_TIMEOUT_MS,
    Execute,
    check_pg_name,
    checksum_sql,
    ident,
    missing_tables_sql,
    parse_checksums,
    parse_psql_rows,
    psql_argv,
    quote_table,
    scratch_name,
)
from connectors.stores.objects import RESTORE_TIMEOUT_S

__all__ = [
    "ADMIN_TIMEOUT_S",
    "CONNECT_TIMEOUT_S",
    "DUMP_TIMEOUT_S",
    "MAINTENANCE_DB",
    "RESTORE_TIMEOUT_S",
    "ROW_COUNTS_SQL",
    "STATEMENT_TIMEOUT_MS",
    "VERIFY_TIMEOUT_S",
    "Dump",
    "Execute",
    "PgDsn",
    "Postgres",
    "check_pg_name",
    "checksum_sql",
    "classify",
    "database_name",
    "ident",
    "missing_tables_sql",
    "open_dump",
    "parse_checksums",
    "parse_psql_rows",
    "pg_dump_argv",
    "postgres_for",
    "psql_argv",
    "quote_table",
    "scratch_name",
    "session",
]
