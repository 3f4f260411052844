"""Content checksums of the inventory's ``checksum_tables``, end to end with real components:
the pgbench database is backed up by the real `backup` flow (the checksums land in the
manifest and the catalog), the `dr-drill` flow restores it into a scratch database and compares
the checksums of the restored copy with the recorded ones, and the `restore` flow's verify
step does the same before anything is swapped in.

A catalogued checksum that the dump does not match (simulated by cataloguing the same object
again with another recorded checksum, as a dump that differs from what was recorded would look)
fails the drill and the restore naming the table. A checksum table that does not exist fails
that database's backup naming the inventory field and the table.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from docker.models.containers import Container

from connectors.stores.base import manifest_key
from flows.backup import BackupReport, backup
from flows.dr_drill import DrillReport, dr_drill
from flows.restore import restore
from opsflow.ledger import BackupRow
from opsflow.results import RestoreReport
from tests.fixtures.kube_api import KubeCluster
from tests.fixtures.restores import (
    RESTORE_DSN_VAR,
    RestoreLab,
    container_sql,
    start_pgbench_container,
)
from tests.integration.test_dr_drill import artifact_text
from tests.integration.test_kubectl_exec import DB_PASSWORD, LocalKubelet, local_kubelet

pytestmark = pytest.mark.integration

__all__ = ["local_kubelet"]  # the fixture, shared with test_kubectl_exec

TABLES = ("pgbench_accounts", "pgbench_branches")


def write_inventory(lab: RestoreLab, tables: str = "[pgbench_accounts, pgbench_branches]") -> None:
    (lab.root / "inventory.yaml").write_text(f"""
environments:
  lab:
    databases:
      - name: main
        kind: postgres
        dsn: "env:{RESTORE_DSN_VAR}"
        checksum_tables: {tables}
    backup_store: {{url: "file://{lab.store_dir}"}}
    recovery: {{rto: 1h, rpo: 1h}}
""")


def md5_of(lab: RestoreLab, table: str, dbname: str | None = None) -> str:
    """The checksum as the brief defines it, computed independently of opsflow's code."""
    rows = lab.execute(
        f"select md5(coalesce(string_agg(t::text, E'\\n' order by t::text), '')) from {table} t",
        dbname,
    )
    return str(rows[0][0])


def run_backup(env: str = "lab") -> tuple[Any, BackupReport]:
    state = backup(env=env, requested_by="tester", return_state=True)
    report = state.result(raise_on_failure=False)
    assert isinstance(report, BackupReport), f"flow ended {state.name}: {report!r}"
    return state, report


def run_drill(env: str = "lab") -> tuple[Any, DrillReport]:
    state = dr_drill(env=env, requested_by="tester", return_state=True)
    report = state.result(raise_on_failure=False)
    assert isinstance(report, DrillReport), f"flow ended {state.name}: {report!r}"
    return state, report


def catalogue_again_with(lab: RestoreLab, row: BackupRow, checksums: dict[str, str]) -> str:
    """Catalogue the same stored object once more, newest, claiming other checksums."""
    again = lab.ledger().record_backup(
        env=row.env,
        database=row.database,
        kind=row.kind,
        store_url=row.store_url,
        key=row.key,
        bytes=row.bytes,
        sha256=row.sha256,
        status="complete",
        created_at=row.created_at + timedelta(seconds=1),  # the newest: the drill takes it
        details={**row.details, "table_checksums": checksums},
    )
    return again.backup_id


def test_backup_records_checksums_and_the_drill_compares_them(
    restore_lab: RestoreLab,
) -> None:
    lab = restore_lab
    write_inventory(lab)
    expected = {t: md5_of(lab, t) for t in TABLES}
    assert len(set(expected.values())) == 2 and all(len(v) == 32 for v in expected.values())

    state, _ = run_backup()
    assert state.is_completed(), state.message
    [row] = lab.ledger().backups(env="lab", database="main")
    assert row.details["table_checksums"] == expected
    manifest = json.loads((lab.store_dir / manifest_key(row.key)).read_text())
    assert manifest["table_checksums"] == expected

    lab.change_data()  # the live database moves on; the drill compares with the backup
    assert md5_of(lab, "pgbench_branches") != expected["pgbench_branches"]

    state, report = run_drill()

    assert state.is_completed(), state.message
    [main] = report.databases
    assert main.outcome == "passed", main.problems
    assert main.checksums == {t: {"backup": v, "restored": v} for t, v in expected.items()}
    assert "content checksums of 2 table(s)" in main.checks
    [drill] = lab.ledger().drills(env="lab")
    assert drill.outcome == "passed" and drill.details["checksums"] == main.checksums
    text = artifact_text("dr-drill-lab")
    assert "## Table checksums" in text
    for table, checksum in expected.items():
        assert f"| main | {table} | `{checksum}` | `{checksum}` | yes |" in text
    assert lab.databases() == [lab.dbname]  # the scratch database is gone
    assert sorted(r.status for r in lab.ledger().backups(env="lab", database="main")) == [
        "complete",
        "verified",
    ]


def test_drill_fails_naming_the_table_whose_checksum_does_not_match(
    restore_lab: RestoreLab,
) -> None:
    lab = restore_lab
    write_inventory(lab)
    state, _ = run_backup()
    assert state.is_completed(), state.message
    [row] = lab.ledger().backups(env="lab", database="main")
    recorded = dict(row.details["table_checksums"])
    claimed = {**recorded, "pgbench_branches": "0" * 32}
    tampered_id = catalogue_again_with(lab, row, claimed)

    state, report = run_drill()

    assert state.is_failed()
    assert "pgbench_branches" in (state.message or ""), state.message
    [main] = report.databases
    assert main.outcome == "failed" and main.backup_id == tampered_id
    assert main.problems == [
        f"table pgbench_branches content checksum {recorded['pgbench_branches']} differs "
        f"from the backup's {'0' * 32}"
    ]
    assert main.checksums["pgbench_branches"] == {
        "backup": "0" * 32,
        "restored": recorded["pgbench_branches"],
    }
    assert main.checksums["pgbench_accounts"]["backup"] == recorded["pgbench_accounts"]
    assert main.checksums["pgbench_accounts"]["restored"] == recorded["pgbench_accounts"]
    [drill] = lab.ledger().drills(env="lab")
    assert drill.outcome == "failed" and drill.details["checksums"] == main.checksums
    text = artifact_text("dr-drill-lab")
    assert (
        f"| main | pgbench_branches | `{'0' * 32}` | `{recorded['pgbench_branches']}` | NO |"
        in (text)
    )
    assert lab.databases() == [lab.dbname]  # torn down also when the check fails
    assert not [r for r in lab.ledger().backups(env="lab") if r.status == "verified"]
    assert lab.ledger().verify().ok  # the tampering went through the append-only catalog


def test_restore_refuses_a_copy_whose_checksum_does_not_match(restore_lab: RestoreLab) -> None:
    lab = restore_lab
    write_inventory(lab)
    state, _ = run_backup()
    assert state.is_completed(), state.message
    [row] = lab.ledger().backups(env="lab", database="main")
    catalogue_again_with(lab, row, {**row.details["table_checksums"], "pgbench_accounts": "f" * 32})
    lab.change_data()
    live = {t: md5_of(lab, t) for t in TABLES}

    state = restore(env="lab", requested_by="tester", return_state=True)
    report = state.result(raise_on_failure=False)
    assert isinstance(report, RestoreReport), f"flow ended {state.name}: {report!r}"

    assert state.is_failed()
    [outcome] = report.databases
    assert outcome.status == "failed"
    assert "table pgbench_accounts content checksum" in (outcome.error or ""), outcome.error
    assert "The live database was not replaced" in (outcome.error or "")
    assert {t: md5_of(lab, t) for t in TABLES} == live  # untouched
    assert lab.databases() == [lab.dbname]  # the restored copy was dropped


def test_a_checksum_table_that_does_not_exist_fails_the_backup(restore_lab: RestoreLab) -> None:
    lab = restore_lab
    write_inventory(lab, "[pgbench_accounts, public.no_such_table]")

    state, report = run_backup()

    assert state.is_failed()
    [outcome] = report.backups
    assert outcome.status == "failed"
    error = outcome.error or ""
    assert "environments.lab.databases[0].checksum_tables" in error, error
    assert "public.no_such_table" in error and "does not exist" in error
    assert not lab.ledger().backups(env="lab")  # nothing catalogued
    stored = [p for p in lab.store_dir.rglob("*") if p.is_file() and "_ledger" not in p.parts]
    assert not stored  # no backup stored (only the ledger's published chain heads)


def test_checksums_through_kubectl_exec(
    restore_lab: RestoreLab,
    kube_cluster: KubeCluster,
    local_kubelet: LocalKubelet,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lab = restore_lab
    expected = {t: md5_of(lab, t) for t in TABLES}
    monkeypatch.setenv(
        RESTORE_DSN_VAR, f"postgresql://postgres:{DB_PASSWORD}@postgres.db.svc/{lab.dbname}"
    )
    (lab.root / "inventory.yaml").write_text(f"""
environments:
  kube:
    kubernetes: {{namespace: {kube_cluster.namespace}, api_url: "{kube_cluster.url}"}}
    databases:
      - name: main
        kind: postgres
        dsn: "env:{RESTORE_DSN_VAR}"
        via: {{kubectl_exec: {kube_cluster.deployment}, container: postgres}}
        checksum_tables: [pgbench_accounts, pgbench_branches]
    backup_store: {{url: "file://{lab.store_dir}"}}
""")

    state, _ = run_backup("kube")
    assert state.is_completed(), state.message
    [row] = lab.ledger().backups(env="kube", database="main")
    assert row.details["table_checksums"] == expected
    # computed with psql in "the pod", like the row counts
    assert any(c[2][0] == "psql" and "string_agg" in c[2][-1] for c in local_kubelet.calls)

    state, report = run_drill("kube")
    assert state.is_completed(), state.message
    [main] = report.databases
    assert main.checksums == {t: {"backup": v, "restored": v} for t, v in expected.items()}

    catalogue_again_with(lab, row, {**expected, "pgbench_branches": "1" * 32})
    state, report = run_drill("kube")
    assert state.is_completed()  # taken outside the dump's snapshot: a warning, not a failure
    [main] = report.databases
    assert any(
        "table pgbench_branches content checksum" in w and "outside the dump's snapshot" in w
        for w in main.warnings
    ), main.warnings
    assert not [d for d in lab.databases() if "_drill_" in d]

    catalogued = len(lab.ledger().backups(env="kube", database="main"))
    inventory = lab.root / "inventory.yaml"
    inventory.write_text(
        inventory.read_text().replace("pgbench_branches]", "pgbench_branches, gone.table]")
    )
    state, backed_up = run_backup("kube")
    assert state.is_failed()
    error = backed_up.backups[0].error or ""
    assert "environments.kube.databases[0].checksum_tables: table gone.table does not exist" in (
        error
    ), error
    assert DB_PASSWORD not in error
    assert len(lab.ledger().backups(env="kube", database="main")) == catalogued  # none new


def test_checksums_through_docker_exec(
    restore_lab: RestoreLab,
    docker_engine: str,
    docker_engine_client: Any,
    docker_test_containers: Callable[..., Container],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.support.images import ensure_postgres_image

    lab = restore_lab
    container = start_pgbench_container(
        docker_test_containers(ensure_postgres_image(docker_engine_client))
    )
    monkeypatch.setenv(RESTORE_DSN_VAR, "postgresql://postgres@localhost/app")
    (lab.root / "inventory.yaml").write_text(f"""
environments:
  dock:
    docker: {{host: "{docker_engine}"}}
    databases:
      - name: main
        kind: postgres
        dsn: "env:{RESTORE_DSN_VAR}"
        via: {{docker_exec: {container.name}}}
        checksum_tables: [public.pgbench_branches, pgbench_tellers]
    backup_store: {{url: "file://{lab.store_dir}"}}
""")
    expected = {
        table: container_sql(
            container,
            "app",
            "select md5(coalesce(string_agg(t::text, E'\\n' order by t::text), '')) "
            f"from {table} t",
        )
        for table in ("public.pgbench_branches", "pgbench_tellers")
    }

    state, _ = run_backup("dock")
    assert state.is_completed(), state.message
    [row] = lab.ledger().backups(env="dock", database="main")
    assert row.details["table_checksums"] == expected

    state, report = run_drill("dock")
    assert state.is_completed(), state.message
    [main] = report.databases
    assert main.checksums == {t: {"backup": v, "restored": v} for t, v in expected.items()}
    assert "content checksums of 2 table(s)" in main.checks
