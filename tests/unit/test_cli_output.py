"""The pure parts of the on-call CLI's output: progress lines read back, step-end lines
recognised, --param text coerced to a deployment's parameter types."""

from __future__ import annotations

import pytest

from cli.follow import coerce
from cli.output import _STEP_END, first_line
from opsflow.progress import parse_line
from opsflow.units import format_bytes, parse_bytes


@pytest.mark.parametrize("size", [0, 1023, 2970, 1536 * 1024, 3 * 2**30 + 2**29])
def test_parse_bytes_inverts_format_bytes_to_its_precision(size: int) -> None:
    shown = format_bytes(size)
    assert format_bytes(parse_bytes(shown)) == shown


def test_a_progress_line_is_read_back() -> None:
    assert parse_line("dump main: 1.5 MiB in 12s (128.0 KiB/s)") == ("dump main", 1572864, 12.0)
    assert parse_line("dump_sqlite main: complete 1.5 MiB at key") is None


@pytest.mark.parametrize(
    ("line", "is_end"),
    [
        ("dump_sqlite empty: complete 118 B at bench/empty/x.zst", True),
        ("endpoint nothing-here: critical connection refused", True),
        ("disk /tmp: healthy 12% used", True),
        ("dump_sqlite empty: started", False),
        ("Plan: 2 steps", False),
        ("backup holds the lock env-bench (after 0.1s)", False),
    ],
)
def test_step_end_lines(line: str, is_end: bool) -> None:
    assert bool(_STEP_END.match(line)) is is_end


def test_first_line_drops_a_traceback() -> None:
    assert first_line("boom\nTraceback (most recent call last):\n  x") == "boom"


def test_coerce_follows_the_schema() -> None:
    schema = {
        "properties": {
            "notify": {"type": "boolean"},
            "wait_for_lock": {"type": "integer"},
            "backup_id": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "database": {"type": "string"},
        }
    }
    params = {"notify": "False", "wait_for_lock": "5", "backup_id": "", "database": "7"}
    assert coerce(schema, params) == {
        "notify": False,
        "wait_for_lock": 5,
        "backup_id": None,
        "database": "7",
    }
    assert coerce(schema, {"wait_for_lock": "soon"}) == {"wait_for_lock": "soon"}
