"""summarize_errors, grade_errors and the timestamp/normalisation helpers (no I/O)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from opsflow.inventory import Thresholds
from opsflow.redaction import register_secret
from opsflow.results import Status
from tasks.logs import (
    ErrorSummary,
    grade_errors,
    normalise_message,
    parse_timestamp,
    summarize_errors,
)

T0 = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)


def test_parse_timestamp_forms() -> None:
    cases = {
        "2026-11-23T10:00:00Z boom": T0,
        "2026-11-23T10:00:00.123456789Z boom": T0 + timedelta(microseconds=123456),
        "2026-11-23T12:00:00+02:00 boom": T0,
        "2026-11-23 10:00:00 boom": T0,
        "2026-11-23 10:00:00,250 ERROR boom": T0 + timedelta(milliseconds=250),
        "[2026-11-23 10:00:00] boom": T0,
    }
    for line, expected in cases.items():
        stamp, start = parse_timestamp(line)
        assert stamp == expected, line
        assert line[start:].strip().endswith("boom"), line
    assert parse_timestamp("ERROR no time here") == (None, 0)
    assert parse_timestamp("10:00:00 only a time") == (None, 0)


def test_naive_timestamps_use_the_given_zone() -> None:
    plus2 = timezone(timedelta(hours=2))
    stamp, _ = parse_timestamp("2026-11-23 12:00:00 x", naive_tz=plus2)
    assert stamp == T0


def test_normalise_groups_variable_parts() -> None:
    a = normalise_message(
        "ERROR timeout after 31 ms for job 7f3e2a1b-0c4d-4e5f-8a9b-0c1d2e3f4a5b from 10.0.0.12:5432"
    )
    b = normalise_message(
        "ERROR timeout after 1200 ms for job 00000000-1111-2222-3333-444444444444 from 10.9.8.7:1"
    )
    assert a == b == "ERROR timeout after <n> ms for job <uuid> from <ip>"
    assert normalise_message("hash deadbeef42 at 2026-01-01T00:00:00Z") == "hash <hex> at <ts>"
    assert len(normalise_message("x" * 1000)) == 200


def test_counts_and_top_five_grouping() -> None:
    lines = []
    for i in range(7):
        lines.append(f"2026-11-23T10:00:{i:02d}Z ERROR db timeout after {i * 10} ms")
    for i in range(5):
        lines.append(f"2026-11-23T10:01:{i:02d}Z ERROR cache miss storm on shard {i}")
    for n, word in enumerate(["alpha", "beta", "gamma", "delta"]):
        for _ in range(4 - n):
            lines.append(f"2026-11-23T10:02:00Z ERROR failure {word}")
    lines.append("2026-11-23T10:03:00Z INFO all good")
    summary = summarize_errors(lines, "ERROR", since=None)
    assert summary.count == 7 + 5 + 4 + 3 + 2 + 1
    assert summary.lines == summary.count + 1
    assert summary.top == [
        ("ERROR db timeout after <n> ms", 7),
        ("ERROR cache miss storm on shard <n>", 5),
        ("ERROR failure alpha", 4),
        ("ERROR failure beta", 3),
        ("ERROR failure gamma", 2),
    ]
    assert summary.first_seen == T0
    assert summary.last_seen == T0 + timedelta(minutes=2)


def test_window_ignores_old_lines_and_untimed_lines_inherit() -> None:
    lines = [
        "2026-11-23T09:00:00Z ERROR old failure",
        "Traceback: ERROR still part of the old failure",
        "2026-11-23T10:00:00Z ERROR new failure",
        "  ERROR traceback of the new failure",
        "2026-11-23T10:05:00Z INFO fine",
    ]
    summary = summarize_errors(lines, r"ERROR", since=T0 - timedelta(minutes=30))
    assert summary.count == 2
    assert summary.lines == 3
    assert summary.first_seen == summary.last_seen == T0
    everything = summarize_errors(lines, r"ERROR", since=None)
    assert everything.count == 4
    assert everything.first_seen == T0 - timedelta(hours=1)


def test_lines_before_any_timestamp_count_as_recent() -> None:
    summary = summarize_errors(["ERROR unknown age", "FATAL too"], "ERROR|FATAL", since=T0)
    assert summary.count == 2
    assert summary.first_seen is None


def test_naive_since_and_regex_pattern() -> None:
    lines = ["2026-11-23 10:00:00 FATAL disk", "2026-11-23 10:00:01 WARN disk"]
    summary = summarize_errors(lines, r"\b(ERROR|FATAL)\b", since=datetime(2026, 11, 23, 9))
    assert summary.count == 1
    assert summary.top == [("FATAL disk", 1)]


def test_top_messages_are_redacted() -> None:
    register_secret("s3cr3t-token-value")
    summary = summarize_errors(["ERROR auth failed with s3cr3t-token-value"], "ERROR", None)
    assert summary.top == [("ERROR auth failed with ***", 1)]


def test_grade_errors() -> None:
    thresholds = Thresholds(log_errors=10)  # type: ignore[call-arg]
    assert grade_errors(ErrorSummary(count=0), thresholds) is Status.HEALTHY
    assert grade_errors(ErrorSummary(count=1), thresholds) is Status.DEGRADED
    assert grade_errors(ErrorSummary(count=9), thresholds) is Status.DEGRADED
    assert grade_errors(ErrorSummary(count=10), thresholds) is Status.CRITICAL
