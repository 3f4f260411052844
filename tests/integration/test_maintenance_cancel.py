"""A served maintenance run stopped while the application is in maintenance mode: the mode
goes off again (an HTTP recorder sees POST, then DELETE), and the ledger says so.

The run is held mid-way by a real lock: the test keeps a lock on the table the VACUUM step
wants (its lock_timeout is long), so the run is inside the step, maintenance mode on, when it
is stopped. Two ways, two code paths of the runbook:
- **cancelled through the Prefect API**: Prefect's runner asks the run's process to stop; the
  flow's ``finally`` switches the mode off (a process that did not stop in time is killed and
  the flow's on-cancellation hook, run by the runner, does it instead).
- **the run's process killed** (SIGKILL, no ``finally`` runs): the runner marks the run
  crashed and runs the flow's on-crashed hook, which switches the mode off and records the
  step and the run in the ledger.

This test starts its own Prefect server and runner (see test_restore_served_killed)."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from deployments.up import stop_process_group
from flows.maintenance import MODE_OFF, MODE_ON
from opsflow.ledger import Ledger
from tests.fixtures.databases import PostgresDatabase
from tests.fixtures.http_targets import ModeSwitch
from tests.integration.test_restore_served_killed import REPO, own_server, wait_for
from tests.support.cli import start_up
from tests.support.prefect_api import api_get, api_post, wait_until_served

pytestmark = pytest.mark.integration
__all__ = ["own_server"]  # the fixture


@dataclass
class Served:
    api: str
    runner: subprocess.Popen[bytes]
    switch: ModeSwitch

    def state(self, run_id: str) -> str:
        return str(api_get(f"{self.api}/flow_runs/{run_id}", timeout=10).json()["state"]["type"])

    def start_blocked_run(self) -> str:
        """A weekly run, waited for until it is inside VACUUM with maintenance mode on."""
        deployment = api_get(f"{self.api}/deployments/name/maintenance/weekly", timeout=10).json()
        run_id = str(
            api_post(
                f"{self.api}/deployments/{deployment['id']}/create_flow_run",
                json={"parameters": {"env": "m", "requested_by": "tester", "skip_backup": True}},
                timeout=10,
            ).json()["id"]
        )
        wait_for(lambda: self.switch.methods == ["POST"], "maintenance mode on", timeout=120)
        wait_for(
            lambda: "measure_postgres" in [s.step for s in Ledger().steps(run_id)],
            "the run to reach VACUUM (blocked on the lock)",
        )
        assert self.switch.methods == ["POST"]  # still in the step: the mode is on
        return run_id

    def mode_steps(self, run_id: str) -> list[tuple[str, str]]:
        rows = Ledger().steps(run_id)
        return [(s.step, s.status) for s in rows if s.step in (MODE_ON, MODE_OFF)]


@pytest.fixture
def served(
    tmp_path: Path,
    postgres_database: PostgresDatabase,
    mode_switch: ModeSwitch,
    own_server: str,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Served]:
    dsn = postgres_database.dsn
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY)")
        conn.execute("INSERT INTO items SELECT generate_series(1, 100)")
    (tmp_path / "inventory.yaml").write_text(f"""
environments:
  local:
    disks: ["{tmp_path}"]
  m:
    disks: ["{tmp_path}"]
    databases: [{{name: app, kind: postgres, dsn: "env:MAINT_PG_DSN"}}]
    maintenance_window: {{cron: "0 * * * *", duration: 2h}}
    maintenance_mode: {{url: "{mode_switch.url}"}}
    maintenance:
      postgres: {{lock_timeout: 10m, tables: [public.items]}}
""")
    for name, value in {
        "OPSFLOW_INVENTORY": str(tmp_path / "inventory.yaml"),
        "OPSFLOW_LEDGER_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
        "OPSFLOW_HOME": str(tmp_path / ".opsflow"),
        "PREFECT_API_URL": own_server,
        "MAINT_PG_DSN": dsn,
    }.items():
        monkeypatch.setenv(name, value)
    # A transaction holding a lock that VACUUM (SHARE UPDATE EXCLUSIVE) waits for and the
    # size and statistics reads of the measuring step (ACCESS SHARE) do not.
    holder = psycopg.connect(dsn)
    holder.execute("LOCK TABLE items IN SHARE MODE")
    runner = start_up(REPO, dict(os.environ), tmp_path / "up.log")
    try:
        wait_until_served(own_server, "maintenance/weekly")
        yield Served(own_server, runner, mode_switch)
    finally:
        holder.close()
        stop_process_group(runner, timeout=20)


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def run_process(runner: int) -> int:
    """The run's process: the child of the runner's forkserver (deployments/serve.py)."""
    for child in children(runner):
        if b"forkserver" in Path(f"/proc/{child}/cmdline").read_bytes():
            [run] = children(child)
            return run
    raise AssertionError(f"no forkserver under the runner {runner}")


def test_a_cancelled_run_switches_maintenance_mode_off(served: Served) -> None:
    run_id = served.start_blocked_run()
    api_post(
        f"{served.api}/flow_runs/{run_id}/set_state",
        json={"state": {"type": "CANCELLING"}, "force": True},
        timeout=10,
    )
    wait_for(lambda: served.state(run_id) == "CANCELLED", "the run to be cancelled")
    wait_for(lambda: served.switch.methods == ["POST", "DELETE"], "maintenance mode off", 60)
    assert served.mode_steps(run_id) == [(MODE_ON, "complete"), (MODE_OFF, "complete")]


def test_a_killed_run_switches_maintenance_mode_off_from_its_crash_hook(
    served: Served,
) -> None:
    run_id = served.start_blocked_run()
    os.kill(run_process(served.runner.pid), signal.SIGKILL)  # no finally runs
    wait_for(lambda: served.state(run_id) == "CRASHED", "the run to be marked crashed")
    wait_for(lambda: served.switch.methods == ["POST", "DELETE"], "maintenance mode off", 60)
    found: Callable[[], bool] = lambda: (MODE_OFF, "complete") in served.mode_steps(run_id)  # noqa: E731
    wait_for(found, "the hook's ledger step")
    off = [s for s in Ledger().steps(run_id) if s.step == MODE_OFF]
    assert [s.summary.endswith("(after the run ended Crashed)") for s in off] == [True]
    runs = [(r.flow_run_id, r.status) for r in Ledger().runs(env="m")]
    assert runs == [(run_id, "crashed")]
