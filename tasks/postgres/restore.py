"""PostgreSQL restore: stream a stored backup into a fresh database, verify what came back, swap
it in place of the live one or drop it.

Nothing is restored into the live database directly: a backup goes into a fresh database
(``<db>_restore_<stamp>``) swapped in only after the stream ended, its sha256 matched and its
row counts equal the manifest's. A failed stream drops the scratch database.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from connectors.postgres import (
    RESTORE_TIMEOUT_S,
    VERIFY_TIMEOUT_S,
    admin,
    check_pg_name,
    ident,
    postgres_for,
)
from connectors.stores import open_store
from connectors.stores.objects import BackupStream
from opsflow.catalog import RestoreSource
from opsflow.errors import PermanentError, TransientError
from opsflow.inventory import (
    BackupStore,
    Database,
    DockerTarget,
    KubernetesTarget,
)
from opsflow.results import RestoreResult, VerifyResult, compare_checksums, compare_counts
from tasks.policy import api_task, transfer_task


@transfer_task("restore_postgres", timeout_seconds=RESTORE_TIMEOUT_S + 600)
def restore_postgres(
    db: Database,
    store: BackupStore,
    source: RestoreSource,
    into: str,
    like: str,
    field: str = "database",
    docker: DockerTarget | None = None,
    kubernetes: KubernetesTarget | None = None,
    replace: bool = False,
) -> RestoreResult:
    """Create the empty database ``into`` (owner, encoding and locale of ``like``) and stream
    the backup into it; on any failure (sha256 mismatch, corrupt stream, SQL error) ``into`` is
    dropped again, so nothing else changed.

    ``into`` must not exist (the scratch database of a swap or drill, or a ``target_db``),
    unless ``replace``: drop-recreate drops ``into`` first and recreates it like it was (the
    flow verified the object end to end before).
    """
    started = time.monotonic()
    check_pg_name(into, "target database")
    try:  # verified end to end before anything changes (and before psql sees a byte)
        stream = BackupStream(open_store(store), source)
    except (PermanentError, TransientError) as exc:
        raise type(exc)(
            f"restore of {db.name} from backup {source.backup_id} refused: {exc}. "
            "Nothing was touched: no database was created, dropped or written."
        ) from exc
    with postgres_for(db, field, docker, kubernetes) as pg:
        if replace:
            options, owner = admin.properties(pg, into)
            admin.drop(pg, into)
        elif admin.exists(pg, into):
            raise PermanentError(
                f"database {into!r} already exists on {pg.where}; a restore never writes into "
                "an existing database (fix: choose another target_db, or drop it first)"
            )
        else:
            options, owner = admin.properties(pg, like)
        admin.create(pg, into, options)
        prefix = [f"SET ROLE {ident(owner)};\n".encode()] if owner else []
        try:
            pg.feed(into, _chain(prefix, stream.plain), RESTORE_TIMEOUT_S)
        except BaseException as exc:
            if replace:
                left = f"{into} was dropped and is left empty: restore it again."
            else:
                admin.drop(pg, into)
                left = f"The new database {into} was dropped; nothing else was touched."
            if isinstance(exc, PermanentError | TransientError):
                raise type(exc)(
                    f"restore of {db.name} from backup {source.backup_id} stopped: {exc}. {left}"
                ) from exc
            raise
    return RestoreResult(
        database=db.name,
        target=into,
        backup_id=source.backup_id,
        key=source.key,
        bytes=stream.stored.size,
        raw_bytes=stream.plain.size,
        seconds=round(time.monotonic() - started, 3),
    )


def _chain(first: list[bytes], rest: Iterable[bytes]) -> Iterator[bytes]:
    yield from first
    yield from rest


@transfer_task("verify_postgres_restore", timeout_seconds=VERIFY_TIMEOUT_S * 2 + 300)
def verify_postgres_restore(
    db: Database,
    source: RestoreSource,
    dbname: str,
    amcheck: bool = True,
    field: str = "database",
    docker: DockerTarget | None = None,
    kubernetes: KubernetesTarget | None = None,
) -> VerifyResult:
    """Row counts per table of ``dbname`` and the content checksums of the backup's checksum
    tables against the catalog; ``pg_amcheck`` when asked and available. Returns ``ok=False``
    with the problems (it raises only when it cannot check)."""
    started = time.monotonic()
    with postgres_for(db, field, docker, kubernetes) as pg:
        counts = admin.row_counts(pg, dbname)
        problems, warnings = compare_counts(source.row_counts, counts, source.exact_counts)
        checks = [f"row counts of {len(source.row_counts)} table(s) against the manifest"]
        if not source.row_counts:
            warnings.append("the manifest holds no row counts: only the restore itself was checked")
        checksums = admin.table_checksums(pg, dbname, sorted(source.table_checksums))
        if source.table_checksums:
            recorded = source.table_checksums
            more, warned = compare_checksums(recorded, checksums, source.exact_counts)
            problems += more
            warnings += warned
            checks.append(f"content checksums of {len(source.table_checksums)} table(s)")
        if amcheck:
            status, detail = admin.amcheck(pg, dbname)
            if status == "corrupt":
                problems.append(detail)
            elif status == "unavailable":
                warnings.append(detail)
            else:
                checks.append("pg_amcheck (heap and btree indexes)")
    return VerifyResult(
        target=dbname,
        ok=not problems,
        problems=problems,
        warnings=warnings,
        checks=checks,
        row_counts=counts,
        table_checksums=checksums,
        seconds=round(time.monotonic() - started, 3),
    )


@api_task("swap_postgres_database", timeout_seconds=600)
def swap_postgres_database(
    db: Database,
    restored: str,
    aside: str,
    field: str = "database",
    docker: DockerTarget | None = None,
    kubernetes: KubernetesTarget | None = None,
) -> str:
    """Put ``restored`` in place of the inventory database; the original is kept as ``aside``.

    Idempotent: when ``restored`` is gone and ``aside`` exists the swap already happened.
    """
    with postgres_for(db, field, docker, kubernetes) as pg:
        check_pg_name(aside, "aside database")
        if not admin.exists(pg, restored) and admin.exists(pg, aside):
            return pg.dbname
        admin.swap(pg, pg.dbname, restored, aside)
        return pg.dbname


@api_task("drop_postgres_database", timeout_seconds=600)
def drop_postgres_database(
    db: Database,
    dbname: str,
    field: str = "database",
    docker: DockerTarget | None = None,
    kubernetes: KubernetesTarget | None = None,
) -> None:
    """Drop ``dbname`` (closing its connections); refuses the inventory database itself."""
    with postgres_for(db, field, docker, kubernetes) as pg:
        if dbname == pg.dbname:
            raise PermanentError(f"refusing to drop {dbname}: it is the live database of {db.name}")
        admin.drop(pg, dbname)
