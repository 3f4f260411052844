"""The `restore` flow against real components: PostgreSQL filled by `pgbench -i -s 1`, backed up
by the real `backup` flow into the local store, changed, then restored; the Kubernetes mock API
with the fake controller for scaling; the session Prefect server for approvals (answered through
its REST API by a second identity while the restore runs in the opsflow CLI).

What an operator relies on: after a restore every table equals the backed-up state; a
`target_db` restore leaves the original alone; a corrupt object stops with a checksum error
before the live database is touched; a protected environment changes nothing without a valid
approval; the application is scaled back to its previous replica count.
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import pytest
import zstandard
from docker.models.containers import Container

from connectors.stores import open_store
from connectors.stores.base import backup_key, manifest_key
from flows.backup import backup
from flows.dr_drill import dr_drill
from flows.restore import restore
from opsflow.inventory import BackupStore
from opsflow.ledger import BackupRow
from opsflow.results import RestoreReport
from tests.fixtures.kube_api import KubeCluster
from tests.fixtures.restores import (
    PGBENCH_TABLES,
    RESTORE_DSN_VAR,
    RestoreLab,
    container_sql,
    kubernetes_entry,
    start_pgbench_container,
)
from tests.support.approvers import Authenticator, wait_until
from tests.support.cli import OPSFLOW
from tests.support.prefect_api import api_get, api_post

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def take_backup(lab: RestoreLab, env: str = "lab") -> BackupRow:
    state = backup(env=env, requested_by="tester", return_state=True)
    assert state.is_completed(), state.message
    rows = [r for r in lab.ledger().backups(env=env, database="main") if r.status == "complete"]
    return rows[0]


def run_restore(**params: Any) -> tuple[Any, RestoreReport]:
    state = restore(requested_by="tester", return_state=True, **params)
    report = state.result(raise_on_failure=False)
    assert isinstance(report, RestoreReport), f"flow ended {state.name}: {report!r}"
    return state, report


def test_restore_swaps_in_the_backed_up_state_and_scales_the_app_around_it(
    restore_lab: RestoreLab, kube_cluster: KubeCluster
) -> None:
    lab = restore_lab
    lab.write_inventory(kubernetes_entry(kube_cluster))
    backed_up = lab.checksums()
    row = take_backup(lab)
    lab.change_data()
    changed = lab.checksums()
    assert changed != backed_up
    path = f"/apis/apps/v1/namespaces/{kube_cluster.namespace}/deployments/app"
    seen: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            dep = kube_cluster.api.get(path)
            assert dep is not None
            if not seen or seen[-1] != dep["spec"]["replicas"]:
                seen.append(dep["spec"]["replicas"])
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    with kube_cluster.controller:
        watcher.start()
        state, report = run_restore(env="lab", database="main")
        stop.set()
        watcher.join(timeout=5)

    assert state.is_completed(), state.message
    assert lab.checksums() == backed_up  # every table is back to the backed-up state
    [outcome] = report.databases
    assert (outcome.status, outcome.backup_id, outcome.target) == (
        "restored",
        row.backup_id,
        lab.dbname,
    )
    assert outcome.aside.startswith(f"{lab.dbname}_before_")
    assert lab.checksums(outcome.aside) == changed  # the replaced data is kept aside
    assert not [d for d in lab.databases() if "_restore_" in d]  # the scratch became the live db
    # the application went to 0 replicas during the restore and back to its 4 afterwards
    assert seen[0] == 4 and 0 in seen and seen[-1] == 4, seen
    dep = kube_cluster.api.get(path)
    assert dep is not None and dep["status"].get("readyReplicas") == 4
    assert "opsflow.io/replicas-before-restore" not in {
        k for k, v in (dep["metadata"].get("annotations") or {}).items() if v is not None
    }
    assert outcome.health.startswith("healthy")
    run = lab.ledger().runs(env="lab", runbook="restore")[0]
    assert run.status == "complete"
    steps = [s.step for s in lab.ledger().steps(run.flow_run_id)]
    assert steps == [
        "scale_down_app",
        "restore_postgres",
        "verify_postgres_restore",
        "swap_postgres_database",
        "scale_up_app",
        "check_postgres",
    ]
    assert lab.ledger().verify().ok


def test_target_db_restores_elsewhere_and_leaves_the_original_untouched(
    restore_lab: RestoreLab,
) -> None:
    lab = restore_lab
    backed_up = lab.checksums()
    take_backup(lab)
    lab.change_data()
    changed = lab.checksums()
    copy = f"{lab.dbname}_copy"

    state, report = run_restore(env="lab", database="main", target_db=copy)

    assert state.is_completed(), state.message
    assert lab.checksums(copy) == backed_up
    assert lab.checksums() == changed
    assert report.databases[0].target == copy and not report.databases[0].aside
    assert sorted(lab.databases()) == sorted([lab.dbname, copy])


def test_corrupt_object_stops_with_a_checksum_error_before_touching_the_target(
    restore_lab: RestoreLab,
) -> None:
    lab = restore_lab
    row = take_backup(lab)
    lab.change_data()
    changed = lab.checksums()
    obj = lab.store_dir / row.key
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0xFF
    obj.write_bytes(bytes(data))

    state, report = run_restore(env="lab", database="main")

    assert state.is_failed()
    error = report.databases[0].error or ""
    assert "sha256" in error and "does not match" in error and row.key in error, error
    assert "Nothing was touched: no database was created, dropped or written" in error
    assert lab.checksums() == changed  # the live database is untouched
    assert lab.databases() == [lab.dbname]  # the scratch database was dropped
    assert lab.ledger().runs(env="lab", runbook="restore")[0].status == "failed"


def test_restore_from_s3_and_a_corrupt_s3_object(
    restore_lab: RestoreLab, moto_s3_endpoint: str, moto_s3_bucket: str, moto_s3_client: Any
) -> None:
    lab = restore_lab
    (lab.root / "inventory.yaml").write_text(f"""
environments:
  s3lab:
    databases: [{{name: main, kind: postgres, dsn: "env:{RESTORE_DSN_VAR}"}}]
    backup_store: {{url: "s3://{moto_s3_bucket}/prod", endpoint_url: "{moto_s3_endpoint}"}}
""")
    backed_up = lab.checksums()
    row = take_backup(lab, env="s3lab")
    lab.change_data()
    changed = lab.checksums()
    copy = f"{lab.dbname}_copy"

    state, _ = run_restore(env="s3lab", database="main", target_db=copy)

    assert state.is_completed(), state.message
    assert lab.checksums(copy) == backed_up and lab.checksums() == changed
    # the object is replaced behind the catalog's back (its sha256 sidecar stays)
    full_key = f"prod/{row.key}"
    body = bytearray(moto_s3_client.get_object(Bucket=moto_s3_bucket, Key=full_key)["Body"].read())
    body[len(body) // 3] ^= 0x01
    moto_s3_client.put_object(Bucket=moto_s3_bucket, Key=full_key, Body=bytes(body))

    state, report = run_restore(env="s3lab", database="main")

    assert state.is_failed()
    error = report.databases[0].error or ""
    assert "does not match the expected" in error and row.sha256 in error, error
    assert lab.checksums() == changed
    assert sorted(lab.databases()) == sorted([lab.dbname, copy])


def test_sqlite_restore_renames_a_checked_copy_over_the_file(restore_lab: RestoreLab) -> None:
    lab = restore_lab
    state = backup(env="lab", requested_by="tester", return_state=True)
    assert state.is_completed(), state.message
    import sqlite3

    with sqlite3.connect(lab.sqlite_path) as conn:
        conn.execute("delete from items where id > 100")
    conn.close()

    state, report = run_restore(env="lab", database="appdb")

    assert state.is_completed(), state.message
    with sqlite3.connect(lab.sqlite_path) as conn:
        assert conn.execute("select count(*) from items").fetchone()[0] == 500
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    aside = Path(report.databases[0].aside)
    with sqlite3.connect(aside) as conn:
        assert conn.execute("select count(*) from items").fetchone()[0] == 100
    conn.close()
    assert not list(lab.root.glob(".app.db.restore-*"))


def test_docker_services_are_stopped_for_the_restore_and_started_again(
    restore_lab: RestoreLab,
    docker_engine: str,
    docker_busybox_image: str,
    docker_test_containers: Callable[..., Container],
) -> None:
    lab = restore_lab
    web = docker_test_containers(
        docker_busybox_image, ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.2; done"]
    )
    idle = docker_test_containers(docker_busybox_image, ["true"])
    idle.wait(timeout=30)
    lab.write_inventory(
        f'    docker: {{host: "{docker_engine}", services: [{{name: web, container: {web.name}}}, '
        f"{{name: idle, container: {idle.name}}}]}}\n"
    )
    state = backup(env="lab", requested_by="tester", return_state=True)
    assert state.is_completed(), state.message
    web.reload()
    started_before = web.attrs["State"]["StartedAt"]

    state, report = run_restore(env="lab", database="appdb")

    assert state.is_completed(), state.message
    web.reload()
    idle.reload()
    assert web.status == "running" and web.attrs["State"]["StartedAt"] != started_before
    assert web.attrs["State"]["FinishedAt"] > started_before  # it was stopped in between
    assert idle.status == "exited"  # a container that was not running stays stopped
    assert report.scaled == f"stopped {web.name}"
    assert report.scaled_back == f"started {web.name}"


def _corrupt(lab: RestoreLab, row: BackupRow) -> None:
    """Flip one byte in the middle of a stored object (the failure injected after scale-down)."""
    obj = lab.store_dir / row.key
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0xFF
    obj.write_bytes(bytes(data))


def test_a_failed_restore_scales_kubernetes_back_up(
    restore_lab: RestoreLab, kube_cluster: KubeCluster
) -> None:
    lab = restore_lab
    lab.write_inventory(kubernetes_entry(kube_cluster))
    row = take_backup(lab)
    lab.change_data()
    changed = lab.checksums()
    _corrupt(lab, row)
    kube_cluster.controller.terminate_slowly(1.0)
    path = f"/apis/apps/v1/namespaces/{kube_cluster.namespace}/deployments/app"

    with kube_cluster.controller:
        state, report = run_restore(env="lab", database="main")

    assert state.is_failed()
    assert "does not match" in (report.databases[0].error or ""), report.databases[0].error
    assert lab.checksums() == changed  # the live database was not touched
    dep = kube_cluster.api.get(path)
    assert dep is not None and dep["spec"]["replicas"] == 4
    assert dep["status"].get("readyReplicas") == 4
    annotations = dep["metadata"].get("annotations") or {}
    assert annotations.get("opsflow.io/replicas-before-restore") is None
    assert report.scaled_back.endswith("back to 4 replica(s)")
    run = lab.ledger().runs(env="lab", runbook="restore")[0]
    steps = [(s.step, s.status) for s in lab.ledger().steps(run.flow_run_id)]
    assert steps == [
        ("scale_down_app", "complete"),
        ("restore_postgres", "failed"),
        ("scale_up_app", "complete"),
    ]


def test_a_failed_restore_starts_the_docker_services_again(
    restore_lab: RestoreLab,
    docker_engine: str,
    docker_busybox_image: str,
    docker_test_containers: Callable[..., Container],
    docker_engine_client: Any,
) -> None:
    lab = restore_lab
    web = docker_test_containers(
        docker_busybox_image, ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.2; done"]
    )
    services = f"[{{name: web, container: {web.name}}}]"
    lab.write_inventory(f'    docker: {{host: "{docker_engine}", services: {services}}}\n')
    state = backup(env="lab", requested_by="tester", return_state=True)
    assert state.is_completed(), state.message
    [row] = [r for r in lab.ledger().backups(env="lab", database="appdb")]
    _corrupt(lab, row)
    web.reload()
    started_before = web.attrs["State"]["StartedAt"]

    state, report = run_restore(env="lab", database="appdb")

    assert state.is_failed()
    assert "does not match" in (report.databases[0].error or ""), report.databases[0].error
    web.reload()
    assert web.status == "running" and web.attrs["State"]["StartedAt"] != started_before
    assert report.scaled == f"stopped {web.name}" and report.scaled_back == f"started {web.name}"
    markers = docker_engine_client.volumes.list(filters={"label": "opsflow.io/stopped-for-restore"})
    assert [v.name for v in markers if web.name in v.name] == []


def _container_checksums(container: Container, dbname: str = "app") -> dict[str, str]:
    return {
        table: container_sql(
            container,
            dbname,
            f"select md5(coalesce(string_agg(t::text, ',' order by t::text), '')) from {table} t",
        )
        for table in PGBENCH_TABLES
    }


def test_restore_and_drill_through_docker_exec(
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
    backup_store: {{url: "file://{lab.store_dir}"}}
""")
    backed_up = _container_checksums(container)
    state = backup(env="dock", requested_by="tester", return_state=True)
    assert state.is_completed(), state.message
    container_sql(container, "app", "delete from pgbench_accounts where aid <= 1000")
    container_sql(container, "app", "update pgbench_branches set bbalance = bbalance + 42")
    changed = _container_checksums(container)

    state, report = run_restore(env="dock")

    assert state.is_completed(), state.message
    assert _container_checksums(container) == backed_up
    aside = report.databases[0].aside
    assert aside.startswith("app_before_") and _container_checksums(container, aside) == changed

    state = dr_drill(env="dock", requested_by="tester", return_state=True)
    assert state.is_completed(), state.message
    [drill] = lab.ledger().drills(env="dock")
    assert drill.outcome == "passed" and drill.rto_seconds > 0
    names = container_sql(container, "postgres", "select string_agg(datname, ',') from pg_database")
    assert not [n for n in names.split(",") if "_drill_" in n or "_restore_" in n], names


# --- identity and pre-checks ------------------------------------------------------------------


def catalogue_rdb_named(lab: RestoreLab, name: str, after: BackupRow) -> BackupRow:
    """A genuine Redis RDB backup named like the database (its object, sidecar and manifest in
    the store, its catalog row newer than ``after``), as a Redis target of that name left it."""
    store = open_store(BackupStore(url=f"file://{lab.store_dir}"))
    when = (after.created_at + timedelta(minutes=5)).replace(tzinfo=UTC)
    key = backup_key(after.env, name, when, "rdb.zst")
    rdb = b"REDIS0011" + b"\xfa\x09redis-ver\x057.2.4" + b"\xfe\x00\xfb\x00\x00\xff" + bytes(8)
    stored = store.put_stream(key, [zstandard.ZstdCompressor().compress(rdb)])
    store.put_json(manifest_key(key), {"key": key, "kind": "redis"})
    assert stored.sha256 is not None
    return lab.ledger().record_backup(
        env=after.env,
        database=name,
        kind="redis",
        store_url=after.store_url,
        key=key,
        bytes=stored.size,
        sha256=stored.sha256,
        status="complete",
        created_at=when.replace(tzinfo=None),
        details={"via": "direct", "codec": "zstd", "row_counts": {"db0": 3}},
    )


def test_drop_recreate_restores_the_database_s_own_backup_not_a_same_named_rdb(
    restore_lab: RestoreLab,
) -> None:
    """The finding: backups were grouped by name regardless of kind, so drop-recreate took the
    newer RDB file of a Redis target named `main`, verified it (a genuine object), dropped the
    live database and then failed to load the RDB into it."""
    lab = restore_lab
    backed_up = lab.checksums()
    row = take_backup(lab)
    rdb = catalogue_rdb_named(lab, "main", after=row)
    lab.change_data()

    state, report = run_restore(env="lab", database="main", mode="drop-recreate")

    assert state.is_completed(), state.message
    [outcome] = report.databases
    assert (outcome.backup_id, outcome.key) == (row.backup_id, row.key)
    assert outcome.backup_id != rdb.backup_id
    assert lab.checksums() == backed_up
    run = lab.ledger().runs(env="lab", runbook="restore")[0]
    verified = [s for s in lab.ledger().steps(run.flow_run_id) if s.step == "verify_backup"]
    assert [s.target for s in verified] == [row.key]


def break_behind_the_catalog(lab: RestoreLab, missing: BackupRow, other: BackupRow) -> None:
    """``missing``'s object is gone; ``other``'s checksum file no longer matches the catalog."""
    (lab.store_dir / missing.key).unlink()
    (lab.store_dir / f"{missing.key}.sha256").unlink()
    (lab.store_dir / f"{other.key}.sha256").write_text(f"{'e' * 64}  x\n")


def test_a_missing_or_different_object_fails_before_anything_is_scaled(
    restore_lab: RestoreLab, kube_cluster: KubeCluster
) -> None:
    lab = restore_lab
    lab.write_inventory(kubernetes_entry(kube_cluster))
    take_backup(lab)
    rows = {r.database: r for r in lab.ledger().backups(env="lab")}
    break_behind_the_catalog(lab, rows["main"], rows["appdb"])
    lab.change_data()
    changed = lab.checksums()
    path = f"/apis/apps/v1/namespaces/{kube_cluster.namespace}/deployments/app"

    with kube_cluster.controller:
        state, report = run_restore(env="lab")

    assert state.is_failed()
    run = lab.ledger().runs(env="lab", runbook="restore")[0]
    assert run.status == "failed" and "is not the catalogued one" in run.summary
    assert lab.ledger().steps(run.flow_run_id) == []  # nothing was done: no scaling, no restore
    dep = kube_cluster.api.get(path)
    assert dep is not None and dep["spec"]["replicas"] == 4  # never scaled
    assert not (dep["metadata"].get("annotations") or {}).get("opsflow.io/replicas-before-restore")
    assert report.scaled == "" and report.databases == []
    main_error, app_error = report.errors  # both reported at once
    assert f"backup {rows['main'].backup_id} of postgres 'main' is not in the store" in main_error
    assert "is not the catalogued one" in app_error and "e" * 64 in app_error
    assert all("Nothing was changed" in e for e in report.errors)
    assert lab.checksums() == changed and lab.databases() == [lab.dbname]


# --- approvals, through the CLI and the Prefect REST API ------------------------------------


class CliRestore:
    """`opsflow run restore --env gated --as alice` in a child process."""

    def __init__(self, lab: RestoreLab, timeout: int) -> None:
        self.lab = lab
        self.proc = subprocess.Popen(
            [
                *OPSFLOW,
                "run",
                "restore",
                "--env",
                "gated",
                "--as",
                "alice",
                "--param",
                "database=main",
                "--param",
                f"approval_timeout_seconds={timeout}",
            ],
            cwd=REPO,
            env=lab.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def paused_run(self) -> str:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"restore exited early:\n{self.proc.stdout.read()}")  # type: ignore[union-attr]
            response = api_post(
                f"{self.lab.api}/flow_runs/filter",
                json={
                    "flows": {"name": {"any_": ["restore"]}},
                    "flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}},
                },
                timeout=10,
            )
            response.raise_for_status()
            if response.json():
                return str(response.json()[0]["id"])
            time.sleep(0.5)
        raise AssertionError("the restore never paused for approval")

    def finish(self) -> tuple[int, str]:
        out, _ = self.proc.communicate(timeout=180)
        return self.proc.returncode, out

    def events(self, run_id: str) -> list[str]:
        return [e.event for e in self.lab.ledger().approval_events(run_id)]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_protected_restore_times_out_without_approval_and_changes_nothing(
    restore_lab: RestoreLab,
) -> None:
    lab = restore_lab
    take_backup(lab, env="gated")
    lab.change_data()
    changed = lab.checksums()
    cli = CliRestore(lab, timeout=5)
    try:
        run_id = cli.paused_run()
        code, out = cli.finish()
    finally:
        cli.kill()
    assert code == 3, out  # EXIT_REJECTED
    assert "no valid approval" in out and "Nothing was changed" in out, out
    assert cli.events(run_id) == ["requested", "timed_out"]
    assert lab.checksums() == changed
    assert lab.databases() == [lab.dbname]
    assert lab.ledger().runs(env="gated", runbook="restore")[0].status == "rejected"


def test_protected_restore_refuses_self_approval_then_proceeds_on_a_valid_one(
    restore_lab: RestoreLab,
) -> None:
    lab = restore_lab
    backed_up = lab.checksums()
    take_backup(lab, env="gated")
    lab.change_data()
    changed = lab.checksums()
    cli = CliRestore(lab, timeout=120)
    try:
        run_id = cli.paused_run()
        codes = Authenticator(lab.ledger_url)
        # the requester herself, with her own valid code
        codes.answer(lab.api, run_id, "alice", "I am sure")
        wait_until(lambda: "refused" in cli.events(run_id), "the refusal")
        [refusal] = [e for e in lab.ledger().approval_events(run_id) if e.event == "refused"]
        assert (refusal.actor, "four-eyes" in refusal.reason) == ("alice", True), refusal.reason
        assert cli.proc.poll() is None, "a refused answer must leave the run waiting"
        assert lab.checksums() == changed  # nothing touched while waiting
        wait_until(
            lambda: (
                api_get(f"{lab.api}/flow_runs/{run_id}", timeout=10).json()["state"]["type"]
                == "PAUSED"
            ),
            "the run to pause again",
        )
        codes.answer(lab.api, run_id, "bob", "CHG-42 restore after bad migration")
        code, out = cli.finish()
    finally:
        cli.kill()
    assert code == 0, out
    assert cli.events(run_id) == ["requested", "refused", "approved"]
    assert lab.checksums() == backed_up
    decision = lab.ledger().approval_events(run_id)[-1]
    assert (decision.actor, decision.reason) == ("bob", "CHG-42 restore after bad migration")


def test_protected_restore_of_a_missing_backup_fails_before_asking_for_approval(
    restore_lab: RestoreLab,
) -> None:
    lab = restore_lab
    take_backup(lab, env="gated")
    rows = {r.database: r for r in lab.ledger().backups(env="gated")}
    break_behind_the_catalog(lab, rows["main"], rows["appdb"])
    lab.change_data()
    changed = lab.checksums()
    cli = CliRestore(lab, timeout=30)
    try:
        code, out = cli.finish()
    finally:
        cli.kill()
    assert code == 1, out  # failed, not rejected or timed out: no approval was asked
    assert "is not in the store" in " ".join(out.split()), out
    run = lab.ledger().runs(env="gated", runbook="restore")[0]
    assert run.status == "failed"
    assert lab.ledger().approval_events(run.flow_run_id) == []
    assert lab.ledger().steps(run.flow_run_id) == []
    assert lab.ledger().pending_approval(run.flow_run_id) is None
    assert lab.checksums() == changed
