"""The one DSN parser: ``PgDsn`` holds a PostgreSQL DSN's parameters with the password apart.

The password is registered for redaction when the DSN is parsed and never leaves through
``where``, ``conninfo()``, ``repr`` or a command line: tools on this worker get it as
PGPASSWORD (``env()``), psycopg as its ``password`` keyword.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import psycopg

from opsflow.errors import PermanentError
from opsflow.inventory import Database
from opsflow.redaction import register_secret
from opsflow.secrets import resolve

CONNECT_TIMEOUT_S = 10
DEFAULT_USER = "postgres"


@dataclass(frozen=True)
class PgDsn:
    """A parsed DSN: libpq parameters (no password) and the password."""

    params: Mapping[str, str]
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, dsn: str, field: str) -> PgDsn:
        """URL (``postgresql://user:pw@host:port/db?opt=v``) or key=value form; ``field`` names
        the inventory entry in the error for a DSN that cannot be parsed."""
        try:
            parsed = psycopg.conninfo.conninfo_to_dict(dsn)
        except psycopg.ProgrammingError:
            raise PermanentError(
                f"{field}.dsn: the DSN cannot be parsed (fix: use postgresql://user@host:port/db "
                "or key=value form)"
            ) from None
        params = {k: str(v) for k, v in parsed.items() if v is not None}
        password = params.pop("password", None) or None
        if password:
            register_secret(password)
        return cls(params, password)

    @classmethod
    def of(cls, db: Database, field: str) -> PgDsn:
        """The DSN of an inventory database, its secret reference resolved."""
        if db.dsn is None:
            raise PermanentError(f"{field}: {db.name} has no dsn")
        return cls.parse(resolve(db.dsn, field=f"{field}.dsn"), field)

    @property
    def host(self) -> str:
        return self.params.get("host") or "localhost"

    @property
    def port(self) -> str:
        return self.params.get("port") or "5432"

    @property
    def user(self) -> str:
        """The role to log in as beside the database (``-U``): the DSN's, else postgres."""
        return self.params.get("user") or DEFAULT_USER

    @property
    def dbname(self) -> str:
        """The database the DSN points at (libpq's default: the user name)."""
        return self.params.get("dbname") or self.params.get("user") or DEFAULT_USER

    @property
    def where(self) -> str:
        """``host:port/db``, without credentials."""
        return f"{self.host}:{self.port}/{self.dbname}"

    def conninfo(self, dbname: str | None = None, **overrides: Any) -> str:
        """A key=value connection string without the password (``dbname`` replaces the DSN's;
        ``connect_timeout`` defaults to CONNECT_TIMEOUT_S)."""
        params: dict[str, Any] = {**self.params, **overrides}
        if dbname is not None:
            params["dbname"] = dbname
        params.setdefault("connect_timeout", str(CONNECT_TIMEOUT_S))
        return psycopg.conninfo.make_conninfo(**params)

    def env(self) -> dict[str, str]:
        """Environment for PostgreSQL client tools on this worker: the password (PGPASSWORD),
        host, port and user of the DSN and the connect timeout."""
        env = {"PGCONNECT_TIMEOUT": str(CONNECT_TIMEOUT_S)}
        for key, var in (("host", "PGHOST"), ("port", "PGPORT"), ("user", "PGUSER")):
            if self.params.get(key):
                env[var] = self.params[key]
        if self.password:
            env["PGPASSWORD"] = self.password
        return env


def database_name(db: Database, field: str) -> str:
    """The name of the database the inventory entry's DSN points at."""
    return PgDsn.of(db, field).dbname
