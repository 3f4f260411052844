"""Approvals end to end: a flow pauses on a protected environment; answers arrive through the
REST API and the opsflow CLI as a second identity; self-approval is refused; rejection and
timeout change nothing; every decision is in the ledger."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_health_check_e2e import opsflow
from tests.fixtures.e2e_env import REPO, Workspace
from tests.fixtures.http_targets import WebhookReceiver

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


def wait_for_event(run: GatedRun, event: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if event in run.events():
            return
        time.sleep(0.3)
    raise AssertionError(f"no {event!r} event, saw {run.events()}")


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


def test_self_approval_refused_then_rejected_changes_nothing(
    gated: GatedRun, prefect_api: str, e2e_workspace: Workspace
) -> None:
    resume(prefect_api, gated.run_id, True, "alice", "I am sure")  # the requester herself
    wait_for_event(gated, "refused")
    assert gated.proc.poll() is None, "a refused answer must leave the run waiting"
    assert not gated.marker.exists()
    # the CLI refuses the same self-approval up front, with exit code 2
    cli = opsflow(e2e_workspace, "approve", gated.run_id, "--as", "alice", "--reason", "me")
    assert cli.returncode == 2 and "four-eyes" in cli.stderr, cli.stderr
    # a listed approver rejects through the CLI
    deadline = time.monotonic() + 30
    while True:  # the flow re-pauses after recording the refusal
        state = httpx.get(f"{prefect_api}/flow_runs/{gated.run_id}", timeout=10).json()["state"]
        if state["type"] == "PAUSED" or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    cli = opsflow(e2e_workspace, "reject", gated.run_id, "--as", "bob", "--reason", "not today")
    assert cli.returncode == 0, cli.stderr
    code, out = gated.finish()
    assert code == 3 and "rejected by bob" in out, out
    assert not gated.marker.exists()
    assert gated.events() == ["requested", "refused", "rejected"]


def test_unknown_approver_refused_by_cli(gated: GatedRun, e2e_workspace: Workspace) -> None:
    cli = opsflow(e2e_workspace, "approve", gated.run_id, "--as", "mallory", "--reason", "x")
    assert cli.returncode == 2 and "not an approver" in cli.stderr
    assert gated.events() == ["requested"]


def test_timeout_is_a_rejection(e2e_workspace: Workspace, prefect_api: str, tmp_path: Path) -> None:
    run = GatedRun(e2e_workspace, prefect_api, tmp_path / "marker", timeout=4)
    code, out = run.finish()
    assert code == 3 and "timed_out" in out, out
    assert not run.marker.exists()
    assert run.events() == ["requested", "timed_out"]
