"""The chain: canonical payloads, their HMAC, and the signed chain heads (pure functions).

A row's **payload** is the canonical JSON of what was written, stored with the row::

    {"row": {<column>: <value>, ...}, "seq": 7, "table": "steps", "v": 1}

(sorted keys, no spaces, ASCII; datetimes as naive-UTC ISO 8601 with microseconds; a migrated
row also has ``"migrated": {"from": "sha256-chain", "row_hash": <its old hash>}``). Its
**row_hash** is ``HMAC-SHA256(key, "opsflow-ledger-row/<v>\\n<prev_hash>\\n<payload>")``, so
the hash covers the stored payload, not the current columns: a column added later does not
break old rows, and a version-1 row is checked against the version-1 columns only
(``PAYLOAD_COLUMNS``). Verification recomputes the HMAC from the stored payload *and* checks
that the payload still says what the row's columns say.

The **heads** are ``{table: {"seq": n, "row_hash": h}}`` in a small document signed with the
same key (``sign_heads``), published outside the database after each run.

Version 1 is frozen (a table added later, like ``alerts``, adds its columns to version 1: no
row of it was ever written with another shape): change a payload's shape only by adding
version 2 (with its columns in ``PAYLOAD_COLUMNS``) and keep version 1 readable, or every
stored row stops verifying.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

PAYLOAD_VERSION = 1
"""The version new rows are written with."""

PAYLOAD_COLUMNS: dict[int, dict[str, tuple[str, ...]]] = {
    1: {
        "runs": (
            "recorded_at",
            "flow_run_id",
            "runbook",
            "env",
            "status",
            "started_at",
            "finished_at",
            "triggered_by",
            "summary",
            "details",
        ),
        "steps": (
            "recorded_at",
            "flow_run_id",
            "runbook",
            "env",
            "step",
            "target",
            "status",
            "summary",
            "duration_ms",
            "details",
        ),
        "approvals": (
            "recorded_at",
            "flow_run_id",
            "action",
            "env",
            "event",
            "requested_by",
            "actor",
            "reason",
            "plan",
        ),
        "backups": (
            "recorded_at",
            "backup_id",
            "env",
            "database",
            "kind",
            "store_url",
            "key",
            "bytes",
            "sha256",
            "status",
            "created_at",
            "duration_ms",
            "flow_run_id",
            "details",
        ),
        "drills": (
            "recorded_at",
            "flow_run_id",
            "env",
            "database",
            "backup_id",
            "rto_seconds",
            "rpo_seconds",
            "targets",
            "outcome",
            "details",
        ),
        "alerts": (
            "recorded_at",
            "env",
            "alertname",
            "status",
            "fingerprint",
            "group_key",
            "labels",
            "annotations",
            "starts_at",
            "ends_at",
            "runbook",
            "flow_run_id",
            "outcome",
            "reason",
            "details",
        ),
    }
}
"""The columns each payload version holds, per table."""

HEADS_FORMAT = "opsflow-ledger-heads"
HEADS_VERSION = 1
_ROW_DOMAIN = b"opsflow-ledger-row/"
_HEADS_DOMAIN = b"opsflow-ledger-heads/1\n"
_KEY_ID_DOMAIN = b"opsflow-ledger key id"


def dumps(value: Any) -> str:
    """The one canonical JSON encoding (sorted keys, compact, ASCII, no NaN)."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def canonical(value: Any) -> Any:
    """A column value as it appears in a payload."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value.isoformat(timespec="microseconds")
    return value


def json_safe(value: Any) -> Any:
    """What a JSON column will give back: tuples as lists, keys as strings, other objects and
    non-finite floats as strings (PostgreSQL's json type rejects NaN)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, datetime):
        return canonical(value)
    return str(value)


def build_payload(
    table: str,
    seq: int,
    columns: Mapping[str, Any],
    version: int = PAYLOAD_VERSION,
    migrated_from: str | None = None,
) -> str:
    """The canonical payload of a row whose column values are ``columns``."""
    names = PAYLOAD_COLUMNS[version][table]
    body: dict[str, Any] = {
        "v": version,
        "table": table,
        "seq": seq,
        "row": {name: canonical(columns[name]) for name in names},
    }
    if migrated_from is not None:
        body["migrated"] = {"from": "sha256-chain", "row_hash": migrated_from}
    return dumps(body)


def row_mac(key: bytes, version: int, prev_hash: str, payload: str) -> str:
    message = _ROW_DOMAIN + f"{version}\n{prev_hash}\n{payload}".encode()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def key_id(key: bytes) -> str:
    """A public name of a key (it does not reveal the key): 16 hex digits."""
    return hmac.new(key, _KEY_ID_DOMAIN, hashlib.sha256).hexdigest()[:16]


def payload_problems(
    table: str, seq: int, version: int, payload: str, columns: Mapping[str, Any]
) -> list[str]:
    """What is wrong between a stored payload and the row's columns ([] when they agree)."""
    if version not in PAYLOAD_COLUMNS:
        return [f"payload version {version} is unknown to this opsflow (upgrade opsflow)"]
    try:
        body = json.loads(payload)
    except ValueError:
        return ["the stored payload is not JSON"]
    if not isinstance(body, dict) or not isinstance(body.get("row"), dict):
        return ["the stored payload has no row"]
    problems = []
    if body.get("v") != version or body.get("table") != table or body.get("seq") != seq:
        problems.append(
            f"the payload is of {body.get('table')!r} seq {body.get('seq')!r} "
            f"version {body.get('v')!r}: the row was moved or renumbered"
        )
    signed = body["row"]
    for name in PAYLOAD_COLUMNS[version][table]:
        actual = dumps(canonical(columns.get(name)))
        written = dumps(signed.get(name))
        if actual != written:
            problems.append(
                f"column {name} is {_short(actual)} but was written as {_short(written)}"
            )
    return problems


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----- heads -----------------------------------------------------------------------------


def sign_heads(
    key: bytes,
    heads: Mapping[str, Mapping[str, Any]],
    *,
    ledger: str,
    published_at: datetime,
    flow_run_id: str = "",
) -> dict[str, Any]:
    """The signed heads document published after a run."""
    doc: dict[str, Any] = {
        "format": HEADS_FORMAT,
        "version": HEADS_VERSION,
        "ledger": ledger,
        "key_id": key_id(key),
        "published_at": published_at.astimezone(UTC).isoformat(timespec="seconds"),
        "flow_run_id": flow_run_id,
        "heads": {
            table: {"seq": int(head["seq"]), "row_hash": str(head["row_hash"])}
            for table, head in sorted(heads.items())
        },
    }
    doc["signature"] = _heads_mac(key, doc)
    return doc


def _heads_mac(key: bytes, doc: Mapping[str, Any]) -> str:
    unsigned = {k: v for k, v in doc.items() if k != "signature"}
    return hmac.new(key, _HEADS_DOMAIN + dumps(unsigned).encode(), hashlib.sha256).hexdigest()


def heads_problem(key: bytes, doc: Any) -> str | None:
    """Why ``doc`` is not a heads document signed with ``key`` (None when it is)."""
    if not isinstance(doc, dict) or doc.get("format") != HEADS_FORMAT:
        return "is not an opsflow ledger heads document"
    if doc.get("version") != HEADS_VERSION:
        return f"has heads version {doc.get('version')!r}, this opsflow reads {HEADS_VERSION}"
    heads = doc.get("heads")
    if not isinstance(heads, dict) or not all(
        isinstance(h, dict) and isinstance(h.get("seq"), int) and isinstance(h.get("row_hash"), str)
        for h in heads.values()
    ):
        return "has no valid heads"
    signature = doc.get("signature")
    if not isinstance(signature, str) or not hmac.compare_digest(signature, _heads_mac(key, doc)):
        if doc.get("key_id") != key_id(key):
            return (
                f"is signed with key id {doc.get('key_id')!r}, not with this key "
                f"({key_id(key)}): another ledger's heads, or the wrong key"
            )
        return "has a signature that does not match: it was changed or forged"
    return None
