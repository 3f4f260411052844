"""The one step recorder (RunbookRun.step / record_check / record): a step row in the ledger
(status, duration, redacted summary) and a line in the run's log, the error re-raised; and no
other code writes step rows."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest
from pydantic import BaseModel

from flows.common import RunbookRun, summarize
from opsflow.inventory import Environment, Inventory
from opsflow.ledger import Ledger
from opsflow.redaction import register_secret
from opsflow.results import CheckResult, Status

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "hunter2-step-secret"


@pytest.fixture()
def run(tmp_path: Path) -> RunbookRun:
    env = Environment()
    return RunbookRun(
        runbook="restore",
        env_name="lab",
        env=env,
        inventory=Inventory(environments={"lab": env}),
        ledger=Ledger(f"sqlite:///{tmp_path / 'ledger.db'}"),
        logger=logging.getLogger("tests.step_recorder"),
        flow_run_id="run-1",
        requested_by="tester",
    )


class Dumped(BaseModel):
    key: str
    bytes: int


def test_a_step_that_completes_is_one_row_and_one_log_line(
    run: RunbookRun, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tests.step_recorder")
    with run.step("dump_postgres", "main") as step:
        time.sleep(0.05)
        value = step.result(Dumped(key="lab/main/x.sql.zst", bytes=7))
        step.details = {"key": value.key}
    assert value == Dumped(key="lab/main/x.sql.zst", bytes=7)  # handed back unchanged

    [row] = run.ledger.steps("run-1")
    assert (row.runbook, row.env, row.step, row.target, row.status) == (
        "restore",
        "lab",
        "dump_postgres",
        "main",
        "complete",
    )
    assert row.summary == str({"key": "lab/main/x.sql.zst", "bytes": 7})
    assert row.details == {"key": "lab/main/x.sql.zst"}
    assert 50 <= row.duration_ms < 5000
    assert run.ledger.verify().ok
    lines = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert (logging.INFO, "dump_postgres main: started") in lines
    assert lines[-1] == (logging.INFO, f"dump_postgres main: complete {row.summary}")


def test_a_failing_step_records_the_redacted_error_and_re_raises(
    run: RunbookRun, caplog: pytest.LogCaptureFixture
) -> None:
    register_secret(PASSWORD)
    error = RuntimeError(f"cannot connect to postgresql://app:{PASSWORD}@db:5432/app")
    with pytest.raises(RuntimeError) as raised, run.step("restore_postgres", "main -> x") as step:
        step.details = {"into": "x"}
        raise error
    assert raised.value is error  # the very error, not a wrapper

    [row] = run.ledger.steps("run-1")
    assert row.status == "failed" and row.step == "restore_postgres"
    assert row.summary == "cannot connect to postgresql://app:***@db:5432/app"
    assert row.details == {"into": "x"}
    assert row.duration_ms >= 0
    [failed] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert failed.getMessage() == f"restore_postgres main -> x: failed {row.summary}"
    assert PASSWORD not in caplog.text


def test_an_error_without_text_is_named_and_long_errors_are_cut(run: RunbookRun) -> None:
    with pytest.raises(TimeoutError), run.step("scale_up_app", "deployment shop/web"):
        raise TimeoutError()
    with pytest.raises(ValueError), run.step("verify_backup", "k"):
        raise ValueError("x" * 5000)
    quiet, long = run.ledger.steps("run-1")
    assert quiet.summary == "TimeoutError"
    assert long.summary == "x" * 2000


def test_a_failure_the_block_handles_is_failed_without_raising(
    run: RunbookRun, caplog: pytest.LogCaptureFixture
) -> None:
    with run.step("apply_retention", "file:///b") as step:
        step.fail(f"store said password={PASSWORD}")
        step.details = {"deleted": []}
    [row] = run.ledger.steps("run-1")
    assert row.status == "failed" and row.summary == "store said password=***"
    assert row.details == {"deleted": []}
    assert any(r.levelno == logging.ERROR for r in caplog.records)


def test_check_results_go_through_the_same_writer(
    run: RunbookRun, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tests.step_recorder")
    results = [
        CheckResult(check="disk", target="/", status=Status.HEALTHY, summary="40% used"),
        CheckResult(
            check="postgres",
            target="main",
            status=Status.DEGRADED,
            summary="92 of 100 connections",
            details={"connections": 92},
            duration_ms=31,
        ),
        CheckResult.failed("endpoint", "api", f"GET https://u:{PASSWORD}@api/health: 500"),
    ]
    rows = [run.record_check(r) for r in results]
    stored = run.ledger.steps("run-1")
    assert [(s.step, s.target, s.status) for s in stored] == [
        ("disk", "/", "healthy"),
        ("postgres", "main", "degraded"),
        ("endpoint", "api", "critical"),
    ]
    assert [s.id for s in stored] == [r.id for r in rows]
    assert stored[1].details == {"connections": 92} and stored[1].duration_ms == 31
    assert PASSWORD not in stored[2].summary
    levels = {r.getMessage().split(":")[0]: r.levelno for r in caplog.records}
    assert levels == {
        "disk /": logging.INFO,
        "postgres main": logging.WARNING,
        "endpoint api": logging.ERROR,
    }
    assert PASSWORD not in caplog.text


def test_summaries_are_redacted_and_short() -> None:
    register_secret(PASSWORD)
    assert summarize(f"dsn postgresql://u:{PASSWORD}@h/d") == "dsn postgresql://u:***@h/d"
    assert len(summarize("y" * 900)) == 500
    assert summarize(Dumped(key="k", bytes=1)) == "{'key': 'k', 'bytes': 1}"


def test_no_other_code_writes_step_rows() -> None:
    writers = sorted(
        str(path.relative_to(REPO))
        for package in ("opsflow", "flows", "tasks", "deployments")
        for path in (REPO / package).rglob("*.py")
        if re.search(r"\.record_step\(", path.read_text())
    )
    assert writers == ["flows/common/run.py"]
