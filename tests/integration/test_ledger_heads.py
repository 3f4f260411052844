"""Chain heads published outside the ledger's database after each run — the run's artifact,
$OPSFLOW_HOME, the environment's backup store — and `opsflow ledger verify` checking the
database against them: OK exits 0; a change, a cut tail, the wrong key or no heads at all
exit 1 with one line per problem; and a cut tail is not laundered by the next run."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.logging.handlers import APILogHandler
from typer.testing import CliRunner

from cli.main import app
from flows.health_check import health_check
from opsflow.ledger import Ledger

pytestmark = pytest.mark.integration


@pytest.fixture
def lab(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ledger_home: Path) -> Iterator[Path]:
    (tmp_path / "inventory.yaml").write_text(f"""
environments:
  lab:
    disks: ["{tmp_path}"]
    backup_store: {{url: "file://{tmp_path / "backups"}"}}
""")
    monkeypatch.setenv("OPSFLOW_INVENTORY", str(tmp_path / "inventory.yaml"))
    monkeypatch.setenv("OPSFLOW_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    yield tmp_path


def run_health_check() -> str:
    state = health_check(env="lab", requested_by="tester", return_state=True)
    assert state.is_completed() or state.is_failed()
    return str(state.state_details.flow_run_id)


def newest_in_store(lab: Path) -> Path:
    """The newest heads document of ``lab`` in its store (a store never replaces an object:
    every run adds one to the history, the greatest stamp is the newest)."""
    return sorted((lab / "backups" / "_ledger" / "lab" / "history").glob("*.json"))[-1]


def store_doc(lab: Path) -> dict[str, object]:
    return json.loads(newest_in_store(lab).read_text())


def verify(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["ledger", "verify", *args])
    return result.exit_code, " ".join(result.output.split())


def test_a_run_publishes_signed_heads_in_the_artifact_home_and_store(
    prefect_api: str, lab: Path
) -> None:
    run_id = run_health_check()
    ledger = Ledger()
    local = ledger.local_heads()
    assert local is not None and local.doc is not None
    assert local.source.startswith(str(lab / "home" / "ledger-heads"))
    steps = len(ledger.steps(run_id))
    assert local.doc["heads"]["steps"]["seq"] == steps > 0
    assert local.doc["heads"]["runs"]["seq"] == 1
    assert store_doc(lab) == local.doc
    history = sorted((lab / "backups" / "_ledger" / "lab" / "history").glob("*.json"))
    assert len(history) == 1 and run_id in history[0].name
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    [artifact] = [a for a in artifacts if a.key == "health-check-lab-ledger-heads"]
    assert local.doc["signature"] in str(artifact.data)
    assert ledger.verify([local]).ok

    code, output = verify("--store", f"file://{lab / 'backups'}")
    assert code == 0, output
    assert output.startswith(f"ledger OK: {steps + 1} rows, every chain intact; heads: ")
    assert f"_ledger/lab/history/{history[0].name}" in output
    code, output = verify("--inventory-stores")  # the same store, found through the inventory
    assert code == 0 and f"_ledger/lab/history/{history[0].name}" in output, output

    # a store copy that cannot be read any more does not stop the next run from publishing
    history[0].write_text("garbage")
    run_health_check()
    assert store_doc(lab) == Ledger().local_heads().doc  # type: ignore[union-attr]
    assert store_doc(lab)["heads"]["runs"]["seq"] == 2  # type: ignore[index]
    assert history[0].read_text() == "garbage"  # nothing in a store is ever replaced


def test_a_cut_tail_is_caught_and_not_laundered_by_the_next_run(
    prefect_api: str, lab: Path
) -> None:
    run_health_check()
    before = store_doc(lab)
    ledger = Ledger()
    # someone with database access removes the run row and moves the chain head back
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql("delete from runs")
        conn.exec_driver_sql(
            f"update chain_heads set seq = 0, row_hash = '{'0' * 64}' where table_name = 'runs'"
        )
    assert ledger.verify().ok  # the database alone cannot tell
    code, output = verify()
    assert code == 1
    assert "runs row seq 1: the table ends at seq 0, but the heads published" in output

    second = run_health_check()  # appends a new runs seq 1: the heads must not move to it
    assert store_doc(lab) == before
    assert Ledger().local_heads().doc == before  # type: ignore[union-attr]
    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[second])), limit=200
        )
    assert any("Ledger does not extend its published heads" in log.message for log in logs)
    code, output = verify("--store", f"file://{lab / 'backups'}")
    assert code == 1
    assert "runs row seq 1: the row is not the one the heads published" in output
    assert output.endswith("FAILED: 2 problem(s)")  # the local copy and the store's


def test_verify_reports_each_problem_and_exits_1(lab: Path) -> None:
    ledger = Ledger()
    for i in range(3):
        ledger.record_step(
            flow_run_id="r", runbook="x", env="lab", step="s", target=str(i), status="ok"
        )
    code, output = verify()
    assert code == 1 and "heads: no published chain heads found" in output  # none yet
    heads_file = lab / "kept-heads.json"
    heads_file.write_text(json.dumps(ledger.heads()))
    code, output = verify("--heads", str(heads_file))
    assert code == 0 and output == f"ledger OK: 3 rows, every chain intact; heads: {heads_file}"

    with ledger.engine.begin() as conn:
        conn.exec_driver_sql("update steps set target = 'elsewhere' where seq = 2")
        conn.exec_driver_sql("delete from steps where seq = 3")
    code, output = verify("--heads", str(heads_file))
    assert code == 1
    assert 'steps row seq 2: column target is "elsewhere" but was written as "1"' in output
    assert "steps table: its chain head says it ends at seq 3, the last row is seq 2" in output
    assert "steps row seq 3: the table ends at seq 2" in output
    assert output.endswith(f"ledger {ledger.display_url} FAILED: 3 problem(s)")

    code, output = verify("--store", f"file://{lab / 'nothing-here'}")
    assert code == 1 and "holds no published heads" in output


def test_verify_with_the_wrong_or_no_key(lab: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = Ledger()
    ledger.record_step(flow_run_id="r", runbook="x", env="lab", step="s", target="t", status="ok")
    ledger.save_local_heads(ledger.heads())
    assert verify()[0] == 0
    monkeypatch.setenv("OPSFLOW_LEDGER_KEY", "env:SOME_OTHER_KEY")
    monkeypatch.setenv("SOME_OTHER_KEY", "ef" * 32)
    code, output = verify()
    assert code == 1 and "ledger_meta table: wrong key: the ledger is signed with key id" in output
    assert "ef" * 32 not in output
    run = CliRunner().invoke(app, ["run", "health-check", "--env", "lab"])  # no run starts
    assert run.exit_code == 2, run.output
    assert "is not the key the ledger" in " ".join(run.output.split())
    monkeypatch.delenv("OPSFLOW_LEDGER_KEY")
    assert Ledger().verify().rows == 1  # nothing was written
    (lab / "home" / "ledger.key").unlink()
    code, output = verify()
    assert code == 2 and "OPSFLOW_LEDGER_KEY_FILE: there is no ledger key at" in output
    assert not (lab / "home" / "ledger.key").exists()  # verify never makes a key


def test_an_empty_ledger_verifies_without_a_key(lab: Path) -> None:
    code, output = verify()
    assert code == 0 and output.startswith("ledger OK: 0 rows")
    assert not (lab / "home" / "ledger.key").exists()
