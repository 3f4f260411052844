"""Prefect tasks over stored backups: confirm after writing, verify end to end, retention."""

from __future__ import annotations

import builtins
from datetime import UTC, datetime

from connectors.stores import open_store
from connectors.stores.base import StoredObject, manifest_key, select_expired
from opsflow.errors import PermanentError
from opsflow.inventory import BackupStore
from tasks.policy import api_task, transfer_task


@api_task("confirm_backup", timeout_seconds=120)
def confirm_backup(store: BackupStore, key: str, sha256: str, size: int) -> StoredObject:
    """HEAD a stored backup and its manifest: present, same size and sha256, else PermanentError."""
    backend = open_store(store)
    found = backend.head(key)
    if found is None:
        raise PermanentError(f"backup {backend.url}/{key} is not in the store after writing it")
    if found.size != size:
        raise PermanentError(
            f"backup {found.url} holds {found.size} bytes, {size} were written; "
            "do not use it, take a new backup"
        )
    if found.sha256 != sha256:
        raise PermanentError(
            f"backup {found.url} has sha256 {found.sha256}, {sha256} was written; "
            "do not use it, take a new backup"
        )
    if backend.head(manifest_key(key)) is None:
        raise PermanentError(f"backup {found.url} has no manifest at {manifest_key(key)}")
    return found


@api_task("apply_retention", timeout_seconds=600)
def apply_retention(
    store: BackupStore,
    prefix: str,
    verified_keys: builtins.list[str],
    now: datetime | None = None,
) -> builtins.list[str]:
    """Delete backups under ``prefix`` past ``store.retention_days`` (and their manifests).

    Never deletes the newest verified backup of a series (see ``select_expired``); also clears
    leftovers of killed writes older than a day. Returns the deleted keys. Idempotent.
    """
    backend = open_store(store)
    now = now or datetime.now(UTC)
    objects = backend.list(prefix)
    deleted: builtins.list[str] = []
    for obj in select_expired(objects, store.retention_days, now, set(verified_keys)):
        for key in (obj.key, manifest_key(obj.key)):
            backend.delete(key)
            deleted.append(key)
    backend.cleanup_incomplete(prefix=prefix)
    return deleted


@transfer_task("verify_backup", timeout_seconds=6 * 3600)
def verify_backup(store: BackupStore, key: str, expected_sha256: str) -> StoredObject:
    """Read a stored backup end to end and check its sha256 and size; PermanentError if not."""
    backend = open_store(store)
    found = backend.head(key)
    if found is None:
        raise PermanentError(f"backup {backend.url}/{key} does not exist")
    size = 0
    for chunk in backend.get_stream(key, expected_sha256=expected_sha256):
        size += len(chunk)
    if size != found.size:
        raise PermanentError(f"backup {found.url} read {size} bytes, expected {found.size}")
    return found
