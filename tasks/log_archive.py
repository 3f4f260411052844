"""Log archive (maintenance): log files over a size or an age go compressed into the backup
store, with the rules of every backup, and only then are truncated or removed.

Which files: those matching the policy's glob (``maintenance.log_archive[].path``) that are
regular files, not empty, and over ``max_size`` (bytes on disk) or older than ``max_age``
(modification time). A matched name that is a symbolic link is never followed, archived,
truncated or removed: it is listed in the step's ``details.skipped`` and left as it is (so a
link cannot make opsflow read or empty a file outside the glob; directories named in the glob
itself are resolved as usual). Directories, sockets and other non-regular files are
ignored.

How one file is archived (``archive_log_files``), in this order, each step only after the one
before succeeded:

1. opened read-only without following a link (``O_NOFOLLOW``) and checked to be the file that
   was listed (same device and inode);
2. streamed (read to its end, constant memory) through ``connectors.stores.objects.store_dump``:
   compressed (zstd), hashed and stored at a key of its own with its checksum file, then its
   manifest — the object is visible only when complete;
3. confirmed in the store (``tasks.backups.confirm_backup``: present, same size and sha256,
   manifest there);
4. catalogued: one ledger backup row of kind ``log`` (``opsflow.catalog.LOG_KIND``) in the
   series ``(env, "log", "logs")``, so backup retention (``retention_days`` of the store)
   deletes it like any backup; restore and the DR drill never offer it (``ARCHIVE_KINDS``);
5. truncated or removed (``then``).

Anything failing in 1-4 (a store that refuses the write, a checksum that does not match, the
ledger) leaves the file exactly as it was; the step fails and names the file (an object stored
but not catalogued stays in the store as an uncatalogued object, which retention reports and
never counts as a backup). A file archived and catalogued that cannot be emptied (an
append-only file, say) is listed in ``details.left`` and degrades the step.

``then: truncate`` is copy-truncate (logrotate's ``copytruncate``): the writer keeps its file
open and goes on writing at the start of the emptied file. The file is read to its end, so the
copy catches up with the writer; the file is then truncated right after the archive was
confirmed and catalogued. **Lines written between the end of the copy and the truncate are
lost**: that window is the store's finish of the upload plus the confirmation (milliseconds for
a local store, typically well under a second for S3); their count in bytes is measured at the
truncate and reported (``details.objects[].unarchived_bytes``, ``after.unarchived_bytes`` and
the summary). A file that was replaced meanwhile (another inode at the path: rotated by
someone else) or that shrank (truncated by someone else) is not touched; the step is degraded.

``then: remove`` removes the file only if it is still the same file with exactly the bytes that
were archived; a file written to while it was archived is left in place (the step is degraded;
the next run archives it again, the part archived now a second time). Remove suits rotated
files nobody writes to (``/var/log/app/*.log.1``), truncate the live file.

Store layout: ``<env>/logs/<YYYY>/<MM>/<stamp>-<suffix>.<file name>.zst`` (the file name's
letters and digits joined by dots, e.g. ``app.log``; ``connectors.stores.base.backup_key``)
with the manifest at ``<env>/logs/<YYYY>/<MM>/<stamp>-<suffix>.manifest.json``. The original
path, its size, sha256 and modification time are in the ledger row's details.

With a ``deadline`` (timezone-aware), files not yet started when it has passed are not started:
they are listed in ``details.not_started`` and the step is degraded. A file under way is
finished.
"""

from __future__ import annotations

import glob
import os
import re
import stat
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from connectors.stores import open_store
from connectors.stores.base import Store
from connectors.stores.objects import DumpResult, choose_key, store_dump
from connectors.streams import EXTENSIONS, Hashed, iter_file
from opsflow.backup_names import LOG_ARCHIVE_NAME
from opsflow.catalog import LOG_KIND, Codec
from opsflow.errors import InputError, OpsflowError
from opsflow.inventory import BackupStore, Environment
from opsflow.inventory.maintenance import LogArchive
from opsflow.ledger import Ledger
from opsflow.maintenance import MaintenanceStep
from opsflow.redaction import redact
from opsflow.units import format_bytes
from tasks.backups import catalogue_dump, confirm_backup
from tasks.policy import transfer_task

STEP = "archive_logs"
LOG_CODEC: Codec = "zstd"
ARCHIVE_TIMEOUT_S = 6 * 3600
MAX_SLUG = 64
_NOT_ALNUM = re.compile(r"[^A-Za-z0-9]+")


@dataclass(frozen=True)
class LogFileFound:
    """A regular file over the policy's limits, as it was listed."""

    path: str
    size: int
    mtime: float
    device: int
    inode: int
    why: str


@dataclass
class Listing:
    """What the glob matched: files over a limit, and what was passed over and why."""

    over: list[LogFileFound]
    skipped: list[dict[str, str]]

    @property
    def figures(self) -> dict[str, int]:
        return {"files": len(self.over), "bytes": sum(f.size for f in self.over)}


def list_log_files(policy: LogArchive, now: datetime) -> Listing:
    """The regular, non-empty files matching ``policy.path`` that are over ``max_size`` or
    older than ``max_age`` (sorted by path); symbolic links are listed as skipped."""
    over: list[LogFileFound] = []
    skipped: list[dict[str, str]] = []
    cutoff = (now - policy.max_age).timestamp() if policy.max_age is not None else None
    for path in sorted(glob.glob(policy.path)):
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            continue  # gone between the glob and now
        if stat.S_ISLNK(info.st_mode):
            skipped.append({"path": path, "why": "symbolic link: not followed, left as it is"})
            continue
        if not stat.S_ISREG(info.st_mode) or info.st_size == 0:
            continue
        reasons = []
        if policy.max_size is not None and info.st_size > policy.max_size:
            reasons.append(f"{format_bytes(info.st_size)} > {format_bytes(policy.max_size)}")
        if cutoff is not None and info.st_mtime < cutoff:
            reasons.append(f"modified {datetime.fromtimestamp(info.st_mtime, UTC):%Y-%m-%d %H:%M}")
        if reasons:
            over.append(
                LogFileFound(
                    path, info.st_size, info.st_mtime, info.st_dev, info.st_ino, ", ".join(reasons)
                )
            )
    return Listing(over, skipped)


def archive_extension(path: str, codec: Codec = LOG_CODEC) -> str:
    """``app.log.zst`` for ``/var/log/app/app.log``: the file name's letters and digits joined
    by dots (a store key's extension), then the codec's."""
    parts = [part for part in _NOT_ALNUM.split(Path(path).name) if part]
    slug = ".".join(parts)[:MAX_SLUG].strip(".") or "log"
    return slug + EXTENSIONS[codec]


class _LeftAlone(Exception):
    """The file changed in a way that makes truncating or removing it unsafe."""


@dataclass
class _Archiver:
    env_name: str
    store: BackupStore
    backend: Store
    policy: LogArchive
    ledger: Ledger
    flow_run_id: str

    def archive(self, found: LogFileFound) -> dict[str, Any]:
        """Archive one file (steps 1-4 of the module docstring), then truncate or remove it."""
        started = time.monotonic()
        fd = os.open(found.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as handle:
            opened = os.fstat(handle.fileno())
            if (opened.st_dev, opened.st_ino) != (found.device, found.inode):
                raise _LeftAlone("replaced since it was listed")
            when = datetime.now(UTC)
            key = choose_key(
                self.backend, self.env_name, LOG_ARCHIVE_NAME, when, archive_extension(found.path)
            )
            raw = Hashed(iter_file(handle), what=found.path)
            dump = store_dump(
                self.store,
                key,
                raw,
                database=LOG_ARCHIVE_NAME,
                kind=LOG_KIND,
                via="file",
                codec=LOG_CODEC,
                row_counts={},
                started=started,
                created_at=when,
                backend=self.backend,
            )
        confirm_backup.fn(store=self.store, key=dump.key, sha256=dump.sha256, size=dump.bytes)
        row = self._record(found, dump, raw)
        try:
            done, unarchived, why = *self._then(found, raw.size), ""
        except _LeftAlone as exc:
            done, unarchived, why = "left", 0, str(exc)
        except OSError as exc:  # e.g. an append-only file: archived and catalogued, not emptied
            verb = "removed" if self.policy.then == "remove" else "truncated"
            done, unarchived, why = "left", 0, f"archived but could not be {verb}: {exc.strerror}"
        return {
            "path": found.path,
            "why": found.why,
            "key": dump.key,
            "bytes": dump.bytes,
            "sha256": dump.sha256,
            "raw_bytes": raw.size,
            "raw_sha256": raw.sha256,
            "backup_id": row.backup_id,
            "then": done,
            "left_because": why,
            "unarchived_bytes": unarchived,
            "seconds": round(time.monotonic() - started, 3),
        }

    def _record(self, found: LogFileFound, dump: DumpResult, raw: Hashed) -> Any:
        return catalogue_dump(
            self.ledger,
            env=self.env_name,
            name=LOG_ARCHIVE_NAME,
            kind=LOG_KIND,
            store_url=self.store.url,
            dump=dump,
            flow_run_id=self.flow_run_id,
            details={
                "via": "file",
                "raw_bytes": raw.size,
                "raw_sha256": raw.sha256,
                "path": found.path,
                "modified_at": datetime.fromtimestamp(found.mtime, UTC).isoformat(),
                "policy": self.policy.path,
                "then": self.policy.then,
            },
        )

    def _then(self, found: LogFileFound, archived: int) -> tuple[str, int]:
        """Truncate or remove the archived file: (what was done, bytes lost in the window)."""
        if self.policy.then == "remove":
            now = os.lstat(found.path)
            if (now.st_dev, now.st_ino) != (found.device, found.inode):
                raise _LeftAlone("replaced while it was archived; the archive is kept")
            if now.st_size != archived:
                raise _LeftAlone(
                    f"written to while it was archived ({now.st_size} bytes now, {archived} "
                    "archived): left in place, the next run archives it again"
                )
            os.unlink(found.path)
            return "removed", 0
        fd = os.open(found.path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            now = os.fstat(fd)
            if (now.st_dev, now.st_ino) != (found.device, found.inode):
                raise _LeftAlone("replaced while it was archived; the archive is kept")
            if now.st_size < archived:
                raise _LeftAlone(
                    f"shrank while it was archived ({now.st_size} < {archived} bytes): "
                    "left as it is"
                )
            os.ftruncate(fd, 0)  # copy-truncate: bytes written since the copy ended are lost
            return "truncated", now.st_size - archived
        finally:
            os.close(fd)


def _utc_deadline(deadline: datetime | None) -> datetime | None:
    if deadline is not None and deadline.tzinfo is None:
        raise InputError(
            "deadline", "is a naive datetime", "pass a timezone-aware time, e.g. in UTC"
        )
    return deadline


def archive_log_files(
    env_name: str,
    env: Environment,
    policy: LogArchive,
    ledger: Ledger,
    *,
    flow_run_id: str,
    deadline: datetime | None = None,
    now: datetime | None = None,
) -> MaintenanceStep:
    """Archive the files of ``policy`` (see the module docstring) and report: ``before`` /
    ``after`` the files and bytes over the policy's limits on disk, ``details.objects`` what
    was written (key, bytes, sha256, ...), ``details.failed`` / ``left`` / ``not_started`` /
    ``skipped`` the rest. ``now`` (for the age limit) defaults to the current time."""
    started = time.monotonic()
    deadline = _utc_deadline(deadline)
    step = MaintenanceStep(step=STEP, target=policy.path)
    if env.backup_store is None:
        step.status = "failed"
        step.summary = (
            f"{env_name} has no backup_store, so log files cannot be archived (fix: add "
            f"backup_store: {{url: s3://bucket/prefix or file://dir}} under "
            f"environments.{env_name}, or remove maintenance.log_archive)"
        )
        return step
    listing = list_log_files(policy, now or datetime.now(UTC))
    step.before = dict(listing.figures)
    store = env.backup_store
    archiver = _Archiver(env_name, store, open_store(store), policy, ledger, flow_run_id)
    objects: list[dict[str, Any]] = []
    failed: list[dict[str, str]] = []
    left: list[dict[str, str]] = []
    not_started: list[str] = []
    for found in listing.over:
        if deadline is not None and datetime.now(UTC) >= deadline:
            not_started.append(found.path)
            continue
        try:
            archived = archiver.archive(found)
            objects.append(archived)
            if archived["left_because"]:
                left.append({"path": found.path, "why": archived["left_because"]})
        except _LeftAlone as exc:
            left.append({"path": found.path, "why": str(exc)})
        except (OpsflowError, OSError) as exc:
            failed.append({"path": found.path, "error": redact(str(exc) or type(exc).__name__)})
    step.after = {
        **list_log_files(policy, now or datetime.now(UTC)).figures,
        "archived_files": len(objects),
        "stored_bytes": sum(o["bytes"] for o in objects),
        "unarchived_bytes": sum(o["unarchived_bytes"] for o in objects),
    }
    step.details = {
        "store_url": store.url,
        "then": policy.then,
        "objects": objects,
        "failed": failed,
        "left": left,
        "not_started": not_started,
        "skipped": listing.skipped,
    }
    step.status = "failed" if failed else "degraded" if left or not_started else "complete"
    step.summary = redact(_summary(policy, listing, objects, failed, left, not_started))
    step.seconds = round(time.monotonic() - started, 3)
    return step


def _summary(
    policy: LogArchive,
    listing: Listing,
    objects: list[dict[str, Any]],
    failed: list[dict[str, str]],
    left: list[dict[str, str]],
    not_started: list[str],
) -> str:
    if not listing.over:
        text = f"no file matching {policy.path} is over its limits"
    else:
        raw = sum(o["raw_bytes"] for o in objects)
        stored = sum(o["bytes"] for o in objects)
        verb = "removed" if policy.then == "remove" else "truncated"
        text = (
            f"archived {len(objects)}/{len(listing.over)} file(s), {format_bytes(raw)} "
            f"({format_bytes(stored)} stored)"
        )
        done = sum(o["then"] == verb for o in objects)
        text += f", {done} {verb}"
    lost = sum(o["unarchived_bytes"] for o in objects)
    if lost:
        text += f"; {lost} byte(s) written during the copy were not archived (copy-truncate)"
    if failed:
        text += f"; FAILED {len(failed)}, left untouched: " + "; ".join(
            f"{f['path']}: {f['error']}" for f in failed[:3]
        )
    if left:
        text += f"; {len(left)} left in place: " + "; ".join(
            f"{f['path']} {f['why']}" for f in left[:3]
        )
    if not_started:
        text += f"; deadline passed, {len(not_started)} file(s) not started"
    if listing.skipped:
        text += f"; {len(listing.skipped)} symbolic link(s) not followed"
    return text


@transfer_task(STEP, timeout_seconds=ARCHIVE_TIMEOUT_S + 600)
def archive_logs(
    env_name: str,
    env: Environment,
    policy: LogArchive,
    *,
    flow_run_id: str,
    deadline: datetime | None = None,
) -> MaintenanceStep:
    """Archive the log files of one ``maintenance.log_archive`` policy into the backup store,
    catalogue each in the ledger (kind ``log``), then truncate or remove it
    (``archive_log_files``; the rules in ``tasks.log_archive``)."""
    ledger = Ledger()
    try:
        return archive_log_files(
            env_name, env, policy, ledger, flow_run_id=flow_run_id, deadline=deadline
        )
    finally:
        ledger.close()
