"""PostgreSQL access below the tasks: DSN handling, SQL text, psql/pg_dump command lines,
error translation and ``PgAccess`` (admin SQL and restores, direct or by exec).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from glob import glob
from pathlib import Path
from typing import Any

import psycopg

from connectors.docker import docker_client, exec_capture, exec_feed
from connectors.kubernetes import (
    find_pod,
    kube_api,
    pod_exec_capture,
    pod_exec_feed,
)
from connectors.streams import iter_file
from opsflow.errors import PermanentError, TransientError
from opsflow.inventory import (
    Database,
    DirectAccess,
    DockerExecAccess,
    DockerTarget,
    KubernetesTarget,
)
from opsflow.redaction import redact, register_secret
from opsflow.secrets import resolve

CONNECT_TIMEOUT_S = 10
STATEMENT_TIMEOUT_MS = 15_000


Row = Sequence[Any]
Execute = Callable[[str], Sequence[Row]]


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


RESTORE_TIMEOUT_S = 6 * 3600
ADMIN_TIMEOUT_S = 120.0
VERIFY_TIMEOUT_S = 3600.0
MAINTENANCE_DB = "postgres"
_ERR_TAIL = 4000
_ABORT = b"\n\\.\n\\opsflow_restore_aborted\n"  # ends any COPY, then an invalid command: rollback
_PG_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$")


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
