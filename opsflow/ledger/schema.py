"""The ledger's database: the engine (timeouts for locks and connections), errors translated
into one-line ``LedgerUnavailable`` messages, and the schema kept at the newest Alembic
revision.

Opening a ledger reads ``alembic_version`` and stops there when it is ``HEAD`` (no schema work
per run). Otherwise the migrations of ``opsflow/ledger/migrations`` run, in code, in one
transaction that also serialises concurrent upgraders (``BEGIN IMMEDIATE`` on SQLite, an
advisory lock on PostgreSQL); a ledger made before migrations existed (tables, no
``alembic_version``) is upgraded the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import create_engine, event, inspect, text
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from opsflow.ledger.errors import LedgerSchemaError, LedgerUnavailable
from opsflow.redaction import redact

if TYPE_CHECKING:
    from alembic.config import Config

HEAD = "0004"
"""The newest revision in ``migrations/versions`` (a test checks they agree)."""
KNOWN = (None, "0001", "0002", "0003", HEAD)
MIGRATIONS = Path(__file__).with_name("migrations")
_PG_LOCK = 0x6F70_7366_6C77  # pg_advisory_xact_lock key of ledger upgrades ("opsflw")
_REASON_CHARS = 200


def display_url(url: str) -> str:
    """The ledger URL as it may be shown: no password, SQLite paths absolute."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        parsed = parsed.set(database=str(Path(parsed.database or "").resolve()))
    return parsed.render_as_string(hide_password=True)


def make_engine(url: str, timeout: float) -> Engine:
    """An engine that waits at most ``timeout`` seconds for a lock or a connection."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if parsed.database not in (None, "", ":memory:"):
            Path(parsed.database or "").parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": timeout}, pool_pre_ping=True)
        event.listen(engine, "connect", _sqlite_pragmas(timeout))
        return engine
    if backend == "postgresql":
        args: dict[str, Any] = {}
        if "connect_timeout" not in parsed.query:
            args["connect_timeout"] = max(1, round(timeout))
        if "options" not in parsed.query:
            args["options"] = f"-c lock_timeout={int(timeout * 1000)}"
        return create_engine(url, connect_args=args, pool_pre_ping=True)
    return create_engine(url, pool_pre_ping=True)


def _sqlite_pragmas(timeout: float) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    return on_connect


@contextmanager
def translated(url: str, timeout: float) -> Iterator[None]:
    """Turn "cannot reach / lock / write the database" into one ``LedgerUnavailable`` line."""
    try:
        yield
    except (OperationalError, InterfaceError) as exc:
        raise unavailable(url, timeout, exc) from None
    except DBAPIError as exc:
        if exc.connection_invalidated:
            raise unavailable(url, timeout, exc) from None
        raise
    except OSError as exc:  # the SQLite directory cannot be made
        raise LedgerUnavailable(url, f"cannot be opened: {exc.strerror}", _fix_path(url)) from None


def unavailable(url: str, timeout: float, exc: BaseException) -> LedgerUnavailable:
    orig = getattr(exc, "orig", None) or exc
    reason = redact(" ".join(str(orig).split()))[:_REASON_CHARS] or type(orig).__name__
    lowered = reason.lower()
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if "locked" in lowered or "lock timeout" in lowered:
        return LedgerUnavailable(
            url,
            f"is locked: still locked after {timeout:g}s ({reason})",
            (
                f"find what holds it (e.g. `fuser {parsed.database}`) and let it finish, "
                if backend == "sqlite"
                else "find the blocking session in pg_stat_activity and let it finish, "
            )
            + "then run again; OPSFLOW_LEDGER_TIMEOUT sets how long to wait",
        )
    if "read-only" in lowered or "readonly" in lowered:
        return LedgerUnavailable(
            url,
            f"cannot be written ({reason})",
            "point OPSFLOW_LEDGER_URL at a writable ledger (the primary, a writable file)",
        )
    if backend == "sqlite":
        return LedgerUnavailable(url, f"cannot be opened ({reason})", _fix_path(url))
    where = f"{parsed.host or 'localhost'}:{parsed.port or 5432}"
    return LedgerUnavailable(
        url,
        f"is unavailable ({reason})",
        f"start the database server at {where} (or check its network and credentials), or "
        "point OPSFLOW_LEDGER_URL at a reachable ledger",
    )


def _fix_path(url: str) -> str:
    path = make_url(url).database
    return (
        f"check that the directory of {path} exists and this user may write it, "
        "or set OPSFLOW_LEDGER_URL"
    )


# ----- schema ------------------------------------------------------------------------------


def revision(conn: Connection) -> str | None:
    """The ledger's Alembic revision (None: no ``alembic_version`` table)."""
    if not inspect(conn).has_table("alembic_version"):
        return None
    value = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return str(value) if value is not None else None


def ensure_schema(engine: Engine, url: str, key: Callable[[], bytes]) -> None:
    """Upgrade the ledger to ``HEAD`` unless it is there already. ``key`` is called only when
    existing rows must be re-signed."""
    with engine.connect() as conn:
        current = revision(conn)
    if current == HEAD:
        return
    _check_known(current, url)
    with engine.connect() as conn:
        backend = engine.url.get_backend_name()
        if backend == "sqlite":
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # DDL in the transaction; one upgrader
        elif backend == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})
        current = revision(conn)  # another process may have upgraded it meanwhile
        _check_known(current, url)
        if current != HEAD:
            from alembic import command  # only when there is schema work: not per run

            command.upgrade(alembic_config(conn, key), HEAD)
        conn.commit()


def _check_known(current: str | None, url: str) -> None:
    if current not in KNOWN:
        raise LedgerSchemaError(
            f"ledger {url} has schema revision {current!r}, newer than this opsflow knows "
            f"({HEAD}) (fix: upgrade opsflow on this host to the version that wrote it)"
        )


def alembic_config(conn: Connection, key: Callable[[], bytes]) -> Config:
    """An Alembic config built in code: our migrations, this connection, the key provider."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    config.attributes["connection"] = conn
    config.attributes["ledger_key"] = key
    return config
