"""The one PostgreSQL DSN parser (``PgDsn``) and what the connector builds from it: the password
never shows in ``where``, a conninfo, ``repr``, a command line or an error."""

from __future__ import annotations

import pytest

from connectors.postgres import PgDsn, database_name, postgres_for
from opsflow.errors import PermanentError
from opsflow.inventory import Database, DockerExecAccess, KubectlExecAccess, KubernetesTarget
from opsflow.redaction import redact

URL = "postgresql://backup:url-pw-8c1f@db.example.test:5433/app?sslmode=require"
KEY_VALUE = "host=kv.example.test port=6000 user=ops dbname=inv password='kv pw 4e2b'"


def test_url_form() -> None:
    dsn = PgDsn.parse(URL, "environments.p.databases[0]")
    assert (dsn.host, dsn.port) == ("db.example.test", "5433")
    assert (dsn.user, dsn.dbname) == ("backup", "app")
    assert dsn.password == "url-pw-8c1f"
    assert dsn.where == "db.example.test:5433/app"
    assert dsn.params["sslmode"] == "require" and "password" not in dsn.params


def test_key_value_form() -> None:
    dsn = PgDsn.parse(KEY_VALUE, "f")
    assert (dsn.host, dsn.port, dsn.user, dsn.dbname) == ("kv.example.test", "6000", "ops", "inv")
    assert dsn.password == "kv pw 4e2b"
    assert dsn.where == "kv.example.test:6000/inv"


def test_defaults_follow_libpq_and_the_local_socket_login() -> None:
    assert PgDsn.parse("postgresql:///", "f").where == "localhost:5432/postgres"
    only_user = PgDsn.parse("user=alice", "f")
    assert (only_user.user, only_user.dbname) == ("alice", "alice")
    assert PgDsn.parse("dbname=x", "f").user == "postgres"  # -U beside the database


@pytest.mark.parametrize("text", [URL, KEY_VALUE])
def test_the_password_stays_out_of_where_conninfo_repr_and_is_redacted(text: str) -> None:
    dsn = PgDsn.parse(text, "f")
    assert dsn.password is not None
    for shown in (dsn.where, dsn.conninfo(), dsn.conninfo("other"), repr(dsn), str(dsn)):
        assert dsn.password not in shown
    assert redact(f"error near {dsn.password}!") == "error near ***!"
    assert dsn.env()["PGPASSWORD"] == dsn.password


def test_conninfo_replaces_the_database_and_defaults_the_connect_timeout() -> None:
    dsn = PgDsn.parse(URL, "f")
    conninfo = dsn.conninfo("restored_copy")
    assert "dbname=restored_copy" in conninfo and "connect_timeout=10" in conninfo
    assert "sslmode=require" in conninfo and "host=db.example.test" in conninfo
    assert "dbname=app" in dsn.conninfo()
    assert "connect_timeout=3" in PgDsn.parse(URL + "&connect_timeout=3", "f").conninfo()


def test_env_carries_host_port_user_and_password_for_local_tools() -> None:
    env = PgDsn.parse(URL, "f").env()
    assert env == {
        "PGCONNECT_TIMEOUT": "10",
        "PGHOST": "db.example.test",
        "PGPORT": "5433",
        "PGUSER": "backup",
        "PGPASSWORD": "url-pw-8c1f",
    }
    assert "PGPASSWORD" not in PgDsn.parse("postgresql://u@h/d", "f").env()


def test_an_unparsable_dsn_names_the_field_and_not_the_password() -> None:
    with pytest.raises(PermanentError, match=r"environments\.p\.databases\[1\]\.dsn") as caught:
        PgDsn.parse("password=unparsable-pw-77 host='unterminated", "environments.p.databases[1]")
    assert "unparsable-pw-77" not in str(caught.value)


def test_of_resolves_the_secret_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSFLOW_TEST_DSN_UNIT", URL)
    db = Database(name="main", kind="postgres", dsn="env:OPSFLOW_TEST_DSN_UNIT")
    assert PgDsn.of(db, "f").where == "db.example.test:5433/app"
    assert database_name(db, "f") == "app"


def test_command_lines_carry_no_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSFLOW_TEST_DSN_UNIT", URL)
    direct = Database(name="main", kind="postgres", dsn="env:OPSFLOW_TEST_DSN_UNIT")
    with postgres_for(direct, "f") as pg:
        argv = pg.psql("app", "-c", "select 1")
        assert argv[-1].startswith("--dbname=") and "host=db.example.test" in argv[-1]
        assert "url-pw-8c1f" not in " ".join(argv) and "url-pw-8c1f" not in repr(pg)
        assert pg.where == "db.example.test:5433/app" and pg.via == "direct"
    in_box = direct.model_copy(update={"via": DockerExecAccess(docker_exec="pg")})
    with postgres_for(in_box, "f") as pg:
        assert pg.psql("app", "-c", "select 1")[-4:] == ["-U", "backup", "-d", "app"]
        assert pg.where == "app in container pg" and pg.via == "docker_exec"


def test_kubectl_exec_needs_the_environments_kubernetes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPSFLOW_TEST_DSN_UNIT", URL)
    db = Database(
        name="main",
        kind="postgres",
        dsn="env:OPSFLOW_TEST_DSN_UNIT",
        via=KubectlExecAccess(kubectl_exec="postgres"),
    )
    with pytest.raises(PermanentError, match=r"environments\.p\.kubernetes is not set"):
        postgres_for(db, "environments.p.databases[0]")
    target = KubernetesTarget(namespace="db", api_url="http://127.0.0.1:9")
    with postgres_for(db, "environments.p.databases[0]", kubernetes=target) as pg:
        assert pg.where == "app in db/postgres" and pg.via == "kubectl_exec"
