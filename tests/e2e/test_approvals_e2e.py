"""Approvals end to end, by verified approvers: a flow pauses on a protected environment;
answers arrive through the REST API and the opsflow CLI, each carrying the approver's one-time
code (TOTP); a wrong code, a code read back from Prefect's API and replayed, and the
requester's own code are refused while the run keeps waiting; two of three approvers are
needed on the `quorum` environment; a protected run with no requester is refused before
anything is written; rejection and timeout change nothing; every decision is in the ledger.

Rejection, timeout and their control (an approval) drive the real CLI, `opsflow run restore
--env gated`, against the real restore runbook: the exit code checked is that of the CLI
process, and "nothing changed" is the protected database's file, rows and ledger steps."""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from tests.e2e.test_health_check_e2e import opsflow
from tests.fixtures.e2e_env import REPO, VAULT_ROWS, Workspace, sha256_of, take_backup
from tests.fixtures.http_targets import WebhookReceiver
from tests.support.approvers import (
    SECRETS,
    Authenticator,
    resume,
    run_state,
    wait_until,
    wrong_code,
)
from tests.support.cli import OPSFLOW

pytestmark = pytest.mark.e2e


class GatedRun:
    """tests.support.gated_flow in a child process, paused for approval (requested by alice)."""

    def __init__(
        self, ws: Workspace, api: str, marker: Path, timeout: int = 120, env: str = "gated"
    ) -> None:
        self.marker = marker
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.support.gated_flow",
                "--env",
                env,
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


@pytest.fixture
def codes(e2e_workspace: Workspace) -> Iterator[Authenticator]:
    authenticator = Authenticator(e2e_workspace.ledger_url)
    yield authenticator
    authenticator.close()


def answer_cli(
    ws: Workspace, verb: str, run_id: str, *args: str, stdin: str = "", **env: str
) -> subprocess.CompletedProcess[str]:
    """`opsflow approve|reject RUN_ID ...` as an approver runs it (``stdin``: what they type
    at the code prompt)."""
    return subprocess.run(
        [*OPSFLOW, verb, run_id, *args],
        cwd=REPO,
        env={**ws.env, **env},
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
    )


def refusals(ws: Workspace, run_id: str) -> list[tuple[str, str]]:
    return [
        (e.actor, e.reason) for e in ws.ledger().approval_events(run_id) if e.event == "refused"
    ]


def stored_answers(api: str, run_id: str) -> list[dict[str, Any]]:
    """Every resume answer Prefect keeps for the run, as anyone reaching its API reads it."""
    response = httpx.post(
        f"{api}/flow_runs/{run_id}/input/filter",
        json={"prefix": "paused-", "limit": 100},
        timeout=10,
    )
    response.raise_for_status()
    keys = sorted(i["key"] for i in response.json() if i["key"].endswith("-response"))
    answers = []
    for key in keys:
        read = httpx.get(f"{api}/flow_runs/{run_id}/input/{key}", timeout=10)
        read.raise_for_status()
        answers.append(dict(json.loads(read.text)))
    return answers


def test_approved_through_api_by_second_identity(
    gated: GatedRun,
    prefect_api: str,
    webhook_receiver_server: WebhookReceiver,
    codes: Authenticator,
) -> None:
    assert gated.events() == ["requested"]
    asked = [m["body"] for m in webhook_receiver_server.received if gated.run_id in str(m["body"])]
    assert asked and "approval needed" in asked[0]["subject"], webhook_receiver_server.received
    assert "one-time code" in asked[0]["body"], asked[0]["body"]
    assert not gated.marker.exists()
    one_time = codes.code("bob")
    resume(
        prefect_api,
        gated.run_id,
        approved=True,
        approver="bob",
        code=one_time,
        reason="CHG-1234 reviewed",
    )
    code, out = gated.finish()
    assert code == 0, out
    assert gated.marker.read_text() == "changed"
    assert gated.events() == ["requested", "approved"]
    events = gated.ws.ledger().approval_events(gated.run_id)
    assert (events[-1].actor, events[-1].reason) == ("bob", "CHG-1234 reviewed")
    # neither the code nor any approver's secret is in the run's log, its output or the ledger
    logs = httpx.post(
        f"{prefect_api}/logs/filter",
        json={"logs": {"flow_run_id": {"any_": [gated.run_id]}}, "limit": 200},
        timeout=10,
    ).json()
    assert any("approved by bob" in entry["message"] for entry in logs), logs
    texts = [e["message"] for e in logs] + [out] + [str(vars(e)) for e in events]
    for text_ in texts:
        assert not re.search(rf"\b{one_time}\b", text_), text_
        assert not any(secret in text_ for secret in SECRETS.values()), text_


def test_a_wrong_code_is_refused_and_the_run_keeps_waiting(
    gated: GatedRun, prefect_api: str, codes: Authenticator
) -> None:
    resume(
        prefect_api,
        gated.run_id,
        approved=True,
        approver="bob",
        code=wrong_code("bob"),
        reason="CHG-5",
    )
    wait_until(lambda: "refused" in gated.events(), "the refusal")
    assert refusals(gated.ws, gated.run_id) == [("bob", "wrong or expired one-time code for 'bob'")]
    wait_until(lambda: run_state(prefect_api, gated.run_id) == "PAUSED", "the run to pause again")
    assert gated.proc.poll() is None and not gated.marker.exists()
    # control: the same approver with the code of their app now gets through
    codes.answer(prefect_api, gated.run_id, "bob", "CHG-5")
    code, out = gated.finish()
    assert code == 0, out
    assert gated.events() == ["requested", "refused", "approved"]
    assert gated.marker.read_text() == "changed"


def test_a_run_set_running_without_an_answer_keeps_waiting(
    gated: GatedRun, prefect_api: str
) -> None:
    """Whoever reaches the API can force the paused run's state to Running, skipping the
    Resume form: the flow finds no answer, refuses that, and pauses again."""
    forced = httpx.post(
        f"{prefect_api}/flow_runs/{gated.run_id}/set_state",
        json={"state": {"type": "RUNNING"}, "force": True},
        timeout=10,
    )
    assert forced.status_code in (200, 201), forced.text
    wait_until(lambda: "refused" in gated.events(), "the refusal")
    assert refusals(gated.ws, gated.run_id) == [
        ("", "the run was resumed without an answer (no approver, code, reason)")
    ]
    wait_until(lambda: run_state(prefect_api, gated.run_id) == "PAUSED", "the run to pause again")
    assert gated.proc.poll() is None and not gated.marker.exists()


def test_a_code_read_back_from_the_prefect_api_is_refused_when_replayed(
    e2e_workspace: Workspace, prefect_api: str, tmp_path: Path, codes: Authenticator
) -> None:
    """Prefect keeps every resume answer and serves it to anyone who reaches its API: bob's
    answer to one run, read back and sent to another run while the code is still inside its
    time window, is refused as used (and the run keeps waiting)."""
    first = GatedRun(e2e_workspace, prefect_api, tmp_path / "first")
    second = GatedRun(e2e_workspace, prefect_api, tmp_path / "second")
    try:
        codes.answer(prefect_api, first.run_id, "bob", "CHG-77")
        code, out = first.finish()
        assert code == 0, out
        [stolen] = stored_answers(prefect_api, first.run_id)
        assert (stolen["approver"], stolen["approved"]) == ("bob", True)
        assert len(stolen["code"]) == 6  # Prefect does keep the code, in clear
        resume(prefect_api, second.run_id, **stolen)
        wait_until(lambda: "refused" in second.events(), "the refusal")
        assert refusals(e2e_workspace, second.run_id) == [
            ("bob", "this one-time code of 'bob' was used before (wait for the next one)")
        ]
        wait_until(lambda: run_state(prefect_api, second.run_id) == "PAUSED", "a pause again")
        assert second.proc.poll() is None and not second.marker.exists()
        assert second.events() == ["requested", "refused"]
    finally:
        first.stop(prefect_api)
        second.stop(prefect_api)


def test_two_of_three_distinct_approvers_none_the_requester(
    e2e_workspace: Workspace, prefect_api: str, tmp_path: Path, codes: Authenticator
) -> None:
    run = GatedRun(e2e_workspace, prefect_api, tmp_path / "marker", env="quorum")

    def answer(approver: str, reason: str) -> None:
        # the run pauses again after every answer that does not finish it
        wait_until(lambda: run_state(prefect_api, run.run_id) == "PAUSED", "the run to wait")
        before = len(run.events())
        codes.answer(prefect_api, run.run_id, approver, reason)
        wait_until(lambda: len(run.events()) > before, f"the verdict on {approver}")

    try:
        answer("bob", "CHG-2 looks right")
        assert run.events() == ["requested", "endorsed"]
        assert not run.marker.exists(), "one approval of two must not be enough"
        answer("bob", "CHG-2 still looks right")  # a new code, the same person
        answer("alice", "CHG-2 mine")  # the requester, with her own valid code
        assert not run.marker.exists()
        answer("carol", "CHG-2 second pair of eyes")
        code, out = run.finish()
    finally:
        run.stop(prefect_api)
    assert code == 0, out
    assert run.marker.read_text() == "changed"
    assert run.events() == ["requested", "endorsed", "refused", "refused", "approved"]
    assert refusals(e2e_workspace, run.run_id) == [
        ("bob", "'bob' approved already; the others must approve too"),
        ("alice", "'alice' requested this run and cannot approve it (four-eyes rule)"),
    ]
    decisions = [(e.event, e.actor) for e in e2e_workspace.ledger().approval_events(run.run_id)]
    assert decisions[1] == ("endorsed", "bob") and decisions[-1] == ("approved", "carol")


def ledger_row_counts(ws: Workspace) -> dict[str, int]:
    engine = create_engine(ws.ledger_url)
    try:
        with engine.connect() as conn:
            return {
                t: int(conn.execute(text(f"select count(*) from {t}")).scalar() or 0)
                for t in ("runs", "steps", "approvals", "backups", "drills", "used_codes")
            }
    finally:
        engine.dispose()


def test_a_protected_run_without_requester_is_refused_before_anything(
    e2e_workspace: Workspace, prefect_api: str
) -> None:
    ws = e2e_workspace
    before, digest = ledger_row_counts(ws), sha256_of(ws.vault_db)
    result = subprocess.run(
        [*OPSFLOW, "run", "restore", "--env", "gated", "--param", "database=vault"],
        cwd=REPO,
        env={**ws.env, "PREFECT_API_URL": prefect_api, "OPSFLOW_USER": ""},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "requested_by: gated is protected and this run names no requester" in result.stderr
    assert "OPSFLOW_USER" in result.stderr and "Traceback" not in result.stderr
    assert ledger_row_counts(ws) == before
    assert sha256_of(ws.vault_db) == digest


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
    codes: Authenticator,
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
        # the requester herself, with her own valid code, through the API
        codes.answer(prefect_api, run_id, "alice", "I am sure")
        wait_until(lambda: "refused" in cli.events(run_id), "the refusal")
        assert cli.proc.poll() is None, "a refused answer must leave the run waiting"
        # the CLI refuses the same self-approval up front, with exit code 2
        answer = opsflow(ws, "approve", run_id, "--as", "alice", "--reason", "me")
        assert answer.returncode == 2 and "four-eyes" in answer.stderr, answer.stderr
        wait_until(lambda: run_state(prefect_api, run_id) == "PAUSED", "the run to pause again")
        assert sha256_of(ws.vault_db) == digest  # nothing touched while waiting
        # a wrong code through the CLI: the run refuses it and the CLI says so, exit 2
        wrong = wrong_code("bob")
        answer = answer_cli(ws, "reject", run_id, "--as", "bob", "--reason", "x", "--code", wrong)
        assert answer.returncode == 2, answer.stdout + answer.stderr
        assert "refused the rejection as bob: wrong or expired one-time code" in answer.stderr
        wait_until(lambda: run_state(prefect_api, run_id) == "PAUSED", "the run to pause again")
        # a listed approver rejects through the CLI, the code made from their own secret
        codes.fresh_step("bob", current_only=True)  # TOTP.now() must not be a spent code
        answer = answer_cli(
            ws,
            "reject",
            run_id,
            "--as",
            "bob",
            "--reason",
            "not today",
            OPSFLOW_APPROVER_SECRET=SECRETS["bob"],
        )
        assert answer.returncode == 0, answer.stderr
        assert f"rejected run {run_id} as bob" in answer.stdout, answer.stdout
        assert SECRETS["bob"] not in answer.stdout + answer.stderr
        code, stderr = cli.finish()
    finally:
        cli.stop()
    assert code == 3, cli.output()  # the exit code of `opsflow run restore` itself
    assert "error: restore on gated rejected by bob: not today. Nothing was changed." in stderr
    assert run_state(prefect_api, run_id) == "FAILED"
    assert cli.events(run_id) == ["requested", "refused", "refused", "rejected"]
    assert [actor for actor, _ in refusals(ws, run_id)] == ["alice", "bob"]
    assert "four-eyes" in refusals(ws, run_id)[0][1]
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
    # the CLI names the timeout from the flow's own ApprovalRejected or, when the server failed
    # the never-resumed run first, from the ledger's decision: in the same words
    assert re.search(
        r"^error: restore on gated: no valid approval within 5s, treated as rejected\. "
        r"Nothing was changed\.$",
        stderr,
        re.MULTILINE,
    ), stderr
    run_id = cli.new_run()
    assert run_state(prefect_api, run_id) == "FAILED"
    assert cli.events(run_id) == ["requested", "timed_out"]
    assert_restore_changed_nothing(ws, run_id, digest, rows, files)


def test_protected_restore_approved_through_cli_restores_the_backup(
    e2e_workspace: Workspace,
    prefect_api: str,
    backed_up_vault: dict[str, Any],
    tmp_path: Path,
    codes: Authenticator,
) -> None:
    """The control for the two tests above: the same CLI restore, approved (bob types his
    code at the prompt), does change the database (back to the backed-up rows), so "nothing
    changed" there is not vacuous."""
    ws = e2e_workspace
    damaged = vault_rows(ws)
    cli = CliRestore(ws, prefect_api, tmp_path, approval_timeout=120)
    try:
        run_id = cli.paused_run()
        assert vault_rows(ws) == damaged
        typed = codes.code("bob")
        answer = answer_cli(
            ws, "approve", run_id, "--as", "bob", "--reason", "CHG-9 restore", stdin=typed + "\n"
        )
        assert answer.returncode == 0, answer.stderr
        assert "one-time code of bob" in answer.stderr  # the prompt
        assert f"approved run {run_id} as bob" in answer.stdout, answer.stdout
        assert typed not in answer.stdout + answer.stderr  # never echoed or printed
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
