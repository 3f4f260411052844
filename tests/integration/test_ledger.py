"""The ledger on SQLite and on a real PostgreSQL (every test runs on both): 64-bit byte counts,
the schema made by the migrations, and tampering by someone who can write the database but
does not have the key — an edited column, an edited payload, hashes recomputed without the
key, a row deleted in the middle, the tail cut, a table emptied with its head — each caught,
the last two against the heads published outside the database."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from opsflow.catalog import fold
from opsflow.errors import InputError
from opsflow.ledger import Base, Ledger, PublishedHeads, utcnow
from opsflow.ledger.chain import row_mac, sign_heads
from opsflow.ledger.schema import HEAD, MIGRATIONS, alembic_config

pytestmark = pytest.mark.integration
Tamper = Callable[..., None]
Open = Callable[..., Ledger]
ATTACKER_KEY = b"not the ledger key, 32 bytes ok!"
GIB = 2**30


def fill(ledger: Ledger, steps: int = 4) -> None:
    for i in range(steps):
        ledger.record_step(
            flow_run_id="run-1",
            runbook="health-check",
            env="local",
            step="check_disk",
            target=f"/d{i}",
            status="healthy",
            summary="ok",
            details={"free": i},
        )
    ledger.record_run(
        flow_run_id="run-1",
        runbook="health-check",
        env="local",
        status="healthy",
        started_at=utcnow(),
        finished_at=utcnow(),
    )


def backup(ledger: Ledger, size: int, key: str = "k1") -> None:
    ledger.record_backup(
        env="prod",
        database="main",
        kind="postgres",
        store_url="file:///b",
        key=key,
        bytes=size,
        sha256="a" * 64,
        status="complete",
        created_at=utcnow(),
        duration_ms=3 * 24 * 3600 * 1000,
    )


def problems(ledger: Ledger, *published: PublishedHeads) -> list[str]:
    return [str(p) for p in ledger.verify(published).problems]


def published(ledger: Ledger) -> PublishedHeads:
    return PublishedHeads("test", ledger.heads())


# ----- schema and values ------------------------------------------------------------------


def test_the_migrations_make_the_models_schema(open_ledger: Open, ledger_url: str) -> None:
    ledger = open_ledger()
    with ledger.engine.connect() as conn:
        assert conn.execute(text("select version_num from alembic_version")).scalar() == HEAD
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    config = alembic_config(None, lambda: b"")  # type: ignore[arg-type]
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD
    assert MIGRATIONS.is_dir()


def test_an_intact_ledger_verifies_and_rows_carry_their_payload(open_ledger: Open) -> None:
    ledger = open_ledger()
    fill(ledger)
    report = ledger.verify()
    assert report.ok and report.rows == 5
    steps = ledger.steps("run-1")
    assert [s.seq for s in steps] == [1, 2, 3, 4]
    body = json.loads(steps[1].payload)
    assert (body["v"], body["table"], body["seq"]) == (1, "steps", 2)
    assert body["row"]["target"] == "/d1" and body["row"]["details"] == {"free": 1}
    assert steps[1].prev_hash == steps[0].row_hash


def test_byte_counts_over_2_gib_round_trip(open_ledger: Open, ledger_url: str) -> None:
    ledger = open_ledger()
    for size in (2 * GIB + 1, 3 * GIB, 5 * 2**40):
        backup(ledger, size, key=f"k{size}")
    assert sorted(r.bytes for r in ledger.backups()) == [2 * GIB + 1, 3 * GIB, 5 * 2**40]
    assert all(r.duration_ms == 3 * 24 * 3600 * 1000 for r in ledger.backups())
    assert ledger.verify().ok
    with ledger.engine.connect() as conn:
        columns = {c["name"]: c["type"] for c in inspect(conn).get_columns("backups")}
    assert "BIGINT" in str(columns["bytes"]).upper()


def test_values_are_stored_as_they_read_back_on_either_database(open_ledger: Open) -> None:
    ledger = open_ledger()
    ledger.record_step(
        flow_run_id="r",
        runbook="x",
        env="e",
        step="s",
        target="t" * 2000,  # longer than the old VARCHAR(256)
        status="critical",
        summary="nul \x00 byte",
        details={"ratio": float("nan"), "pair": (1, 2), 3: "int key"},
    )
    [row] = ledger.steps("r")
    assert row.summary == "nul \ufffd byte" and len(row.target) == 2000
    assert row.details == {"ratio": "nan", "pair": [1, 2], "3": "int key"}
    assert ledger.verify().ok
    with pytest.raises(ValueError, match=r"steps.status: 40 characters, at most 32"):
        ledger.record_step(
            flow_run_id="r", runbook="x", env="e", step="s", target="t", status="x" * 40
        )


def test_catalog_and_approvals_read_back_in_chain_order(open_ledger: Open) -> None:
    ledger = open_ledger()
    common = {"flow_run_id": "r", "action": "restore", "env": "prod", "requested_by": "alice"}
    ledger.record_approval(event="requested", **common)
    ledger.record_approval(event="refused", actor="alice", reason="four-eyes", **common)
    assert ledger.pending_approval("r") is not None
    ledger.record_approval(event="approved", actor="bob", reason="ok", **common)
    assert ledger.pending_approval("r") is None
    backup(ledger, 10, key="k1")
    backup(ledger, 10, key="k2")
    first = next(r for r in ledger.backups() if r.key == "k1")
    ledger.mark_verified(first, verified_at=utcnow(), flow_run_id="drill", how="dr-drill")
    catalog = fold(ledger.backups(env="prod", limit=None))
    assert [(r.key, r.status) for r in catalog] == [("k2", "complete"), ("k1", "verified")]
    assert ledger.verify().ok


def test_secrets_are_redacted_before_they_are_signed(open_ledger: Open) -> None:
    ledger = open_ledger()
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
    [row] = ledger.steps("r")
    assert "topsecret1" not in row.summary + str(row.details) + row.payload
    assert ledger.verify().ok


def test_concurrent_writers_make_one_unbroken_chain(open_ledger: Open, ledger_url: str) -> None:
    open_ledger().record_run(  # creates the key and records its id once
        flow_run_id="r0",
        runbook="x",
        env="e",
        status="ok",
        started_at=utcnow(),
        finished_at=utcnow(),
    )
    errors: list[BaseException] = []

    def write(n: int) -> None:
        ledger = Ledger(ledger_url)  # its own engine, like another process
        try:
            for i in range(15):
                ledger.record_step(
                    flow_run_id=f"w{n}", runbook="x", env="e", step="s", target=str(i), status="ok"
                )
        except BaseException as exc:
            errors.append(exc)
        finally:
            ledger.close()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    ledger = open_ledger()
    report = ledger.verify([published(ledger)])
    assert report.ok and report.rows == 61


# ----- tampering --------------------------------------------------------------------------


def test_an_edited_column_is_detected(open_ledger: Open, ledger_url: str, tamper: Tamper) -> None:
    ledger = open_ledger()
    fill(ledger)
    tamper(ledger_url, "update steps set status = 'critical' where seq = 2")
    found = problems(ledger)
    assert len(found) == 1
    assert found[0].startswith('steps row seq 2: column status is "critical"')
    assert 'written as "healthy"' in found[0]


def test_an_edited_payload_is_detected(open_ledger: Open, ledger_url: str, tamper: Tamper) -> None:
    ledger = open_ledger()
    fill(ledger)
    tamper(ledger_url, "update steps set status = 'critical' where seq = 2")
    tamper(
        ledger_url,
        "update steps set payload = replace(payload, 'healthy', 'critical') where seq = 2",
    )
    found = problems(ledger)
    assert found == [
        "steps row seq 2: its hash does not match its stored payload: the payload or the hash "
        "was changed, or the row was written without the ledger key"
    ]


def test_hashes_recomputed_without_the_key_are_detected(
    open_ledger: Open, ledger_url: str, tamper: Tamper
) -> None:
    """The attacker edits row 2 consistently and re-chains everything after it, with a key
    of their own (all they can do without ours): every rewritten row fails its HMAC."""
    ledger = open_ledger()
    fill(ledger)
    steps = ledger.steps("run-1")
    prev = steps[0].row_hash
    for row in steps[1:]:
        payload = row.payload.replace("healthy", "critical")
        forged = row_mac(ATTACKER_KEY, 1, prev, payload)
        tamper(
            ledger_url,
            "update steps set status = 'critical', payload = :p, prev_hash = :prev, "
            "row_hash = :h where seq = :s",
            p=payload,
            prev=prev,
            h=forged,
            s=row.seq,
        )
        prev = forged
    tamper(ledger_url, "update chain_heads set row_hash = :h where table_name = 'steps'", h=prev)
    found = problems(ledger)
    assert [p.split(":")[0] for p in found] == [f"steps row seq {s}" for s in (2, 3, 4)]
    assert all("does not match its stored payload" in p for p in found)


def test_a_row_deleted_in_the_middle_is_detected(
    open_ledger: Open, ledger_url: str, tamper: Tamper
) -> None:
    ledger = open_ledger()
    fill(ledger)
    tamper(ledger_url, "delete from steps where seq = 2")
    assert problems(ledger) == ["steps row seq 2: rows seq 2 are missing: deleted"]
    # re-linking the next row to the one before the gap does not hide it
    first = ledger.steps("run-1")[0]
    tamper(ledger_url, "update steps set prev_hash = :h where seq = 3", h=first.row_hash)
    found = problems(ledger)
    assert found[0] == "steps row seq 2: rows seq 2 are missing: deleted"
    assert "steps row seq 3: its hash does not match its stored payload" in found[1]


def test_a_cut_tail_is_detected_against_the_published_heads(
    open_ledger: Open, ledger_url: str, tamper: Tamper
) -> None:
    ledger = open_ledger()
    fill(ledger)
    heads = published(ledger)
    tamper(ledger_url, "delete from steps where seq = 4")
    assert problems(ledger) == [
        "steps table: its chain head says it ends at seq 4, the last row is seq 3: rows at "
        "the end were removed"
    ]
    # ... and with the database's own chain head moved back too, only the published heads
    # still know: that is what they are for
    third = ledger.steps("run-1")[-1]
    tamper(
        ledger_url,
        "update chain_heads set seq = 3, row_hash = :h where table_name = 'steps'",
        h=third.row_hash,
    )
    assert problems(ledger) == []
    found = problems(ledger, heads)
    assert len(found) == 1 and found[0].startswith("steps row seq 4: the table ends at seq 3")
    assert "rows 4 were removed (the tail cut, or the table emptied)" in found[0]


@pytest.mark.parametrize("how", ["head reset", "head deleted", "all heads deleted", "dropped"])
def test_a_table_emptied_with_its_head_is_detected(
    open_ledger: Open, ledger_url: str, tamper: Tamper, how: str
) -> None:
    ledger = open_ledger()
    fill(ledger)
    heads = published(ledger)
    if how == "dropped":
        tamper(ledger_url, "drop table steps")
    else:
        tamper(ledger_url, "delete from steps")
    if how == "head reset":
        zero = "0" * 64
        tamper(
            ledger_url,
            "update chain_heads set seq = 0, row_hash = :z where table_name = 'steps'",
            z=zero,
        )
        assert problems(ledger) == []  # the database alone looks fine ...
    elif how == "all heads deleted":
        tamper(ledger_url, "delete from chain_heads")
    else:
        tamper(ledger_url, "delete from chain_heads where table_name = 'steps'")
    found = problems(ledger, heads)  # ... the published heads do not
    expected = (
        "steps table: the table is missing"
        if how == "dropped"
        else "steps row seq 4: the table ends at seq 0, but the heads published"
    )
    assert any(p.startswith(expected) for p in found), found


def test_forged_or_foreign_heads_are_refused(open_ledger: Open) -> None:
    ledger = open_ledger()
    fill(ledger)
    doc = ledger.heads()
    doc["heads"]["steps"]["seq"] = 1  # an attacker lowering the published head
    found = problems(ledger, PublishedHeads("forged.json", doc))
    assert found == [
        "heads table: published heads forged.json has a signature that does not match: it was "
        "changed or forged"
    ]
    signed = sign_heads(ATTACKER_KEY, doc["heads"], ledger="x", published_at=utcnow().astimezone())
    [found_foreign] = problems(ledger, PublishedHeads("foreign.json", signed))
    assert "is signed with key id" in found_foreign and "not with this key" in found_foreign


# ----- the key ----------------------------------------------------------------------------


def test_the_key_file_is_made_0600_on_first_use_and_never_stored(
    open_ledger: Open, ledger_home: Path, ledger_url: str
) -> None:
    key_file = ledger_home / "ledger.key"
    ledger = open_ledger()
    assert not key_file.exists()  # opening alone does not need the key
    fill(ledger)
    assert key_file.stat().st_mode & 0o777 == 0o600
    secret = key_file.read_text().strip()
    assert len(bytes.fromhex(secret)) == 32
    engine = create_engine(ledger_url)
    with engine.connect() as conn:
        dumped = [
            str(row)
            for table in ("steps", "runs", "chain_heads", "ledger_meta")
            for row in conn.execute(text(f"select * from {table}"))
        ]
    engine.dispose()
    assert secret not in "".join(dumped)
    assert open_ledger().verify().ok  # a second process finds the same key


def test_a_key_file_others_may_read_is_refused(open_ledger: Open, ledger_home: Path) -> None:
    fill(open_ledger())
    key_file = ledger_home / "ledger.key"
    key_file.chmod(0o644)
    with pytest.raises(InputError, match=r"mode 0644: other users may read the ledger key") as e:
        open_ledger().record_run(
            flow_run_id="r",
            runbook="x",
            env="e",
            status="ok",
            started_at=utcnow(),
            finished_at=utcnow(),
        )
    assert f"chmod 600 {key_file}" in str(e.value)


def test_a_signed_ledger_never_gets_a_new_key_file(open_ledger: Open, ledger_home: Path) -> None:
    fill(open_ledger())
    key_file = ledger_home / "ledger.key"
    key_file.unlink()
    with pytest.raises(InputError, match="there is no ledger key at"):
        open_ledger().record_step(
            flow_run_id="r", runbook="x", env="e", step="s", target="t", status="ok"
        )
    assert not key_file.exists()


def test_the_key_from_a_secret_reference(
    open_ledger: Open, ledger_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPSFLOW_LEDGER_KEY", "env:TEST_LEDGER_KEY")
    monkeypatch.setenv("TEST_LEDGER_KEY", "ab" * 32)
    fill(open_ledger())
    assert not (ledger_home / "ledger.key").exists()
    assert open_ledger().verify().ok
    monkeypatch.setenv("OPSFLOW_LEDGER_KEY", "ab" * 32)  # the value itself: refused
    with pytest.raises(InputError, match="OPSFLOW_LEDGER_KEY: holds a literal key") as e:
        open_ledger().verify()
    assert "ab" * 32 not in str(e.value)


def test_the_wrong_key_fails_clearly(open_ledger: Open, monkeypatch: pytest.MonkeyPatch) -> None:
    fill(open_ledger())
    monkeypatch.setenv("OPSFLOW_LEDGER_KEY", "env:TEST_LEDGER_KEY")
    monkeypatch.setenv("TEST_LEDGER_KEY", "cd" * 32)
    found = problems(open_ledger())
    assert len(found) == 1 and found[0].startswith("ledger_meta table: wrong key: the ledger is")
    with pytest.raises(InputError, match=r"is not the key the ledger .* is signed with"):
        open_ledger().record_step(
            flow_run_id="r", runbook="x", env="e", step="s", target="t", status="ok"
        )
    monkeypatch.delenv("OPSFLOW_LEDGER_KEY")
    assert open_ledger().verify().ok  # nothing was written with the wrong key
