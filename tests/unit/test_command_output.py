"""The bounded output a transport keeps of a command (``Tail``) and what an error shows of it:
the cause at the start of a long stderr survives, so a pg_dump killed by the server mid-query
is still recognised as transient (retried), not as a permanent failure."""

from __future__ import annotations

from connectors.postgres.errors import dump_error
from connectors.transports.base import DROPPED, HEAD_BYTES, SHOWN_CHARS, Tail, stderr_tail
from opsflow.errors import PermanentError, TransientError

CAUSE = (
    b"pg_dump: error: query failed: FATAL:  terminating connection due to administrator "
    b"command\npg_dump: detail: Query was: SELECT\n"
)
QUERY = b"a.attname, a.atttypid, pg_catalog.format_type(t.oid, a.atttypmod)\n" * 200


def test_a_short_output_is_kept_whole() -> None:
    tail = Tail(64)
    tail.add(b"abc")
    tail.add(b"def")
    assert bytes(tail) == b"abcdef"


def test_a_long_output_keeps_its_start_and_its_end_and_says_what_was_dropped() -> None:
    tail = Tail(100)
    for i in range(1000):
        tail.add(b"%05d|" % i)
    kept = bytes(tail)
    start, end = kept.split(DROPPED)
    assert len(start) == HEAD_BYTES and start.startswith(b"00000|00001|")
    assert len(end) == 100 and end.endswith(b"00999|")


def test_unbounded_keeps_everything() -> None:
    tail = Tail(None)
    for _ in range(100):
        tail.add(QUERY)
    assert bytes(tail) == QUERY * 100


def test_the_shown_stderr_has_the_cause_and_the_end() -> None:
    tail = Tail()
    tail.add(CAUSE + QUERY)
    shown = stderr_tail(bytes(tail))
    assert len(shown) <= SHOWN_CHARS + len(" [...] ")
    assert shown.startswith("pg_dump: error: query failed: FATAL:  terminating connection")
    assert shown.endswith("a.atttypmod)")


def test_a_pg_dump_terminated_mid_query_with_a_long_detail_is_transient() -> None:
    tail = Tail()
    tail.add(CAUSE + QUERY)
    error = dump_error("pg_dump of database 'main'", 1, stderr_tail(bytes(tail)), False, 60)
    assert isinstance(error, TransientError), error
    assert not isinstance(dump_error("pg_dump", 1, stderr_tail(QUERY), False, 60), TransientError)
    assert isinstance(dump_error("pg_dump", 1, stderr_tail(QUERY), False, 60), PermanentError)
