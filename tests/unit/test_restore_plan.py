"""Restore and DR-drill plans are pure functions of inventory + catalog + parameters: which
backup, which target, which mode, scaling around it; recovery targets; the drill ledger rows."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from connectors.postgres import scratch_name
from connectors.stores.base import manifest_key
from deployments.runbooks import get_runbook
from flows.dr_drill import missed_targets, plan_dr_drill
from flows.restore import build_restore_plan, plan_restore
from opsflow.catalog import (
    CatalogEntry,
    SeriesKey,
    choose,
    codec_of,
    fold,
    newest_by_series,
    restorable,
    series_key,
)
from opsflow.errors import InputError
from opsflow.inventory import InventoryError, parse_inventory
from opsflow.ledger import BackupRow, Ledger, utcnow
from opsflow.results import compare_counts

REPO = Path(__file__).resolve().parents[2]
SHA_OLD, SHA_NEW, SHA_APP = "a" * 64, "b" * 64, "c" * 64
INVENTORY = parse_inventory("""
environments:
  prod:
    protected: true
    approvals: {approvers: {alice: {totp: 'env:ALICE_TOTP'}, bob: {totp: 'env:BOB_TOTP'}}}
    kubernetes: {namespace: shop, deployment: web}
    databases:
      - {name: main, kind: postgres, dsn: "env:DSN"}
      - {name: app, kind: sqlite, path: /srv/app.db}
    backup_store: {url: "file:///var/backups"}
    recovery: {rto: 1h, rpo: 15m}
  staging:
    docker: {services: [{name: web, container: svg-ai}]}
    databases: [{name: main, kind: postgres, dsn: "env:DSN", via: {docker_exec: svg-db}}]
    backup_store: {url: "file:///var/backups"}
  bare:
    databases: [{name: main, kind: postgres, dsn: "env:DSN"}]
    backup_store: {url: "file:///var/backups"}
""")
T0 = datetime(2026, 11, 1, 2, 0, 0)


def row(
    id_: int,
    backup_id: str,
    database: str,
    sha: str,
    *,
    hours: int = 0,
    status: str = "complete",
    env: str = "prod",
) -> BackupRow:
    kind = "sqlite" if database == "app" else "postgres"
    ext = "sqlite.zst" if kind == "sqlite" else "sql.zst"
    return BackupRow(
        id=id_,
        backup_id=backup_id,
        env=env,
        database=database,
        kind=kind,
        store_url="file:///var/backups",
        key=f"prod/{database}/2026/11/{backup_id}.{ext}",
        bytes=2_500_000,
        sha256=sha,
        status=status,
        created_at=T0 + timedelta(hours=hours),
        details={"codec": "zstd", "via": "direct", "row_counts": {"public.t": 3}},
    )


MAIN, APP = series_key("prod", "postgres", "main"), series_key("prod", "sqlite", "app")


def sources_of(rows: list[BackupRow]) -> dict[SeriesKey, list[CatalogEntry]]:
    """The catalog as restore and the drill read it."""
    return restorable(fold(rows, manifest_of=manifest_key))


ROWS = [
    row(1, "old", "main", SHA_OLD),
    row(2, "new", "main", SHA_NEW, hours=24),
    row(3, "broken", "main", "d" * 64, hours=48, status="failed"),
    row(4, "app1", "app", SHA_APP, hours=1),
    row(5, "old", "main", SHA_OLD, status="verified"),
]


def test_catalog_keeps_good_backups_newest_first_and_knows_verified_ones() -> None:
    catalog = sources_of(ROWS)
    assert [s.backup_id for s in catalog[MAIN]] == ["new", "old"]  # failed one left out
    assert [s.verified for s in catalog[MAIN]] == [False, True]
    assert catalog[MAIN][0].codec == "zstd" and catalog[MAIN][0].row_counts == {"public.t": 3}
    assert catalog[APP][0].manifest_key == "prod/app/2026/11/app1.sqlite.zst.manifest.json"


def test_default_plan_on_protected_kubernetes_environment() -> None:
    plan = plan_restore("prod", INVENTORY.environment("prod"), ROWS, stamp="20261123T1")
    assert [(s.action, s.target) for s in plan.steps] == [
        ("request_approval", "prod"),
        ("scale_down_app", "deployment shop/web"),
        ("restore_postgres", "main -> <db>_restore_20261123T1"),
        ("verify_postgres_restore", "<db>_restore_20261123T1"),
        ("swap_postgres_database", "main"),
        ("restore_sqlite", "/srv/app.db"),
        ("scale_up_app", "deployment shop/web"),
        ("check_postgres", "main"),
        ("check_sqlite", "app"),
    ]
    assert not plan.steps[0].changes and plan.steps[1].changes
    markdown = plan.to_markdown()
    for shown in ("backup new", "prod/main/2026/11/new.sql.zst", SHA_NEW, "2.4 MiB", SHA_APP):
        assert shown in markdown
    assert "sha256 is checked at the end of the stream" in plan.steps[2].why
    assert "<db>_before_20261123T1" in plan.steps[4].why
    assert plan.parameters == {"database": "main,app", "mode": "swap", "target_db": ""}


def test_backup_id_picks_an_older_backup_and_shows_it_verified() -> None:
    plan = plan_restore("prod", INVENTORY.environment("prod"), ROWS, "main", "old")
    restore = next(s for s in plan.steps if s.action == "restore_postgres")
    assert SHA_OLD in restore.why and "verified by a drill" in restore.why


def test_target_db_touches_neither_original_nor_application() -> None:
    plan = plan_restore("prod", INVENTORY.environment("prod"), ROWS, "main", target_db="copy")
    assert [s.action for s in plan.steps] == ["request_approval", "restore_postgres"]
    assert plan.steps[1].target == "main -> new database copy"
    assert any("not touched" in note for note in plan.notes)
    with pytest.raises(InputError, match="target_db"):
        plan_restore("prod", INVENTORY.environment("prod"), ROWS, "all", target_db="copy")


@pytest.mark.parametrize(
    ("database", "target_db", "problem"),
    [
        ("app", "", "is empty"),  # was: the live file replaced, the plan saying "not touched"
        ("app", "  ", "is empty"),
        ("app", "/srv/app.db", "is the live file of app"),
        ("app", "/srv/../srv/app.db", "is the live file of app"),
        ("main", "", "is empty"),
        ("main", "bad name;drop", "is not a usable PostgreSQL database name"),
        ("main", "x" * 64, "is not a usable PostgreSQL database name"),
    ],
)
def test_target_db_must_name_a_new_place(database: str, target_db: str, problem: str) -> None:
    with pytest.raises(InputError) as info:
        plan_restore("prod", INVENTORY.environment("prod"), ROWS, database, target_db=target_db)
    assert info.value.field == "target_db"
    assert problem in info.value.problem
    naming = "not a usable" in problem
    assert ("letters, digits" if naming else "leave target_db out") in info.value.fix


def test_target_db_naming_the_live_postgres_database_is_refused() -> None:
    inventory = parse_inventory("""
environments:
  prod:
    databases: [{name: main, kind: postgres, dsn: "postgresql://app@db.internal:5432/shop"}]
    backup_store: {url: "file:///var/backups"}
""")
    rows = [r for r in ROWS if r.database == "main"]
    with pytest.raises(InputError) as info:
        plan_restore("prod", inventory.environment("prod"), rows, "main", target_db="shop")
    assert info.value.field == "target_db" and "live database of main" in info.value.problem
    plan = plan_restore("prod", inventory.environment("prod"), rows, "main", target_db="shop_copy")
    assert plan.steps[-1].target == "main -> new database shop_copy"


def test_drop_recreate_verifies_the_object_before_dropping() -> None:
    plan = plan_restore("prod", INVENTORY.environment("prod"), ROWS, "main", mode="drop-recreate")
    actions = [s.action for s in plan.steps]
    assert actions.index("verify_backup") < actions.index("restore_postgres")
    assert "swap_postgres_database" not in actions
    assert "DROP the live database" in plan.steps[actions.index("restore_postgres")].why


def test_docker_environment_stops_containers_and_bare_one_says_nothing_scales() -> None:
    def rows(env: str) -> list[BackupRow]:
        return [row(1, "b", "main", SHA_NEW, env=env)]

    plan = plan_restore("staging", INVENTORY.environment("staging"), rows("staging"))
    assert plan.steps[0].action == "scale_down_app"
    assert plan.steps[0].target == "containers svg-ai"
    with pytest.raises(InputError, match="main in staging has no complete backup"):
        plan_restore("staging", INVENTORY.environment("staging"), rows("bare"))  # another env's
    bare = plan_restore("bare", INVENTORY.environment("bare"), rows("bare"))
    assert "scale_down_app" not in [s.action for s in bare.steps]
    assert any("nothing is scaled down" in note for note in bare.notes)


@pytest.mark.parametrize(
    ("database", "backup_id", "mode", "field"),
    [
        ("nope", None, "swap", "database"),
        ("main", "missing", "swap", "backup_id"),
        ("main", None, "overwrite", "mode"),
    ],
)
def test_bad_parameters_fail_in_the_plan(
    database: str, backup_id: str | None, mode: str, field: str
) -> None:
    with pytest.raises(InputError) as info:
        plan_restore("prod", INVENTORY.environment("prod"), ROWS, database, backup_id, mode=mode)
    assert info.value.field == field


def test_database_without_backup_is_an_input_error() -> None:
    with pytest.raises(InputError, match="app in prod has no complete backup"):
        choose_sources(ROWS[:3], "prod")


def test_recovery_targets_default_to_seed_000_and_parse() -> None:
    assert INVENTORY.environment("bare").recovery.rto == timedelta(hours=4)
    assert INVENTORY.environment("bare").recovery.rpo == timedelta(hours=4)
    assert INVENTORY.environment("prod").recovery.rpo == timedelta(minutes=15)
    with pytest.raises(InventoryError, match=r"environments.x.recovery.rto: .*\(fix: "):
        parse_inventory("environments: {x: {recovery: {rto: soon}}}")


def test_missed_targets_name_the_target() -> None:
    assert missed_targets(10, 10, timedelta(hours=1), timedelta(hours=1)) == []
    missed = missed_targets(7200, 5, timedelta(hours=1), timedelta(0))
    assert missed[0].startswith("RTO target missed") and "target 1h" in missed[0]
    assert missed[1].startswith("RPO target missed")


def test_drill_plan_restores_checks_and_tears_down_each_database() -> None:
    sources = newest_by_series(fold(ROWS, manifest_of=manifest_key))
    assert sources == {name: s[0] for name, s in sources_of(ROWS).items()}
    plan = plan_dr_drill("prod", INVENTORY.environment("prod"), sources, "S")
    assert [(s.action, s.target) for s in plan.steps] == [
        ("restore_postgres", "main -> <db>_drill_S"),
        ("verify_postgres_restore", "<db>_drill_S"),
        ("drop_postgres_database", "<db>_drill_S"),
        ("drill_sqlite", "app"),
    ]
    assert "backup new" in plan.steps[0].why
    assert "RTO 1h" in plan.notes[0] and "RPO 15m" in plan.notes[0]


def test_helpers() -> None:
    name = scratch_name("x" * 80, "restore", "20261123143000")
    assert len(name) == 63 and name.endswith("_restore_20261123143000")
    assert codec_of("a/b.sql.gz") == "gzip" and codec_of("a/b.sqlite") == "none"
    assert codec_of("a/b.sql.gz", "zstd") == "zstd"
    problems, warnings = compare_counts({"t": 3, "u": 1}, {"t": 2}, exact=True)
    assert problems == [
        "table t has 2 rows, the backup had 3",
        "table u is missing (backup had 1 rows)",
    ]
    assert warnings == []
    problems, warnings = compare_counts({"t": 3}, {"t": 2}, exact=False)
    assert problems == [] and "outside the dump's snapshot" in warnings[0]
    # bad plan input
    chosen = choose_sources(ROWS, "prod", "main")
    with pytest.raises(InputError, match="mode"):
        build_restore_plan("prod", INVENTORY.environment("prod"), chosen, mode="x")


def test_registry_and_prefect_yaml() -> None:
    assert get_runbook("restore").deployment_name == "restore/manual"
    assert get_runbook("dr-drill").deployment_name == "dr-drill/monthly"
    specs = {  # a deployment's name is unique per flow (maintenance has a `monthly` too)
        (d["entrypoint"], d["name"]): d
        for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
    }
    restore = specs["flows/restore.py:restore", "manual"]
    assert not restore.get("schedules")
    drill = specs["flows/dr_drill.py:dr_drill", "monthly"]
    assert [s["cron"] for s in drill["schedules"]] == ["0 3 1 * *"]


def test_drill_rows_and_verified_backups_keep_the_chain(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    backup = ledger.record_backup(
        env="prod",
        database="main",
        kind="postgres",
        store_url="file:///b",
        key="k",
        bytes=1,
        sha256=SHA_NEW,
        status="complete",
        created_at=utcnow(),
        details={"row_counts": {"t": 1}},
    )
    verified = ledger.mark_verified(backup, verified_at=T0, flow_run_id="r1", how="dr-drill")
    ledger.record_drill(
        flow_run_id="r1",
        env="prod",
        database="main",
        backup_id=backup.backup_id,
        rto_seconds=1.25,
        rpo_seconds=30.5,
        targets={"rto_seconds": 3600.0},
        outcome="passed",
    )
    assert verified.backup_id == backup.backup_id and verified.status == "verified"
    assert verified.details["verified_at"] == "2026-11-01T02:00:00.000000"
    assert verified.details["row_counts"] == {"t": 1}
    assert [d.rto_seconds for d in ledger.drills(env="prod")] == [1.25]
    assert ledger.verify().ok
    assert sources_of(ledger.backups(env="prod"))[MAIN][0].verified


def choose_sources(rows: list[BackupRow], env: str, database: str = "all") -> list[Any]:
    series = restorable(fold(rows, manifest_of=manifest_key))
    return choose(series, env, INVENTORY.environment(env), database)
