"""The attack of issue 8: an object in the store swapped for valid compressed SQL that runs a
shell command (``\\!``), ends the restore's transaction (``COMMIT;``) and switches to the live
database (``\\connect``). Restore and the DR drill must refuse it before any of it runs, and the
live database must be unchanged.

The forged object is padded (a zstd skippable frame) to the catalogued size and its ``.sha256``
sidecar is left as it was, so only reading the content and comparing it with the catalogued
sha256 can tell: the cheap presence check (HEAD + sidecar) passes.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Any

import pytest
from backports import zstd

from connectors.streams import decompress
from flows.backup import backup
from flows.dr_drill import DrillReport, dr_drill
from flows.restore import restore
from opsflow.ledger import BackupRow
from opsflow.results import RestoreReport
from tests.fixtures.restores import RestoreLab

pytestmark = pytest.mark.integration
SKIPPABLE_MAGIC = 0x184D2A50


def forged_dump(live_db: str, pwned: Path, size: int) -> bytes:
    """Valid zstd of SQL with a shell escape, padded to exactly ``size`` bytes."""
    sql = (
        f"\\! id > {pwned}\nCOMMIT;\n\\connect {live_db}\ncreate table pwned_by_backup (x int);\n"
    ).encode()
    # a long harmless tail: without verification, psql runs the lines above long before the
    # stream (and with it an end-of-stream checksum) ends
    frame = zstd.compress(sql + b"-- nothing to see here\n" * 1_000_000)
    pad = size - len(frame) - 8
    assert pad >= 0, "the genuine backup is too small to hide the forged one"
    return frame + struct.pack("<II", SKIPPABLE_MAGIC, pad) + b"\0" * pad


def take_backup(lab: RestoreLab) -> BackupRow:
    state = backup(env="lab", requested_by="tester", return_state=True)
    assert state.is_completed(), state.message
    return next(r for r in lab.ledger().backups(env="lab", database="main"))


def swap_in_forgery(lab: RestoreLab, row: BackupRow, pwned: Path) -> bytes:
    obj = lab.store_dir / row.key
    sidecar_before = Path(f"{obj}.sha256").read_text()
    forged = forged_dump(lab.dbname, pwned, obj.stat().st_size)
    obj.write_bytes(forged)
    assert obj.stat().st_size == row.bytes  # HEAD says nothing changed
    assert Path(f"{obj}.sha256").read_text() == sidecar_before  # nor does the sidecar
    assert hashlib.sha256(forged).hexdigest() != row.sha256  # only the content does
    # and the forgery is real: it decompresses into the attacker's SQL
    plain = b"".join(decompress([forged], "zstd"))
    assert b"\\! id > " in plain and b"\\connect" in plain
    return forged


def assert_nothing_ran(lab: RestoreLab, pwned: Path, before: dict[str, str]) -> None:
    assert not pwned.exists(), "the shell escape ran"
    assert lab.checksums() == before, "the live database changed"
    tables = lab.execute("select to_regclass('public.pwned_by_backup')::text")
    assert tables == [(None,)], "the forged SQL created a table in the live database"
    assert lab.databases() == [lab.dbname], "a scratch database was left behind"


def test_restore_refuses_a_swapped_object_before_psql_sees_it(
    restore_lab: RestoreLab, tmp_path: Path
) -> None:
    lab = restore_lab
    row = take_backup(lab)
    lab.change_data()
    before = lab.checksums()
    pwned = tmp_path / "pwned.txt"
    swap_in_forgery(lab, row, pwned)

    state = restore(env="lab", database="main", requested_by="tester", return_state=True)
    report: Any = state.result(raise_on_failure=False)

    assert_nothing_ran(lab, pwned, before)
    assert state.is_failed()
    assert isinstance(report, RestoreReport), report
    error = report.databases[0].error or ""
    assert "sha256" in error and "does not match" in error and row.key in error, error
    assert "Nothing was touched" in error, error


def test_drill_refuses_a_swapped_object_before_psql_sees_it(
    restore_lab: RestoreLab, tmp_path: Path
) -> None:
    lab = restore_lab
    row = take_backup(lab)
    before = lab.checksums()
    pwned = tmp_path / "pwned.txt"
    swap_in_forgery(lab, row, pwned)

    state = dr_drill(env="lab", requested_by="tester", return_state=True)
    report: Any = state.result(raise_on_failure=False)

    assert_nothing_ran(lab, pwned, before)
    assert state.is_failed()
    assert isinstance(report, DrillReport), report
    [main] = [d for d in report.databases if d.database == "main"]
    assert main.outcome == "failed"
    text = " ".join(main.problems)
    assert "sha256" in text and "does not match" in text, main
    verified = [r for r in lab.ledger().backups(env="lab") if r.status == "verified"]
    assert row.backup_id not in {r.backup_id for r in verified}  # never marked verified


def test_truncated_object_is_refused_by_restore_and_drill_before_any_change(
    restore_lab: RestoreLab,
) -> None:
    lab = restore_lab
    row = take_backup(lab)
    lab.change_data()
    before = lab.checksums()
    obj = lab.store_dir / row.key
    obj.write_bytes(obj.read_bytes()[: row.bytes // 2])  # a copy cut short, sidecar untouched

    state = restore(env="lab", database="main", requested_by="tester", return_state=True)
    drill = dr_drill(env="lab", requested_by="tester", return_state=True)

    assert lab.checksums() == before  # the live database was never touched
    assert lab.databases() == [lab.dbname]  # no scratch database was made
    assert state.is_failed() and drill.is_failed()
    restored: Any = state.result(raise_on_failure=False)
    drilled: Any = drill.result(raise_on_failure=False)
    message = str(state.message) + " ".join(restored.errors if restored is not None else [])
    assert f"holds {row.bytes // 2} bytes" in message, message
    [main] = [d for d in drilled.databases if d.database == "main"]
    assert main.outcome == "failed" and not main.scratch
    assert any(f"holds {row.bytes // 2} bytes" in p for p in main.problems), main.problems
    steps = {
        s.step for r in lab.ledger().runs(env="lab") for s in lab.ledger().steps(r.flow_run_id)
    }
    assert "restore_postgres" not in steps  # refused before the restore step began
