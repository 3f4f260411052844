"""The backup store interface (``Store``, ``StoredObject``), key layout and checksum sidecars.
Implementations: ``connectors.stores.local`` and ``connectors.stores.s3``;
``connectors.stores.open_store`` picks one for an inventory ``backup_store``. What retention
deletes is decided from the catalog (``opsflow.catalog.retention``), not from a listing.

Writes stream (constant memory, sha256 and size computed on the way) and become visible
atomically and only when complete: local stores write a hidden temp file, fsync and publish it
with a hard link (which fails if the name exists); S3 completes a multipart upload only at the
end (aborted on any error), conditionally (``If-None-Match: *``), then HEADs to verify. Next to
each object the store keeps ``<key>.sha256`` (``sha256sum`` format). Reads verify the sha256
while streaming and raise ``PermanentError`` at the end on a mismatch.

**A key is never replaced.** ``put_stream`` refuses a key that exists (``KeyExists``), so an
object and its checksum file always belong together, and keys are unique by construction:
``backup_key(..., unique=...)`` adds a random suffix to the stamp (``choose_key`` in
``connectors.stores.objects``), so two backups started in the same second cannot even ask for
the same key.

**Order of visibility** of one backup (each step only after the one before succeeded):

1. ``<key>.sha256``, the checksum file, created exclusively (alone it is invisible:
   ``list`` skips checksum files);
2. ``<key>``, the object, published exclusively: from now on ``head``/``list`` show it, always
   with its checksum;
3. ``<stamp>-<suffix>.manifest.json`` (with its own checksum file), written last by
   ``store_dump``: only now is the backup complete (``complete_backups``);
4. the catalog row in the ledger, only after ``confirm_backup`` checked all of the above.

A write that fails at any step removes what it created (a run killed between 2 and 3 leaves an
object without a manifest: readers treat it as incomplete, retention never keeps it as a
series' newest and deletes it by age like any backup).

Key layout: ``<env>/<db>/<YYYY>/<MM>/<stamp>-<suffix>.<ext>`` (``backup_key``, e.g.
``prod/main/2026/01/20260105T020000Z-3f9c2a1b.sql.zst``; keys without a suffix, from before it,
parse the same) with the manifest of that backup at
``<env>/<db>/<YYYY>/<MM>/<stamp>-<suffix>.manifest.json`` (``manifest_key``).
"""

from __future__ import annotations

import builtins
import json
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict

from connectors.streams import CHUNK_SIZE
from opsflow.errors import InputError, PermanentError

MANIFEST_SUFFIX = ".manifest.json"
SHA256_SUFFIX = ".sha256"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
Progress = Callable[[int], None]
"""Called with the number of bytes just stored (an increment, e.g. ``bar.advance``)."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_EXT = re.compile(r"^[A-Za-z0-9]+(\.[A-Za-z0-9]+)*$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_UNIQUE = re.compile(r"^[0-9a-z]{4,32}$")
_LAYOUT = re.compile(
    r"^(?P<series>.+)/(?P<year>\d{4})/(?P<month>\d{2})/(?P<stamp>\d{8}T\d{6}Z)"
    r"(?P<unique>-[0-9a-z]{4,32})?(?:\.(?P<ext>.+))?$"
)
MAX_KEY_LENGTH = 900


class StoredObject(BaseModel):
    """One object in a store. ``sha256`` may be None in ``list`` results of S3 (use ``head``)."""

    model_config = ConfigDict(frozen=True)

    key: str
    size: int
    sha256: str | None = None
    last_modified: datetime
    url: str


class KeyExists(PermanentError):
    """``put_stream`` to a key that is already taken: stores never replace an object."""


class Store(ABC):
    """A backup store. Keys are relative to the store's URL and use ``/`` separators."""

    url: str

    @abstractmethod
    def put_stream(
        self, key: str, chunks: Iterable[bytes], *, progress: Progress | None = None
    ) -> StoredObject:
        """Store a stream; visible only once complete and verified, with its checksum file.

        Never replaces: a ``key`` that exists raises ``KeyExists`` and leaves it as it was.
        Exceptions raised by ``chunks`` propagate unchanged and leave nothing visible.
        """

    @abstractmethod
    def get_stream(
        self, key: str, *, expected_sha256: str | None = None, chunk_size: int = CHUNK_SIZE
    ) -> Iterator[bytes]:
        """Stream an object, verifying it against ``expected_sha256`` or the stored sha256.

        A missing object raises ``PermanentError`` right away; a mismatch raises
        ``PermanentError`` after the last chunk.
        """

    @abstractmethod
    def head(self, key: str) -> StoredObject | None:
        """The object's size, sha256 and time, or None when it does not exist."""

    @abstractmethod
    def list(self, prefix: str = "") -> builtins.list[StoredObject]:
        """Stored objects whose key starts with ``prefix``, sorted by key (manifests included;
        ``complete_backups`` keeps the backups that have their manifest)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Delete an object and its checksum file; deleting a missing object is not an error."""

    @abstractmethod
    def cleanup_incomplete(
        self, older_than: timedelta = timedelta(days=1), prefix: str = ""
    ) -> builtins.list[str]:
        """Remove leftovers of killed writes under ``prefix`` (temp files, multipart uploads)."""

    def put_json(self, key: str, data: Mapping[str, Any]) -> StoredObject:
        """Store a small JSON document (a manifest)."""
        body = json.dumps(data, indent=2, sort_keys=True, default=str).encode() + b"\n"
        return self.put_stream(key, [body])

    def get_json(self, key: str, *, expected_sha256: str | None = None) -> dict[str, Any]:
        body = b"".join(self.get_stream(key, expected_sha256=expected_sha256))
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise PermanentError(f"{self.url}/{key} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise PermanentError(f"{self.url}/{key} does not hold a JSON object")
        return data


def local_root(url: str) -> Path:
    """``file:///abs/dir`` -> /abs/dir; ``file://rel/dir`` -> ./rel/dir (relative to the cwd)."""
    parts = urlsplit(url)
    host = "" if parts.netloc in ("", "localhost") else parts.netloc
    path = host + parts.path
    if not path:
        raise InputError("backup_store.url", f"{url!r} names no directory", "use file:///path")
    return Path(path).resolve()


# --- keys -----------------------------------------------------------------------------------


def check_key(key: str) -> str:
    """Reject keys that could escape the store or clash with its own files."""
    problem = None
    if not key or len(key) > MAX_KEY_LENGTH:
        problem = "must be 1 to 900 characters"
    elif key.startswith("/") or key.endswith("/") or "\\" in key:
        problem = "must be relative, without a trailing slash or backslashes"
    elif any(not part or part in (".", "..") or part.startswith(".") for part in key.split("/")):
        problem = "must not contain empty, '.' or '..' segments or hidden names"
    elif any(ord(ch) < 32 for ch in key):
        problem = "must not contain control characters"
    elif key.endswith(SHA256_SUFFIX):
        problem = f"must not end with {SHA256_SUFFIX} (reserved for checksum files)"
    if problem:
        raise InputError("backup key", f"{key!r} {problem}", "use backup_key() to build keys")
    return key


def backup_key(env: str, db: str, when: datetime, ext: str, unique: str | None = None) -> str:
    """``<env>/<db>/<YYYY>/<MM>/<stamp>[-<unique>].<ext>``.

    Example: ``prod/main/2026/01/20260105T020000Z-3f9c2a1b.sql.zst`` (the stamp is UTC;
    ``unique``: 4-32 lowercase letters or digits that make the key one of a kind).
    """
    for field, value in (("environment", env), ("database", db)):
        if not _NAME.match(value):
            raise InputError(
                field,
                f"{value!r} cannot be part of a backup key",
                "use letters, digits, '.', '_' or '-', starting with a letter or digit",
            )
    ext = ext.lstrip(".")
    if not _EXT.match(ext):
        raise InputError("extension", f"{ext!r} is not a file extension", "e.g. sql.zst")
    if when.tzinfo is None:
        raise ValueError("backup_key needs a timezone-aware datetime (e.g. datetime.now(UTC))")
    if unique is not None and not _UNIQUE.match(unique):
        raise ValueError(f"backup_key: {unique!r} is not 4-32 lowercase letters or digits")
    when = when.astimezone(UTC)
    suffix = f"-{unique}" if unique else ""
    return f"{env}/{db}/{when:%Y}/{when:%m}/{when.strftime(STAMP_FORMAT)}{suffix}.{ext}"


def manifest_key(key: str) -> str:
    """The manifest of a backup: its key with the extension replaced by ``.manifest.json``."""
    match = _LAYOUT.match(key)
    if match is None:
        return key + MANIFEST_SUFFIX
    stem = f"{match['stamp']}{match['unique'] or ''}"
    return f"{match['series']}/{match['year']}/{match['month']}/{stem}{MANIFEST_SUFFIX}"


def backup_time(obj: StoredObject) -> datetime:
    """When a backup was taken: the stamp in its key, else the object's modification time."""
    match = _LAYOUT.match(obj.key)
    if match is not None:
        return datetime.strptime(match["stamp"], STAMP_FORMAT).replace(tzinfo=UTC)
    return obj.last_modified


def backup_series(key: str) -> str:
    """What a backup is a backup of: ``<env>/<db>`` for layout keys, else the key's directory."""
    match = _LAYOUT.match(key)
    if match is not None:
        return match["series"]
    return key.rsplit("/", 1)[0] if "/" in key else ""


def complete_backups(objects: Iterable[StoredObject]) -> builtins.list[StoredObject]:
    """The backups of a listing that are complete, each followed by its manifest.

    A backup is complete once its manifest is stored (it is written last); an object without
    one (a write killed before the manifest) is left out, and so are manifests without their
    object."""
    listed = builtins.list(objects)
    by_key = {obj.key: obj for obj in listed}
    complete: builtins.list[StoredObject] = []
    for obj in listed:
        if obj.key.endswith(MANIFEST_SUFFIX):
            continue
        manifest = by_key.get(manifest_key(obj.key))
        if manifest is not None:
            complete += [obj, manifest]
    return complete


def is_sha256(value: str) -> bool:
    return bool(_SHA256.match(value))


def sidecar_text(sha256: str, key: str) -> bytes:
    """Contents of ``<key>.sha256``: the ``sha256sum`` line for the object's file name."""
    return f"{sha256}  {key.rsplit('/', 1)[-1]}\n".encode()


def parse_sidecar(text: bytes) -> str | None:
    first = text.decode("ascii", "replace").split(" ", 1)[0].strip().lower()
    return first if is_sha256(first) else None
