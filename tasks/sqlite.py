"""SQLite health check: open read-only, ``PRAGMA quick_check``, size and journal mode."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from opsflow.errors import PermanentError, TransientError, retry_on_transient
from opsflow.inventory import Database, Thresholds
from opsflow.results import CheckResult, Status

BUSY_TIMEOUT_S = 5.0
CHECK_DEADLINE_S = 45.0
_PROGRESS_EVERY = 10_000  # SQLite VM instructions between deadline checks
_CORRUPTION_MARKERS = ("malformed", "not a database", "corrupt", "encrypted")


def _open_read_only(path: Path, deadline: float) -> sqlite3.Connection:
    conn = sqlite3.connect(
        f"{path.as_uri()}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False
    )
    # A blocking quick_check on a huge file must not outlive the task: abort at the deadline.
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), _PROGRESS_EVERY)
    return conn


def _inspect(conn: sqlite3.Connection) -> dict[str, Any]:
    rows = [str(row[0]) for row in conn.execute("PRAGMA quick_check(20)")]
    problems = [
        line
        for text in rows
        for line in text.splitlines()
        if line.strip() and not line.startswith("*** in database")
    ]
    return {
        "quick_check": problems,
        "journal_mode": conn.execute("PRAGMA journal_mode").fetchone()[0],
        "busy_timeout_ms": conn.execute("PRAGMA busy_timeout").fetchone()[0],
        "page_size": conn.execute("PRAGMA page_size").fetchone()[0],
        "page_count": conn.execute("PRAGMA page_count").fetchone()[0],
        "freelist_count": conn.execute("PRAGMA freelist_count").fetchone()[0],
    }


@task(
    name="check_sqlite",
    timeout_seconds=60,
    retries=2,
    retry_delay_seconds=[1, 4],
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_on_transient,
    cache_policy=NO_CACHE,  # a health check must look at the present, never reuse a result
)
def check_sqlite(db: Database, thresholds: Thresholds, field: str) -> CheckResult:
    """Integrity (quick_check), size, journal mode and busy timeout of a SQLite file."""
    started = time.monotonic()
    assert db.path is not None  # the inventory model requires it for sqlite
    path = Path(db.path).expanduser().resolve()

    def result(status: Status, summary: str, details: dict[str, Any]) -> CheckResult:
        details = {"path": str(path), **details}
        elapsed = int((time.monotonic() - started) * 1000)
        return CheckResult(
            check="sqlite",
            target=db.name,
            status=status,
            summary=summary,
            details=details,
            duration_ms=elapsed,
        )

    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise PermanentError(
            f"{field}.path: SQLite database {path} {what} (fix: correct the path in the "
            "inventory, relative paths are taken from the worker's working directory, or "
            "restore the file from a backup)"
        )
    size = path.stat().st_size
    try:
        conn = _open_read_only(path, started + CHECK_DEADLINE_S)
        try:
            info = _inspect(conn)
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        text = str(exc)
        lowered = text.lower()
        if "interrupted" in lowered:
            raise TransientError(
                f"{field}: quick_check of {path} did not finish within {CHECK_DEADLINE_S:.0f}s"
            ) from None
        if "locked" in lowered or "busy" in lowered:
            raise TransientError(f"{field}: {path} is locked by a writer: {text}") from None
        if "unable to open" in lowered or "readonly" in lowered or "permission" in lowered:
            raise PermanentError(
                f"{field}.path: cannot open {path} read-only: {text} (fix: give the worker's "
                "user read access to the file and write access to its directory for WAL files)"
            ) from None
        if any(marker in lowered for marker in _CORRUPTION_MARKERS):
            return result(
                Status.CRITICAL,
                f"{path} is corrupted: {text} (fix: restore it from the newest verified backup)",
                {"size_bytes": size, "error": text},
            )
        raise PermanentError(f"{field}: cannot check {path}: {text}") from None

    details = {"size_bytes": size, **info}
    problems = info["quick_check"]
    if problems != ["ok"]:
        return result(
            Status.CRITICAL,
            f"{path} failed quick_check with {len(problems)} problem(s), first: {problems[0]} "
            "(fix: restore it from the newest verified backup, or try `.recover` in sqlite3)",
            details,
        )
    return result(
        Status.HEALTHY,
        f"quick_check ok, {size} bytes, journal_mode={info['journal_mode']}, "
        f"{info['freelist_count']} free page(s)",
        details,
    )
