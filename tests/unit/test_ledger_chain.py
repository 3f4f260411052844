"""The ledger's pure pieces (no database): the versioned canonical payload and its checks, the
signed heads document, key parsing. The database side is tests/integration/test_ledger*.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from opsflow.errors import InputError
from opsflow.ledger import CHAINED
from opsflow.ledger.chain import (
    PAYLOAD_COLUMNS,
    PAYLOAD_VERSION,
    build_payload,
    heads_problem,
    key_id,
    payload_problems,
    row_mac,
    sign_heads,
)
from opsflow.ledger.heads import covers
from opsflow.ledger.keys import LedgerKey
from opsflow.ledger.models import domain_columns

KEY = bytes(range(32))
WHEN = datetime(2026, 1, 5, 2, 0, 0, 123456)
STEP = {
    "recorded_at": WHEN,
    "flow_run_id": "run-1",
    "runbook": "backup",
    "env": "prod",
    "step": "dump_postgres",
    "target": "main",
    "status": "complete",
    "summary": "ok",
    "duration_ms": 3 * 2**32,
    "details": {"b": [1, 2], "a": "é"},
}


@pytest.mark.parametrize("model", CHAINED, ids=lambda m: m.__tablename__)
def test_the_current_payload_version_holds_every_column(model: type) -> None:
    """A column added to a model without a new payload version would go unsigned: fail."""
    assert set(PAYLOAD_COLUMNS[PAYLOAD_VERSION][model.__tablename__]) == set(domain_columns(model))


def test_the_payload_is_canonical_and_versioned() -> None:
    payload = build_payload("steps", 7, STEP)
    assert payload == build_payload("steps", 7, dict(reversed(STEP.items())))
    assert payload.isascii() and " " not in payload.replace("dump_postgres", "")
    body = json.loads(payload)
    assert (body["v"], body["table"], body["seq"]) == (1, "steps", 7)
    assert body["row"]["recorded_at"] == "2026-01-05T02:00:00.123456"
    assert body["row"]["duration_ms"] == 3 * 2**32
    aware = {**STEP, "recorded_at": WHEN.replace(tzinfo=UTC)}
    assert build_payload("steps", 7, aware) == payload


def test_payload_checks_name_the_edited_column_and_a_moved_row() -> None:
    payload = build_payload("steps", 7, STEP)
    assert payload_problems("steps", 7, 1, payload, STEP) == []
    edited = {**STEP, "status": "failed"}
    assert payload_problems("steps", 7, 1, payload, edited) == [
        'column status is "failed" but was written as "complete"'
    ]
    [moved] = payload_problems("steps", 8, 1, payload, STEP)
    assert "moved or renumbered" in moved
    assert payload_problems("steps", 7, 9, payload, STEP) == [
        "payload version 9 is unknown to this opsflow (upgrade opsflow)"
    ]
    assert payload_problems("steps", 7, 1, "{not json", STEP) == ["the stored payload is not JSON"]


def test_the_row_mac_covers_the_previous_hash_the_payload_and_the_version() -> None:
    payload = build_payload("steps", 1, STEP)
    base = row_mac(KEY, 1, "0" * 64, payload)
    assert base != row_mac(KEY, 1, "1" * 64, payload)
    assert base != row_mac(KEY, 2, "0" * 64, payload)
    assert base != row_mac(KEY, 1, "0" * 64, payload.replace("complete", "failed"))
    assert base != row_mac(bytes(32), 1, "0" * 64, payload)


def test_signed_heads_detect_every_change_and_another_key() -> None:
    heads = {"steps": {"seq": 3, "row_hash": "a" * 64}, "runs": {"seq": 0, "row_hash": "0" * 64}}
    doc = sign_heads(KEY, heads, ledger="sqlite:////l.db", published_at=WHEN.replace(tzinfo=UTC))
    assert heads_problem(KEY, doc) is None
    assert doc["key_id"] == key_id(KEY) and KEY.hex() not in json.dumps(doc)
    for change in (
        lambda d: d["heads"]["steps"].update(seq=2),
        lambda d: d["heads"]["steps"].update(row_hash="b" * 64),
        lambda d: d["heads"].pop("steps"),
        lambda d: d.update(published_at="2030-01-01T00:00:00+00:00"),
    ):
        changed = json.loads(json.dumps(doc))
        change(changed)
        assert heads_problem(KEY, changed) == (
            "has a signature that does not match: it was changed or forged"
        )
    assert "is signed with key id" in str(heads_problem(bytes(32), doc))
    assert heads_problem(KEY, {"format": "x"}) == "is not an opsflow ledger heads document"


def test_newer_heads_replace_older_ones_only_when_they_cover_them() -> None:
    def doc(steps: int, runs: int) -> dict[str, object]:
        return {"heads": {"steps": {"seq": steps}, "runs": {"seq": runs}}}

    assert covers(doc(5, 2), doc(4, 2)) and covers(doc(4, 2), doc(4, 2))
    assert not covers(doc(5, 1), doc(4, 2))


def test_keys_are_32_or_more_bytes_of_hex_and_never_shown() -> None:
    key = LedgerKey.from_text("ab" * 32 + "\n", "env:K", "OPSFLOW_LEDGER_KEY")
    assert key.secret == bytes([0xAB]) * 32 and "ab" * 32 not in repr(key)
    for bad in ("ab" * 16, "not hex at all, but quite a long string of text!!", ""):
        with pytest.raises(InputError, match="not 32 or more bytes written as hex") as raised:
            LedgerKey.from_text(bad, "env:K", "OPSFLOW_LEDGER_KEY")
        assert "openssl rand -hex 32" in str(raised.value)
