"""The pure parts of PostgreSQL maintenance: SQL text built from names, parsing of answers."""

from __future__ import annotations

import pytest

from connectors.postgres import maintenance_sql as msql
from opsflow.errors import PermanentError
from tasks.postgres.maintenance import IndexFigures, PgFigures, TableFigures, tables_field


def test_psql_verbose_errors_give_their_sqlstate() -> None:
    stderr = (
        "psql:5: ERROR:  55P03: canceling statement due to lock timeout\n"
        "LOCATION:  ProcessInterrupts, postgres.c:3280\n"
    )
    assert msql.psql_error(stderr) == ("55P03", "canceling statement due to lock timeout")
    assert msql.psql_error("ERROR:  57014: canceling statement due to statement timeout")[0] == (  # type: ignore[index]
        msql.QUERY_CANCELED
    )
    assert msql.psql_error("psql: error: connection to server failed: refused") is None


def test_oid_scope_takes_integers_only() -> None:
    assert msql.oid_scope([16384, 16390]) == "(16384, 16390)"
    assert msql.oid_scope([]) == "(select null::oid where false)"
    with pytest.raises(ValueError):
        msql.oid_scope(["1); drop table x; --"])  # type: ignore[list-item]


def test_names_from_the_inventory_are_quoted_literals() -> None:
    text = msql.resolve_tables_sql(["public.o'rders", 'My"Schema.t'])
    assert "('public.o''rders', '\"public\".\"o''rders\"')" in text
    assert '(\'My"Schema.t\', \'"My""Schema"."t"\')' in text


def test_vacuum_reindex_and_timeout_statements() -> None:
    assert msql.vacuum_sql('"public"."t"') == 'vacuum (analyze) "public"."t"'
    assert msql.vacuum_sql("public.t", full=True) == "vacuum (full, analyze) public.t"
    assert msql.reindex_sql("public.i") == "reindex index concurrently public.i"
    assert (
        msql.drop_index_sql("public.i_ccnew") == "drop index concurrently if exists public.i_ccnew"
    )
    assert msql.timeout_settings(300, 1_800_000) == [
        "set lock_timeout = 300",
        "set statement_timeout = 1800000",
    ]


def test_rows_parse_from_psql_text_and_a_wrong_width_is_refused() -> None:
    [table] = msql.parse_table_rows([("16384", "public.t", "public.t", "10", "5", "8192", "16384")])
    assert (table.oid, table.name, table.dead_tuples, table.index_bytes) == (
        16384,
        "public.t",
        5,
        16384,
    )
    [index] = msql.parse_index_rows(
        [("16390", "16384", "public.t_pkey", "public.t", "public.t_pkey", "8192")]
    )
    assert (index.table_oid, index.name, index.bytes) == (16384, "public.t_pkey", 8192)
    assert msql.parse_index_bloat([("16390", "4096", "50.0")]) == {16390: (4096, 50.0)}
    assert msql.parse_table_bloat([("16384", "-8192")]) == {16384: 0}
    assert msql.parse_resolved([("public.t", "16384", "r"), ("public.nope", "", "")]) == {
        "public.t": (16384, "r"),
        "public.nope": (None, ""),
    }
    with pytest.raises(PermanentError, match="a row of 8 column"):
        msql.parse_table_rows([("1", "a|b", "a", "b", "1", "1", "1", "1")])


def test_totals_add_table_and_index_bloat() -> None:
    figures = PgFigures(
        database_bytes=1000,
        tables=[
            TableFigures(
                table="public.a",
                live_tuples=1,
                dead_tuples=7,
                table_bytes=100,
                index_bytes=50,
                bloat_bytes=10,
            ),
            TableFigures(
                table="public.b",
                live_tuples=1,
                dead_tuples=3,
                table_bytes=200,
                index_bytes=20,
                bloat_bytes=0,
            ),
        ],
        indexes=[
            IndexFigures(
                index="public.a_pkey", table="public.a", bytes=50, bloat_pct=40.0, bloat_bytes=20
            )
        ],
    )
    assert figures.totals() == {
        "database_bytes": 1000,
        "dead_tuples": 10,
        "table_bytes": 300,
        "index_bytes": 70,
        "bloat_bytes": 30,
    }


def test_the_tables_field_is_the_environments_maintenance_setting() -> None:
    assert tables_field("environments.prod.databases[2]") == (
        "environments.prod.maintenance.postgres.tables"
    )
