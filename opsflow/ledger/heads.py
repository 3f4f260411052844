"""Published chain heads: the local copy in ``$OPSFLOW_HOME`` and the shape every copy has.

After each run the flow layer publishes the signed heads document (``Ledger.heads``) as an
artifact of the run, into the environment's backup store (``connectors.ledger_heads``) and
here, in ``$OPSFLOW_HOME/ledger-heads/<ledger id>.json``, one file per ledger URL. ``opsflow
ledger verify`` checks the database against every copy it finds.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opsflow.settings import Settings


@dataclass(frozen=True)
class PublishedHeads:
    """A heads document and where it was found (``doc`` is None when it could not be read:
    ``error`` says why)."""

    source: str
    doc: dict[str, Any] | None
    error: str = ""


def local_heads_path(settings: Settings, display_url: str) -> Path:
    label = hashlib.sha256(display_url.encode()).hexdigest()[:16]
    return settings.home.resolve() / "ledger-heads" / f"{label}.json"


def read_heads_file(path: Path) -> PublishedHeads | None:
    """The heads document in ``path``; None when there is no such file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        return PublishedHeads(str(path), None, f"cannot be read: {exc.strerror}")
    try:
        doc = json.loads(text)
    except ValueError:
        return PublishedHeads(str(path), None, "is not JSON")
    if not isinstance(doc, dict):
        return PublishedHeads(str(path), None, "is not a JSON object")
    return PublishedHeads(str(path), doc)


def covers(newer: dict[str, Any], older: dict[str, Any]) -> bool:
    """True when ``newer`` is at or past ``older`` on every table (so it may replace it)."""
    new_heads, old_heads = newer.get("heads", {}), older.get("heads", {})
    return all(
        table in new_heads and new_heads[table]["seq"] >= head["seq"]
        for table, head in old_heads.items()
        if isinstance(head, dict) and head.get("seq", 0)
    )


def write_heads_file(path: Path, doc: dict[str, Any]) -> bool:
    """Write ``doc`` to ``path`` atomically unless the file there is already further along
    (concurrent runs finish in any order). True when written."""
    existing = read_heads_file(path)
    if existing is not None and existing.doc is not None and not covers(doc, existing.doc):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".heads-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(doc, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return True
