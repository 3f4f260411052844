"""PostgreSQL health check.

The SQL and the parsing of its answer do not depend on how the SQL is run: ``collect_stats``
takes an ``execute(sql) -> rows`` callable. ``via: direct`` runs it over psycopg 3;
``docker_exec`` / ``kubectl_exec`` will run the same SQL through ``psql -tA`` in the
container or pod (``psql_argv`` builds the command, ``parse_psql_rows`` reads its output).

Backups: ``dump_postgres`` streams ``pg_dump`` (plain SQL, ``--no-owner``) through compression
into a backup store without buffering, with per-table row counts and content checksums of the
inventory's ``checksum_tables`` taken from the very snapshot that is dumped (``via: direct``;
with psql just before the dump for ``docker_exec``/``kubectl_exec``) for the DR drill to
compare against.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime
from glob import glob
from pathlib import Path
from typing import Any

import psycopg
from prefect import task
from prefect.cache_policies import NO_CACHE

from opsflow.errors import TRANSIENT_RETRIES, PermanentError, TransientError
from opsflow.inventory import (
    BackupStore,
    Database,
    DirectAccess,
    DockerExecAccess,
    DockerTarget,
    KubectlExecAccess,
    KubernetesTarget,
    Thresholds,
)
from opsflow.redaction import redact, register_secret
from opsflow.results import CheckResult, Status, grade
from opsflow.secrets import resolve
from tasks.docker import docker_client, exec_capture, exec_stream
from tasks.dumps import DumpResult, choose_key, dump_extension, store_dump
from tasks.kubernetes import find_pod, kube_api, pod_exec_capture, pod_exec_stream
from tasks.storage import open_store
from tasks.streams import Codec, iter_file

CONNECT_TIMEOUT_S = 10
STATEMENT_TIMEOUT_MS = 15_000
CONNECTIONS_CRITICAL_PCT = 95.0

Row = Sequence[Any]
Execute = Callable[[str], Sequence[Row]]

PING_SQL = "select 1"
STATS_SQL = """\
select current_setting('server_version'),
       (select count(*) from pg_stat_activity where backend_type = 'client backend'),
       current_setting('max_connections')::int,
       pg_database_size(current_database()),
       coalesce((select extract(epoch from max(clock_timestamp() - query_start))
                 from pg_stat_activity
                 where state = 'active' and backend_type = 'client backend'
                   and pid <> pg_backend_pid()), 0)::float8,
       current_database()"""


@dataclass(frozen=True)
class PostgresStats:
    version: str
    connections: int
    max_connections: int
    size_bytes: int
    longest_query_s: float
    database: str

    @property
    def connections_pct(self) -> float:
        return 100.0 * self.connections / self.max_connections if self.max_connections else 0.0


def collect_stats(execute: Execute) -> PostgresStats:
    """Run the health SQL through ``execute`` and parse the answer (native or text values)."""
    ping = execute(PING_SQL)
    if not ping or str(ping[0][0]).strip() != "1":
        raise TransientError(f"`select 1` returned {ping!r} instead of 1")
    rows = execute(STATS_SQL)
    if len(rows) != 1 or len(rows[0]) != 6:
        raise PermanentError(f"unexpected answer to the health query: {len(rows)} row(s)")
    version, connections, max_connections, size, longest, database = rows[0]
    return PostgresStats(
        version=str(version).strip(),
        connections=int(connections),
        max_connections=int(max_connections),
        size_bytes=int(size),
        longest_query_s=round(float(longest), 1),
        database=str(database).strip(),
    )


def grade_stats(stats: PostgresStats, thresholds: Thresholds) -> tuple[Status, str]:
    """Status and one-line summary: connections in use graded against max_connections."""
    pct = stats.connections_pct
    status = grade(pct, thresholds.connections_pct, CONNECTIONS_CRITICAL_PCT)
    summary = (
        f"PostgreSQL {stats.version}: {stats.connections}/{stats.max_connections} connections "
        f"({pct:.0f}%), size {_human_bytes(stats.size_bytes)}, "
        f"longest running query {stats.longest_query_s:.0f}s"
    )
    if status is not Status.HEALTHY:
        limit = (
            CONNECTIONS_CRITICAL_PCT if status is Status.CRITICAL else thresholds.connections_pct
        )
        summary += (
            f" - connections at or above {limit:.0f}% of max_connections "
            "(fix: find idle or leaking clients in pg_stat_activity, add a pooler such as "
            "PgBouncer, or raise max_connections)"
        )
    return status, summary


def psql_argv(sql: str, dbname: str | None = None, user: str | None = None) -> list[str]:
    """``psql`` command for exec paths: unaligned tuples-only output, stop on error."""
    argv = ["psql", "-X", "-tA", "-v", "ON_ERROR_STOP=1"]
    if user:
        argv += ["-U", user]
    if dbname:
        argv += ["-d", dbname]
    argv += ["-c", f"set statement_timeout = {STATEMENT_TIMEOUT_MS}; {sql}"]
    return argv


def parse_psql_rows(output: str, separator: str = "|") -> list[tuple[str, ...]]:
    """Rows of ``psql -tA`` output (the ``SET`` line of ``psql_argv`` is dropped)."""
    return [
        tuple(line.split(separator))
        for line in output.splitlines()
        if line.strip() and line.strip() != "SET"
    ]


def _human_bytes(size: float) -> str:
    units = ("B", "kB", "MB", "GB", "TB")
    step = 0
    while size >= 1024 and step < len(units) - 1:
        size /= 1024
        step += 1
    return f"{size:.0f} B" if step == 0 else f"{size:.1f} {units[step]}"


_PERMANENT_MARKERS = (
    "password authentication failed",
    "no password supplied",
    "authentication failed",
    "does not exist",
    "no pg_hba.conf entry",
    "permission denied",
    "invalid sslmode",
    "certificate",
)


def classify(exc: psycopg.Error, where: str, field: str) -> Exception:
    """Turn a psycopg error into an operator-facing, password-free opsflow error."""
    text = redact(str(exc).strip())
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return TransientError(
            f"{where}: the health query exceeded statement_timeout "
            f"({STATEMENT_TIMEOUT_MS} ms); the server is overloaded or locked: {text}"
        )
    if not isinstance(exc, psycopg.OperationalError):
        return PermanentError(f"{where}: {text} (fix: check the database and role in {field}.dsn)")
    lowered = text.lower()
    if any(marker in lowered for marker in _PERMANENT_MARKERS):
        return PermanentError(
            f"{where}: cannot log in: {text} (fix: check the user, password and database name "
            f"in the secret referenced by {field}.dsn, and the server's pg_hba.conf)"
        )
    return TransientError(
        f"{where}: cannot reach PostgreSQL: {text} (fix: check that the server is running and "
        "reachable from this worker)"
    )


@contextmanager
def _direct(dsn: str, where: str, field: str) -> Iterator[Execute]:
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise PermanentError(
            f"{field}.dsn: the DSN cannot be parsed (fix: use postgresql://user@host:port/db "
            "or key=value form)"
        ) from None
    if params.get("password"):
        register_secret(str(params["password"]))
    conninfo = psycopg.conninfo.make_conninfo(
        dsn,
        connect_timeout=params.get("connect_timeout") or CONNECT_TIMEOUT_S,
        options=f"{params.get('options') or ''} -c statement_timeout={STATEMENT_TIMEOUT_MS}",
    )
    try:
        conn = psycopg.connect(conninfo, autocommit=True)
    except psycopg.Error as exc:
        raise classify(exc, where, field) from None

    def execute(sql: str) -> list[Row]:
        try:
            return list(conn.execute(sql).fetchall())
        except psycopg.Error as exc:
            raise classify(exc, where, field) from None

    try:
        yield execute
    finally:
        conn.close()


def _where(dsn: str) -> str:
    """``host:port/db`` of a DSN, without credentials."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "PostgreSQL"
    host = params.get("host") or "localhost"
    port = params.get("port") or 5432
    return f"{host}:{port}/{params.get('dbname') or params.get('user') or ''}"


@task(
    name="check_postgres",
    timeout_seconds=60,
    **TRANSIENT_RETRIES,
    cache_policy=NO_CACHE,  # a health check must look at the present, never reuse a result
)
def check_postgres(db: Database, thresholds: Thresholds, field: str) -> CheckResult:
    """Liveness, version, connections vs max_connections, size and longest query of one db."""
    started = time.monotonic()
    if not isinstance(db.via, DirectAccess):
        how = "docker_exec" if isinstance(db.via, DockerExecAccess) else "kubectl_exec"
        raise PermanentError(
            f"{field}.via: checking PostgreSQL through {how} is not yet supported "
            "(fix: use via: direct with a DSN reachable from the worker for now)"
        )
    assert db.dsn is not None  # the inventory model requires it for postgres
    dsn = resolve(db.dsn, field=f"{field}.dsn")
    where = f"database {db.name!r} ({_where(dsn)})"
    with _direct(dsn, where, field) as execute:
        stats = collect_stats(execute)
    status, summary = grade_stats(stats, thresholds)
    details: dict[str, Any] = asdict(stats)
    details["connections_pct"] = round(stats.connections_pct, 1)
    details["via"] = "direct"
    return CheckResult(
        check="postgres",
        target=db.name,
        status=status,
        summary=summary,
        details=details,
        duration_ms=int((time.monotonic() - started) * 1000),
    )


# --- dump (backup) ---------------------------------------------------------------------------

DUMP_TIMEOUT_S = 6 * 3600
DUMP_EXIT_WAIT_S = 60
COUNT_TIMEOUT = "10min"
_STDERR_TAIL = 4000

ROW_COUNTS_SQL = """\
select n.nspname || '.' || c.relname,
       (xpath('/row/c/text()', query_to_xml(
            format('select count(*) as c from %I.%I', n.nspname, c.relname),
            false, true, '')))[1]::text::bigint
from pg_class c join pg_namespace n on n.oid = c.relnamespace
where c.relkind in ('r', 'p')
  and n.nspname not in ('pg_catalog', 'information_schema')
  and n.nspname not like 'pg_toast%'
  and n.nspname not like 'pg_temp%'
order by 1"""


def quote_table(name: str) -> str:
    """``schema.table`` or ``table`` as quoted SQL identifiers (exact, case-sensitive names)."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def checksum_sql(tables: Sequence[str]) -> str:
    """One row ``(name, md5)`` per table: md5 of its rows as text, sorted, newline-joined.

    The same SQL runs at backup time (in the dump's snapshot for ``via: direct``) and on the
    restored copy, so equal checksums mean equal table content.
    """
    return "\nunion all\n".join(
        f"select {_sql_literal(name)}, "
        "md5(coalesce(string_agg(t::text, E'\\n' order by t::text), '')) "
        f"from {quote_table(name)} t"
        for name in tables
    )


def missing_tables_sql(tables: Sequence[str]) -> str:
    """The names among ``tables`` that do not resolve to a relation (``to_regclass``)."""
    values = ", ".join(
        f"({_sql_literal(name)}, {_sql_literal(quote_table(name))})" for name in tables
    )
    return f"select n from (values {values}) v(n, q) where to_regclass(q) is null order by n"


def parse_checksums(rows: Sequence[Row]) -> dict[str, str]:
    """``{table: md5}`` from the rows of ``checksum_sql`` (native or psql text values)."""
    return {str(row[0]): str(row[1]).strip() for row in rows if len(row) == 2}


def _missing_tables_error(field: str, where: str, missing: list[str]) -> Exception:
    names = ", ".join(missing)
    what = f"table {names} does not exist" if len(missing) == 1 else f"tables {names} do not exist"
    return PermanentError(
        f"{field}.checksum_tables: {what} in {where}; nothing was stored "
        f"(fix: correct or remove {names} in {field}.checksum_tables)"
    )


_DUMP_TRANSIENT_MARKERS = (
    "could not connect",
    "connection refused",
    "timeout expired",
    "server closed the connection",
    "connection to server",
    "could not obtain lock",
    "too many connections",
    "the database system is starting up",
    "the database system is shutting down",
)


def pg_dump_binary() -> str:
    """``pg_dump`` on PATH, else the newest one under /usr/lib/postgresql/*/bin."""
    found = shutil.which("pg_dump")
    if found:
        return found
    candidates = sorted(
        glob("/usr/lib/postgresql/*/bin/pg_dump"), key=lambda p: int(Path(p).parts[-3])
    )
    if not candidates:
        raise PermanentError(
            "pg_dump is not installed on this worker (fix: install the PostgreSQL client, "
            "e.g. `apt-get install postgresql-client`, matching or newer than the server)"
        )
    return candidates[-1]


def pg_dump_argv(conninfo: str | None = None, snapshot: str | None = None) -> list[str]:
    """Plain-format dump without ownership; never prompts for a password."""
    argv = ["pg_dump", "--format=plain", "--no-owner", "--no-password"]
    if snapshot:
        argv.append(f"--snapshot={snapshot}")
    if conninfo:
        argv.append(f"--dbname={conninfo}")
    return argv


def split_password(dsn: str, field: str) -> tuple[str, str | None]:
    """A DSN without its password (for the command line) and the password (for PGPASSWORD)."""
    try:
        params = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        raise PermanentError(
            f"{field}.dsn: the DSN cannot be parsed (fix: use postgresql://user@host:port/db "
            "or key=value form)"
        ) from None
    password = params.pop("password", None)
    if password:
        register_secret(str(password))
    params.setdefault("connect_timeout", CONNECT_TIMEOUT_S)
    conninfo = psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in params.items()})
    return conninfo, str(password) if password else None


def _dump_error(what: str, code: int, stderr: str, timed_out: bool, timeout_s: float) -> Exception:
    tail = redact(stderr.strip())[-1000:] or "(no stderr)"
    if timed_out:
        return PermanentError(
            f"{what} did not finish within {timeout_s:.0f}s and was stopped; nothing was stored "
            "(fix: look for locks held by other sessions, or raise the dump timeout)"
        )
    if code < 0:
        return TransientError(f"{what} was killed by signal {-code}; nothing was stored: {tail}")
    lowered = tail.lower()
    if any(marker in lowered for marker in _PERMANENT_MARKERS):
        return PermanentError(f"{what} failed (exit {code}); nothing was stored: {tail}")
    if any(marker in lowered for marker in _DUMP_TRANSIENT_MARKERS):
        return TransientError(f"{what} failed (exit {code}); nothing was stored: {tail}")
    return PermanentError(f"{what} failed (exit {code}); nothing was stored: {tail}")


def stream_process(
    argv: list[str], env: dict[str, str], what: str, timeout_s: float = DUMP_TIMEOUT_S
) -> Iterator[bytes]:
    """Yield a process's stdout in chunks; raise after the last chunk if it did not exit 0.

    stderr goes to a temporary file (its tail ends up, redacted, in the error). The process
    is killed when ``timeout_s`` passes or when the consumer stops reading (closing this
    generator), so an abandoned dump never lingers.
    """
    with tempfile.TemporaryFile() as errfile:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=errfile, env=env
        )
        timed_out = threading.Event()

        def stop() -> None:
            timed_out.set()
            proc.kill()

        timer = threading.Timer(timeout_s, stop)
        timer.daemon = True
        timer.start()
        try:
            assert proc.stdout is not None
            yield from iter_file(proc.stdout)
            code = proc.wait(timeout=DUMP_EXIT_WAIT_S)
        finally:
            timer.cancel()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if code != 0 or timed_out.is_set():
            errfile.seek(0, os.SEEK_END)
            errfile.seek(max(errfile.tell() - _STDERR_TAIL, 0))
            stderr = errfile.read().decode("utf-8", errors="replace")
            raise _dump_error(what, code, stderr, timed_out.is_set(), timeout_s)


@contextmanager
def _closing(chunks: Iterator[bytes]) -> Iterator[Iterator[bytes]]:
    """Close a chunk generator on the way out, so its process stops even when the consumer
    failed (instead of whenever the generator is garbage-collected)."""
    try:
        yield chunks
    finally:
        close = getattr(chunks, "close", None)
        if close is not None:
            close()


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


def kubernetes_for(
    db: Database, kubernetes: KubernetesTarget | None, field: str
) -> KubernetesTarget:
    """The environment's Kubernetes connection, required for ``via: kubectl_exec``."""
    if kubernetes is None:
        env_field = field.rsplit(".databases", 1)[0]
        raise PermanentError(
            f"{field}.via: {db.name} is reached through kubectl_exec but {env_field}.kubernetes "
            "is not set (fix: add kubernetes: {namespace: NS, api_url: ...} or a kubeconfig "
            "to the environment)"
        )
    return kubernetes


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


@task(
    name="dump_postgres",
    timeout_seconds=DUMP_TIMEOUT_S + 600,
    **TRANSIENT_RETRIES,
    cache_policy=NO_CACHE,  # a backup is taken now, never reused
)
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
