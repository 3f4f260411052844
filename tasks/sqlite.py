"""SQLite, every concern in one place: the health check (open read-only, ``PRAGMA quick_check``,
size and journal mode), backup (``dump_sqlite``: online backup API into a temp copy, streamed
compressed to a store), restore (``restore_sqlite``: a checked temp file renamed over the
target, the old file kept aside), the DR drill's scratch copy (``drill_sqlite``) and maintenance
(``maintain_sqlite``: ``PRAGMA optimize``, ``VACUUM`` when enough pages are free, a truncating
WAL checkpoint)."""

from __future__ import annotations

import os
import sqlite3
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from connectors.stores import open_store
from connectors.stores.objects import RESTORE_TIMEOUT_S, BackupStream, DumpResult, NewBackup
from connectors.streams import iter_file
from opsflow.catalog import Codec, RestoreSource
from opsflow.deadlines import aware_deadline, deadline_passed, seconds_left, skipped_reason
from opsflow.errors import PermanentError, TransientError
from opsflow.inventory import BackupStore, Database, SqliteMaintenance, Thresholds
from opsflow.maintenance import Figure, MaintenanceStep
from opsflow.results import CheckResult, RestoreResult, Status, VerifyResult, compare_counts
from tasks.policy import api_task, probe_task, transfer_task

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


@probe_task("check_sqlite", timeout_seconds=60)
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


# --- dump (backup) ---------------------------------------------------------------------------

BACKUP_TIMEOUT_S = 3600


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _row_counts(conn: sqlite3.Connection) -> dict[str, int]:
    tables = [
        str(row[0])
        for row in conn.execute(
            "select name from sqlite_schema where type = 'table' "
            "and name not like 'sqlite_%' order by name"
        )
    ]
    return {t: int(conn.execute(f"select count(*) from {_quote(t)}").fetchone()[0]) for t in tables}


def snapshot_sqlite(source: Path, target: Path, deadline: float) -> dict[str, int]:
    """Copy a live SQLite database with the online backup API; return its row counts.

    The copy is taken in one step (a consistent snapshot even while writers are busy: WAL
    writers go on, rollback-journal writers wait at most their busy timeout), then checked
    with ``quick_check`` and counted, so the counts describe exactly what is in the copy.
    """
    src = _open_read_only(source, deadline)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
            problems = [str(row[0]) for row in dst.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                raise PermanentError(
                    f"the copy of {source} fails quick_check: {problems[0]} (fix: the source is "
                    "damaged; restore it from the newest verified backup)"
                )
            return _row_counts(dst)
        finally:
            dst.close()
    finally:
        src.close()


@transfer_task("dump_sqlite", timeout_seconds=BACKUP_TIMEOUT_S + 600)
def dump_sqlite(
    db: Database,
    store: BackupStore,
    env_name: str,
    when: datetime,
    codec: Codec = "zstd",
    field: str = "database",
) -> DumpResult:
    """Online-backup a SQLite file into a temp copy, then stream it compressed into the store.

    Consistent while the database is written. Stored under
    ``backup_key(env_name, db.name, when, "sqlite.zst")`` with a manifest holding the row
    count of every table.
    """
    started = time.monotonic()
    assert db.path is not None  # the inventory model requires it for sqlite
    path = Path(db.path).expanduser().resolve()
    if not path.is_file():
        raise PermanentError(
            f"{field}.path: SQLite database {path} does not exist (fix: correct the path in the "
            "inventory; relative paths are taken from the worker's working directory)"
        )
    new = NewBackup(store, env_name, db.name, "sqlite", "file", codec, when, started)
    with tempfile.TemporaryDirectory(prefix="opsflow-sqlite-") as scratch:
        copy = Path(scratch) / "backup.sqlite"
        try:
            counts = snapshot_sqlite(path, copy, started + BACKUP_TIMEOUT_S)
        except sqlite3.DatabaseError as exc:
            text = str(exc)
            if "locked" in text.lower() or "busy" in text.lower():
                raise TransientError(f"{field}: {path} is locked by a writer: {text}") from None
            raise PermanentError(f"{field}: cannot back up {path}: {text}") from None
        with copy.open("rb") as fileobj:
            return new.write(iter_file(fileobj), counts)


# --- restore and drill ----------------------------------------------------------------------


def check_sqlite_file(path: Path, source: RestoreSource, pragma: str) -> VerifyResult:
    """``PRAGMA integrity_check``/``quick_check`` and row counts of a restored SQLite file."""
    started = time.monotonic()
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        lines = [str(row[0]) for row in conn.execute(f"PRAGMA {pragma}(20)")]
        counts = _row_counts(conn) if lines == ["ok"] else {}
    except sqlite3.DatabaseError as exc:
        lines, counts = [f"cannot read the restored file: {exc}"], {}
    finally:
        conn.close()
    problems = [] if lines == ["ok"] else [f"{pragma} failed: {'; '.join(lines[:3])}"]
    if not problems:
        problems, _ = compare_counts(source.row_counts, counts, exact=True)
    return VerifyResult(
        target=str(path),
        ok=not problems,
        problems=problems,
        checks=[pragma, f"row counts of {len(source.row_counts)} table(s) against the manifest"],
        row_counts=counts,
        seconds=round(time.monotonic() - started, 3),
    )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_sqlite_copy(store: BackupStore, source: RestoreSource, temp: Path) -> tuple[int, int]:
    """Stream the backup into ``temp`` (fsynced); (stored bytes, file bytes). Removes ``temp``
    on any failure, so a corrupt or short object leaves nothing behind."""
    stream = BackupStream(open_store(store), source)
    try:
        with temp.open("xb") as out:
            for chunk in stream.plain:
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return stream.stored.size, stream.plain.size


@transfer_task("restore_sqlite", timeout_seconds=RESTORE_TIMEOUT_S + 600)
def restore_sqlite(
    db: Database, store: BackupStore, source: RestoreSource, target: str, stamp: str
) -> RestoreResult:
    """Restore into a temp file next to ``target``, check it (integrity_check, row counts),
    then rename it over ``target`` atomically; the replaced file stays as
    ``<target>.before-<stamp>`` (a hard link). Any failure leaves ``target`` untouched."""
    started = time.monotonic()
    path = Path(target).expanduser().resolve()
    if not path.parent.is_dir():
        raise PermanentError(f"directory {path.parent} does not exist (fix: create it first)")
    temp = path.with_name(f".{path.name}.restore-{stamp}.tmp")
    temp.unlink(missing_ok=True)  # a leftover of a killed attempt of this very run
    try:
        size, raw = write_sqlite_copy(store, source, temp)
    except PermanentError as exc:
        raise PermanentError(
            f"restore of {db.name} from backup {source.backup_id} stopped: {exc}. "
            f"{path} was not touched."
        ) from exc
    try:
        result = check_sqlite_file(temp, source, "integrity_check")
        if not result.ok:
            raise PermanentError(
                f"the restored copy of {db.name} failed its checks: {'; '.join(result.problems)}"
                f". {path} was not touched."
            )
        if path.exists():
            with sqlite3.connect(path, timeout=30) as conn:  # fold a leftover WAL into the old
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.close()
            aside = path.with_name(f"{path.name}.before-{stamp}")
            aside.unlink(missing_ok=True)
            os.link(path, aside)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    for suffix in ("-wal", "-shm", "-journal"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    _fsync_dir(path.parent)
    return RestoreResult.of(source, str(path), size, raw, started)


@transfer_task("drill_sqlite", timeout_seconds=RESTORE_TIMEOUT_S + 600)
def drill_sqlite(store: BackupStore, source: RestoreSource) -> tuple[RestoreResult, VerifyResult]:
    """Restore a SQLite backup into a temp file, ``quick_check`` it and count rows; the temp
    file is always removed."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="opsflow-drill-") as scratch:
        temp = Path(scratch) / f"{source.database}.sqlite"
        size, raw = write_sqlite_copy(store, source, temp)
        restored = RestoreResult.of(source, str(temp), size, raw, started)
        return restored, check_sqlite_file(temp, source, "quick_check")


# --- maintenance ------------------------------------------------------------------------------

MAINTENANCE_TIMEOUT_S = 3600
_LOCK_MARKERS = ("locked", "busy")


def sqlite_figures(path: Path, conn: sqlite3.Connection | None) -> dict[str, Figure]:
    """file_bytes, wal_bytes (0 without a WAL file), page_count and free_pages of a database;
    the page figures are None when ``conn`` is None (they could not be read)."""
    wal = Path(f"{path}-wal")
    figures: dict[str, Figure] = {
        "file_bytes": path.stat().st_size,
        "wal_bytes": wal.stat().st_size if wal.exists() else 0,
        "page_count": None,
        "free_pages": None,
    }
    if conn is not None:
        figures["page_count"] = int(conn.execute("PRAGMA page_count").fetchone()[0])
        figures["free_pages"] = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
    return figures


def vacuum_decision(page_count: int, free_pages: int, threshold_pct: float) -> tuple[bool, str]:
    """Whether to VACUUM (free pages at least ``threshold_pct`` of the file) and why."""
    pct = 100.0 * free_pages / page_count if page_count else 0.0
    share = f"{free_pages} of {page_count} page(s) free ({pct:.1f}%)"
    if page_count and pct >= threshold_pct:
        return True, f"VACUUM: {share}, at or above vacuum_free_pct {threshold_pct:g}%"
    return False, f"no VACUUM: {share}, below vacuum_free_pct {threshold_pct:g}%"


def _open_for_maintenance(path: Path, busy_timeout_s: float, stop_at: float) -> sqlite3.Connection:
    # mode=rw: never create a database that is not there
    conn = sqlite3.connect(
        f"{path.as_uri()}?mode=rw",
        uri=True,
        timeout=busy_timeout_s,
        isolation_level=None,  # VACUUM cannot run inside a transaction
        check_same_thread=False,
    )
    conn.set_progress_handler(lambda: int(time.monotonic() > stop_at), _PROGRESS_EVERY)
    return conn


def _maintenance_problem(exc: sqlite3.Error, path: Path, field: str, busy_s: float) -> str:
    """The operator's message for a failure that leaves the database as it was (locked, the
    deadline); anything else is raised as a PermanentError."""
    text = str(exc)
    lowered = text.lower()
    if any(marker in lowered for marker in _LOCK_MARKERS):
        return (
            f"{path} is locked by another connection holding a write transaction for more than "
            f"the {busy_s:g}s busy timeout: {text}; the rest of the maintenance was not run "
            "(fix: run it while the application is stopped or in maintenance mode)"
        )
    if "interrupted" in lowered:
        return (
            f"stopped at the deadline: {text}; an unfinished VACUUM is rolled back, so {path} is "
            "as it was (fix: give the maintenance window more time)"
        )
    if "unable to open" in lowered or "readonly" in lowered or "permission" in lowered:
        raise PermanentError(
            f"{field}.path: cannot open {path} for writing: {text} (fix: give the worker's user "
            "write access to the file and its directory)"
        ) from None
    if any(marker in lowered for marker in _CORRUPTION_MARKERS):
        raise PermanentError(
            f"{field}: {path} is corrupted: {text} (fix: restore it from the newest verified "
            "backup)"
        ) from None
    raise PermanentError(f"{field}: cannot maintain {path}: {text}") from None


def _checkpoint(conn: sqlite3.Connection) -> tuple[str, bool]:
    """``PRAGMA wal_checkpoint(TRUNCATE)``: (what happened, whether it completed)."""
    busy, frames, done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    if frames == -1:
        return "no WAL checkpoint: the database is not in WAL mode", True
    if busy:
        return (
            f"WAL checkpoint incomplete: {done} of {frames} frame(s) copied, a reader or writer "
            "was active (fix: rerun when the application is idle)",
            False,
        )
    return "WAL checkpointed and truncated", True


def maintain_sqlite_file(
    db: Database,
    field: str,
    settings: SqliteMaintenance,
    *,
    deadline: datetime | None = None,
    busy_timeout_s: float = BUSY_TIMEOUT_S,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> MaintenanceStep:
    """``PRAGMA optimize``, ``VACUUM`` when free pages reach ``settings.vacuum_free_pct``, then
    ``PRAGMA wal_checkpoint(TRUNCATE)`` (after the VACUUM, so a WAL database shrinks too).

    A lock held past ``busy_timeout_s`` or the deadline stops the step as *degraded* (the file
    unchanged by the step that stopped, nothing else tried); a missing file is a PermanentError
    (the file is never created).
    """
    started = time.monotonic()
    deadline = aware_deadline(deadline)
    assert db.path is not None  # the inventory model requires it for sqlite
    path = Path(db.path).expanduser().resolve()
    step = MaintenanceStep(step="maintain_sqlite", target=db.name, details={"path": str(path)})
    if deadline is not None and deadline_passed(deadline, now()):
        step.status, step.summary = "skipped", skipped_reason(deadline, now())
        return step
    if not path.is_file():
        what = "is not a regular file" if path.exists() else "does not exist"
        raise PermanentError(
            f"{field}.path: SQLite database {path} {what} (fix: correct the path in the "
            "inventory, relative paths are taken from the worker's working directory, or "
            "restore the file from a backup)"
        )
    left = seconds_left(deadline, now())
    budget = MAINTENANCE_TIMEOUT_S if left is None else min(left, MAINTENANCE_TIMEOUT_S)
    done: list[str] = []
    problem: str | None = None
    try:
        conn = _open_for_maintenance(path, busy_timeout_s, started + budget)
    except sqlite3.Error as exc:
        problem = _maintenance_problem(exc, path, field, busy_timeout_s)
        step.before = step.after = sqlite_figures(path, None)
        step.status, step.summary = "degraded", problem
        step.seconds = round(time.monotonic() - started, 3)
        return step
    try:
        try:
            step.before = sqlite_figures(path, conn)
        except sqlite3.Error as exc:
            step.before = sqlite_figures(path, None)
            problem = _maintenance_problem(exc, path, field, busy_timeout_s)
        if problem is None:
            try:
                conn.execute("PRAGMA optimize")
                done.append("PRAGMA optimize")
                vacuum, reason = vacuum_decision(
                    int(step.before["page_count"] or 0),
                    int(step.before["free_pages"] or 0),
                    settings.vacuum_free_pct,
                )
                step.details["vacuum"] = reason
                if vacuum:
                    conn.execute("VACUUM")
                    done.append("VACUUM")
                checkpoint, complete = _checkpoint(conn)
                step.details["checkpoint"] = checkpoint
                done.append(checkpoint)
                if not complete:
                    problem = checkpoint
            except sqlite3.Error as exc:
                problem = _maintenance_problem(exc, path, field, busy_timeout_s)
        conn.set_progress_handler(None, 0)  # the figures after are read even past the deadline
        try:
            step.after = sqlite_figures(path, conn)
        except sqlite3.Error:
            step.after = sqlite_figures(path, None)
    finally:
        conn.close()
    step.details["done"] = done
    if problem is not None:
        step.status = "degraded"
        step.summary = f"{problem}; done: {', '.join(done) or 'nothing'}"
    else:
        step.summary = f"{step.details['vacuum']}; {step.details['checkpoint']}"
    step.seconds = round(time.monotonic() - started, 3)
    return step


@api_task("maintain_sqlite", timeout_seconds=MAINTENANCE_TIMEOUT_S + 60)
def maintain_sqlite(
    db: Database, field: str, settings: SqliteMaintenance, *, deadline: datetime | None = None
) -> MaintenanceStep:
    """Optimize, VACUUM when enough pages are free, and truncate the WAL of a SQLite file;
    see ``maintain_sqlite_file``."""
    return maintain_sqlite_file(db, field, settings, deadline=deadline)
