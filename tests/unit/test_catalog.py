"""opsflow.catalog, the one reading of the ledger's backup rows (pure: rows in, entries out):
the good statuses, the fold to each backup's latest state (verified wins, deleted is final),
newest, series identified by (environment, kind, name) through one key function, and what
retention keeps and deletes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from opsflow import catalog
from opsflow.catalog import (
    GOOD_STATUSES,
    CatalogEntry,
    RestoreSource,
    SeriesKey,
    by_series,
    choose,
    codec_of,
    fold,
    good,
    is_good,
    newest,
    newest_by_series,
    restorable,
    retention,
    series_key,
)
from opsflow.errors import InputError
from opsflow.inventory import Environment
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


def test_deleting_and_deleted_are_final_whatever_comes_after() -> None:
    original = row("b1", table_checksums={"t": "x"})
    deleting = row("b1", status="deleting")
    late_verified = verified_copy(original)  # a drill that finished after retention started
    [entry] = fold([original, deleting, late_verified])
    assert entry.status == "deleting" and not entry.good
    [entry] = fold([original, deleting, row("b1", status="deleted"), late_verified])
    assert entry.status == "deleted" and not entry.good
    assert restorable(fold([original, deleting, late_verified])) == {}
    assert newest(fold([original, deleting, late_verified])) is None


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


def test_series_group_backups_of_the_same_thing_newest_first() -> None:
    entries = fold(
        [
            row("m1", hours=0),
            row("a1", database="app", kind="sqlite", hours=1),
            row("m2", hours=2),
            row("m3", hours=3, status="failed"),
            row("r1", database="cache", kind="redis", hours=4),
        ]
    )
    main, app, cache = (
        SeriesKey("prod", "postgres", "main"),
        SeriesKey("prod", "sqlite", "app"),
        SeriesKey("prod", "redis", "cache"),
    )
    grouped = by_series(entries)
    assert {k: [e.backup_id for e in v] for k, v in grouped.items()} == {
        cache: ["r1"],
        main: ["m3", "m2", "m1"],
        app: ["a1"],
    }
    assert {k: [e.backup_id for e in v] for k, v in restorable(entries).items()} == {
        cache: ["r1"],
        main: ["m2", "m1"],
        app: ["a1"],
    }
    assert {k: e.backup_id for k, e in newest_by_series(entries).items()} == {
        cache: "r1",
        main: "m2",
        app: "a1",
    }
    assert series_key("prod", "postgres", "main") == main == entries[-1].series
    assert str(main) == "prod/postgres/main"


SHARED_NAMES = Environment.model_validate(
    {
        "databases": [
            {"name": "cache", "kind": "postgres", "dsn": "env:UNUSED"},
            {"name": "main", "kind": "sqlite", "path": "main.db"},
        ]
    }
)


def test_same_name_of_another_kind_is_another_series() -> None:
    """The finding: rows were grouped by name alone, so a Redis target (or the config export)
    named like a database shared its series; a restore or drill of the database took the
    newer RDB file (or config export) instead of the database's own backup."""
    rows = [
        row("pg", database="cache", kind="postgres", hours=1),
        row("rdb", database="cache", kind="redis", hours=2, key="prod/cache/2026/11/x.rdb.zst"),
        row("lite", database="main", kind="sqlite", hours=1),
        row("pg-main", database="main", kind="postgres", hours=3),  # another kind, newer
        row("cfg", database="config", kind="config", hours=4),
    ]
    chosen = choose(restorable(fold(rows)), "prod", SHARED_NAMES)
    assert [(db.name, source.backup_id) for _i, db, source in chosen] == [
        ("cache", "pg"),
        ("main", "lite"),
    ]
    newest_of = newest_by_series(fold(rows))
    assert newest_of[series_key("prod", "postgres", "cache")].backup_id == "pg"
    assert newest_of[series_key("prod", "redis", "cache")].backup_id == "rdb"
    assert newest_of[series_key("prod", "sqlite", "main")].backup_id == "lite"
    assert newest_of[series_key("prod", "config", "config")].backup_id == "cfg"
    assert series_key("prod", "postgres", "config") not in newest_of
    # and an environment is part of the identity
    other_env = [
        row("pg", env="prod", database="cache"),
        row("st", env="staging", database="cache"),
    ]
    assert set(by_series(fold(other_env))) == {
        SeriesKey("prod", "postgres", "cache"),
        SeriesKey("staging", "postgres", "cache"),
    }
    only_rdb = [row("rdb", database="cache", kind="redis")]
    with pytest.raises(InputError, match="cache in prod has no complete backup"):
        choose(restorable(fold(only_rdb)), "prod", SHARED_NAMES, database="cache")


def test_series_key_is_the_one_place_that_decides_identity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rows = [
        row("pg", database="main", kind="postgres", hours=1),
        row("lite", database="main", kind="sqlite", hours=2),
    ]
    assert len(restorable(fold(rows))) == 2
    monkeypatch.setattr(catalog, "series_key", lambda env, kind, name: name)  # name alone
    assert {k: [e.backup_id for e in v] for k, v in restorable(fold(rows)).items()} == {
        "main": ["lite", "pg"]
    }


# --- retention ------------------------------------------------------------------------------

NOW = (T0 + timedelta(days=60)).replace(tzinfo=UTC)


def aged(backup_id: str, days: float, **fields: Any) -> BackupRow:
    """A backup taken ``days`` before NOW."""
    return row(backup_id, hours=(NOW.replace(tzinfo=None) - T0).days * 24 - days * 24, **fields)


def decide(rows: list[BackupRow], days: int = 30, store: str = "file:///b") -> tuple[Any, ...]:
    decided = retention(fold(rows), store, days, NOW)
    return (
        sorted(e.backup_id for e in decided.kept),
        [e.backup_id for e in decided.expired],
    )


def test_retention_keeps_the_newest_verified_and_the_newest_whatever_their_age() -> None:
    """The finding: a drill-verified backup was deleted once a newer unverified one existed
    (retention was handed complete *and* verified keys as "verified")."""
    verified = aged("verified", 40)
    rows = [
        aged("oldest", 50),
        verified,
        verified_copy(verified),
        aged("old", 35),
        aged("newest-old", 31),
    ]
    assert decide(rows) == (["newest-old", "verified"], ["oldest", "old"])
    rows.append(aged("fresh", 1))
    assert decide(rows) == (["fresh", "verified"], ["oldest", "old", "newest-old"])
    # within the retention period nothing goes; a series without a verified backup keeps its
    # newest; a verified backup that is also the newest is kept once
    assert decide([aged("a", 20), aged("b", 10)]) == (["b"], [])
    assert decide([aged("a", 90), aged("b", 80)]) == (["b"], ["a"])
    lone = aged("lone", 90, status="verified")
    assert decide([aged("older", 95), lone]) == (["lone"], ["older"])


def test_retention_decides_per_series_of_environment_kind_and_name() -> None:
    rows = [
        aged("pg-old", 40, database="cache"),
        aged("pg-new", 35, database="cache"),
        aged("rdb-old", 45, database="cache", kind="redis", key="prod/cache/a.rdb.zst"),
        aged("rdb-new", 38, database="cache", kind="redis", key="prod/cache/b.rdb.zst"),
        aged("cfg", 50, database="config", kind="config", key="prod/config/c.json.enc"),
    ]
    kept, expired = decide(rows)
    assert kept == ["cfg", "pg-new", "rdb-new"]  # each series keeps its newest
    assert expired == ["rdb-old", "pg-old"]


def test_retention_never_deletes_an_object_another_kept_entry_names() -> None:
    first = aged("first", 50)
    again = aged("again", 1, key=first.key)  # the same object catalogued again, newer
    assert decide([first, again]) == (["again"], [])
    shared_old = aged("old-copy", 45, key=aged("x", 44).key)
    assert decide([shared_old, aged("x", 44), aged("new", 1)]) == (["new"], ["old-copy", "x"])


def test_retention_finishes_interrupted_deletions_and_ignores_other_states_and_stores() -> None:
    interrupted = aged("interrupted", 40)
    rows = [
        interrupted,
        aged("interrupted", 40, status="deleting"),
        aged("done", 45),
        aged("done", 45, status="deleted"),
        aged("failed", 50, status="failed"),
        aged("elsewhere", 90, store_url="s3://old-store/prod"),
        aged("newest", 1),
    ]
    kept, expired = decide(rows)
    assert kept == ["newest"]
    assert expired == ["interrupted"]  # its deletion is done again; deleted/failed left alone
    assert decide(rows, store="s3://old-store/prod") == (["elsewhere"], [])


def test_retention_validates_its_input() -> None:
    with pytest.raises(InputError, match="below 1"):
        retention([], "file:///b", 0, NOW)
    with pytest.raises(ValueError, match="timezone-aware"):
        retention([], "file:///b", 30, NOW.replace(tzinfo=None))


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
