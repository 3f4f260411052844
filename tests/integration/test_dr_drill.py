"""The `dr-drill` flow against real components: the pgbench database and a SQLite file are
backed up by the real `backup` flow, then each newest backup is restored into a scratch target,
checked (row counts against the manifest, pg_amcheck, quick_check) and torn down; RTO and RPO
are measured against the inventory's targets and recorded in the ledger."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

from flows.backup import backup
from flows.dr_drill import DrillReport, dr_drill
from tests.fixtures.restores import RestoreLab

pytestmark = pytest.mark.integration


def run_drill(env: str = "lab") -> tuple[Any, DrillReport]:
    state = dr_drill(env=env, requested_by="tester", return_state=True)
    report = state.result(raise_on_failure=False)
    assert isinstance(report, DrillReport), f"flow ended {state.name}: {report!r}"
    return state, report


def take_backups(lab: RestoreLab) -> dict[str, str]:
    state = backup(env="lab", requested_by="tester", return_state=True)
    assert state.is_completed(), state.message
    return {r.database: r.backup_id for r in lab.ledger().backups(env="lab")}


def artifact_text(key: str) -> str:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
        )
    assert found, f"no artifact {key}"
    return "\n".join(str(a.data) for a in found)


def test_drill_passes_records_rto_rpo_and_marks_backups_verified(
    restore_lab: RestoreLab,
) -> None:
    lab = restore_lab
    lab.write_inventory(recovery="{rto: 1h, rpo: 1h}")
    backups = take_backups(lab)
    before = lab.checksums()

    state, report = run_drill()

    assert state.is_completed(), state.message
    assert [(d.database, d.outcome) for d in report.databases] == [
        ("main", "passed"),
        ("appdb", "passed"),
    ]
    main, appdb = report.databases
    assert main.scratch.startswith(f"{lab.dbname}_drill_") and main.torn_down
    assert any("pg_amcheck" in check for check in main.checks), main
    assert "quick_check" in appdb.checks
    assert lab.databases() == [lab.dbname]  # the scratch database is gone
    assert lab.checksums() == before  # the live database was never touched
    drills = {d.database: d for d in lab.ledger().drills(env="lab")}
    assert set(drills) == {"main", "appdb"}
    for name, drill in drills.items():
        assert drill.outcome == "passed" and drill.backup_id == backups[name]
        assert 0 < drill.rto_seconds < 3600 and 0 <= drill.rpo_seconds < 3600
        assert drill.targets == {"rto_seconds": 3600.0, "rpo_seconds": 3600.0}
    verified = [r for r in lab.ledger().backups(env="lab") if r.status == "verified"]
    assert {r.backup_id for r in verified} == set(backups.values())
    assert all("verified_at" in r.details for r in verified)
    assert lab.ledger().verify().ok
    text = artifact_text("dr-drill-lab")
    assert "PASSED" in text and "main" in text and "appdb" in text


def test_drill_fails_loudly_when_the_rpo_target_is_missed(restore_lab: RestoreLab) -> None:
    lab = restore_lab
    lab.write_inventory(recovery="{rto: 1h, rpo: 0s}")
    take_backups(lab)

    state, report = run_drill()

    assert state.is_failed()
    assert "RPO target missed" in (state.message or ""), state.message
    assert all(d.outcome == "failed" for d in report.databases)
    assert all(any("RPO target missed" in p for p in d.problems) for d in report.databases)
    assert lab.databases() == [lab.dbname]  # torn down also when the drill fails
    assert [d.outcome for d in lab.ledger().drills(env="lab")] == ["failed", "failed"]
    # the restores themselves were good: the backups are still marked verified
    assert {r.status for r in lab.ledger().backups(env="lab")} == {"complete", "verified"}
    assert lab.ledger().runs(env="lab", runbook="dr-drill")[0].status == "failed"


def test_drill_fails_when_a_restored_copy_does_not_match_its_manifest(
    restore_lab: RestoreLab,
) -> None:
    lab = restore_lab
    take_backups(lab)
    ledger = lab.ledger()
    # a catalogued backup whose manifest promises rows the dump does not hold
    row = next(r for r in ledger.backups(env="lab") if r.database == "main")
    counts = dict(row.details["row_counts"])
    counts["public.pgbench_accounts"] += 1
    ledger.record_backup(
        env="lab",
        database="main",
        kind=row.kind,
        store_url=row.store_url,
        key=row.key,
        bytes=row.bytes,
        sha256=row.sha256,
        status="complete",
        created_at=row.created_at + timedelta(seconds=1),  # the newest: the drill takes it
        details={**row.details, "row_counts": counts},
    )

    state, report = run_drill()

    assert state.is_failed()
    main = report.databases[0]
    assert main.outcome == "failed"
    assert "table public.pgbench_accounts has 100000 rows, the backup had 100001" in main.problems
    assert lab.databases() == [lab.dbname]
    assert not [r for r in ledger.backups(env="lab", database="main") if r.status == "verified"]


def test_drill_fails_a_backup_that_is_gone_or_different_without_restoring_it(
    restore_lab: RestoreLab,
) -> None:
    lab = restore_lab
    take_backups(lab)
    rows = {r.database: r for r in lab.ledger().backups(env="lab")}
    (lab.store_dir / rows["main"].key).unlink()  # gone behind the catalog's back
    (lab.store_dir / f"{rows['appdb'].key}.sha256").write_text(f"{'e' * 64}  x\n")

    state, report = run_drill()

    assert state.is_failed()
    main, appdb = report.databases
    assert main.outcome == appdb.outcome == "failed"
    assert main.problems == [
        f"nothing restored: backup {rows['main'].backup_id} of postgres 'main' is not in the "
        f"store: file://{lab.store_dir}/{rows['main'].key} does not exist (fix: choose another "
        "backup (`opsflow backups list --env ENV`) or take a new one)"
    ]
    assert appdb.problems[0].startswith(
        f"nothing restored: backup {rows['appdb'].backup_id} of sqlite 'appdb' in the store is "
        "not the catalogued one"
    )
    assert main.scratch == "" and main.rto_seconds == 0 and not main.checks
    assert lab.databases() == [lab.dbname]
    drills = {d.database: d for d in lab.ledger().drills(env="lab")}
    assert {n: (d.outcome, d.backup_id) for n, d in drills.items()} == {
        "main": ("failed", rows["main"].backup_id),
        "appdb": ("failed", rows["appdb"].backup_id),
    }
    assert not [r for r in lab.ledger().backups(env="lab") if r.status == "verified"]
