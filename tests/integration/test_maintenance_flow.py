"""The maintenance runbook in-process on the session's Prefect server, against real
PostgreSQL, SQLite, Redis, a file store and an HTTP maintenance-mode endpoint that records
every call (``tests.fixtures.http_targets.ModeSwitch``).

What an operator relies on: inside the window the weekly run makes the databases measurably
better (dead tuples gone, a bloated index smaller), cleans Redis by the rules and nothing else,
archives big logs with a checksum, and switches maintenance mode on and off again; a step that
fails in the middle does not stop the others and maintenance mode still goes off; a mode that
cannot be switched off fails the run and notifies; outside the window nothing happens; steps
that would end after the window closes are skipped, not started."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import zstandard

from flows.maintenance import MODE_OFF, MODE_ON, maintenance
from opsflow.ledger import Ledger
from opsflow.maintenance import MaintenanceReport
from tests.fixtures.databases import PostgresDatabase, RedisServer
from tests.fixtures.http_targets import ModeSwitch, WebhookReceiver

pytestmark = pytest.mark.integration

MODE_KEY = "mode-key-" + "7f3a9c21e5"  # a throwaway credential of the test's endpoint
ROWS = 20_000
OPEN_ALWAYS = '{cron: "0 * * * *", duration: 2h}'  # opens every hour for two: always open


@dataclass
class Lab:
    root: Path
    pg: PostgresDatabase
    redis: RedisServer
    switch: ModeSwitch
    webhook: WebhookReceiver

    def write_inventory(self, window: str = OPEN_ALWAYS, lite: Path | None = None) -> None:
        lite = lite or self.root / "lite.db"
        (self.root / "inventory.yaml").write_text(f"""
environments:
  m:
    disks: ["{self.root}"]
    databases:
      - {{name: app, kind: postgres, dsn: "env:MAINT_PG_DSN"}}
      - {{name: lite, kind: sqlite, path: "{lite}"}}
    redis: [{{name: cache, url: "env:MAINT_REDIS_URL"}}]
    backup_store: {{url: "file://{self.root / "store"}"}}
    maintenance_window: {window}
    maintenance_mode:
      url: "{self.switch.url}"
      headers: {{X-Api-Key: "env:MAINT_MODE_KEY"}}
    notify: [{{webhook: "{self.webhook.url}"}}]
    maintenance:
      postgres: {{lock_timeout: 2s, reindex_bloat_pct: 20, reindex_min_size: 64KiB}}
      redis_cleanup:
        - {{redis: cache, pattern: "tmp:*", flush: true}}
        - {{redis: cache, pattern: "cache:*", idle_over: 1h}}
      log_archive: [{{path: "{self.root / "logs"}/*.log", max_size: 1KiB}}]
      container_log_lines: 0
""")

    def run(self, **params: Any) -> tuple[Any, MaintenanceReport]:
        state = maintenance(env="m", requested_by="tester", return_state=True, **params)
        report = state.result(raise_on_failure=False)
        assert isinstance(report, MaintenanceReport), report
        return state, report

    def steps(self, state: Any) -> list[tuple[str, str, str]]:
        rows = Ledger().steps(str(state.state_details.flow_run_id))
        return [(r.step, r.target, r.status) for r in rows]


@pytest.fixture
def lab(
    tmp_path: Path,
    postgres_database: PostgresDatabase,
    redis_database: RedisServer,
    mode_switch: ModeSwitch,
    webhook_receiver: WebhookReceiver,
    prefect_api: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Lab]:
    with sqlite3.connect(tmp_path / "lite.db") as lite:
        lite.execute("CREATE TABLE t (x)")
        lite.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(100)])
    lite.close()
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "big.log").write_bytes(
        b"".join(
            f"2026-12-01T02:00:{i % 60:02d}Z ERROR request {i} failed\n".encode()
            for i in range(200)
        )
    )
    (tmp_path / "logs" / "small.log").write_text("2026-12-01T02:00:00Z INFO started\n")
    lab = Lab(tmp_path, postgres_database, redis_database, mode_switch, webhook_receiver)
    lab.write_inventory()
    monkeypatch.setenv("OPSFLOW_INVENTORY", str(tmp_path / "inventory.yaml"))
    monkeypatch.setenv("OPSFLOW_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("OPSFLOW_HOME", str(tmp_path / ".opsflow"))
    monkeypatch.setenv("MAINT_PG_DSN", postgres_database.dsn)
    monkeypatch.setenv("MAINT_REDIS_URL", redis_database.url)
    monkeypatch.setenv("MAINT_MODE_KEY", MODE_KEY)
    yield lab


def make_bloat(dsn: str) -> None:
    """A table with autovacuum off whose rows were all updated three times and half deleted:
    dead tuples and a bloated primary key index."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE items (id int PRIMARY KEY, v text) WITH (autovacuum_enabled = false)"
        )
        conn.execute(f"INSERT INTO items SELECT g, md5(g::text) FROM generate_series(1, {ROWS}) g")
        for _ in range(3):
            conn.execute("UPDATE items SET v = md5(v)")
        conn.execute("DELETE FROM items WHERE id % 2 = 0")
        conn.execute("ANALYZE items")


def pg_figures(dsn: str) -> tuple[int, int]:
    """(dead tuples of items, bytes of its primary key index)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_force_next_flush()")
        row = conn.execute(
            "SELECT n_dead_tup, pg_relation_size('items_pkey') FROM pg_stat_user_tables "
            "WHERE relname = 'items'"
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def seed_redis(server: RedisServer) -> dict[bytes, bytes]:
    """Keys the rules must delete (tmp:*, idle cache:* without a TTL) and keys they must not
    touch (outside the patterns, fresh cache:*, cache:* with a TTL); returns the latter."""
    with server.client() as client:
        for i in range(30):
            client.set(f"tmp:{i}", "x")
            client.set(f"keep:{i}", f"v{i}")
        client.set("session:abc", "s")
        for i in range(10):  # idle for two hours: RESTORE ... IDLETIME sets the LRU clock
            client.restore(f"cache:old:{i}", 0, client.dump("keep:0"), idletime=7200)
        client.set("cache:fresh", "f")
        client.restore("cache:ttl", 3_600_000, client.dump("keep:0"), idletime=7200)
        untouched = [k for k in client.scan_iter(count=1000) if not k.startswith(b"tmp:")]
        untouched = [k for k in untouched if not k.startswith(b"cache:old:")]
        return {k: client.dump(k) for k in untouched}


def redis_now(server: RedisServer, keys: list[bytes]) -> dict[bytes, Any]:
    with server.client() as client:
        return {k: client.dump(k) for k in keys}


def test_weekly_maintenance_in_the_window_improves_what_it_touches(lab: Lab) -> None:
    make_bloat(lab.pg.dsn)
    dead_before, index_before = pg_figures(lab.pg.dsn)
    assert dead_before >= ROWS  # three updates and a delete, never vacuumed
    kept = seed_redis(lab.redis)
    big = (lab.root / "logs" / "big.log").read_bytes()
    small = (lab.root / "logs" / "small.log").read_bytes()

    state, report = lab.run()

    assert state.is_completed(), report.summary()
    dead_after, index_after = pg_figures(lab.pg.dsn)
    assert dead_after < dead_before / 100, (dead_before, dead_after)
    assert index_after < index_before * 0.8, (index_before, index_after)
    with lab.redis.client() as client:
        assert list(client.scan_iter("tmp:*")) == []
        assert list(client.scan_iter("cache:old:*")) == []
    assert redis_now(lab.redis, list(kept)) == kept  # every other key, value for value
    assert lab.switch.methods == ["POST", "DELETE"]
    assert [h.get("X-Api-Key") for h in lab.switch.headers] == [MODE_KEY, MODE_KEY]

    steps = lab.steps(state)
    names = [s[0] for s in steps]
    assert names.index(MODE_ON) < names.index("vacuum_postgres") < names.index(MODE_OFF)
    assert names.index(MODE_OFF) < names.index("health_check")
    assert ("backup", "m", "complete") in steps
    by_step = {s.step + " " + s.target: s for s in report.steps}
    vacuum = by_step["vacuum_postgres app"]
    assert vacuum.status == "complete", vacuum.summary
    figures = [s for s in report.steps if s.step == "measure_postgres"][-1]
    assert int(figures.after["dead_tuples"] or 0) < int(figures.before["dead_tuples"] or 0)
    assert by_step["clean_redis cache"].details  # per rule counts
    assert report.maintenance_mode == "turned on, and off again"
    assert "never drill-verified" in report.rollback  # a fresh backup, no drill yet
    ledger_text = " ".join(
        str(r.details) + r.summary for r in Ledger().steps(str(state.state_details.flow_run_id))
    )
    assert MODE_KEY not in ledger_text

    # the big log is in the store, its content checked by another zstd implementation; the
    # file was emptied after that, the small one left alone
    archived = by_step[f"archive_logs {lab.root / 'logs'}/*.log"]
    assert archived.status == "complete", archived.summary
    [stored] = archived.details["objects"]
    raw = (
        zstandard.ZstdDecompressor()
        .decompressobj()
        .decompress((lab.root / "store" / stored["key"]).read_bytes())
    )
    assert hashlib.sha256(raw).hexdigest() == hashlib.sha256(big).hexdigest()
    assert (lab.root / "logs" / "big.log").read_bytes() == b""
    assert (lab.root / "logs" / "small.log").read_bytes() == small
    logs = [b for b in Ledger().backups(env="m") if b.kind == "log"]
    assert [b.key for b in logs] == [stored["key"]]


def test_a_failed_middle_step_does_not_stop_the_rest_and_the_mode_goes_off(lab: Lab) -> None:
    lab.write_inventory(lite=lab.root / "gone.db")  # maintain_sqlite fails: no such file
    seed_redis(lab.redis)

    state, report = lab.run(skip_backup=True)

    assert state.is_failed()
    failed = [f"{s.step} {s.target}" for s in report.failed]
    assert "maintain_sqlite lite" in failed, report.summary()
    redis_step = next(s for s in report.steps if s.step == "clean_redis")
    assert redis_step.status == "complete"  # after the failed step, still done
    assert lab.switch.methods == ["POST", "DELETE"]
    steps = lab.steps(state)
    assert (MODE_OFF, lab.switch.url, "complete") in steps
    assert ("backup", "m", "skipped") in steps


def test_a_mode_that_cannot_be_switched_off_fails_the_run_and_notifies(lab: Lab) -> None:
    lab.switch.status["DELETE"] = 403

    state, report = lab.run(skip_backup=True)

    assert state.is_failed()
    assert report.maintenance_mode == "STILL ON"
    assert report.error is not None and "could NOT be turned off" in report.error
    assert lab.switch.methods == ["POST", "DELETE"]  # a 403 is not retried
    subjects = [str(m["body"]) for m in lab.webhook.received]
    assert any("STILL IN MAINTENANCE MODE" in s for s in subjects), subjects
    assert "health_check" not in [s[0] for s in lab.steps(state)]


def test_outside_the_window_nothing_happens_and_the_next_window_is_named(lab: Lab) -> None:
    later = (datetime.now(UTC) + timedelta(hours=6)).replace(second=0, microsecond=0)
    lab.write_inventory(window=f'{{cron: "{later.minute} {later.hour} * * *", duration: 30m}}')

    state = maintenance(env="m", requested_by="tester", return_state=True)

    assert state.is_failed()
    assert "outside the maintenance window; the next one is" in str(state.message)
    assert f"{later.hour:02d}:{later.minute:02d}" in str(state.message)
    assert lab.switch.calls == []
    rows = Ledger().runs(env="m", limit=10)
    assert [r.status for r in rows] == ["refused"]
    assert Ledger().backups(env="m") == []


def test_steps_that_would_end_after_the_window_closes_are_skipped(lab: Lab) -> None:
    opened = (datetime.now(UTC) - timedelta(minutes=118)).replace(second=0, microsecond=0)
    lab.write_inventory(window=f'{{cron: "{opened.minute} {opened.hour} * * *", duration: 2h}}')
    make_bloat(lab.pg.dsn)
    dead_before, _ = pg_figures(lab.pg.dsn)

    state, report = lab.run()  # 1-2 minutes left; each step expects 5m (step_budget)

    skipped = {f"{s.step} {s.target}" for s in report.skipped}
    assert {"vacuum_postgres app", "maintain_sqlite lite", "clean_redis cache"} <= skipped
    assert all("would end after the window closes" in s.summary for s in report.skipped)
    assert pg_figures(lab.pg.dsn)[0] >= dead_before  # nothing vacuumed
    assert lab.switch.methods == ["POST", "DELETE"]
    assert state.is_completed() and state.name == "Degraded", state.message
