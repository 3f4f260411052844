"""Backup objects: what every dump shares on the way in (a key of its own, compress + store,
the manifest) and the verified stream on the way out.

``choose_key`` gives every backup a key no other backup can have: the stamp plus a random
suffix (``backup_key(..., unique=...)``), so nothing is looked up first (no HEAD-then-PUT race)
and ``Store.put_stream``, which never replaces a key, cannot meet a taken one in practice.

``store_dump`` is the tail of each dump pipeline (``dump | compress | sha256 | store``): the
producer's chunks are counted, compressed and handed to ``Store.put_stream``, which hashes them
and makes the object (with its checksum file) visible only once complete. A producer that
raises leaves nothing visible. The order of visibility is object + checksum, then the JSON
manifest, last; the catalog row follows only after ``confirm_backup`` (see
``connectors.stores.base``). If the manifest cannot be written the object is deleted again,
so a backup is either complete with its manifest or absent; an object whose manifest is
missing (its writer was killed in between) is incomplete, and readers refuse it.

``BackupStream`` is the reverse: the manifest must exist, then ``get_stream`` (sha256 checked)
-> count -> decompress -> count.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from pydantic import BaseModel, ConfigDict, Field

from connectors.stores import open_store
from connectors.stores.base import Store, backup_key, manifest_key
from connectors.streams import CODECS, EXTENSIONS, Counted, compress, decompress, iter_file
from opsflow.catalog import Codec, RestoreSource
from opsflow.errors import InputError, PermanentError
from opsflow.inventory import (
    BackupStore,
)
from opsflow.progress import TransferProgress
from opsflow.redaction import redact_data
from opsflow.settings import get_settings
from opsflow.units import format_bytes

MANIFEST_VERSION = 1
RESTORE_TIMEOUT_S = 6 * 3600
"""The longest a restore of one backup may stream (any database kind)."""
UNIQUE_BYTES = 4  # 8 hex digits after the stamp: 1 in 4 billion per pair within one second


class DumpResult(BaseModel):
    """One stored backup: where it is, what it holds and how long it took."""

    model_config = ConfigDict(frozen=True)

    database: str
    kind: str
    via: str
    store_url: str
    key: str
    manifest_key: str
    codec: str
    bytes: int
    raw_bytes: int
    sha256: str
    seconds: float
    created_at: datetime
    row_counts: dict[str, int]
    table_checksums: dict[str, str] = Field(default_factory=dict)

    @property
    def rate_mib_s(self) -> float:
        """Dump throughput: uncompressed MiB (2^20 bytes) per second."""
        return self.raw_bytes / 2**20 / self.seconds if self.seconds > 0 else 0.0


def dump_extension(kind: str, codec: str) -> str:
    """``sql.zst`` for a PostgreSQL dump with zstd, ``sqlite.gz`` for SQLite with gzip."""
    if codec not in CODECS:
        raise InputError("codec", f"unknown codec {codec!r}", f"use one of {', '.join(CODECS)}")
    base = {"postgres": "sql", "redis": "rdb"}.get(kind, "sqlite")
    return base + EXTENSIONS[codec]


def choose_key(backend: Store | None, env: str, db: str, when: datetime, ext: str) -> str:
    """A key of its own for a backup of ``env``/``db`` taken at ``when``: ``backup_key`` with
    a random suffix, e.g. ``prod/main/2026/01/20260105T020000Z-3f9c2a1b.sql.zst``.

    Unique by construction: two backups started within the same second get different keys
    without looking at the store (``backend`` is not used; kept for the callers). Should two
    ever meet, ``put_stream`` refuses the second (``KeyExists``) rather than replace the first.
    """
    return backup_key(env, db, when, ext, unique=secrets.token_hex(UNIQUE_BYTES))


@dataclass
class NewBackup:
    """A backup about to be taken: its store, a key of its own, and what its manifest will say
    of it. ``write(chunks, row_counts)`` streams it in (``store_dump``)."""

    store: BackupStore
    env_name: str
    name: str
    kind: str
    via: str
    codec: Codec
    when: datetime
    started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.backend = open_store(self.store)
        ext = dump_extension(self.kind, self.codec)
        self.key = choose_key(self.backend, self.env_name, self.name, self.when, ext)

    def write(
        self,
        chunks: Iterable[bytes],
        row_counts: Mapping[str, int],
        table_checksums: Mapping[str, str] | None = None,
    ) -> DumpResult:
        return store_dump(
            self.store,
            self.key,
            chunks,
            database=self.name,
            kind=self.kind,
            via=self.via,
            codec=self.codec,
            row_counts=row_counts,
            table_checksums=table_checksums,
            started=self.started,
            created_at=self.when,
            backend=self.backend,
        )


def store_dump(
    store: BackupStore,
    key: str,
    chunks: Iterable[bytes],
    *,
    database: str,
    kind: str,
    via: str,
    codec: Codec,
    row_counts: Mapping[str, int],
    started: float,
    created_at: datetime,
    backend: Store | None = None,
    table_checksums: Mapping[str, str] | None = None,
) -> DumpResult:
    """Compress ``chunks`` into the store at ``key``, then write its manifest.

    ``row_counts`` is read after the stream ended (a producer may fill it as it goes).
    ``table_checksums`` (``{table: md5}``) is recorded as given.
    """
    backend = backend or open_store(store)
    counted = Counted(chunks, TransferProgress(f"dump {database}"))
    stored = backend.put_stream(key, compress(counted, codec))
    seconds = time.monotonic() - started
    if stored.sha256 is None:
        backend.delete(key)
        raise PermanentError(f"{stored.url}: the store did not report a sha256")
    result = DumpResult(
        database=database,
        kind=kind,
        via=via,
        store_url=store.url,
        key=key,
        manifest_key=manifest_key(key),
        codec=codec,
        bytes=stored.size,
        raw_bytes=counted.size,
        sha256=stored.sha256,
        seconds=round(seconds, 3),
        created_at=created_at,
        row_counts=dict(row_counts),
        table_checksums=dict(table_checksums or {}),
    )
    try:
        backend.put_json(result.manifest_key, manifest(result))
    except BaseException:
        backend.delete(key)  # a backup without its manifest is not a backup
        raise
    return result


def manifest(result: DumpResult) -> dict[str, Any]:
    """The JSON manifest stored next to a backup (no secrets: no DSN, no paths with them)."""
    data = {
        "opsflow_manifest": MANIFEST_VERSION,
        "database": result.database,
        "kind": result.kind,
        "via": result.via,
        "key": result.key,
        "sha256": result.sha256,
        "bytes": result.bytes,
        "raw_bytes": result.raw_bytes,
        "codec": result.codec,
        "created_at": result.created_at.astimezone(UTC).isoformat(),
        "duration_s": result.seconds,
        "row_counts": result.row_counts,
        "table_checksums": result.table_checksums,
    }
    return dict(redact_data(data))


@dataclass
class BackupStream:
    """A catalogued backup, verified before one byte of it is handed on.

    The object is copied from the store into a private spool file (anonymous: unlinked from
    the start, so nothing is left behind even after a SIGKILL, and no other process can open it
    by name) while its sha256 and size are computed; only when both equal the catalogued values
    is the spool read back: ``stored`` (counted, with progress) -> decompress -> ``plain``
    (counted). A swapped, corrupted or truncated object raises ``PermanentError`` here, at
    construction, before any database client sees a byte. The cost is one read of the stored
    (compressed) object and one local write and read of it (docs/performance.md).
    """

    backend: Store
    source: RestoreSource
    spool_dir: Path | None = None

    def __post_init__(self) -> None:
        manifest = self.source.manifest_key
        if manifest and self.backend.head(manifest) is None:
            raise PermanentError(
                f"backup {self.backend.url}/{self.source.key} is incomplete: its manifest "
                f"{manifest} is missing, so it is not used (fix: restore another backup, e.g. "
                "the one before it; `opsflow backups list --env ENV` shows them)"
            )
        self.spool = self._verified_copy()
        self.stored = Counted(_drain(self.spool), TransferProgress(f"restore {self.source.key}"))
        self.plain = Counted(decompress(self.stored, self.source.codec))

    def _verified_copy(self) -> BinaryIO:
        source = self.source
        where = f"{self.backend.url}/{source.key}"
        directory = self.spool_dir or get_settings().home / "spool"
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        free = shutil.disk_usage(directory).free
        if free < source.bytes + SPOOL_RESERVE:
            raise PermanentError(
                f"backup {where} ({format_bytes(source.bytes)}) cannot be verified before use: "
                f"only {format_bytes(free)} free in {directory} (fix: free space there, or point "
                "OPSFLOW_HOME at a filesystem with room for the compressed backup)"
            )
        spool = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 - closed by _drain, or below
        try:
            # the store hashes what it reads and raises at the end when it is not the
            # catalogued sha256 (Store.get_stream): by then nothing has left the spool
            verifying = Counted(
                self.backend.get_stream(source.key, expected_sha256=source.sha256),
                TransferProgress(f"verify {source.key}"),
            )
            for chunk in verifying:
                spool.write(chunk)
            if verifying.size != source.bytes:
                raise PermanentError(
                    f"backup {where} holds {verifying.size} bytes, the catalog says "
                    f"{source.bytes}; do not use it, restore from another backup"
                )
            spool.flush()
            spool.seek(0)
        except BaseException:
            spool.close()
            raise
        return spool


SPOOL_RESERVE = 64 << 20
"""Free space left over when a backup is spooled for verification."""


def _drain(spool: BinaryIO) -> Iterator[bytes]:
    """The spool's bytes in chunks; the spool is closed (and so gone) at the end."""
    with spool:
        yield from iter_file(spool)
