"""PostgreSQL failures as operator-facing, password-free Transient/PermanentErrors."""

from __future__ import annotations

import psycopg

from connectors.postgres.sql import STATEMENT_TIMEOUT_MS
from opsflow.errors import PermanentError, TransientError
from opsflow.redaction import redact

_PERMANENT_MARKERS = (
    "password authentication failed",
    "no password supplied",
    "authentication failed",
    "does not exist",
    "no pg_hba.conf entry",
    "permission denied",
    "invalid sslmode",
    "certificate",
)

_DUMP_TRANSIENT_MARKERS = (
    "could not connect",
    "connection refused",
    "timeout expired",
    "server closed the connection",
    "connection to server",
    "could not obtain lock",
    "too many connections",
    "the database system is starting up",
    "the database system is shutting down",
    "terminating connection",  # pg_terminate_backend, a failover, a recovery conflict
)


def classify(exc: psycopg.Error, where: str, field: str) -> Exception:
    """Turn a psycopg error into an operator-facing, password-free opsflow error."""
    text = redact(str(exc).strip())
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return TransientError(
            f"{where}: the health query exceeded statement_timeout "
            f"({STATEMENT_TIMEOUT_MS} ms); the server is overloaded or locked: {text}"
        )
    if not isinstance(exc, psycopg.OperationalError):
        return PermanentError(f"{where}: {text} (fix: check the database and role in {field}.dsn)")
    lowered = text.lower()
    if any(marker in lowered for marker in _PERMANENT_MARKERS):
        return PermanentError(
            f"{where}: cannot log in: {text} (fix: check the user, password and database name "
            f"in the secret referenced by {field}.dsn, and the server's pg_hba.conf)"
        )
    return TransientError(
        f"{where}: cannot reach PostgreSQL: {text} (fix: check that the server is running and "
        "reachable from this worker)"
    )


def dump_error(what: str, code: int, stderr: str, timed_out: bool, timeout_s: float) -> Exception:
    """A local ``pg_dump`` that failed, was killed or timed out; nothing was stored."""
    text = redact(stderr.strip())
    # the cause comes first (pg_dump: error: ... FATAL: ...), then a long "detail: Query was";
    # classify on all of it, show its start and its end
    tail = (text if len(text) <= 1000 else f"{text[:600]} [...] {text[-400:]}") or "(no stderr)"
    if timed_out:
        return PermanentError(
            f"{what} did not finish within {timeout_s:.0f}s and was stopped; nothing was stored "
            "(fix: look for locks held by other sessions, or raise the dump timeout)"
        )
    if code < 0:
        return TransientError(f"{what} was killed by signal {-code}; nothing was stored: {tail}")
    lowered = text.lower()
    if any(marker in lowered for marker in _PERMANENT_MARKERS):
        return PermanentError(f"{what} failed (exit {code}); nothing was stored: {tail}")
    if any(marker in lowered for marker in _DUMP_TRANSIENT_MARKERS):
        return TransientError(f"{what} failed (exit {code}); nothing was stored: {tail}")
    return PermanentError(f"{what} failed (exit {code}); nothing was stored: {tail}")


def missing_tables_error(field: str, where: str, missing: list[str]) -> Exception:
    names = ", ".join(missing)
    what = f"table {names} does not exist" if len(missing) == 1 else f"tables {names} do not exist"
    return PermanentError(
        f"{field}.checksum_tables: {what} in {where}; nothing was stored "
        f"(fix: correct or remove {names} in {field}.checksum_tables)"
    )
