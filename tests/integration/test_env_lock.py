"""The per-environment lock (flows.common.RunbookRun.exclusive): a strict Prefect global
concurrency limit ``env-<name>`` that opsflow creates, taken by backup, restore and the DR drill
around everything they change. Against the session's real Prefect server and moto S3 behind
the fault proxy, whose slow object writes (``delay_puts``) keep a backup busy for seconds.

What an operator relies on: two runs against one environment never overlap (the second waits,
or fails at once naming the run that holds the environment when told not to wait); runs
against different environments do not wait for each other.
"""

from __future__ import annotations

import contextvars
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest
from prefect.states import State

from flows.backup import backup
from flows.dr_drill import dr_drill
from flows.restore import restore
from opsflow.ledger import Ledger
from tests.fixtures.s3_server import FaultProxy

pytestmark = pytest.mark.integration
SLOW_WRITE_S = 5.0
GATED_S = 5.0
REFUSAL_S = 120  # far below the default wait; a refusal that waits never ends while gated
DUMP_SUFFIX = ".sqlite.zst"


@dataclass
class LockLab:
    root: Path
    proxy: FaultProxy
    bucket: str

    def ledger(self) -> Ledger:
        return Ledger(f"sqlite:///{self.root / 'ledger.db'}")

    def dump_writes(self, env: str) -> list[tuple[float, float]]:
        """(start, end) wall times of the dump objects written for ``env``, in start order."""
        return sorted(
            (start, end)
            for key, start, end in self.proxy.writes
            if f"/{env}/" in key and key.endswith(DUMP_SUFFIX)
        )

    def dumps_started(self, env: str) -> int:
        return sum(1 for k in self.proxy.writing if f"/{env}/" in k and k.endswith(DUMP_SUFFIX))

    def wait_for_dump_write(self, env: str, after: int, timeout: float = 60) -> None:
        """Until the dump object write number ``after + 1`` of ``env`` is under way (its run
        holds the environment's lock)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.dumps_started(env) > after:
                return
            time.sleep(0.05)
        raise AssertionError(f"no new dump of {env} started writing within {timeout}s")


@pytest.fixture
def lock_lab(
    tmp_path: Path,
    prefect_api: str,
    monkeypatch: pytest.MonkeyPatch,
    moto_s3_bucket: str,
    moto_s3_fault_proxy: FaultProxy,
) -> LockLab:
    envs = ""
    endpoint = moto_s3_fault_proxy.endpoint_url
    for env in ("alpha", "beta"):
        with sqlite3.connect(tmp_path / f"{env}.db") as conn:
            conn.execute("create table items (id integer primary key, name text)")
            rows = [(f"{env}{i}",) for i in range(50)]
            conn.executemany("insert into items (name) values (?)", rows)
        conn.close()
        envs += f"""
  {env}:
    databases:
      - {{name: app, kind: sqlite, path: "{tmp_path / f"{env}.db"}"}}
    backup_store: {{url: "s3://{moto_s3_bucket}/lock", endpoint_url: "{endpoint}"}}
"""
    (tmp_path / "inventory.yaml").write_text("environments:" + envs)
    monkeypatch.setenv("OPSFLOW_INVENTORY", str(tmp_path / "inventory.yaml"))
    monkeypatch.setenv("OPSFLOW_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("OPSFLOW_HOME", str(tmp_path / ".opsflow"))
    lab = LockLab(tmp_path, moto_s3_fault_proxy, moto_s3_bucket)
    # created before runs start at once: two first-ever Ledger() of one new SQLite file race
    # on creating its tables (opsflow.ledger, reported separately)
    lab.ledger().close()
    return lab


class Started:
    """A flow run in a background thread (in a copy of this context: the Prefect settings of
    the test server are context variables); ``state()`` joins it."""

    def __init__(self, call: Callable[[], State[Any]]) -> None:
        self._result: list[State[Any]] = []
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=lambda: self._result.append(context.run(call)), daemon=True
        )
        self._thread.start()

    def running(self) -> bool:
        return self._thread.is_alive()

    def state(self, timeout: float = 180) -> State[Any]:
        self._thread.join(timeout)
        assert self._result, "the flow run did not end in time"
        return self._result[0]


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def test_backups_of_one_environment_run_one_at_a_time_and_of_two_at_once(
    lock_lab: LockLab,
) -> None:
    lock_lab.proxy.delay_puts(SLOW_WRITE_S, DUMP_SUFFIX)

    def run(env: str) -> Started:
        return Started(lambda: backup(env=env, requested_by="tester", return_state=True))

    runs = [run("alpha"), run("alpha")]
    lock_lab.wait_for_dump_write("alpha", after=0)  # one of them holds alpha and is writing
    runs.append(run("beta"))
    states = [r.state() for r in runs]

    assert all(s.is_completed() for s in states), [s.message for s in states]
    alpha, beta = lock_lab.dump_writes("alpha"), lock_lab.dump_writes("beta")
    assert len(alpha) == 2 and len(beta) == 1, lock_lab.proxy.writes
    assert not _overlap(alpha[0], alpha[1]), alpha  # the second waited for the first
    assert _overlap(beta[0], alpha[0]), (alpha, beta)  # another environment did not wait
    rows = lock_lab.ledger().backups(env="alpha", limit=None)
    assert len({r.key for r in rows}) == 2  # both catalogued, under distinct keys


def test_a_restore_and_a_drill_wait_for_a_backup_or_fail_at_once_naming_it(
    lock_lab: LockLab,
) -> None:
    first = backup(env="alpha", requested_by="tester", return_state=True)
    assert first.is_completed(), first.message
    lock_lab.proxy.gate(DUMP_SUFFIX)  # the next backup's dump write stays under way until opened
    before = lock_lab.dumps_started("alpha")
    holder = Started(lambda: backup(env="alpha", requested_by="tester", return_state=True))
    lock_lab.wait_for_dump_write("alpha", after=before)
    copy = lock_lab.root / "restored.db"

    refusing = [
        Started(
            lambda: restore(
                env="alpha",
                database="app",
                target_db=str(copy),
                wait_for_lock=0,
                requested_by="tester",
                return_state=True,
            )
        ),
        Started(
            lambda: dr_drill(env="alpha", wait_for_lock=0, requested_by="tester", return_state=True)
        ),
    ]
    refused = [r.state(timeout=REFUSAL_S) for r in refusing]
    # they came back while the holder could not have let go of alpha: they did not wait
    assert holder.running() and len(lock_lab.dump_writes("alpha")) == 1
    assert not copy.exists()  # the refused restore touched nothing
    waiting = Started(
        lambda: restore(
            env="alpha",
            database="app",
            target_db=str(copy),
            requested_by="tester",
            return_state=True,
        )
    )
    time.sleep(GATED_S)  # time enough for a restore that did not wait to reach the copy
    assert waiting.running() and not copy.exists()
    lock_lab.proxy.open_gate()
    held = holder.state()
    waited = waiting.state()

    assert held.is_completed(), held.message
    holder_id = str(held.state_details.flow_run_id)
    for state in refused:
        assert state.is_failed()
        message = str(state.result(raise_on_failure=False))
        assert "alpha is busy" in message and holder_id in message, message
        assert "wait_for_lock" in message, message  # says how to wait instead
    assert waited.is_completed(), waited.message
    [(_, backup_done)] = lock_lab.dump_writes("alpha")[-1:]
    [restore_run] = [
        r for r in lock_lab.ledger().runs(env="alpha", runbook="restore") if r.status == "complete"
    ]
    steps = lock_lab.ledger().steps(restore_run.flow_run_id)
    [step] = [s for s in steps if s.step == "restore_sqlite"]
    step_started = step.recorded_at.replace(tzinfo=UTC).timestamp() - step.duration_ms / 1000
    assert step_started >= backup_done - 0.5, (step_started, backup_done)  # it waited
    with sqlite3.connect(copy) as conn:
        assert conn.execute("select count(*) from items").fetchone()[0] == 50
    conn.close()
    failed_runs = [r for r in lock_lab.ledger().runs(env="alpha") if r.status == "failed"]
    assert sorted(r.runbook for r in failed_runs) == ["dr-drill", "restore"]  # recorded too
