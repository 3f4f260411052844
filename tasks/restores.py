"""Restore side of backups: stream a stored backup back into PostgreSQL or SQLite, check what
came back, and scale the application down and up around it.

The stream is the reverse of ``tasks.dumps``: ``store.get_stream(key, expected_sha256=catalog
sha256)`` -> ``decompress`` -> ``psql`` (``via: direct``: a local ``psql`` with the password in
PGPASSWORD; ``via: docker_exec``: ``psql`` in the container through ``docker exec``;
``via: kubectl_exec``: ``psql`` in a Ready pod through the Kubernetes exec websocket). Nothing
is restored into the live database directly: PostgreSQL backups go into a fresh database
(``<db>_restore_<stamp>``) that is swapped in only after the stream ended, its sha256 matched
and its row counts equal the manifest's; SQLite backups go into a temp file next to the target,
pass ``PRAGMA integrity_check`` and are renamed over it. A failed stream drops the scratch
database / temp file, so the target is untouched.

A corrupt object usually breaks decompression before the end of the stream; the rest of the
object is then read anyway, so the error names the real cause (the sha256 mismatch).

Scaling: Kubernetes deployments are scaled through the ``scale`` subresource; the replica count
before the restore is kept in the annotation ``opsflow.io/replicas-before-restore`` so a retried
or crashed run never forgets it. Docker services' containers are stopped (all or none) and
started again afterwards.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from glob import glob
from pathlib import Path
from typing import Any

import psycopg
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from opsflow.catalog import RestoreSource
from opsflow.errors import TRANSIENT_RETRIES, PermanentError, TransientError
from opsflow.inventory import (
    BackupStore,
    Database,
    DirectAccess,
    DockerExecAccess,
    DockerTarget,
    KubernetesTarget,
)
from opsflow.progress import TransferProgress
from opsflow.redaction import redact, register_secret
from opsflow.secrets import resolve
from tasks.docker import docker_client, exec_capture, exec_feed
from tasks.kubernetes import (
    find_pod,
    kube_api,
    pod_exec_capture,
    pod_exec_feed,
)
from tasks.postgres import (
    CONNECT_TIMEOUT_S,
    ROW_COUNTS_SQL,
    checksum_sql,
    classify,
    kubernetes_for,
    missing_tables_sql,
    parse_checksums,
    parse_psql_rows,
)
from tasks.storage import Store, open_store
from tasks.streams import Counted, decompress

RESTORE_TIMEOUT_S = 6 * 3600
ADMIN_TIMEOUT_S = 120.0
VERIFY_TIMEOUT_S = 3600.0
MAINTENANCE_DB = "postgres"
_ERR_TAIL = 4000
_ABORT = b"\n\\.\n\\opsflow_restore_aborted\n"  # ends any COPY, then an invalid command: rollback
_PG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$")
_RETRY: dict[str, Any] = {
    **TRANSIENT_RETRIES,
    "cache_policy": NO_CACHE,
}


class RestoreResult(BaseModel):
    database: str
    target: str
    backup_id: str
    key: str
    bytes: int
    raw_bytes: int
    seconds: float


class VerifyResult(BaseModel):
    target: str
    ok: bool
    problems: list[str] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list)
    checks: list[str] = Field(default_factory=list)
    row_counts: dict[str, int] = Field(default_factory=dict)
    table_checksums: dict[str, str] = Field(
        default_factory=dict, description="md5 per checksum table of the restored copy"
    )
    seconds: float = 0.0


def database_name(db: Database, field: str) -> str:
    """The name of the database the inventory entry's DSN points at (the secret is resolved
    and registered for redaction; only the database name leaves this function)."""
    if db.dsn is None:
        raise PermanentError(f"{field}: {db.name} has no dsn")
    dsn = resolve(db.dsn, field=f"{field}.dsn")
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise PermanentError(
            f"{field}.dsn: the DSN cannot be parsed (fix: use postgresql://user@host:port/db "
            "or key=value form)"
        ) from None
    if params.get("password"):
        register_secret(str(params["password"]))
    return str(params.get("dbname") or params.get("user") or "postgres")


def check_pg_name(name: str, field: str) -> str:
    if not _PG_NAME.match(name):
        raise PermanentError(
            f"{field}: {name!r} is not a usable database name (fix: use letters, digits, '_', "
            "'$' or '-', at most 63 characters, starting with a letter or '_')"
        )
    return name


def scratch_name(dbname: str, purpose: str, stamp: str) -> str:
    """``<db>_<purpose>_<stamp>`` shortened to PostgreSQL's 63-byte limit."""
    suffix = f"_{purpose}_{stamp}"
    return dbname[: 63 - len(suffix)] + suffix


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _binary(name: str) -> str | None:
    """A PostgreSQL client binary on PATH, else the newest under /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(
        glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[-3])
    )
    return candidates[-1] if candidates else None


# --- the restore stream ----------------------------------------------------------------------


@dataclass
class _Stream:
    """``get_stream`` (sha256 checked at the end) -> count -> decompress -> count."""

    backend: Store
    source: RestoreSource

    def __post_init__(self) -> None:
        self.raw = self.backend.get_stream(self.source.key, expected_sha256=self.source.sha256)
        self.stored = Counted(self.raw, TransferProgress(f"restore {self.source.key}"))
        self.plain = Counted(self._decompressed())

    def _decompressed(self) -> Iterator[bytes]:
        try:
            yield from decompress(self.stored, self.source.codec)
        except PermanentError as exc:
            try:  # read the rest: a corrupt object is reported as the sha256 mismatch it is
                for _ in self.raw:
                    continue
            except PermanentError as checksum_error:
                raise checksum_error from exc
            raise


# --- PostgreSQL access -----------------------------------------------------------------------


@dataclass
class PgAccess:
    """How to reach one inventory PostgreSQL database for restore work: direct, or by exec in
    ``container`` (a Docker container, or with ``kubernetes`` a pod or the deployment whose
    Ready pod runs it, ``kube_container`` naming the container in the pod)."""

    name: str
    dbname: str
    where: str
    field: str
    params: dict[str, str]
    password: str | None = None
    container: str | None = None
    docker: DockerTarget | None = None
    kubernetes: KubernetesTarget | None = None
    kube_container: str | None = None

    @property
    def user(self) -> str:
        return self.params.get("user") or "postgres"

    @classmethod
    def of(
        cls,
        db: Database,
        field: str,
        docker: DockerTarget | None = None,
        kubernetes: KubernetesTarget | None = None,
    ) -> PgAccess:
        if db.kind != "postgres" or db.dsn is None:
            raise PermanentError(f"{field}: {db.name} is not a PostgreSQL database")
        dsn = resolve(db.dsn, field=f"{field}.dsn")
        try:
            params = {
                k: str(v)
                for k, v in psycopg.conninfo.conninfo_to_dict(dsn).items()
                if v is not None
            }
        except psycopg.ProgrammingError:
            raise PermanentError(
                f"{field}.dsn: the DSN cannot be parsed (fix: use postgresql://user@host:port/db "
                "or key=value form)"
            ) from None
        password = params.pop("password", None)
        if password:
            register_secret(password)
        dbname = params.get("dbname") or params.get("user") or "postgres"
        if isinstance(db.via, DirectAccess):
            host = params.get("host") or "localhost"
            where = f"{host}:{params.get('port') or 5432}/{dbname}"
            return cls(db.name, dbname, where, field, params, password)
        if isinstance(db.via, DockerExecAccess):
            where = f"{dbname} in container {db.via.docker_exec}"
            return cls(
                db.name,
                dbname,
                where,
                field,
                params,
                container=db.via.docker_exec,
                docker=docker or DockerTarget(),
            )
        target = kubernetes_for(db, kubernetes, field)
        ref = db.via.kubectl_exec
        return cls(
            db.name,
            dbname,
            f"{dbname} in {target.namespace}/{ref}",
            field,
            params,
            container=ref,
            kubernetes=target,
            kube_container=db.via.container,
        )

    # -- plumbing ------------------------------------------------------------------------------
    def _capture(self, argv: list[str], timeout: float) -> tuple[int, bytes, bytes]:
        """Run ``argv`` in the container (docker exec / kubectl exec); output in memory."""
        assert self.container is not None
        if self.kubernetes is not None:
            ns = self.kubernetes.namespace
            with kube_api(self.kubernetes) as api:
                pod = find_pod(api, ns, self.container)
                return pod_exec_capture(api, ns, pod, argv, timeout, self.kube_container)
        client = docker_client(self.docker or DockerTarget())
        try:
            return exec_capture(client, self.container, argv, timeout=timeout)
        finally:
            client.close()

    def _exec_feed(
        self, argv: list[str], chunks: Iterable[bytes], timeout: float
    ) -> tuple[int, bytes, bytes]:
        """Stream ``chunks`` into ``argv``'s stdin in the container; (code, out, err tails)."""
        assert self.container is not None
        if self.kubernetes is not None:
            ns = self.kubernetes.namespace
            with kube_api(self.kubernetes) as api:
                pod = find_pod(api, ns, self.container)
                return pod_exec_feed(
                    api, ns, pod, argv, chunks, container=self.kube_container, timeout=timeout
                )
        client = docker_client(self.docker or DockerTarget())
        try:
            return exec_feed(client, self.container, argv, chunks, timeout)
        finally:
            client.close()

    def conninfo(self, dbname: str) -> str:
        params = {**self.params, "dbname": dbname}
        params.setdefault("connect_timeout", str(CONNECT_TIMEOUT_S))
        return psycopg.conninfo.make_conninfo(**params)

    def _env(self) -> dict[str, str]:
        env = {**os.environ, "PGCONNECT_TIMEOUT": str(CONNECT_TIMEOUT_S)}
        if self.password:
            env["PGPASSWORD"] = self.password
        return env

    def _psql(self, dbname: str, *args: str) -> list[str]:
        base = ["psql", "-X", "-v", "ON_ERROR_STOP=1", *args]
        if self.container is not None:
            return [*base, "-U", self.user, "-d", dbname]
        binary = _binary("psql")
        if binary is None:
            raise PermanentError(
                "psql is not installed on this worker (fix: install the PostgreSQL client, "
                "e.g. `apt-get install postgresql-client`)"
            )
        return [binary, *base[1:], f"--dbname={self.conninfo(dbname)}"]

    def run_sql(
        self, sql: str, dbname: str = MAINTENANCE_DB, timeout: float = ADMIN_TIMEOUT_S
    ) -> list[tuple[str, ...]]:
        """Run one statement (or a ``;``-separated block, as one transaction); rows as text."""
        where = f"database {self.name!r} ({self.where})"
        if self.container is None:
            try:
                with psycopg.connect(self.conninfo(dbname), autocommit=True) as conn:
                    conn.execute(f"set statement_timeout = {int(timeout * 1000)}")
                    cursor = conn.execute(sql)
                    rows = cursor.fetchall() if cursor.description else []
            except psycopg.Error as exc:
                raise classify(exc, where, self.field) from None
            return [tuple("" if v is None else str(v) for v in row) for row in rows]
        code, out, err = self._capture(self._psql(dbname, "-tA", "-c", sql), timeout)
        if code != 0:
            text = redact(err.decode("utf-8", errors="replace").strip())[-1000:]
            raise PermanentError(f"{where}: psql failed (exit {code}): {text}")
        return parse_psql_rows(out.decode("utf-8", errors="replace"))

    def feed(self, dbname: str, chunks: Iterable[bytes], timeout: float) -> None:
        """Stream SQL into ``psql --single-transaction`` on ``dbname``; any failure rolls back."""
        argv = self._psql(dbname, "-q", "--single-transaction", "-f", "-")
        what = f"psql restore into {dbname} ({self.where})"
        if self.container is not None:
            self._feed_exec(argv, chunks, timeout, what)
        else:
            _feed_process(argv, self._env(), chunks, timeout, what)

    def _feed_exec(
        self, argv: list[str], chunks: Iterable[bytes], timeout: float, what: str
    ) -> None:
        failure: list[BaseException] = []

        def guarded() -> Iterator[bytes]:
            try:
                yield from chunks
            except BaseException as exc:  # noqa: BLE001 - re-raised below, after psql stopped
                failure.append(exc)
                yield _ABORT

        code, _out, err = self._exec_feed(argv, guarded(), timeout)
        if failure:
            raise failure[0]
        if code != 0:
            text = redact(err.decode("utf-8", errors="replace").strip())[-1000:]
            raise PermanentError(f"{what} failed (exit {code}), rolled back: {text}")

    # -- database management -------------------------------------------------------------------
    def exists(self, dbname: str) -> bool:
        rows = self.run_sql(f"select 1 from pg_database where datname = {_literal(dbname)}")
        return bool(rows)

    def properties(self, like: str) -> tuple[str, str | None]:
        """CREATE DATABASE options copying ``like``'s encoding and locale, and the owner role to
        create and restore as (None: the connecting role). Empty when ``like`` is missing."""
        rows = self.run_sql(
            "select pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, "
            "datctype, pg_has_role(datdba, 'MEMBER') and pg_get_userbyid(datdba) <> current_user "
            f"from pg_database where datname = {_literal(like)}"
        )
        if not rows:
            return "", None
        role, encoding, collate, ctype, member = rows[0]
        options = (
            f" encoding {_literal(encoding)} lc_collate {_literal(collate)}"
            f" lc_ctype {_literal(ctype)}"
        )
        if member in ("t", "True", "true"):
            return options + f" owner {_ident(role)}", role
        return options, None

    def create(self, dbname: str, options: str) -> None:
        self.run_sql(f"create database {_ident(dbname)} template template0{options}")

    def drop(self, dbname: str) -> None:
        self.run_sql(f"drop database if exists {_ident(dbname)} with (force)")

    def swap(self, original: str, restored: str, aside: str) -> None:
        """Rename ``original`` to ``aside`` and ``restored`` to ``original`` in one transaction,
        after closing connections to ``original``."""
        exists = self.exists(original)
        if exists:
            self.run_sql(f"alter database {_ident(original)} allow_connections false")
        try:
            if exists:
                self.run_sql(
                    "select pg_terminate_backend(pid) from pg_stat_activity "
                    f"where datname = {_literal(original)} and pid <> pg_backend_pid()"
                )
                self.run_sql(
                    f"begin; alter database {_ident(original)} rename to {_ident(aside)}; "
                    f"alter database {_ident(restored)} rename to {_ident(original)}; commit;"
                )
            else:
                self.run_sql(f"alter database {_ident(restored)} rename to {_ident(original)}")
        except BaseException:
            if exists and self.exists(original) and not self.exists(aside):
                self.run_sql(f"alter database {_ident(original)} allow_connections true")
            raise
        if exists:
            self.run_sql(f"alter database {_ident(aside)} allow_connections true")

    def row_counts(self, dbname: str) -> dict[str, int]:
        return {
            row[0]: int(row[1])
            for row in self.run_sql(ROW_COUNTS_SQL, dbname, timeout=VERIFY_TIMEOUT_S)
            if len(row) == 2
        }

    def table_checksums(self, dbname: str, tables: list[str]) -> dict[str, str]:
        """``{table: md5}`` of the ``tables`` that exist in ``dbname`` (missing ones left out)."""
        if not tables:
            return {}
        missing = {row[0] for row in self.run_sql(missing_tables_sql(tables), dbname)}
        present = [t for t in tables if t not in missing]
        if not present:
            return {}
        return parse_checksums(self.run_sql(checksum_sql(present), dbname, VERIFY_TIMEOUT_S))

    def amcheck(self, dbname: str) -> tuple[str, str]:
        """Run ``pg_amcheck --install-missing``: ("ok"|"corrupt"|"unavailable", detail)."""
        if self.container is not None:
            argv = ["pg_amcheck", "--install-missing", "-U", self.user, dbname]
            try:
                code, out, err = self._capture(argv, VERIFY_TIMEOUT_S)
            except PermanentError as exc:
                return "unavailable", str(exc)
            text = (out + err).decode("utf-8", errors="replace")
        else:
            binary = _binary("pg_amcheck")
            if binary is None:
                return "unavailable", "pg_amcheck is not installed on this worker"
            env = self._env()
            for key, var in (("host", "PGHOST"), ("port", "PGPORT"), ("user", "PGUSER")):
                if self.params.get(key):
                    env[var] = self.params[key]
            try:
                proc = subprocess.run(
                    [binary, "--install-missing", dbname],
                    env=env,
                    capture_output=True,
                    timeout=VERIFY_TIMEOUT_S,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                return "unavailable", f"pg_amcheck did not finish within {VERIFY_TIMEOUT_S:.0f}s"
            code = proc.returncode
            text = (proc.stdout + proc.stderr).decode("utf-8", errors="replace")
        text = redact(text.strip())[-1000:]
        if code == 0:
            return "ok", "pg_amcheck found no corruption"
        if code in (126, 127) or "executable file not found" in text or "not found" in text:
            return "unavailable", f"pg_amcheck could not run: {text}"
        if code == 2 or "corrupt" in text.lower():
            return "corrupt", f"pg_amcheck reports corruption: {text}"
        return "unavailable", f"pg_amcheck could not run (exit {code}): {text}"


def _feed_process(
    argv: list[str], env: dict[str, str], chunks: Iterable[bytes], timeout: float, what: str
) -> None:
    """Write ``chunks`` to a process's stdin; kill it (no commit) if the stream fails."""
    with tempfile.TemporaryFile() as errfile:
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errfile, env=env
        )
        timed_out = threading.Event()

        def stop() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(timeout, stop)
        timer.daemon = True
        timer.start()
        assert proc.stdin is not None
        try:
            try:
                for chunk in chunks:
                    proc.stdin.write(chunk)
            except BrokenPipeError:
                pass  # psql stopped reading (an SQL error): its exit code and stderr say why
            except BaseException:
                proc.kill()  # the transaction is rolled back: nothing is committed
                raise
            with contextlib.suppress(BrokenPipeError):  # reported through the exit code
                proc.stdin.close()
            code = proc.wait(timeout=max(timeout, 1))
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if timed_out.is_set():
            raise PermanentError(f"{what} did not finish within {timeout:.0f}s; rolled back")
        if code != 0:
            errfile.seek(0, os.SEEK_END)
            errfile.seek(max(errfile.tell() - _ERR_TAIL, 0))
            tail = redact(errfile.read().decode("utf-8", errors="replace").strip())[-1000:]
            raise PermanentError(f"{what} failed (exit {code}), rolled back: {tail}")


# --- PostgreSQL tasks ------------------------------------------------------------------------


@task(name="restore_postgres", timeout_seconds=RESTORE_TIMEOUT_S + 600, **_RETRY)
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
    access = PgAccess.of(db, field, docker, kubernetes)
    check_pg_name(into, "target database")
    if replace:
        options, owner = access.properties(into)
        access.drop(into)
    elif access.exists(into):
        raise PermanentError(
            f"database {into!r} already exists on {access.where}; a restore never writes into "
            "an existing database (fix: choose another target_db, or drop it first)"
        )
    else:
        options, owner = access.properties(like)
    access.create(into, options)
    stream = _Stream(open_store(store), source)
    prefix = [f"SET ROLE {_ident(owner)};\n".encode()] if owner else []
    try:
        access.feed(into, _chain(prefix, stream.plain), RESTORE_TIMEOUT_S)
    except BaseException as exc:
        if replace:
            left = f"{into} was dropped and is left empty: restore it again."
        else:
            access.drop(into)
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


def compare_counts(
    expected: dict[str, int], found: dict[str, int], exact: bool
) -> tuple[list[str], list[str]]:
    """(problems, warnings) from per-table row counts: missing tables and different counts are
    problems when the manifest's counts come from the dumped snapshot, warnings otherwise."""
    differences = []
    for table, count in sorted(expected.items()):
        if table not in found:
            differences.append(f"table {table} is missing (backup had {count} rows)")
        elif found[table] != count:
            differences.append(f"table {table} has {found[table]} rows, the backup had {count}")
    if exact:
        return differences, []
    return [], [d + " (counts taken outside the dump's snapshot)" for d in differences]


def compare_checksums(
    expected: dict[str, str], found: dict[str, str], exact: bool
) -> tuple[list[str], list[str]]:
    """(problems, warnings) from per-table content checksums, like ``compare_counts``: a missing
    table or a different checksum is a problem when the checksums were taken in the dumped
    snapshot, a warning otherwise."""
    differences = []
    for table, checksum in sorted(expected.items()):
        if table not in found:
            differences.append(f"checksum table {table} is missing in the restored copy")
        elif found[table] != checksum:
            differences.append(
                f"table {table} content checksum {found[table]} differs from the backup's "
                f"{checksum}"
            )
    if exact:
        return differences, []
    return [], [d + " (checksum taken outside the dump's snapshot)" for d in differences]


@task(name="verify_postgres_restore", timeout_seconds=VERIFY_TIMEOUT_S * 2 + 300, **_RETRY)
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
    access = PgAccess.of(db, field, docker, kubernetes)
    counts = access.row_counts(dbname)
    problems, warnings = compare_counts(source.row_counts, counts, source.exact_counts)
    checks = [f"row counts of {len(source.row_counts)} table(s) against the manifest"]
    if not source.row_counts:
        warnings.append("the manifest holds no row counts: only the restore itself was checked")
    checksums = access.table_checksums(dbname, sorted(source.table_checksums))
    if source.table_checksums:
        more, warned = compare_checksums(source.table_checksums, checksums, source.exact_counts)
        problems += more
        warnings += warned
        checks.append(f"content checksums of {len(source.table_checksums)} table(s)")
    if amcheck:
        status, detail = access.amcheck(dbname)
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


@task(name="swap_postgres_database", timeout_seconds=600, **_RETRY)
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
    access = PgAccess.of(db, field, docker, kubernetes)
    check_pg_name(aside, "aside database")
    if not access.exists(restored) and access.exists(aside):
        return access.dbname
    access.swap(access.dbname, restored, aside)
    return access.dbname


@task(name="drop_postgres_database", timeout_seconds=600, **_RETRY)
def drop_postgres_database(
    db: Database,
    dbname: str,
    field: str = "database",
    docker: DockerTarget | None = None,
    kubernetes: KubernetesTarget | None = None,
) -> None:
    """Drop ``dbname`` (closing its connections); refuses the inventory database itself."""
    access = PgAccess.of(db, field, docker, kubernetes)
    if dbname == access.dbname:
        raise PermanentError(f"refusing to drop {dbname}: it is the live database of {db.name}")
    access.drop(dbname)


# --- SQLite ----------------------------------------------------------------------------------


def _sqlite_counts(conn: sqlite3.Connection) -> dict[str, int]:
    tables = [
        str(row[0])
        for row in conn.execute(
            "select name from sqlite_schema where type = 'table' "
            "and name not like 'sqlite_%' order by name"
        )
    ]
    quoted = {t: '"' + t.replace('"', '""') + '"' for t in tables}
    return {t: int(conn.execute(f"select count(*) from {quoted[t]}").fetchone()[0]) for t in tables}


def check_sqlite_file(path: Path, source: RestoreSource, pragma: str) -> VerifyResult:
    """``PRAGMA integrity_check``/``quick_check`` and row counts of a restored SQLite file."""
    started = time.monotonic()
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        lines = [str(row[0]) for row in conn.execute(f"PRAGMA {pragma}(20)")]
        counts = _sqlite_counts(conn) if lines == ["ok"] else {}
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
    stream = _Stream(open_store(store), source)
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


@task(name="restore_sqlite", timeout_seconds=RESTORE_TIMEOUT_S + 600, **_RETRY)
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
    return RestoreResult(
        database=db.name,
        target=str(path),
        backup_id=source.backup_id,
        key=source.key,
        bytes=size,
        raw_bytes=raw,
        seconds=round(time.monotonic() - started, 3),
    )


@task(name="drill_sqlite", timeout_seconds=RESTORE_TIMEOUT_S + 600, **_RETRY)
def drill_sqlite(store: BackupStore, source: RestoreSource) -> tuple[RestoreResult, VerifyResult]:
    """Restore a SQLite backup into a temp file, ``quick_check`` it and count rows; the temp
    file is always removed."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="opsflow-drill-") as scratch:
        temp = Path(scratch) / f"{source.database}.sqlite"
        size, raw = write_sqlite_copy(store, source, temp)
        restored = RestoreResult(
            database=source.database,
            target=str(temp),
            backup_id=source.backup_id,
            key=source.key,
            bytes=size,
            raw_bytes=raw,
            seconds=round(time.monotonic() - started, 3),
        )
        return restored, check_sqlite_file(temp, source, "quick_check")
