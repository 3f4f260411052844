"""Pure parts of tasks.postgres: parsing psql output, grading, error classification."""

from __future__ import annotations

import psycopg
import pytest

from connectors.postgres import classify, parse_psql_rows, psql_argv
from opsflow.errors import PermanentError, TransientError
from opsflow.inventory import Thresholds
from opsflow.results import Status
from tasks.postgres.checks import PING_SQL, PostgresStats, collect_stats, grade_stats


def _stats(connections: int, max_connections: int = 100) -> PostgresStats:
    return PostgresStats("15.20", connections, max_connections, 8_000_000, 3.0, "app")


def test_psql_text_rows_parse_into_stats() -> None:
    output = {PING_SQL: "SET\n1\n", "stats": "SET\n15.20 (Debian)|7|100|7897619|12.5|app\n"}
    stats = collect_stats(
        lambda sql: parse_psql_rows(output[PING_SQL if sql == PING_SQL else "stats"])
    )
    assert stats == PostgresStats("15.20 (Debian)", 7, 100, 7897619, 12.5, "app")
    assert stats.connections_pct == 7.0


def test_failed_ping_is_transient() -> None:
    with pytest.raises(TransientError, match="select 1"):
        collect_stats(lambda sql: [])


def test_psql_argv_is_tuples_only_unaligned_with_a_statement_timeout() -> None:
    argv = psql_argv("select 1", dbname="app", user="postgres")
    assert argv[:4] == ["psql", "-X", "-tA", "-v"]
    assert argv[-1].startswith("set statement_timeout = ") and argv[-1].endswith("select 1")
    assert argv[argv.index("-d") : argv.index("-d") + 2] == ["-d", "app"]


@pytest.mark.parametrize(
    ("connections", "expected"),
    [(79, Status.HEALTHY), (80, Status.DEGRADED), (94, Status.DEGRADED), (95, Status.CRITICAL)],
)
def test_connections_graded_against_threshold_and_95_percent(
    connections: int, expected: Status
) -> None:
    status, summary = grade_stats(_stats(connections), Thresholds(connections_pct=80))
    assert status is expected
    assert f"{connections}/100 connections" in summary
    assert ("max_connections (fix:" in summary) is (expected is not Status.HEALTHY)


def test_size_is_human_readable() -> None:
    assert "size 7.6 MiB" in grade_stats(_stats(1), Thresholds())[1]


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        (
            'connection failed: FATAL:  password authentication failed for user "app"',
            PermanentError,
        ),
        ('connection failed: FATAL:  database "nope" does not exist', PermanentError),
        ("connection failed: FATAL:  no pg_hba.conf entry for host", PermanentError),
        ("connection failed: Connection refused", TransientError),
        ("connection failed: FATAL:  sorry, too many clients already", TransientError),
        ("connection failed: FATAL:  the database system is starting up", TransientError),
    ],
)
def test_operational_errors_are_classified(text: str, kind: type[Exception]) -> None:
    error = classify(
        psycopg.OperationalError(text), "database 'main'", "environments.p.databases[0]"
    )
    assert isinstance(error, kind)
    assert "environments.p.databases[0]" in str(error) or kind is TransientError


def test_classified_message_hides_url_passwords() -> None:
    exc = psycopg.OperationalError("failed for postgresql://app:hunter2-secret@db:5432/app")
    assert "hunter2-secret" not in str(classify(exc, "db", "f"))
