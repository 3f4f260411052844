"""Approvals end to end: a flow pauses on a protected environment; answers arrive through the
REST API and the opsflow CLI as a second identity; self-approval is refused; rejection and
timeout change nothing; every decision is in the ledger.

Rejection, timeout and their control (an approval) drive the real CLI, `opsflow run restore
--env gated`, against the real restore runbook: the exit code checked is that of the CLI
process, and "nothing changed" is the protected database's file, rows and ledger steps."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_health_check_e2e import opsflow
from tests.fixtures.e2e_env import REPO, VAULT_ROWS, Workspace, sha256_of, take_backup
from tests.fixtures.http_targets import WebhookReceiver
from tests.support.cli import OPSFLOW

pytestmark = pytest.mark.e2e


class GatedRun:
    def __init__(self, ws: Workspace, api: str, marker: Path, timeout: int = 120) -> None:
        self.marker = marker
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.gated_flow",
                "--env",
                "gated",
                "--requested-by",
                "alice",
                "--marker",
                str(marker),
                "--timeout",
                str(timeout),
            ],
            cwd=REPO,
            env={**ws.env, "PREFECT_API_URL": api},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.ws = ws
        self.run_id = self._wait_paused(api)

    def _wait_paused(self, api: str) -> str:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"gated flow exited early:\n{self.proc.stdout.read()}")  # type: ignore[union-attr]
            response = httpx.post(
                f"{api}/flow_runs/filter",
                json={
                    "flows": {"name": {"any_": ["approval-probe"]}},
                    "flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}},
                },
                timeout=10,
            )
            response.raise_for_status()
            mine = [r for r in response.json() if r["parameters"].get("marker") == str(self.marker)]
            if mine:
                return str(mine[0]["id"])
            time.sleep(0.5)
        raise AssertionError("the gated flow never paused for approval")

    def stop(self, api: str) -> None:
        """Kill the flow process if it still runs, and cancel its run on the server."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            httpx.post(
                f"{api}/flow_runs/{self.run_id}/set_state",
                json={"state": {"type": "CANCELLED"}, "force": True},
                timeout=10,
            )

    def finish(self) -> tuple[int, str]:
        out, _ = self.proc.communicate(timeout=120)
        return self.proc.returncode, out

    def events(self) -> list[str]:
        return [e.event for e in self.ws.ledger().approval_events(self.run_id)]


@pytest.fixture
def gated(e2e_workspace: Workspace, prefect_api: str, tmp_path: Path) -> Iterator[GatedRun]:
    run = GatedRun(e2e_workspace, prefect_api, tmp_path / "marker")
    yield run
    run.stop(prefect_api)


def resume(api: str, run_id: str, approved: bool, approver: str, reason: str) -> dict[str, object]:
    response = httpx.post(
        f"{api}/flow_runs/{run_id}/resume",
        json={"run_input": {"approved": approved, "approver": approver, "reason": reason}},
        timeout=30,
    )
    assert response.status_code in (200, 201), response.text
    return dict(response.json())


def run_state(api: str, run_id: str) -> str:
    return str(httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()["state"]["type"])


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_approved_through_api_by_second_identity(
    gated: GatedRun, prefect_api: str, webhook_receiver_server: WebhookReceiver
) -> None:
    assert gated.events() == ["requested"]
    asked = [m["body"] for m in webhook_receiver_server.received if gated.run_id in str(m["body"])]
    assert asked and "approval needed" in asked[0]["subject"], webhook_receiver_server.received
    assert not gated.marker.exists()
    body = resume(prefect_api, gated.run_id, True, "bob", "CHG-1234 reviewed")
    assert body["status"] == "ACCEPT", body
    code, out = gated.finish()
    assert code == 0, out
    assert gated.marker.read_text() == "changed"
    assert gated.events() == ["requested", "approved"]
    decision = gated.ws.ledger().approval_events(gated.run_id)[-1]
    assert (decision.actor, decision.reason) == ("bob", "CHG-1234 reviewed")


class CliRestore:
    """The real `opsflow run restore --env gated --as alice --param database=vault` CLI in a
    child process: a restore of the protected environment's SQLite database, which pauses for
    an approval before it touches anything."""

    def __init__(self, ws: Workspace, api: str, out_dir: Path, approval_timeout: int) -> None:
        self.ws = ws
        self.api = api
        self.known = set(restore_run_ids(api))
        self.stdout_path, self.stderr_path = out_dir / "stdout.txt", out_dir / "stderr.txt"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
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
                    "database=vault",
                    "--param",
                    f"approval_timeout_seconds={approval_timeout}",
                ],
                cwd=REPO,
                env={**ws.env, "PREFECT_API_URL": api},
                stdout=out,
                stderr=err,
            )

    def paused_run(self) -> str:
        """The id of this restore's flow run once it is paused for approval."""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the restore CLI exited early:\n{self.output()}")
            paused = set(restore_run_ids(self.api, "PAUSED")) - self.known
            if paused:
                assert len(paused) == 1, paused
                return paused.pop()
            time.sleep(0.5)
        raise AssertionError(f"the restore never paused for approval:\n{self.output()}")

    def finish(self) -> tuple[int, str]:
        """Wait for the CLI process to exit; return its own exit code and its stderr."""
        code = self.proc.wait(timeout=180)
        return code, self.stderr_path.read_text()

    def output(self) -> str:
        return self.stdout_path.read_text() + self.stderr_path.read_text()

    def new_run(self) -> str:
        """The one restore flow run this CLI process created (any state)."""
        [run_id] = set(restore_run_ids(self.api)) - self.known
        return run_id

    def events(self, run_id: str) -> list[str]:
        return [e.event for e in self.ws.ledger().approval_events(run_id)]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def restore_run_ids(api: str, state: str | None = None) -> list[str]:
    query: dict[str, Any] = {"flows": {"name": {"any_": ["restore"]}}}
    if state:
        query["flow_runs"] = {"state": {"type": {"any_": [state]}}}
    response = httpx.post(f"{api}/flow_runs/filter", json=query, timeout=10)
    response.raise_for_status()
    return [str(r["id"]) for r in response.json() if r["parameters"].get("env") == "gated"]


def vault_rows(ws: Workspace) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(ws.vault_db)) as conn:
        return list(conn.execute("select id, owner, balance from accounts order by id"))


def vault_files(ws: Workspace) -> list[str]:
    """The vault database and whatever a restore leaves next to it (temp file, old copy)."""
    return sorted(p.name for p in ws.root.iterdir() if "vault" in p.name)


def damage_vault(ws: Workspace) -> None:
    """What an accident does after the backup: rows gone, balances changed."""
    with closing(sqlite3.connect(ws.vault_db)) as conn, conn:
        conn.execute("delete from accounts where id > 40")
        conn.execute("update accounts set balance = balance + 7 where id <= 10")


@pytest.fixture
def backed_up_vault(e2e_workspace: Workspace) -> Iterator[dict[str, Any]]:
    """A fresh backup of the gated environment by `opsflow run backup --env gated`, then the
    vault damaged; yields the backup and the rows it holds. Restores the seed rows after."""
    ws = e2e_workspace
    backup = take_backup(ws, "gated")
    backed_up = vault_rows(ws)
    damage_vault(ws)
    assert vault_rows(ws) != backed_up
    yield {"backup": backup, "rows": backed_up}
    for leftover in ws.root.glob("vault.db.before-*"):
        leftover.unlink()
    with closing(sqlite3.connect(ws.vault_db)) as conn, conn:
        conn.execute("delete from accounts")
        conn.executemany("insert into accounts values (?, ?, ?)", VAULT_ROWS)


def assert_restore_changed_nothing(
    ws: Workspace, run_id: str, digest: str, rows: list[tuple[Any, ...]], files: list[str]
) -> None:
    assert sha256_of(ws.vault_db) == digest, "the vault database file was changed"
    assert vault_rows(ws) == rows
    assert vault_files(ws) == files, "a restore left files next to the database"
    assert ws.ledger().steps(run_id) == [], [(s.step, s.status) for s in ws.ledger().steps(run_id)]
    [run] = [r for r in ws.ledger().runs(env="gated", runbook="restore") if r.flow_run_id == run_id]
    assert run.status == "rejected", run


def test_protected_restore_refuses_self_approval_then_rejected_cli_exits_3_changes_nothing(
    e2e_workspace: Workspace,
    prefect_api: str,
    backed_up_vault: dict[str, Any],
    webhook_receiver: WebhookReceiver,
    tmp_path: Path,
) -> None:
    ws = e2e_workspace
    digest, rows, files = sha256_of(ws.vault_db), vault_rows(ws), vault_files(ws)
    cli = CliRestore(ws, prefect_api, tmp_path, approval_timeout=120)
    try:
        run_id = cli.paused_run()
        assert cli.events(run_id) == ["requested"]
        asked = [m["body"] for m in webhook_receiver.received if run_id in str(m["body"])]
        assert len(asked) == 1 and "approval needed for restore on gated" in asked[0]["subject"]
        assert backed_up_vault["backup"]["backup_id"] in asked[0]["body"], asked[0]["body"]
        resume(prefect_api, run_id, True, "alice", "I am sure")  # the requester herself
        wait_until(lambda: "refused" in cli.events(run_id), "the refusal")
        assert cli.proc.poll() is None, "a refused answer must leave the run waiting"
        # the CLI refuses the same self-approval up front, with exit code 2
        answer = opsflow(ws, "approve", run_id, "--as", "alice", "--reason", "me")
        assert answer.returncode == 2 and "four-eyes" in answer.stderr, answer.stderr
        wait_until(lambda: run_state(prefect_api, run_id) == "PAUSED", "the run to pause again")
        assert sha256_of(ws.vault_db) == digest  # nothing touched while waiting
        # a listed approver rejects through the CLI
        answer = opsflow(ws, "reject", run_id, "--as", "bob", "--reason", "not today")
        assert answer.returncode == 0, answer.stderr
        assert f"rejected run {run_id} as bob" in answer.stdout, answer.stdout
        code, stderr = cli.finish()
    finally:
        cli.stop()
    assert code == 3, cli.output()  # the exit code of `opsflow run restore` itself
    assert "error: restore on gated rejected by bob: not today. Nothing was changed." in stderr
    assert run_state(prefect_api, run_id) == "FAILED"
    assert cli.events(run_id) == ["requested", "refused", "rejected"]
    decision = ws.ledger().approval_events(run_id)[-1]
    assert (decision.actor, decision.reason) == ("bob", "not today")
    assert_restore_changed_nothing(ws, run_id, digest, rows, files)


def test_unknown_approver_refused_by_cli(gated: GatedRun, e2e_workspace: Workspace) -> None:
    cli = opsflow(e2e_workspace, "approve", gated.run_id, "--as", "mallory", "--reason", "x")
    assert cli.returncode == 2 and "not an approver" in cli.stderr
    assert gated.events() == ["requested"]


def test_protected_restore_timeout_is_a_rejection_cli_exits_3_changes_nothing(
    e2e_workspace: Workspace, prefect_api: str, backed_up_vault: dict[str, Any], tmp_path: Path
) -> None:
    ws = e2e_workspace
    digest, rows, files = sha256_of(ws.vault_db), vault_rows(ws), vault_files(ws)
    cli = CliRestore(ws, prefect_api, tmp_path, approval_timeout=5)
    try:
        code, stderr = cli.finish()  # nobody answers
    finally:
        cli.stop()
    assert code == 3, cli.output()  # the exit code of `opsflow run restore` itself
    # the CLI names the timeout either from the flow's own ApprovalRejected or, when the server
    # failed the never-resumed run first, from the ledger's decision; both are exact messages
    assert re.search(
        r"^error: restore on gated(: no valid approval within 5s, treated as rejected"
        r"| timed_out: no valid answer within 5s)\. Nothing was changed\.$",
        stderr,
        re.MULTILINE,
    ), stderr
    run_id = cli.new_run()
    assert run_state(prefect_api, run_id) == "FAILED"
    assert cli.events(run_id) == ["requested", "timed_out"]
    assert_restore_changed_nothing(ws, run_id, digest, rows, files)


def test_protected_restore_approved_through_cli_restores_the_backup(
    e2e_workspace: Workspace, prefect_api: str, backed_up_vault: dict[str, Any], tmp_path: Path
) -> None:
    """The control for the two tests above: the same CLI restore, approved, does change the
    database (back to the backed-up rows), so "nothing changed" there is not vacuous."""
    ws = e2e_workspace
    damaged = vault_rows(ws)
    cli = CliRestore(ws, prefect_api, tmp_path, approval_timeout=120)
    try:
        run_id = cli.paused_run()
        assert vault_rows(ws) == damaged
        answer = opsflow(ws, "approve", run_id, "--as", "bob", "--reason", "CHG-9 restore")
        assert answer.returncode == 0, answer.stderr
        code, _ = cli.finish()
    finally:
        cli.stop()
    assert code == 0, cli.output()
    assert run_state(prefect_api, run_id) == "COMPLETED"
    assert vault_rows(ws) == backed_up_vault["rows"]
    assert cli.events(run_id) == ["requested", "approved"]
    steps = {(s.step, s.status) for s in ws.ledger().steps(run_id)}
    assert ("restore_sqlite", "complete") in steps, steps
    restored = [s for s in ws.ledger().steps(run_id) if s.step == "restore_sqlite"]
    assert backed_up_vault["backup"]["key"] in restored[0].summary, restored[0].summary
    [aside] = [n for n in vault_files(ws) if n.startswith("vault.db.before-")]
    with closing(sqlite3.connect(ws.root / aside)) as conn:
        assert list(conn.execute("select id, owner, balance from accounts order by id")) == damaged
