from __future__ import annotations

from pathlib import Path

from sqlalchemy import delete, update

from opsflow.catalog import fold
from opsflow.ledger import Ledger, StepRow, utcnow


def make_ledger(tmp_path: Path) -> Ledger:
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    for i in range(3):
        ledger.record_step(
            flow_run_id="run-1",
            runbook="health-check",
            env="local",
            step="check_disk",
            target=f"/d{i}",
            status="healthy",
            summary="ok",
        )
    ledger.record_run(
        flow_run_id="run-1",
        runbook="health-check",
        env="local",
        status="healthy",
        started_at=utcnow(),
        finished_at=utcnow(),
    )
    return ledger


def test_intact_chain_verifies(tmp_path: Path) -> None:
    report = make_ledger(tmp_path).verify()
    assert report.ok and report.rows == 4


def test_edited_row_is_detected(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path)
    with ledger.engine.begin() as conn:
        conn.execute(update(StepRow).where(StepRow.id == 2).values(status="critical"))
    report = ledger.verify()
    assert not report.ok
    assert any(p.table == "steps" and p.row_id == 2 for p in report.problems)


def test_deleted_last_row_is_detected(tmp_path: Path) -> None:
    ledger = make_ledger(tmp_path)
    with ledger.engine.begin() as conn:
        conn.execute(delete(StepRow).where(StepRow.id == 3))
    assert not ledger.verify().ok


def test_secrets_are_redacted_before_writing(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    ledger.record_step(
        flow_run_id="r",
        runbook="x",
        env="e",
        step="s",
        target="t",
        status="critical",
        summary="failed: postgresql://u:topsecret1@h/d",
        details={"error": "password=topsecret1"},
    )
    row = ledger.steps("r")[0]
    assert "topsecret1" not in row.summary and "topsecret1" not in str(row.details)
    assert ledger.verify().ok


def test_pending_approval_follows_events(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    common = {"flow_run_id": "r", "action": "restore", "env": "prod", "requested_by": "alice"}
    ledger.record_approval(event="requested", **common)
    assert ledger.pending_approval("r") is not None
    ledger.record_approval(event="refused", actor="alice", reason="four-eyes", **common)
    assert ledger.pending_approval("r") is not None
    ledger.record_approval(event="approved", actor="bob", reason="ok", **common)
    assert ledger.pending_approval("r") is None


def test_catalog_shows_each_backup_once_in_its_latest_state(tmp_path: Path) -> None:
    ledger = Ledger(f"sqlite:///{tmp_path / 'l.db'}")
    common = {
        "env": "prod",
        "database": "main",
        "kind": "postgres",
        "store_url": "file:///b",
        "bytes": 10,
        "sha256": "a" * 64,
    }
    first = ledger.record_backup(key="k1", status="complete", created_at=utcnow(), **common)
    ledger.record_backup(key="k2", status="complete", created_at=utcnow(), **common)
    ledger.mark_verified(first, verified_at=utcnow(), flow_run_id="drill", how="dr-drill")
    catalog = fold(ledger.backups(env="prod", limit=None))
    assert [(r.key, r.status) for r in catalog] == [("k2", "complete"), ("k1", "verified")]
    assert len(ledger.backups(env="prod")) == 3  # the chain keeps every event
    assert ledger.verify().ok
