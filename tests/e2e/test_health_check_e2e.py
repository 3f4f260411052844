"""The daily health check end to end: a real Prefect server, `opsflow up` serving prefect.yaml,
runs triggered by the opsflow CLI, by `prefect deployment run` and by the REST API, and the
report artifacts and ledger rows read back."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from typing import Any

import pytest
import zstandard

from opsflow import catalog
from opsflow.catalog import CatalogEntry
from tests.fixtures.e2e_env import E2E_ROWS, REPO, Workspace, sha256_of
from tests.support.cli import OPSFLOW
from tests.support.prefect_api import api_get, api_post

pytestmark = pytest.mark.e2e
TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def opsflow(ws: Workspace, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*OPSFLOW, *args],
        cwd=REPO,
        env=ws.env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_for_run(api: str, run_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = api_get(f"{api}/flow_runs/{run_id}", timeout=10).json()
        if run["state"]["type"] in TERMINAL:
            return dict(run)
        time.sleep(1)
    raise AssertionError(f"flow run {run_id} did not finish within {timeout}s: {run['state']}")


def artifacts(api: str, key: str) -> list[dict[str, Any]]:
    response = api_post(
        f"{api}/artifacts/filter",
        json={"artifacts": {"key": {"any_": [key]}}, "sort": "CREATED_DESC"},
        timeout=10,
    )
    response.raise_for_status()
    return list(response.json())


def deployment_id(api: str, flow_name: str, name: str) -> str:
    response = api_get(f"{api}/deployments/name/{flow_name}/{name}", timeout=10)
    response.raise_for_status()
    return str(response.json()["id"])


def expected_checks(ws: Workspace) -> set[tuple[str, str]]:
    """(check, target) of every check the e2e inventory asks for: one endpoint, one SQLite
    database, one disk, and the backup freshness of that database."""
    return {
        ("endpoint", "prefect-api"),
        ("sqlite", "appdb"),
        ("disk", str(ws.root)),
        ("backup_freshness", "appdb"),
    }


def the_backup(ws: Workspace) -> CatalogEntry:
    """The e2e environment's one catalogued backup (taken by `opsflow run backup`)."""
    [entry] = catalog.fold(ws.ledger().backups(env="e2e"))
    return entry


def requester_of(ws: Workspace, run_id: str) -> str:
    [run] = [r for r in ws.ledger().runs(env="e2e") if r.flow_run_id == run_id]
    return run.triggered_by


def assert_recorded(ws: Workspace, api: str, run_id: str) -> None:
    runs = [r for r in ws.ledger().runs(env="e2e") if r.flow_run_id == run_id]
    assert len(runs) == 1 and runs[0].status == "healthy", runs
    assert runs[0].runbook == "health-check", runs[0]
    steps = ws.ledger().steps(run_id)
    assert sorted((s.step, s.target) for s in steps) == sorted(expected_checks(ws)), [
        (s.step, s.target) for s in steps
    ]
    assert all(s.status == "healthy" for s in steps), [(s.step, s.summary) for s in steps]
    # the freshness check graded the real backup, not some other row
    [fresh] = [s for s in steps if s.step == "backup_freshness"]
    backup = the_backup(ws)
    assert fresh.details["backup_id"] == backup.backup_id, fresh.details
    assert fresh.details["key"] == backup.key and fresh.details["bytes"] == backup.bytes
    assert backup.backup_id in fresh.summary, fresh.summary
    report = [a for a in artifacts(api, "health-check-e2e") if a["flow_run_id"] == run_id]
    assert len(report) == 1 and "HEALTHY" in report[0]["data"], report
    table = [a for a in artifacts(api, "health-check-e2e-checks") if a["flow_run_id"] == run_id]
    assert len(table) == 1 and table[0]["type"] == "table", table
    rows = json.loads(table[0]["data"])
    assert len(rows) == len(expected_checks(ws)), rows


def test_the_e2e_backup_is_real_and_matches_its_catalog_row(e2e_workspace: Workspace) -> None:
    """The backup the health check relies on was taken by the backup runbook: its object is in
    the store with the catalogued size and sha256, has a manifest, and holds the database."""
    ws = e2e_workspace
    backup = the_backup(ws)
    assert (backup.database, backup.kind, backup.status) == ("appdb", "sqlite", "complete")
    assert backup.store_url == f"file://{ws.store}" and backup.flow_run_id, backup
    [run] = ws.ledger().runs(env="e2e", runbook="backup")
    assert run.flow_run_id == backup.flow_run_id and run.status == "complete", run
    obj = ws.store / backup.key
    assert obj.is_file(), sorted(str(p) for p in ws.store.rglob("*"))
    assert obj.stat().st_size == backup.bytes
    assert sha256_of(obj) == backup.sha256
    manifests = list(obj.parent.glob("*.manifest.json"))
    assert len(manifests) == 1 and backup.sha256 in manifests[0].read_text(), manifests
    # the object is the database: decompress it and read the rows back
    copy = ws.root / "appdb-from-backup.db"
    with obj.open("rb") as src, copy.open("wb") as dst:
        zstandard.ZstdDecompressor().copy_stream(src, dst)
    try:
        with closing(sqlite3.connect(copy)) as conn:
            assert conn.execute("select x from t order by x").fetchall() == E2E_ROWS
    finally:
        copy.unlink()


def test_cli_run_is_recorded_with_report_and_ledger(
    e2e_workspace: Workspace, prefect_api: str
) -> None:
    result = opsflow(e2e_workspace, "run", "health-check", "--env", "e2e", "--json")
    assert result.returncode == 0, result.stderr + result.stdout
    report = json.loads(result.stdout)
    assert report["overall"] == "healthy"
    checks = {(r["check"], r["target"], r["status"]) for r in report["results"]}
    assert checks == {(c, t, "healthy") for c, t in expected_checks(e2e_workspace)}, checks
    assert len(report["results"]) == len(checks)
    newest = e2e_workspace.ledger().runs(env="e2e", runbook="health-check", limit=1)[0]
    assert_recorded(e2e_workspace, prefect_api, newest.flow_run_id)
    assert e2e_workspace.ledger().verify().ok


def test_cli_run_on_broken_env_exits_1_and_names_the_problem(e2e_workspace: Workspace) -> None:
    result = opsflow(e2e_workspace, "run", "health-check", "--env", "broken")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "critical" in result.stdout.lower()
    assert "nothing-here" in result.stdout


def test_cli_unknown_env_is_bad_input_before_any_run(e2e_workspace: Workspace) -> None:
    before = len(e2e_workspace.ledger().runs(limit=1000))
    result = opsflow(e2e_workspace, "run", "health-check", "--env", "e2ee")
    assert result.returncode == 2
    assert "unknown environment 'e2ee'" in result.stderr and "did you mean 'e2e'" in result.stderr
    assert len(e2e_workspace.ledger().runs(limit=1000)) == before


def test_dry_run_publishes_plan_only(e2e_workspace: Workspace, prefect_api: str) -> None:
    before = len(e2e_workspace.ledger().runs(limit=1000))
    result = opsflow(e2e_workspace, "run", "health-check", "--env", "e2e", "--dry-run", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["dry_run"] is True
    plan = artifacts(prefect_api, "health-check-e2e-plan")
    assert plan and "check_endpoint" in plan[0]["data"]
    assert len(e2e_workspace.ledger().runs(limit=1000)) == before


def test_served_deployment_runs_via_prefect_cli(
    served: subprocess.Popen[bytes], e2e_workspace: Workspace, prefect_api: str
) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "prefect",
            "deployment",
            "run",
            "health-check/daily",
            "--param",
            "env=e2e",
            "--param",
            "requested_by=e2e-tester",  # a deployment run must say who asks
        ],
        env={**e2e_workspace.env, "PREFECT_API_URL": prefect_api},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    match = re.search(r"UUID: ([0-9a-f-]{36})", result.stdout)
    assert match, result.stdout
    run = wait_for_run(prefect_api, match.group(1))
    assert run["state"]["type"] == "COMPLETED", run["state"]
    assert_recorded(e2e_workspace, prefect_api, match.group(1))
    assert requester_of(e2e_workspace, match.group(1)) == "e2e-tester"


def test_served_deployment_runs_via_rest_api(
    served: subprocess.Popen[bytes], e2e_workspace: Workspace, prefect_api: str
) -> None:
    dep = deployment_id(prefect_api, "health-check", "daily")
    response = api_post(
        f"{prefect_api}/deployments/{dep}/create_flow_run",
        json={"parameters": {"env": "e2e", "requested_by": "e2e-tester"}},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    run = wait_for_run(prefect_api, response.json()["id"])
    assert run["state"]["type"] == "COMPLETED", run["state"]
    assert_recorded(e2e_workspace, prefect_api, run["id"])
    assert requester_of(e2e_workspace, run["id"]) == "e2e-tester"


def test_served_deployment_has_schedule_and_env_choice(
    served: subprocess.Popen[bytes], prefect_api: str
) -> None:
    dep = api_get(f"{prefect_api}/deployments/name/health-check/daily", timeout=10).json()
    crons = [s["schedule"]["cron"] for s in dep["schedules"]]
    assert crons == ["0 9 * * *"]
    # the schedule's runs are requested by `scheduler`; the deployment itself names nobody
    assert [s["parameters"] for s in dep["schedules"]] == [{"requested_by": "scheduler"}]
    assert "requested_by" not in dep["parameters"]
    env_schema = dep["parameter_openapi_schema"]["properties"]["env"]
    assert env_schema["enum"] == ["broken", "e2e", "gated", "local", "quorum"]
    # the server refuses an environment that is not in the inventory, before any run starts
    response = api_post(
        f"{prefect_api}/deployments/{dep['id']}/create_flow_run",
        json={"parameters": {"env": "nowhere", "requested_by": "e2e-tester"}},
        timeout=30,
    )
    assert response.status_code in (409, 422), response.text
