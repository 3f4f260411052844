"""The on-call CLI (issue 10) against a real Prefect server with `opsflow up` serving
prefect.yaml: `opsflow run` goes through the deployment and streams the run's step lines,
--local and the nothing-serves fallback run in the CLI's process, Ctrl-C detaches from a
waiting run, `opsflow logs` follows it again and `opsflow cancel` cancels it; a failing health
check prints one line per check and no traceback."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fixtures.e2e_env import REPO, Workspace, run_cli, take_backup
from tests.support.cli import OPSFLOW
from tests.support.prefect_api import api_get

pytestmark = pytest.mark.e2e
RUN_ID = re.compile(r": run ([0-9a-f-]{36}) of deployment")
CHECK_LINES = {
    "endpoint prefect-api: healthy",
    "sqlite appdb: healthy",
    "backup_freshness appdb: healthy",
}


def flow_run(api: str, run_id: str) -> dict[str, Any]:
    response = api_get(f"{api}/flow_runs/{run_id}", timeout=10)
    response.raise_for_status()
    return dict(response.json())


def deployment(api: str, name: str) -> dict[str, Any]:
    response = api_get(f"{api}/deployments/name/{name}", timeout=10)
    response.raise_for_status()
    return dict(response.json())


def newest_run_id(ws: Workspace, env: str, runbook: str) -> str:
    return str(ws.ledger().runs(env=env, runbook=runbook, limit=1)[0].flow_run_id)


def starts_of(lines: list[str], prefix: str) -> list[str]:
    return [line for line in lines if line.startswith(prefix)]


def test_run_goes_through_the_served_deployment_and_streams_its_steps(
    served: subprocess.Popen[bytes], e2e_workspace: Workspace, prefect_api: str
) -> None:
    result = run_cli(e2e_workspace.env, "run", "health-check", "--env", "e2e")
    assert result.returncode == 0, result.stdout + result.stderr
    found = RUN_ID.search(result.stderr)
    assert found, result.stderr
    run = flow_run(prefect_api, found.group(1))
    assert run["deployment_id"] == deployment(prefect_api, "health-check/daily")["id"]
    assert run["state"]["type"] == "COMPLETED"
    lines = result.stderr.splitlines()
    for check in CHECK_LINES:  # one line per check, as it finished on the runner
        assert len(starts_of(lines, check)) == 1, result.stderr
    assert not [line for line in lines if line.endswith(": started")], result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "Completed" in result.stdout
    assert newest_run_id(e2e_workspace, "e2e", "health-check") == found.group(1)


def test_json_of_a_served_run_is_its_report(
    served: subprocess.Popen[bytes], e2e_workspace: Workspace, prefect_api: str
) -> None:
    result = run_cli(e2e_workspace.env, "run", "health-check", "--env", "e2e", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["overall"] == "healthy"
    assert {r["check"] for r in report["results"]} >= {"endpoint", "sqlite", "backup_freshness"}
    run = flow_run(prefect_api, newest_run_id(e2e_workspace, "e2e", "health-check"))
    assert run["deployment_id"] is not None


def test_failing_health_check_through_the_deployment_exits_1_one_line_per_check(
    served: subprocess.Popen[bytes], e2e_workspace: Workspace
) -> None:
    result = run_cli(e2e_workspace.env, "run", "health-check", "--env", "broken")
    assert result.returncode == 1, result.stdout + result.stderr
    assert RUN_ID.search(result.stderr), result.stderr
    lines = result.stderr.splitlines()
    assert len(starts_of(lines, "endpoint nothing-here: critical")) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_failing_health_check_in_process_prints_no_traceback(
    e2e_workspace: Workspace, prefect_api: str
) -> None:
    result = run_cli(e2e_workspace.env, "run", "health-check", "--env", "broken", "--local")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "in this process" in result.stderr
    lines = result.stderr.splitlines()
    assert len(starts_of(lines, "endpoint nothing-here: critical")) == 1, result.stderr
    assert len(starts_of(lines, "disk ")) == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "Failed to send telemetry" not in result.stderr
    assert "nothing-here" in result.stdout  # the final table


def test_local_runs_in_the_cli_process_even_when_served(
    served: subprocess.Popen[bytes], e2e_workspace: Workspace, prefect_api: str
) -> None:
    result = run_cli(e2e_workspace.env, "run", "health-check", "--env", "e2e", "--local")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "in this process" in result.stderr and not RUN_ID.search(result.stderr)
    run = flow_run(prefect_api, newest_run_id(e2e_workspace, "e2e", "health-check"))
    assert run["deployment_id"] is None
    assert run["state"]["type"] == "COMPLETED"


@pytest.fixture
def paused_daily(served: subprocess.Popen[bytes], prefect_api: str) -> Iterator[str]:
    """health-check/daily paused: a deployment nothing serves (the runner ignores it)."""
    dep = deployment(prefect_api, "health-check/daily")
    httpx.patch(f"{prefect_api}/deployments/{dep['id']}", json={"paused": True}, timeout=10)
    try:
        yield str(dep["id"])
    finally:
        httpx.patch(f"{prefect_api}/deployments/{dep['id']}", json={"paused": False}, timeout=10)


def test_nothing_serves_falls_back_to_this_process_with_a_note(
    paused_daily: str, e2e_workspace: Workspace, prefect_api: str
) -> None:
    result = run_cli(e2e_workspace.env, "run", "health-check", "--env", "e2e")
    assert result.returncode == 0, result.stdout + result.stderr
    [note] = starts_of(result.stderr.splitlines(), "note: nothing serves health-check/daily")
    assert "running in this process" in note
    run = flow_run(prefect_api, newest_run_id(e2e_workspace, "e2e", "health-check"))
    assert run["deployment_id"] is None and run["state"]["type"] == "COMPLETED"


def _wait_for(predicate: Any, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def test_detach_then_logs_then_cancel_a_run_waiting_for_approval(
    served: subprocess.Popen[bytes], e2e_workspace: Workspace, prefect_api: str
) -> None:
    ws = e2e_workspace
    take_backup(ws, "gated")  # a restore of the protected environment needs a backup
    log_path = ws.root / "detach.log"
    with log_path.open("wb") as log:
        cli = subprocess.Popen(
            [*OPSFLOW, "run", "restore", "--env", "gated", "--as", "alice"],
            cwd=REPO,
            env=ws.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_for(lambda: "waiting for approval" in log_path.read_text(), "the approval wait")
        text = log_path.read_text()
        found = RUN_ID.search(text)
        assert found, text
        run_id = found.group(1)
        assert flow_run(prefect_api, run_id)["state"]["type"] == "PAUSED"
        assert "one of alice, bob" in text and f"opsflow approve {run_id}" in text, text
        cli.send_signal(signal.SIGINT)  # Ctrl-C: detach
        assert cli.wait(timeout=30) == 130
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
    text = log_path.read_text()
    assert f"opsflow logs {run_id}" in text and f"opsflow cancel {run_id}" in text, text
    assert "Traceback" not in text
    assert flow_run(prefect_api, run_id)["state"]["type"] == "PAUSED"  # it goes on

    shown = run_cli(ws.env, "logs", run_id, "--no-follow")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "waiting for approval" in shown.stderr and "Paused" in shown.stdout

    cancelled = run_cli(ws.env, "cancel", run_id)
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    assert flow_run(prefect_api, run_id)["state"]["type"] == "CANCELLED"
    again = run_cli(ws.env, "cancel", run_id)
    assert again.returncode == 2 and "already ended" in again.stderr, again.stderr
    followed = run_cli(ws.env, "logs", run_id)  # follows to the end: a cancelled run failed
    assert followed.returncode == 1, followed.stdout + followed.stderr
    assert "Cancelled" in followed.stdout


def test_no_server_configured_starts_one_home_server_reused_then_stopped_by_down(
    e2e_workspace: Workspace, tmp_path: Path
) -> None:
    env = {k: v for k, v in e2e_workspace.env.items() if k != "PREFECT_API_URL"}
    env["OPSFLOW_HOME"] = str(tmp_path / "home")  # its own home: its own ledger and key
    env["OPSFLOW_LEDGER_URL"] = f"sqlite:///{tmp_path / 'home' / 'ledger.db'}"
    record = tmp_path / "home" / "prefect-home" / "server.json"
    try:
        first = run_cli(env, "run", "health-check", "--env", "local", "--local")
        assert first.returncode == 0, first.stdout + first.stderr
        assert "no Prefect server configured: started one" in first.stderr, first.stderr
        server = json.loads(record.read_text())
        assert api_get(f"{server['api']}/health", timeout=10).status_code == 200
        second = run_cli(env, "run", "health-check", "--env", "local", "--local")
        assert second.returncode == 0, second.stdout + second.stderr
        assert "started one" not in second.stderr  # the same server, found again
        assert json.loads(record.read_text()) == server
    finally:
        down = run_cli(env, "down")
    assert down.returncode == 0 and "stopped the Prefect server" in down.stdout, down.stdout
    assert not record.exists()
    with pytest.raises(httpx.ConnectError):  # nothing listens there any more
        api_get(f"{server['api']}/health", timeout=10)


def test_bad_input_to_a_served_runbook_is_exit_2_naming_the_field_and_changes_nothing(
    served: subprocess.Popen[bytes], e2e_workspace: Workspace, prefect_api: str
) -> None:
    """The terminal does not import the runbook for a served run: the deployment's schema
    refuses a bad value before a run exists, the runbook's plan refuses the rest where it runs,
    before any ledger row; both are exit 2 with the field named and no traceback."""
    ledger = e2e_workspace.ledger()
    runs_before = len(ledger.runs(limit=1000))
    result = run_cli(e2e_workspace.env, "run", "backup", "--env", "e2e", "-p", "wait_for_lock=-1")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "wait_for_lock" in result.stderr and "Traceback" not in result.stderr
    assert RUN_ID.search(result.stderr) is None  # no run was created

    result = run_cli(e2e_workspace.env, "run", "restore", "--env", "e2e", "-p", "database=nope")
    assert result.returncode == 2, result.stdout + result.stderr
    found = RUN_ID.search(result.stderr)
    assert found, result.stderr  # it went through the deployment
    assert "database" in result.stderr and "nope" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert flow_run(prefect_api, found.group(1))["state"]["type"] == "FAILED"
    assert len(ledger.runs(limit=1000)) == runs_before  # nothing recorded, nothing changed
    assert ledger.steps(found.group(1)) == []


def test_bad_input_with_no_server_configured_leaves_no_home_server_behind(
    e2e_workspace: Workspace, tmp_path: Path
) -> None:
    """The home server is started before the parameters are checked (it comes up while the
    runbook is imported); bad input stops it again and removes what it made."""
    env = {k: v for k, v in e2e_workspace.env.items() if k != "PREFECT_API_URL"}
    env["OPSFLOW_HOME"] = str(tmp_path / "home")
    env["OPSFLOW_LEDGER_URL"] = f"sqlite:///{tmp_path / 'home' / 'ledger.db'}"
    result = run_cli(env, "run", "backup", "--env", "local", "--local", "-p", "codec=lz4")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "codec" in result.stderr and "Traceback" not in result.stderr
    assert "started one" not in result.stderr
    assert not (tmp_path / "home" / "prefect-home").exists()
    assert processes_with_env(f"PREFECT_HOME={tmp_path}") == []  # the server was stopped


def processes_with_env(entry: str) -> list[int]:
    """Pids of the live processes whose environment holds ``entry`` (a prefix of NAME=value)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            values = environ.read_bytes().split(b"\0")
        except OSError:  # gone, or not ours
            continue
        if any(v.startswith(entry.encode()) for v in values):
            found.append(int(environ.parent.name))
    return found
