"""psql's restricted mode around a restore stream."""

from __future__ import annotations

import re

import pytest

from connectors.postgres.restrict import restricted

DUMP = (
    b"--\n-- PostgreSQL database dump\n--\n\n"
    b"\\restrict p3wGqbah1F6bjURVieegcWsb3R96qCYYJKhtavCBFGNJzlrmZ0lwEs4ILMMQq50\n\n"
    b"SET statement_timeout = 0;\n"
    b"COPY public.t (a, b) FROM stdin;\n1\t\\\\restrict x\n2\tb\n\\.\n\n"
    b"select 'not \\restrict abc at a line start';\n"
    b"\\unrestrict p3wGqbah1F6bjURVieegcWsb3R96qCYYJKhtavCBFGNJzlrmZ0lwEs4ILMMQq50\n"
)
EXPECTED_BODY = DUMP.replace(
    b"\\restrict p3wGqbah1F6bjURVieegcWsb3R96qCYYJKhtavCBFGNJzlrmZ0lwEs4ILMMQq50\n", b""
).replace(b"\\unrestrict p3wGqbah1F6bjURVieegcWsb3R96qCYYJKhtavCBFGNJzlrmZ0lwEs4ILMMQq50\n", b"")


def run(chunks: list[bytes]) -> tuple[bytes, bytes]:
    out = b"".join(restricted(chunks))
    first, _, body = out.partition(b"\n")
    return first, body


def test_restrict_comes_first_with_a_fresh_key_and_the_dump_s_own_pair_is_dropped() -> None:
    first, body = run([DUMP])
    assert re.fullmatch(rb"\\restrict [0-9a-f]{48}", first)
    assert body == EXPECTED_BODY
    again, _ = run([DUMP])
    assert again != first  # a new key every time


@pytest.mark.parametrize("size", [1, 2, 3, 7, 13, 64, 100])
def test_any_chunking_gives_the_same_stream(size: int) -> None:
    chunks = [DUMP[i : i + size] for i in range(0, len(DUMP), size)]
    assert run(chunks)[1] == EXPECTED_BODY


def test_an_attackers_unrestrict_with_a_guessed_key_stays_and_psql_refuses_it() -> None:
    attack = b"\\unrestrict wrong\n\\! id\n"
    assert run([attack])[1] == b"\\! id\n"  # the unrestrict line goes; \\! stays for psql to refuse


def test_long_lines_and_a_stream_without_final_newline_pass_unchanged() -> None:
    long = b"x" * 10_000 + b"\n" + b"\\" + b"y" * 1000
    assert run([long[:5000], long[5000:]])[1] == long
    assert run([b"\\unrestrict abc"])[1] == b""
