"""PostgreSQL maintenance (tasks/postgres/maintenance.py) on a real server: VACUUM clears the
dead tuples autovacuum left, REINDEX CONCURRENTLY shrinks the bloated indexes its thresholds
choose, locks and the window's deadline are reported instead of failing the step, and the
same works through ``docker_exec``."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from opsflow.errors import InputError
from opsflow.inventory import Database, DockerTarget
from opsflow.inventory.maintenance import PostgresMaintenance
from tasks.postgres.maintenance import (
    PgFigures,
    measure_postgres,
    reindex_postgres,
    vacuum_postgres,
)
from tests.fixtures.databases import PostgresDatabase

pytestmark = pytest.mark.integration
FIELD = "environments.test.databases[0]"
DSN_VAR = "OPSFLOW_TEST_PGMAINT_DSN"
ROWS = 60_000
QUICK = PostgresMaintenance(
    lock_timeout=timedelta(milliseconds=300),
    statement_timeout=timedelta(minutes=2),
    reindex_bloat_pct=30,
    reindex_min_size=512 * 1024,
)


def _db(monkeypatch: pytest.MonkeyPatch, dsn: str) -> Database:
    monkeypatch.setenv(DSN_VAR, dsn)
    return Database(name="main", kind="postgres", dsn=f"env:{DSN_VAR}")


BLOAT_SQL = (
    "create table {t} (id int primary key, v text) with (autovacuum_enabled = false)",
    "create index {t}_v_idx on {t} (v)",
    "insert into {t} select g, md5(g::text) from generate_series(1, {rows}) g",
    "analyze {t}",
    "update {t} set v = md5(v) where id % 2 = 0",  # non-HOT: v is indexed
    "delete from {t} where id % 10 <> 0",
    "select pg_stat_force_next_flush()",
)


def make_bloat(conn: psycopg.Connection[Any], table: str, rows: int = ROWS) -> None:
    """A table autovacuum never touches, with every other row updated and 90 % deleted."""
    for statement in BLOAT_SQL:
        conn.execute(statement.format(t=table, rows=rows))


def dead_tuples(conn: psycopg.Connection[Any], table: str) -> int:
    row = conn.execute(
        "select n_dead_tup from pg_stat_user_tables where relname = %s", (table,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def wait_dead(conn: psycopg.Connection[Any], table: str, at_least: int) -> int:
    """The statistics of another session arrive within a second or so."""
    deadline = time.monotonic() + 15
    while (dead := dead_tuples(conn, table)) < at_least and time.monotonic() < deadline:
        time.sleep(0.2)
    assert dead >= at_least, f"{table}: {dead} dead tuples"
    return dead


def relfilenode(conn: psycopg.Connection[Any], name: str) -> int:
    row = conn.execute("select relfilenode from pg_class where relname = %s", (name,)).fetchone()
    assert row is not None, name
    return int(row[0])


def invalid_indexes(conn: psycopg.Connection[Any]) -> list[str]:
    rows = conn.execute(
        "select c.relname from pg_index x join pg_class c on c.oid = x.indexrelid "
        "where not x.indisvalid"
    ).fetchall()
    return [str(r[0]) for r in rows]


@pytest.fixture()
def conn(postgres_database: PostgresDatabase) -> Iterator[psycopg.Connection[Any]]:
    with postgres_database.server.connect(postgres_database.name) as connection:
        yield connection


@pytest.fixture()
def db(monkeypatch: pytest.MonkeyPatch, postgres_database: PostgresDatabase) -> Database:
    return _db(monkeypatch, postgres_database.dsn)


@pytest.fixture()
def blocker(postgres_database: PostgresDatabase) -> Iterator[psycopg.Connection[Any]]:
    """A second session (not autocommit: its locks last until it commits)."""
    with psycopg.connect(postgres_database.dsn, connect_timeout=10) as connection:
        yield connection
        connection.rollback()


def test_vacuum_clears_the_dead_tuples_autovacuum_left(
    db: Database, conn: psycopg.Connection[Any]
) -> None:
    make_bloat(conn, "orders")
    dead = wait_dead(conn, "orders", ROWS // 2)
    before = measure_postgres.fn(db, FIELD, None, None, QUICK)
    [orders] = [t for t in before.tables if t.table == "public.orders"]
    assert orders.dead_tuples == dead
    assert orders.live_tuples > 0  # an estimate (pg_stat_user_tables)
    assert before.totals()["dead_tuples"] == dead

    step = vacuum_postgres.fn(db, FIELD, None, None, QUICK)

    assert step.status == "complete", step.summary
    assert (step.step, step.target) == ("vacuum", "main")
    assert step.before["dead_tuples"] == dead
    assert step.after["dead_tuples"] == 0
    assert dead_tuples(conn, "orders") == 0
    assert f"dead tuples {dead} → 0" in step.summary
    [detail] = step.details["tables"]
    assert (detail["table"], detail["result"]) == ("public.orders", "done")
    after = measure_postgres.fn(db, FIELD, None, None, QUICK)
    assert after.totals()["dead_tuples"] == 0
    analyzed = conn.execute(
        "select last_analyze is not null from pg_stat_user_tables where relname = 'orders'"
    ).fetchone()
    assert analyzed == (True,)


def test_vacuum_full_gives_the_space_back_and_a_statement_timeout_is_reported(
    db: Database, conn: psycopg.Connection[Any]
) -> None:
    make_bloat(conn, "orders")
    wait_dead(conn, "orders", ROWS // 2)
    hasty = QUICK.model_copy(update={"statement_timeout": timedelta(milliseconds=1)})

    step = vacuum_postgres.fn(db, FIELD, None, None, hasty, full=True)

    assert step.status == "degraded"
    assert "not vacuumed: public.orders (ran past statement_timeout" in step.summary
    assert step.details["tables"][0]["result"] == "statement_timeout"

    step = vacuum_postgres.fn(db, FIELD, None, None, QUICK, full=True)

    assert step.status == "complete", step.summary
    assert step.step == "vacuum_full"
    assert step.summary.startswith("VACUUM (FULL, ANALYZE) of 1/1 table(s)")
    assert step.after["table_bytes"] < step.before["table_bytes"] * 0.3
    assert step.after["database_bytes"] < step.before["database_bytes"]


def test_reindex_rebuilds_the_indexes_its_thresholds_choose_and_leaves_the_rest(
    db: Database, conn: psycopg.Connection[Any]
) -> None:
    make_bloat(conn, "orders")
    make_bloat(conn, "tiny", rows=2_000)  # bloated, but its indexes are below min size
    conn.execute("create table steady (id int primary key, v text)")  # big, not bloated
    conn.execute(f"insert into steady select g, md5(g::text) from generate_series(1, {ROWS}) g")
    conn.execute("analyze steady")
    wait_dead(conn, "orders", ROWS // 2)
    vacuum_postgres.fn(db, FIELD, None, None, QUICK)  # statistics fresh, as in the runbook
    figures = {i.index: i for i in measure_postgres.fn(db, FIELD, None, None, QUICK).indexes}
    assert figures["public.orders_pkey"].bloat_pct >= 50
    assert figures["public.tiny_pkey"].bloat_pct >= 30
    assert figures["public.tiny_pkey"].bytes < QUICK.reindex_min_size
    assert figures["public.steady_pkey"].bloat_pct < 30
    assert figures["public.steady_pkey"].bytes >= QUICK.reindex_min_size
    untouched = {name: relfilenode(conn, name) for name in ("tiny_pkey", "steady_pkey")}

    step = reindex_postgres.fn(db, FIELD, None, None, QUICK)

    assert step.status == "complete", step.summary
    chosen = {d["index"]: d for d in step.details["indexes"]}
    assert set(chosen) == {"public.orders_pkey", "public.orders_v_idx"}
    for name, detail in chosen.items():
        assert detail["result"] == "done", detail
        assert detail["bytes_after"] < detail["bytes_before"] * 0.4, name
    assert step.after["index_bytes"] < step.before["index_bytes"] * 0.4
    now = {i.index: i for i in measure_postgres.fn(db, FIELD, None, None, QUICK).indexes}
    assert now["public.orders_pkey"].bytes < figures["public.orders_pkey"].bytes * 0.4
    assert {name: relfilenode(conn, name) for name in untouched} == untouched
    assert invalid_indexes(conn) == []


def test_vacuum_of_a_locked_table_is_reported_and_the_others_are_vacuumed(
    db: Database, conn: psycopg.Connection[Any], blocker: psycopg.Connection[Any]
) -> None:
    make_bloat(conn, "locked_t", rows=5_000)
    make_bloat(conn, "free_t", rows=5_000)
    locked_dead = wait_dead(conn, "locked_t", 2_500)
    wait_dead(conn, "free_t", 2_500)
    blocker.execute("lock table locked_t in exclusive mode")  # blocks VACUUM, not reads

    started = time.monotonic()
    step = vacuum_postgres.fn(db, FIELD, None, None, QUICK)

    assert time.monotonic() - started < 30
    assert step.status == "degraded"
    assert "not vacuumed: public.locked_t (lock not obtained within lock_timeout" in step.summary
    results = {d["table"]: d["result"] for d in step.details["tables"]}
    assert results == {"public.free_t": "done", "public.locked_t": "lock_timeout"}
    assert dead_tuples(conn, "free_t") == 0
    assert dead_tuples(conn, "locked_t") == locked_dead
    assert step.before["tables"] == step.after["tables"] == 1


def test_reindex_blocked_by_an_exclusive_lock_is_reported_and_leaves_no_invalid_index(
    db: Database, conn: psycopg.Connection[Any], blocker: psycopg.Connection[Any]
) -> None:
    make_bloat(conn, "orders")
    make_bloat(conn, "events")
    wait_dead(conn, "orders", ROWS // 2)
    wait_dead(conn, "events", ROWS // 2)
    vacuum_postgres.fn(db, FIELD, None, None, QUICK)
    kept = relfilenode(conn, "orders_pkey")
    blocker.execute("lock table orders in access exclusive mode")

    step = reindex_postgres.fn(db, FIELD, None, None, QUICK)

    assert step.status == "degraded"
    assert "not rebuilt: public.orders_pkey (lock not obtained" in step.summary
    assert "public.orders_v_idx (lock not obtained" in step.summary
    results = {d["index"]: d["result"] for d in step.details["indexes"]}
    assert results == {
        "public.events_pkey": "done",
        "public.events_v_idx": "done",
        "public.orders_pkey": "lock_timeout",
        "public.orders_v_idx": "lock_timeout",
    }
    blocker.rollback()
    assert invalid_indexes(conn) == []
    assert relfilenode(conn, "orders_pkey") == kept


def test_an_interrupted_reindex_drops_the_invalid_ccnew_index_it_left(
    db: Database, conn: psycopg.Connection[Any], blocker: psycopg.Connection[Any]
) -> None:
    make_bloat(conn, "orders")
    wait_dead(conn, "orders", ROWS // 2)
    vacuum_postgres.fn(db, FIELD, None, None, QUICK)
    kept = relfilenode(conn, "orders_pkey")
    # an open writing transaction: REINDEX CONCURRENTLY gets its lock and builds orders_pkey_ccnew,
    # then times out waiting for this transaction; it commits 2 s later
    blocker.execute("insert into orders values (-1, 'open transaction')")
    threading.Timer(2.0, blocker.commit).start()
    seen: set[str] = set()
    watching = threading.Event()
    watcher = threading.Thread(target=_watch_ccnew, args=(conn.info.dsn, seen, watching))
    watcher.start()
    try:
        step = reindex_postgres.fn(db, FIELD, None, None, QUICK)
    finally:
        watching.set()
        watcher.join()

    assert "orders_pkey_ccnew" in seen  # the cleanup path really ran
    assert step.status == "degraded"
    assert "not rebuilt: public.orders_pkey (lock not obtained" in step.summary
    assert step.details["invalid_left"] == []
    results = {d["index"]: d["result"] for d in step.details["indexes"]}
    assert results == {"public.orders_pkey": "lock_timeout", "public.orders_v_idx": "done"}
    assert invalid_indexes(conn) == []
    assert relfilenode(conn, "orders_pkey") == kept
    names = conn.execute("select relname from pg_class where relname like 'orders%%'").fetchall()
    assert sorted(r[0] for r in names) == ["orders", "orders_pkey", "orders_v_idx"]


def _watch_ccnew(dsn: str, seen: set[str], stop: threading.Event) -> None:
    with psycopg.connect(dsn, autocommit=True, password="") as watch:
        while not stop.is_set():
            rows = watch.execute("select relname from pg_class where relname like '%ccnew%'")
            seen.update(str(r[0]) for r in rows.fetchall())
            time.sleep(0.05)


def test_a_passed_deadline_starts_nothing_and_says_so(
    db: Database, conn: psycopg.Connection[Any]
) -> None:
    make_bloat(conn, "orders")
    dead = wait_dead(conn, "orders", ROWS // 2)
    passed = datetime.now(UTC) - timedelta(seconds=1)

    step = vacuum_postgres.fn(db, FIELD, None, None, QUICK, deadline=passed)

    assert step.status == "degraded"
    assert step.details["skipped"] == ["public.orders"]
    assert "not started (the window's deadline passed): public.orders" in step.summary
    assert dead_tuples(conn, "orders") == dead
    vacuum_postgres.fn(db, FIELD, None, None, QUICK)
    kept = relfilenode(conn, "orders_pkey")
    step = reindex_postgres.fn(db, FIELD, None, None, QUICK, deadline=passed)
    assert step.status == "degraded"
    assert step.details["skipped"] == ["public.orders_pkey", "public.orders_v_idx"]
    assert relfilenode(conn, "orders_pkey") == kept
    with pytest.raises(InputError, match="deadline: has no timezone"):
        vacuum_postgres.fn(db, FIELD, None, None, QUICK, deadline=datetime.now())


def test_settings_tables_limit_the_step_and_an_unknown_one_is_refused(
    db: Database, conn: psycopg.Connection[Any]
) -> None:
    make_bloat(conn, "orders", rows=5_000)
    make_bloat(conn, "other", rows=5_000)
    other_dead = wait_dead(conn, "other", 2_500)
    wait_dead(conn, "orders", 2_500)
    only = QUICK.model_copy(update={"tables": ["public.orders"]})

    step = vacuum_postgres.fn(db, FIELD, None, None, only)

    assert [d["table"] for d in step.details["tables"]] == ["public.orders"]
    assert dead_tuples(conn, "orders") == 0
    assert dead_tuples(conn, "other") == other_dead
    figures = measure_postgres.fn(db, FIELD, None, None, only)
    assert [t.table for t in figures.tables] == ["public.orders"]
    assert {i.table for i in figures.indexes} == {"public.orders"}
    bad = QUICK.model_copy(update={"tables": ["public.orders", "public.nope"]})
    with pytest.raises(InputError) as raised:
        vacuum_postgres.fn(db, FIELD, None, None, bad)
    assert str(raised.value).startswith(
        "environments.test.maintenance.postgres.tables: public.nope: no such table"
    )
    assert dead_tuples(conn, "other") == other_dead


def test_no_secret_reaches_the_step(
    monkeypatch: pytest.MonkeyPatch,
    postgres_password_role: Any,
    postgres_database_factory: Callable[..., PostgresDatabase],
) -> None:
    role = postgres_password_role
    target = postgres_database_factory(server=role.server)
    with role.server.connect(target.name) as admin:
        admin.execute(f'alter database "{target.name}" owner to "{role.user}"')
        admin.execute(f'grant all on schema public to "{role.user}"')
    dsn = role.server.dsn(target.name, user=role.user, password=role.password)
    with psycopg.connect(dsn, autocommit=True) as owner:
        make_bloat(owner, "orders", rows=5_000)
    db = _db(monkeypatch, dsn)
    step = vacuum_postgres.fn(db, FIELD, None, None, QUICK)
    assert step.status == "complete", step.summary
    assert role.password not in step.model_dump_json()
    assert isinstance(measure_postgres.fn(db, FIELD, None, None, QUICK), PgFigures)


# ----- docker_exec ----------------------------------------------------------------------------


def _psql(container: Any, sql: str) -> str:
    code, output = container.exec_run(
        ["psql", "-X", "-tA", "-U", "postgres", "-d", "app", "-c", sql]
    )
    assert code == 0, output.decode(errors="replace")
    return str(output.decode()).strip()


def test_vacuum_and_reindex_through_docker_exec(
    monkeypatch: pytest.MonkeyPatch,
    docker_engine: str,
    docker_engine_client: Any,
    docker_test_containers: Callable[..., Any],
) -> None:
    from tests.integration.test_backup_flow import _wait_healthy
    from tests.support.images import ensure_postgres_image

    container = docker_test_containers(ensure_postgres_image(docker_engine_client))
    _wait_healthy(container)
    deadline = time.monotonic() + 60
    while True:  # healthy can be seen before the server's final start: retry until it answers
        code, output = container.exec_run(["createdb", "-U", "postgres", "app"])
        if code == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert code == 0, output.decode(errors="replace")
    for statement in BLOAT_SQL:
        _psql(container, statement.format(t="orders", rows=ROWS))
    _psql(container, "create table locked_t (id int primary key)")
    monkeypatch.setenv(DSN_VAR, "postgresql://postgres@localhost/app")
    db = Database(
        name="main", kind="postgres", dsn=f"env:{DSN_VAR}", via={"docker_exec": container.name}
    )
    docker = DockerTarget(host=docker_engine)
    # a session beside the server holds locked_t for 5 s
    container.exec_run(
        [
            "psql",
            "-U",
            "postgres",
            "-d",
            "app",
            "-c",
            "begin; lock table locked_t in exclusive mode; select pg_sleep(5); commit;",
        ],
        detach=True,
    )
    held = (
        "select count(*) from pg_locks "
        "where mode = 'ExclusiveLock' and relation = 'locked_t'::regclass"
    )
    wait_until = time.monotonic() + 15
    while _psql(container, held) != "1" and time.monotonic() < wait_until:
        time.sleep(0.2)

    step = vacuum_postgres.fn(db, FIELD, docker, None, QUICK)

    assert step.status == "degraded", step.summary
    assert step.details["via"] == "docker_exec"
    results = {d["table"]: d["result"] for d in step.details["tables"]}
    assert results == {"public.locked_t": "lock_timeout", "public.orders": "done"}
    assert "not vacuumed: public.locked_t (lock not obtained" in step.summary
    assert (
        _psql(container, "select n_dead_tup from pg_stat_user_tables where relname = 'orders'")
        == "0"
    )
    # REINDEX CONCURRENTLY waits for every older transaction: let the lock holder end first
    while _psql(container, held) != "0" and time.monotonic() < wait_until + 15:
        time.sleep(0.2)
    step = reindex_postgres.fn(db, FIELD, docker, None, QUICK)
    assert step.status == "complete", step.summary
    chosen = {d["index"]: d for d in step.details["indexes"]}
    assert set(chosen) == {"public.orders_pkey", "public.orders_v_idx"}
    assert step.after["index_bytes"] < step.before["index_bytes"] * 0.4
