"""PostgreSQL backup: ``dump_postgres`` streams ``pg_dump`` (plain SQL, ``--no-owner``) through
compression into a backup store without buffering, with per-table row counts and content
checksums of the inventory's ``checksum_tables`` taken from the very snapshot that is dumped
(``via: direct``; with psql just before the dump for ``docker_exec``/``kubectl_exec``) for the
DR drill to compare against (``connectors.postgres.dump``).
"""

from __future__ import annotations

import time
from datetime import datetime

from connectors.postgres import DUMP_TIMEOUT_S, open_dump, postgres_for
from connectors.stores.objects import DumpResult, NewBackup
from opsflow.catalog import Codec
from opsflow.inventory import BackupStore, Database, DockerTarget, KubernetesTarget
from tasks.policy import transfer_task


@transfer_task("dump_postgres", timeout_seconds=DUMP_TIMEOUT_S + 600)
def dump_postgres(
    db: Database,
    store: BackupStore,
    env_name: str,
    when: datetime,
    codec: Codec = "zstd",
    field: str = "database",
    docker: DockerTarget | None = None,
    kubernetes: KubernetesTarget | None = None,
) -> DumpResult:
    """Stream ``pg_dump`` (plain, --no-owner) -> compress -> store, with manifest, row counts and
    the checksums of ``db.checksum_tables`` (a table that does not exist fails the backup).

    ``via: direct`` runs the local pg_dump on a snapshot exported by a repeatable-read
    transaction (row counts and checksums come from the same snapshot; the password goes
    through PGPASSWORD, never the command line). ``via: docker_exec`` runs pg_dump in the
    container through ``docker exec`` over the local socket; ``via: kubectl_exec`` likewise in
    a Ready pod of the deployment (or the pod) through the Kubernetes exec websocket
    (``kubernetes``: the environment's connection). The object is stored under
    ``backup_key(env_name, db.name, when, "sql.zst")`` and is visible only when complete.
    """
    started = time.monotonic()
    with postgres_for(db, field, docker, kubernetes) as pg:
        new = NewBackup(store, env_name, db.name, "postgres", pg.via, codec, when, started)
        with open_dump(pg, db.checksum_tables) as dump:
            return new.write(dump.chunks, dump.row_counts, dump.table_checksums)
