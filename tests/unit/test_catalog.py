"""opsflow.catalog, the one reading of the ledger's backup rows (pure: rows in, entries out):
the good statuses, the fold to each backup's latest state (verified wins), newest, series
grouping through one key function, and the keys retention must keep."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from opsflow import catalog
from opsflow.catalog import (
    GOOD_STATUSES,
    CatalogEntry,
    RestoreSource,
    by_series,
    codec_of,
    fold,
    good,
    good_keys,
    is_good,
    newest,
    newest_by_series,
    restorable,
    series_key,
)
from opsflow.ledger import BackupRow

T0 = datetime(2026, 11, 1, 2, 0, 0)
_ids = iter(range(1, 10_000))


def row(
    backup_id: str,
    *,
    database: str = "main",
    status: str = "complete",
    hours: float = 0,
    env: str = "prod",
    kind: str = "postgres",
    store_url: str = "file:///b",
    key: str | None = None,
    id_: int | None = None,
    **details: Any,
) -> BackupRow:
    """A backup row as the ledger holds it (ids in append order unless given)."""
    return BackupRow(
        id=next(_ids) if id_ is None else id_,
        backup_id=backup_id,
        env=env,
        database=database,
        kind=kind,
        store_url=store_url,
        key=key or f"{env}/{database}/2026/11/{backup_id}.sql.zst",
        bytes=100,
        sha256="a" * 64,
        status=status,
        created_at=T0 + timedelta(hours=hours),
        duration_ms=1500,
        flow_run_id="run-1",
        details=details,
    )


def verified_copy(original: BackupRow, when: str = "2026-11-02T03:00:00.000000") -> BackupRow:
    """What Ledger.mark_verified appends: the same backup, status verified."""
    return row(
        original.backup_id,
        database=original.database,
        status="verified",
        hours=(original.created_at - T0).total_seconds() / 3600,
        key=original.key,
        **{**(original.details or {}), "verified_at": when, "verified_by": {"how": "dr-drill"}},
    )


def test_good_statuses_are_defined_once_here() -> None:
    assert frozenset({"complete", "verified"}) == GOOD_STATUSES
    assert is_good("complete") and is_good("verified")
    assert not any(is_good(s) for s in ("failed", "running", "deleted", ""))


def test_fold_gives_each_backup_once_in_its_latest_state_newest_first() -> None:
    first = row("b1", hours=0, codec="gzip", via="direct", row_counts={"t": "3"})
    second = row("b2", hours=5, manifest_key="prod/main/2026/11/b2.manifest.json")
    rows = [first, second, verified_copy(first)]

    entries = fold(reversed(rows))  # ledger order (ids), not the order given, decides

    assert [(e.backup_id, e.status, e.verified) for e in entries] == [
        ("b2", "complete", False),
        ("b1", "verified", True),
    ]
    b2, b1 = entries
    assert b1.verified_at == "2026-11-02T03:00:00.000000" and b2.verified_at is None
    assert b1.codec == "gzip" and b1.via == "direct" and b1.row_counts == {"t": 3}
    assert b2.codec == "zstd"  # from the key's extension when the row recorded none
    assert b2.manifest_key == "prod/main/2026/11/b2.manifest.json"  # as recorded
    assert b1.manifest_key == ""  # not recorded, and no naming rule given
    named = fold(rows, manifest_of=lambda key: key + ".m")
    assert {e.backup_id: e.manifest_key for e in named} == {
        "b2": "prod/main/2026/11/b2.manifest.json",
        "b1": first.key + ".m",
    }
    assert (b1.env, b1.duration_ms, b1.flow_run_id, b1.bytes) == ("prod", 1500, "run-1", 100)
    assert fold([]) == []


def test_verified_wins_over_a_later_complete_row() -> None:
    original = row("b1", table_checksums={"t": "x"})
    verified = verified_copy(original)
    again = row("b1", table_checksums={"t": "y"})  # the same backup catalogued complete again
    [entry] = fold([original, verified, again])
    assert entry.status == "verified" and entry.verified
    assert entry.verified_at == "2026-11-02T03:00:00.000000"
    assert entry.table_checksums == {"t": "y"}  # every other field is the latest row's


def test_a_later_state_that_is_not_good_takes_the_backup_out() -> None:
    kept, gone = row("kept", hours=0), row("gone", hours=1)
    entries = fold([kept, gone, row("gone", hours=1, status="deleted")])
    assert [(e.backup_id, e.status, e.good) for e in entries] == [
        ("gone", "deleted", False),
        ("kept", "complete", True),
    ]
    assert [e.backup_id for e in good(entries)] == ["kept"]
    chosen = newest(entries)
    assert chosen is not None and chosen.backup_id == "kept"
    assert good_keys(entries, "file:///b") == [kept.key]


def test_newest_ignores_bad_states_and_ranks_ties_by_catalogue_order() -> None:
    entries = fold(
        [
            row("old", hours=0, status="verified"),
            row("failed", hours=9, status="failed"),
            row("running", hours=8, status="running"),
            row("tie-a", hours=3),
            row("tie-b", hours=3),  # same time, catalogued later: the newer one
        ]
    )
    chosen = newest(entries)
    assert chosen is not None and chosen.backup_id == "tie-b"
    assert newest(fold([row("x", status="failed")])) is None
    assert newest([]) is None


def test_newest_compares_naive_and_aware_times_as_utc() -> None:
    naive = row("naive", hours=1)
    aware = row("aware")
    aware.created_at = (T0 + timedelta(hours=2)).replace(tzinfo=UTC)
    chosen = newest(fold([naive, aware]))
    assert chosen is not None and chosen.backup_id == "aware"


def test_rows_without_ids_keep_the_order_given() -> None:
    first = row("b1", id_=0)
    first.id = None
    later = verified_copy(first)
    later.id = None
    [entry] = fold([first, later])
    assert entry.status == "verified"


def test_series_group_backups_of_the_same_database_newest_first() -> None:
    entries = fold(
        [
            row("m1", hours=0),
            row("a1", database="app", kind="sqlite", hours=1),
            row("m2", hours=2),
            row("m3", hours=3, status="failed"),
            row("r1", database="cache", kind="redis", hours=4),
        ]
    )
    grouped = by_series(entries)
    assert {k: [e.backup_id for e in v] for k, v in grouped.items()} == {
        "cache": ["r1"],
        "main": ["m3", "m2", "m1"],
        "app": ["a1"],
    }
    assert {k: [e.backup_id for e in v] for k, v in restorable(entries).items()} == {
        "cache": ["r1"],
        "main": ["m2", "m1"],
        "app": ["a1"],
    }
    assert {k: e.backup_id for k, e in newest_by_series(entries).items()} == {
        "cache": "r1",
        "main": "m2",
        "app": "a1",
    }
    assert series_key("prod", "postgres", "main") == "main" == entries[-1].series


def test_series_key_is_the_one_place_that_decides_identity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = [
        row("pg", database="main", kind="postgres", hours=1),
        row("lite", database="main", kind="sqlite", hours=2),
    ]
    assert [e.backup_id for e in restorable(fold(rows))["main"]] == ["lite", "pg"]

    monkeypatch.setattr(
        catalog, "series_key", lambda env, kind, name: f"{env}/{kind}/{name}"
    )  # identity by (environment, kind, name): one edit
    newest_of = {k: e.backup_id for k, e in newest_by_series(fold(rows)).items()}
    assert newest_of == {"prod/postgres/main": "pg", "prod/sqlite/main": "lite"}


def test_good_keys_are_what_retention_keeps_in_that_store() -> None:
    entries = fold(
        [
            row("a", hours=0),
            row("b", hours=1, status="verified"),
            row("c", hours=2, status="failed"),
            row("d", hours=3, store_url="s3://other/prod"),
            row("a", hours=0, status="verified"),
        ]
    )
    assert good_keys(entries, "file:///b") == sorted(
        ["prod/main/2026/11/a.sql.zst", "prod/main/2026/11/b.sql.zst"]
    )
    assert good_keys(entries, "s3://other/prod") == ["prod/main/2026/11/d.sql.zst"]
    assert good_keys([], "file:///b") == []


def test_codec_and_exact_counts() -> None:
    assert codec_of("a/b.sql.zst") == "zstd" and codec_of("a/b.rdb.gz") == "gzip"
    assert codec_of("a/b.sqlite") == "none" and codec_of("a/b.sql.gz", "zstd") == "zstd"
    assert codec_of("a/b.sql.zst", "bogus") == "zstd"
    [direct] = fold([row("d", via="direct")])
    [docker] = fold([row("x", via="docker_exec db")])
    [lite] = fold([row("s", kind="sqlite", via="file")])
    assert direct.exact_counts and lite.exact_counts and not docker.exact_counts
    assert RestoreSource is CatalogEntry
    with pytest.raises(ValueError, match="frozen"):
        direct.key = "elsewhere"
