"""Table content checksums: inventory validation of ``checksum_tables``, the SQL that computes
them (quoting of ``schema.table``), and how the restore/drill side compares them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from connectors.postgres import checksum_sql, missing_tables_sql, parse_checksums, quote_table
from flows.dr_drill import compared_checksums
from opsflow.catalog import fold, restorable, series_key
from opsflow.inventory import InventoryError, parse_inventory
from opsflow.ledger import BackupRow
from opsflow.results import compare_checksums

DB = "environments: {p: {databases: [{name: m, kind: postgres, dsn: 'env:X', %s}]}}"


def test_checksum_tables_default_to_none_and_accept_table_and_schema_table() -> None:
    plain = parse_inventory(DB % "via: {docker_exec: pg}")
    assert plain.environments["p"].databases[0].checksum_tables == []
    inventory = parse_inventory(
        DB % "checksum_tables: [pgbench_accounts, public.pgbench_branches, Audit.Log_2$]"
    )
    assert inventory.environments["p"].databases[0].checksum_tables == [
        "pgbench_accounts",
        "public.pgbench_branches",
        "Audit.Log_2$",
    ]


@pytest.mark.parametrize(
    ("tables", "field", "fix"),
    [
        ("[accounts, 'drop table x;']", "databases[0].checksum_tables[1]", "schema.table"),
        ("['a.b.c']", "databases[0].checksum_tables[0]", "simple identifier"),
        ("['\"Quoted\"']", "databases[0].checksum_tables[0]", "simple identifier"),
        ("['1abc']", "databases[0].checksum_tables[0]", "starting with a letter"),
        ("['']", "databases[0].checksum_tables[0]", "simple identifier"),
        ("[a, b, a]", "databases[0]", "list each table once"),
        ("accounts", "databases[0].checksum_tables", "expected type"),
    ],
)
def test_bad_checksum_tables_name_field_and_fix(tables: str, field: str, fix: str) -> None:
    text = DB % f"checksum_tables: {tables}"
    with pytest.raises(InventoryError) as info:
        parse_inventory(text, "test.yaml")
    message = str(info.value)
    assert f"environments.p.{field}" in message, message
    assert "(fix:" in message and fix in message, message


def test_checksum_tables_are_refused_on_sqlite() -> None:
    text = (
        "environments: {p: {databases: [{name: s, kind: sqlite, path: a.db, "
        "checksum_tables: [items]}]}}"
    )
    with pytest.raises(InventoryError) as info:
        parse_inventory(text)
    assert "environments.p.databases[0]" in str(info.value)
    assert "postgres databases only" in str(info.value)
    assert "(fix: remove checksum_tables" in str(info.value)


def test_quote_table_quotes_each_part_exactly() -> None:
    assert quote_table("pgbench_accounts") == '"pgbench_accounts"'
    assert quote_table("Audit.Log") == '"Audit"."Log"'
    assert quote_table('we"ird') == '"we""ird"'  # never reached from the inventory, still safe


def test_checksum_sql_is_one_aggregate_per_table_joined_by_union_all() -> None:
    sql = checksum_sql(["pgbench_accounts", "audit.o'log"])
    parts = sql.split("\nunion all\n")
    assert parts == [
        "select 'pgbench_accounts', "
        "md5(coalesce(string_agg(t::text, E'\\n' order by t::text), '')) "
        'from "pgbench_accounts" t',
        "select 'audit.o''log', "
        "md5(coalesce(string_agg(t::text, E'\\n' order by t::text), '')) "
        'from "audit"."o\'log" t',
    ]


def test_missing_tables_sql_checks_the_quoted_names() -> None:
    sql = missing_tables_sql(["a", "s.T"])
    assert "('a', '\"a\"'), ('s.T', '\"s\".\"T\"')" in sql
    assert "to_regclass(q) is null" in sql


def test_parse_checksums_reads_native_and_psql_rows() -> None:
    assert parse_checksums([("a", "0cc1"), ("b", "ab12 ")]) == {"a": "0cc1", "b": "ab12"}
    assert parse_checksums([("only-one",)]) == {}


def test_compare_checksums_names_the_table() -> None:
    expected = {"a": "1" * 32, "b": "2" * 32, "c": "3" * 32}
    found = {"a": "1" * 32, "b": "f" * 32}
    problems, warnings = compare_checksums(expected, found, exact=True)
    assert problems == [
        f"table b content checksum {'f' * 32} differs from the backup's {'2' * 32}",
        "checksum table c is missing in the restored copy",
    ]
    assert warnings == []
    problems, warnings = compare_checksums(expected, found, exact=False)
    assert problems == [] and len(warnings) == 2
    assert all("outside the dump's snapshot" in w for w in warnings)
    assert compare_checksums(expected, dict(expected), exact=True) == ([], [])


def test_catalog_carries_checksums_and_the_drill_compares_them() -> None:
    row = BackupRow(
        backup_id="b1",
        env="lab",
        database="main",
        kind="postgres",
        store_url="file:///x",
        key="lab/main/x.sql.zst",
        bytes=10,
        sha256="0" * 64,
        status="complete",
        created_at=datetime(2026, 1, 1, tzinfo=UTC).replace(tzinfo=None),
        details={"via": "direct", "table_checksums": {"t": "a" * 32}},
    )
    [source] = restorable(fold([row]))[series_key("lab", "postgres", "main")]
    assert source.table_checksums == {"t": "a" * 32}
    assert compared_checksums(source.table_checksums, {"t": "b" * 32}) == {
        "t": {"backup": "a" * 32, "restored": "b" * 32}
    }
    assert compared_checksums({"t": "a"}, {}) == {"t": {"backup": "a", "restored": ""}}
