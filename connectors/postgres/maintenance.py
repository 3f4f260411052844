"""``MaintenanceSession``: VACUUM / REINDEX statements on one database, each in its own
implicit transaction (neither may run in a transaction block), each after
``SET lock_timeout`` and ``SET statement_timeout`` in the same session.

``via: direct``: one psycopg connection in autocommit mode for the whole session; the two SETs
run once at the start (again when one statement uses another lock_timeout).
``docker_exec`` / ``kubectl_exec``: one ``psql`` per statement beside the server, with separate
``-c`` options (``-c "set lock_timeout = …" -c "set statement_timeout = …" -c "VACUUM …"``):
psql sends each ``-c`` as its own query, so the SETs hold for the session and the statement is
not in a transaction block. ``VERBOSITY=verbose`` makes psql print the SQLSTATE.

A statement that passes lock_timeout or statement_timeout, or fails in the server, is an
``Outcome`` (data: the caller reports it and moves on); a connection that fails raises.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import psycopg

from connectors.postgres.client import Postgres
from connectors.postgres.errors import classify
from connectors.postgres.maintenance_sql import (
    LOCK_TIMEOUT,
    QUERY_CANCELED,
    psql_error,
    timeout_settings,
)
from opsflow.errors import PermanentError, TransientError
from opsflow.redaction import redact

EXEC_MARGIN_S = 60.0  # beyond statement_timeout + lock_timeout before psql is killed

_CONNECTION_MARKERS = (
    "could not connect",
    "connection to server",
    "server closed the connection",
    "terminating connection",
    "the database system is",
)


@dataclass(frozen=True)
class Outcome:
    """How one statement ended: ``done``, ``lock_timeout``, ``statement_timeout`` or
    ``error`` (``message``: the server's, redacted)."""

    result: str
    message: str = ""
    seconds: float = 0.0

    @property
    def done(self) -> bool:
        return self.result == "done"


def _outcome(sqlstate: str | None, message: str, seconds: float) -> Outcome:
    if sqlstate == LOCK_TIMEOUT:
        return Outcome("lock_timeout", message, seconds)
    if sqlstate == QUERY_CANCELED:
        return Outcome("statement_timeout", message, seconds)
    return Outcome("error", message, seconds)


class MaintenanceSession:
    """Maintenance statements on ``pg``'s database with the two timeouts (milliseconds)."""

    def __init__(self, pg: Postgres, lock_timeout_ms: int, statement_timeout_ms: int) -> None:
        self.pg = pg
        self.lock_timeout_ms = max(int(lock_timeout_ms), 1)
        self.statement_timeout_ms = max(int(statement_timeout_ms), 1)
        self._conn: psycopg.Connection[Any] | None = None
        self._lock_ms = self.lock_timeout_ms

    def __enter__(self) -> MaintenanceSession:
        if self.pg.direct:
            self._conn = self.pg.connect(self.pg.dbname, autocommit=True)
            self._set(self.lock_timeout_ms)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _set(self, lock_ms: int) -> None:
        assert self._conn is not None
        try:
            for statement in timeout_settings(lock_ms, self.statement_timeout_ms):
                self._conn.execute(statement)
        except psycopg.Error as exc:
            raise classify(exc, self.pg.label, self.pg.field) from None
        self._lock_ms = lock_ms

    def run(self, statement: str, lock_timeout_ms: int | None = None) -> Outcome:
        """Run one statement outside a transaction block (``lock_timeout_ms``: this one's)."""
        lock_ms = max(int(lock_timeout_ms or self.lock_timeout_ms), 1)
        started = time.monotonic()
        if self._conn is not None:
            return self._run_direct(statement, lock_ms, started)
        return self._run_psql(statement, lock_ms, started)

    def _run_direct(self, statement: str, lock_ms: int, started: float) -> Outcome:
        assert self._conn is not None
        if lock_ms != self._lock_ms:
            self._set(lock_ms)
        try:
            self._conn.execute(statement)
        except psycopg.Error as exc:
            if self._conn.closed or _lost(exc.sqlstate):
                raise classify(exc, self.pg.label, self.pg.field) from None
            return _outcome(exc.sqlstate, _message(exc), time.monotonic() - started)
        return Outcome("done", "", time.monotonic() - started)

    def _run_psql(self, statement: str, lock_ms: int, started: float) -> Outcome:
        args = ["-q", "-v", "VERBOSITY=verbose"]
        for sql in (*timeout_settings(lock_ms, self.statement_timeout_ms), statement):
            args += ["-c", sql]
        timeout = (self.statement_timeout_ms + lock_ms) / 1000 + EXEC_MARGIN_S
        done = self.pg.transport.capture(self.pg.psql(self.pg.dbname, *args), timeout)
        seconds = time.monotonic() - started
        if done.code == 0:
            return Outcome("done", "", seconds)
        stderr = done.stderr.decode("utf-8", errors="replace")
        error = psql_error(stderr)
        tail = done.stderr_tail() or "(no stderr)"
        if error is not None and not _lost(error[0]):
            return _outcome(error[0], redact(error[1]), seconds)
        if error is not None or any(m in stderr.lower() for m in _CONNECTION_MARKERS):
            raise TransientError(
                f"{self.pg.label}: psql lost or could not reach the server: {tail}"
            )
        raise PermanentError(
            f"{self.pg.label}: psql failed (exit {done.code}): {tail} (fix: check the role and "
            f"database in {self.pg.field}.dsn)"
        )


def _lost(sqlstate: str | None) -> bool:
    """A connection exception (08xxx) or a terminated backend (57P0x): not the statement's."""
    return sqlstate is not None and sqlstate.startswith(("08", "57P"))


def _message(exc: psycopg.Error) -> str:
    primary = exc.diag.message_primary if exc.diag is not None else None
    return redact((primary or str(exc)).strip())
