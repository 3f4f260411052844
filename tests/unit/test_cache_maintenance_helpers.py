"""The pure parts of the SQLite and Redis maintenance: the VACUUM decision, the hit rate, the
Redis glob (checked against real Redis in tests/integration/test_redis_cleanup.py) and the
deadline."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from opsflow.deadlines import aware_deadline, deadline_passed, seconds_left, skipped_reason
from opsflow.errors import InputError
from tasks.redis import glob_matches, hit_rate_pct, redis_glob
from tasks.sqlite import vacuum_decision


def test_vacuum_at_or_above_the_threshold_only() -> None:
    assert vacuum_decision(1000, 200, 20.0) == (
        True,
        "VACUUM: 200 of 1000 page(s) free (20.0%), at or above vacuum_free_pct 20%",
    )
    assert vacuum_decision(1000, 199, 20.0) == (
        False,
        "no VACUUM: 199 of 1000 page(s) free (19.9%), below vacuum_free_pct 20%",
    )
    vacuum, reason = vacuum_decision(0, 0, 0.5)  # an empty file: nothing to gain
    assert vacuum is False and reason.startswith("no VACUUM: 0 of 0 page(s) free (0.0%)")


def test_hit_rate_is_none_without_lookups() -> None:
    assert hit_rate_pct(0, 0) is None
    assert hit_rate_pct(3, 1) == 75.0
    assert hit_rate_pct(0, 7) == 0.0
    assert hit_rate_pct(2, 1) == 66.7


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("cache:*", b"cache:", True),
        ("cache:*", b"cache:a:b", True),
        ("cache:*", b"cachex:1", False),
        ("cache:*", b"Cache:1", False),
        ("cache:?", b"cache:12", False),
        ("cache:[0-9]", b"cache:7", True),
        ("cache:[9-0]", b"cache:7", True),  # a reversed range is swapped, as in Redis
        ("cache:[^0-9]", b"cache:7", False),
        ("cache:[^0-9]", b"cache:x", True),
        ("a\\*b", b"a*b", True),
        ("a\\*b", b"axb", False),
        ("a[\\]]b", b"a]b", True),
        ("h[]llo", b"hallo", False),  # an empty class matches nothing
        ("h[^]llo", b"hallo", True),
        ("c[che", b"cc", True),  # an unclosed class runs to the end
        ("c[che", b"c[che", False),
        ("a.b", b"axb", False),  # regex characters are literal
        ("a+b", b"a+b", True),
        ("line*", b"line\nbreak", True),
        ("trail\\", b"trail\\", True),
        ("caf\u00e9:*", "caf\u00e9:1".encode(), True),
        ("caf?:1", "caf\u00e9:1".encode(), False),  # ? is one byte; \u00e9 is two in UTF-8
        ("caf??:1", "caf\u00e9:1".encode(), True),
    ],
)
def test_redis_glob(pattern: str, key: bytes, matches: bool) -> None:
    assert glob_matches(redis_glob(pattern), key) is matches


def test_deadline_must_be_timezone_aware() -> None:
    with pytest.raises(InputError) as caught:
        aware_deadline(datetime(2030, 1, 1, 2, 0))
    assert caught.value.field == "deadline" and "timezone-aware" in caught.value.fix
    assert aware_deadline(None) is None
    berlin = datetime(2030, 1, 1, 3, 0, tzinfo=timezone(timedelta(hours=1)))
    assert aware_deadline(berlin) == datetime(2030, 1, 1, 2, 0, tzinfo=UTC)


def test_deadline_passed_and_time_left() -> None:
    deadline = datetime(2030, 1, 1, 2, 0, tzinfo=UTC)
    assert seconds_left(deadline, deadline - timedelta(seconds=90)) == 90
    assert seconds_left(None, deadline) is None
    assert deadline_passed(deadline, deadline) is True
    assert deadline_passed(deadline, deadline - timedelta(seconds=1)) is False
    assert deadline_passed(None, deadline) is False
    reason = skipped_reason(deadline, deadline + timedelta(seconds=42))
    assert reason.startswith("not started: the deadline 2030-01-01 02:00:00 UTC passed 42s ago")
