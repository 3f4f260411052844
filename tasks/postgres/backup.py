"""PostgreSQL backup: ``dump_postgres`` streams ``pg_dump`` (plain SQL, ``--no-owner``) through
compression into a backup store without buffering, with per-table row counts and content
checksums of the inventory's ``checksum_tables`` taken from the very snapshot that is dumped
(``via: direct``; with psql just before the dump for ``docker_exec``/``kubectl_exec``) for the
DR drill to compare against.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import psycopg

from connectors.docker import docker_client, exec_capture, exec_stream
from connectors.kubernetes import find_pod, kube_api, pod_exec_capture, pod_exec_stream
from connectors.postgres import (
    CONNECT_TIMEOUT_S,
    COUNT_TIMEOUT,
    DUMP_TIMEOUT_S,
    ROW_COUNTS_SQL,
    _closing,
    _missing_tables_error,
    _where,
    checksum_sql,
    classify,
    kubernetes_for,
    missing_tables_sql,
    parse_checksums,
    parse_psql_rows,
    pg_dump_argv,
    pg_dump_binary,
    psql_argv,
    split_password,
    stream_process,
)
from connectors.stores import open_store
from connectors.stores.objects import DumpResult, choose_key, dump_extension, store_dump
from opsflow.catalog import Codec
from opsflow.errors import PermanentError
from opsflow.inventory import (
    BackupStore,
    Database,
    DirectAccess,
    DockerExecAccess,
    DockerTarget,
    KubectlExecAccess,
    KubernetesTarget,
)
from opsflow.redaction import redact
from opsflow.secrets import resolve
from tasks.policy import transfer_task


@dataclass(frozen=True)
class Snapshot:
    """An exported snapshot and what was measured in it."""

    name: str
    row_counts: dict[str, int]
    table_checksums: dict[str, str]


@contextmanager
def _exported_snapshot(db: Database, dsn: str, where: str, field: str) -> Iterator[Snapshot]:
    """Open a repeatable-read transaction, export its snapshot, count rows and checksum the
    ``checksum_tables`` in it.

    pg_dump then dumps that same snapshot (``--snapshot``), so the row counts and checksums
    recorded in the manifest describe exactly the data in the dump. The transaction stays open
    until the dump ended.
    """
    conninfo = psycopg.conninfo.make_conninfo(dsn, connect_timeout=CONNECT_TIMEOUT_S)
    try:
        conn = psycopg.connect(conninfo, autocommit=False)
    except psycopg.Error as exc:
        raise classify(exc, where, field) from None
    try:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        try:
            conn.execute(f"set local statement_timeout = '{COUNT_TIMEOUT}'")
            row = conn.execute("select pg_export_snapshot()").fetchone()
            counts = {str(name): int(n) for name, n in conn.execute(ROW_COUNTS_SQL).fetchall()}
            checksums: dict[str, str] = {}
            if db.checksum_tables:
                tables = db.checksum_tables
                missing = [str(r[0]) for r in conn.execute(missing_tables_sql(tables))]
                if missing:
                    raise _missing_tables_error(field, where, missing)
                checksums = parse_checksums(conn.execute(checksum_sql(tables)).fetchall())
        except psycopg.Error as exc:
            raise classify(exc, where, field) from None
        assert row is not None
        yield Snapshot(str(row[0]), counts, checksums)
    finally:
        conn.close()


def _dump_direct(
    db: Database, store: BackupStore, env_name: str, when: datetime, codec: Codec, field: str
) -> DumpResult:
    assert db.dsn is not None  # the inventory model requires it for postgres
    dsn = resolve(db.dsn, field=f"{field}.dsn")
    where = f"database {db.name!r} ({_where(dsn)})"
    conninfo, password = split_password(dsn, field)
    env = {**os.environ, "PGCONNECT_TIMEOUT": str(CONNECT_TIMEOUT_S)}
    if password:
        env["PGPASSWORD"] = password
    started = time.monotonic()
    backend = open_store(store)
    key = choose_key(backend, env_name, db.name, when, dump_extension("postgres", codec))
    with _exported_snapshot(db, dsn, where, field) as snapshot:
        argv = pg_dump_argv(conninfo, snapshot.name)
        argv[0] = pg_dump_binary()
        # closing(): a store that fails mid-upload stops (kills) pg_dump right away
        with _closing(stream_process(argv, env, f"pg_dump of {where}")) as chunks:
            return store_dump(
                store,
                key,
                chunks,
                database=db.name,
                kind="postgres",
                via="direct",
                codec=codec,
                row_counts=snapshot.row_counts,
                table_checksums=snapshot.table_checksums,
                started=started,
                created_at=when,
                backend=backend,
            )


def _container_login(dsn_ref: str, field: str) -> tuple[str, str]:
    """(user, dbname) from the DSN; its password is registered for redaction and dropped: in
    the container pg_dump/psql log in over the local socket (like ``pg_dump -U user db``)."""
    dsn = resolve(dsn_ref, field=f"{field}.dsn")
    conninfo, _password = split_password(dsn, field)
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    user = str(params.get("user") or "postgres")
    return user, str(params.get("dbname") or user)


# (argv, timeout) -> (exit code, stdout, stderr), and argv -> stdout chunks, in the container
Capture = Callable[[list[str], float], tuple[int, bytes, bytes]]
Stream = Callable[[list[str]], Iterator[bytes]]


def _dump_in_container(
    db: Database,
    store: BackupStore,
    env_name: str,
    when: datetime,
    codec: Codec,
    via: str,
    where: str,
    login: tuple[str, str],
    capture: Capture,
    stream: Stream,
    field: str = "database",
) -> DumpResult:
    """Count rows (and checksum ``checksum_tables``) with psql, then stream
    ``pg_dump -U user -d db`` out of the container."""
    user, dbname = login
    started = time.monotonic()
    backend = open_store(store)
    key = choose_key(backend, env_name, db.name, when, dump_extension("postgres", codec))
    code, out, err = capture(psql_argv(ROW_COUNTS_SQL, dbname, user), 900)
    if code != 0:
        text = redact(err.decode("utf-8", errors="replace").strip())[-1000:]
        raise PermanentError(f"counting rows of {where} failed (exit {code}): {text}")
    counts = {
        row[0]: int(row[1])
        for row in parse_psql_rows(out.decode("utf-8", errors="replace"))
        if len(row) == 2
    }
    checksums = _container_checksums(db, field, where, login, capture)
    argv = [*pg_dump_argv(), "-U", user, "-d", dbname]
    with _closing(stream(argv)) as chunks:
        return store_dump(
            store,
            key,
            chunks,
            database=db.name,
            kind="postgres",
            via=via,
            codec=codec,
            row_counts=counts,
            table_checksums=checksums,
            started=started,
            created_at=when,
            backend=backend,
        )


def _container_checksums(
    db: Database, field: str, where: str, login: tuple[str, str], capture: Capture
) -> dict[str, str]:
    """``{table: md5}`` of ``db.checksum_tables`` through psql in the container."""
    if not db.checksum_tables:
        return {}
    user, dbname = login
    results: list[list[tuple[str, ...]]] = []
    for sql in (missing_tables_sql(db.checksum_tables), checksum_sql(db.checksum_tables)):
        code, out, err = capture(psql_argv(sql, dbname, user), 900)
        if code != 0:
            text = redact(err.decode("utf-8", errors="replace").strip())[-1000:]
            raise PermanentError(f"checksumming tables of {where} failed (exit {code}): {text}")
        results.append(parse_psql_rows(out.decode("utf-8", errors="replace")))
        if len(results) == 1 and results[0]:
            missing = [row[0] for row in results[0]]
            raise _missing_tables_error(field, where, missing)
    return parse_checksums(results[1])


def _dump_docker_exec(
    db: Database,
    store: BackupStore,
    env_name: str,
    when: datetime,
    codec: Codec,
    field: str,
    docker: DockerTarget,
) -> DumpResult:
    assert isinstance(db.via, DockerExecAccess) and db.dsn is not None
    login = _container_login(db.dsn, field)
    container = db.via.docker_exec
    where = f"database {db.name!r} ({login[1]} in container {container})"
    client = docker_client(docker)
    try:
        return _dump_in_container(
            db,
            store,
            env_name,
            when,
            codec,
            "docker_exec",
            where,
            login,
            lambda argv, timeout: exec_capture(client, container, argv, timeout=timeout),
            lambda argv: exec_stream(client, container, argv),
            field,
        )
    finally:
        client.close()


def _dump_kubectl_exec(
    db: Database,
    store: BackupStore,
    env_name: str,
    when: datetime,
    codec: Codec,
    field: str,
    kubernetes: KubernetesTarget | None,
) -> DumpResult:
    assert isinstance(db.via, KubectlExecAccess) and db.dsn is not None
    target = kubernetes_for(db, kubernetes, field)
    login = _container_login(db.dsn, field)
    container, ns = db.via.container, target.namespace
    with kube_api(target) as api:
        pod = find_pod(api, ns, db.via.kubectl_exec)
        where = f"database {db.name!r} ({login[1]} in pod {ns}/{pod})"
        return _dump_in_container(
            db,
            store,
            env_name,
            when,
            codec,
            "kubectl_exec",
            where,
            login,
            lambda argv, timeout: pod_exec_capture(api, ns, pod, argv, timeout, container),
            lambda argv: pod_exec_stream(api, ns, pod, argv, container),
            field,
        )


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
    through PGPASSWORD,
    never the command line). ``via: docker_exec`` runs pg_dump in the container through
    ``docker exec`` over the local socket; ``via: kubectl_exec`` likewise in a Ready pod of the
    deployment (or the pod) through the Kubernetes exec websocket (``kubernetes``: the
    environment's connection). The object is stored under
    ``backup_key(env_name, db.name, when, "sql.zst")`` and is visible only when complete.
    """
    if isinstance(db.via, DirectAccess):
        return _dump_direct(db, store, env_name, when, codec, field)
    if isinstance(db.via, DockerExecAccess):
        return _dump_docker_exec(db, store, env_name, when, codec, field, docker or DockerTarget())
    return _dump_kubectl_exec(db, store, env_name, when, codec, field, kubernetes)
