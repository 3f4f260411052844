"""The rotate-secret runbook against real components, in-process on the session's Prefect
server: a PostgreSQL role (the session's own cluster: scram for every role but postgres) used
by a Docker container whose HEALTHCHECK logs in with the password of its env; a Redis ACL user
of our own redis-server; an API key of a small HTTP application in this process; a Kubernetes
Secret and deployment on the mock API with the fake controller.

What an operator relies on: after a rotation the consumer keeps working on the new value, the
old value no longer logs in and the store holds the new one; a rotation whose consumer cannot
work with the new value is rolled back (old value valid, stored and in use again, the ledger
saying so); no value appears in the logs, the ledger, the report or the flow's state."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import docker
import docker.errors
import psycopg
import pytest
import redis
from prefect.blocks.system import Secret
from psycopg import sql

from flows.rotate_secret import rotate_secret
from opsflow.ledger import Ledger
from opsflow.rotation import RotationReport
from tasks.docker.recreate import FAILED_SUFFIX, PREVIOUS_SUFFIX
from tasks.kubernetes.replicas import RESTARTED_AT
from tests.fixtures.databases import PostgresServer, RedisServer
from tests.fixtures.docker_engine import SESSION_ID, SESSION_LABEL
from tests.fixtures.kube_api import KubeCluster
from tests.support.images import deploy_app_image
from tests.support.net import free_port
from tests.support.prefect_api import api_post

pytestmark = pytest.mark.integration
SITE_PACKAGES = Path(psycopg.__file__).resolve().parents[1]
"""Mounted read-only into the consumer containers: their health checks use psycopg (the
binary wheel is self-contained; the image's python3 is the same 3.11)."""
ADMIN_DSN_VAR = "OPSFLOW_TEST_ROTATION_ADMIN_DSN"
ADMIN_TOKEN_VAR = "OPSFLOW_TEST_ROTATION_ADMIN_TOKEN"

_PG_HEALTH = """
import os, sys
sys.path.insert(0, "/deps")
import psycopg
try:
    psycopg.connect(host="127.0.0.1", port=int(os.environ["PG_PORT"]), user=os.environ["PG_USER"],
                    password=os.environ.get("DB_PASSWORD", ""), dbname="postgres",
                    connect_timeout=3).close()
except psycopg.Error as exc:
    print("login refused:", type(exc).__name__)
    sys.exit(1)
print("ok")
"""
_REDIS_HEALTH = """
import os, socket, sys
def bulk(*args):
    out = b"*%d\\r\\n" % len(args)
    for a in args:
        a = a.encode()
        out += b"$%d\\r\\n%s\\r\\n" % (len(a), a)
    return out
with socket.create_connection(("127.0.0.1", int(os.environ["REDIS_PORT"])), timeout=3) as s:
    s.sendall(bulk("AUTH", os.environ["REDIS_USER"], os.environ.get("REDIS_PASSWORD", "")))
    reply = s.recv(200)
print("ok" if reply.startswith(b"+OK") else "refused")
sys.exit(0 if reply.startswith(b"+OK") else 1)
"""
_API_HEALTH = """
import os, sys, urllib.request
headers = {"X-API-Key": os.environ.get("API_KEY", "")}
request = urllib.request.Request(os.environ["VERIFY_URL"], headers=headers)
try:
    urllib.request.urlopen(request, timeout=3)
except Exception as exc:
    print("refused:", type(exc).__name__)
    sys.exit(1)
print("ok")
"""


@dataclass
class Lab:
    root: Path
    api: str
    client: docker.DockerClient
    docker_url: str
    tag: str = field(default_factory=lambda: secrets.token_hex(4))
    containers: list[str] = field(default_factory=list)

    @property
    def container(self) -> str:
        return f"rot-app-{self.tag}"

    @property
    def block(self) -> str:
        return f"rot-{self.tag}"

    def write_inventory(self, services: str, secrets_yaml: str, extra: str = "") -> None:
        (self.root / "inventory.yaml").write_text(
            "environments:\n  lab:\n"
            f'    databases:\n      - {{name: main, kind: postgres, dsn: "env:{ADMIN_DSN_VAR}"}}\n'
            f'    docker:\n      host: "{self.docker_url}"\n      services:\n{services}'
            + extra
            + "    secrets:\n"
            + secrets_yaml
        )

    def start_consumer(
        self, env: dict[str, str], health: str, name: str | None = None, ready_file: bool = False
    ) -> str:
        """A container on the host's network whose HEALTHCHECK runs ``health`` (python); with
        ``ready_file`` it is healthy only while /tmp/ready exists, which is made in this
        container only (one recreated from it never comes up)."""
        name = name or self.container
        checks = self.root / "checks"
        checks.mkdir(exist_ok=True)
        script = f"health-{name}.py"
        (checks / script).write_text(health)
        test = ["CMD", "python3", f"/checks/{script}"]
        if ready_file:
            test = ["CMD-SHELL", f"test -f /tmp/ready && python3 /checks/{script}"]
        image = deploy_app_image(self.client, "v1")
        self.containers.append(name)
        self.client.containers.run(
            image,
            [
                "python3",
                "-c",
                "import signal, sys, time\n"
                "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
                "time.sleep(10**9)",
            ],
            name=name,
            detach=True,
            network_mode="host",
            environment=env,
            volumes={
                str(SITE_PACKAGES): {"bind": "/deps", "mode": "ro"},
                str(checks): {"bind": "/checks", "mode": "ro"},
            },
            healthcheck={
                "test": test,
                "interval": 500_000_000,
                "timeout": 5_000_000_000,
                "retries": 2,
            },
            labels={SESSION_LABEL: SESSION_ID},
        )
        if ready_file:
            self.client.containers.get(name).exec_run(["touch", "/tmp/ready"])
        self.wait_health(name, "healthy")
        return name

    def inspect(self, name: str) -> dict[str, Any] | None:
        try:
            attrs: dict[str, Any] = self.client.api.inspect_container(name)
        except docker.errors.NotFound:
            return None
        return attrs

    def env_of(self, name: str) -> dict[str, str]:
        attrs = self.inspect(name)
        assert attrs is not None, name
        return dict(e.split("=", 1) for e in attrs["Config"]["Env"])

    def wait_health(self, name: str, status: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            attrs = self.inspect(name)
            seen = ((attrs or {}).get("State") or {}).get("Health", {}).get("Status")
            if seen == status:
                return
            time.sleep(0.2)
        raise AssertionError(f"{name} is {seen}, not {status}")

    def run(self, **params: Any) -> tuple[Any, RotationReport]:
        state = rotate_secret(env="lab", requested_by="tester", return_state=True, **params)
        report = state.result(raise_on_failure=False)
        assert isinstance(report, RotationReport), f"{state.name}: {report!r}"
        return state, report

    def ledger(self) -> Ledger:
        return Ledger(f"sqlite:///{self.root / 'ledger.db'}")

    def run_rows(self, state: Any) -> tuple[Any, list[Any]]:
        run_id = str(state.state_details.flow_run_id)
        ledger = self.ledger()
        [row] = [
            r for r in ledger.runs(env="lab", runbook="rotate-secret") if r.flow_run_id == run_id
        ]
        return row, ledger.steps(run_id)

    def everything_written(self, state: Any) -> str:
        """The ledger rows, the flow's Prefect logs and artifacts and its state message."""
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=15)
        run_id = str(state.state_details.flow_run_id)
        row, steps = self.run_rows(state)
        logs = api_post(
            f"{self.api}/logs/filter",
            json={"logs": {"flow_run_id": {"any_": [run_id]}}, "limit": 200},
            timeout=10,
        ).json()
        artifacts = api_post(
            f"{self.api}/artifacts/filter",
            json={"artifacts": {"flow_run_id": {"any_": [run_id]}}},
            timeout=10,
        ).json()
        assert logs and artifacts
        parts = [row.summary, json.dumps(row.details), state.message or "", json.dumps(logs)]
        parts += [f"{s.step} {s.target} {s.summary} {json.dumps(s.details)}" for s in steps]
        parts += [json.dumps(artifacts), state.result(raise_on_failure=False).model_dump_json()]
        return "\n".join(parts)


@pytest.fixture
def lab(
    tmp_path: Path,
    prefect_api: str,
    monkeypatch: pytest.MonkeyPatch,
    postgres_own_cluster: PostgresServer,
    docker_engine: str,
    docker_engine_client: docker.DockerClient,
) -> Iterator[Lab]:
    monkeypatch.setenv("OPSFLOW_INVENTORY", str(tmp_path / "inventory.yaml"))
    monkeypatch.setenv("OPSFLOW_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("OPSFLOW_HOME", str(tmp_path / ".opsflow"))
    monkeypatch.setenv(ADMIN_DSN_VAR, postgres_own_cluster.dsn())
    lab = Lab(tmp_path, prefect_api, docker_engine_client, docker_engine)
    try:
        yield lab
    finally:
        for name in lab.containers:
            for suffix in ("", PREVIOUS_SUFFIX, FAILED_SUFFIX):
                with contextlib.suppress(docker.errors.NotFound):
                    docker_engine_client.api.remove_container(name + suffix, force=True)


# --- PostgreSQL role, Docker consumer ---------------------------------------------------------


@dataclass
class PgRole:
    server: PostgresServer
    name: str
    password: str

    def logs_in(self, password: str) -> bool:
        try:
            psycopg.connect(
                host=self.server.host,
                port=self.server.port,
                user=self.name,
                password=password,
                dbname="postgres",
                connect_timeout=5,
            ).close()
        except psycopg.OperationalError:
            return False
        return True


@pytest.fixture
def pg_role(postgres_own_cluster: PostgresServer) -> Iterator[PgRole]:
    role = PgRole(postgres_own_cluster, f"rot_app_{secrets.token_hex(4)}", secrets.token_hex(16))
    with postgres_own_cluster.connect() as conn:
        conn.execute(
            sql.SQL("create role {} login password {}").format(
                sql.Identifier(role.name), sql.Literal(role.password)
            )
        )
    yield role
    with postgres_own_cluster.connect() as conn:
        conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(role.name)))


def _pg_lab(lab: Lab, role: PgRole, consumer_env: str = "DB_PASSWORD") -> None:
    Secret(value=role.password).save(lab.block, overwrite=True)
    lab.start_consumer(
        {"DB_PASSWORD": role.password, "PG_PORT": str(role.server.port), "PG_USER": role.name},
        _PG_HEALTH,
    )
    lab.write_inventory(
        f"        - {{name: app, container: {lab.container}}}\n",
        "      - name: app-db\n        kind: postgres_role\n"
        f"        role: {role.name}\n        admin: main\n"
        f"        store: {{prefect_secret: {lab.block}}}\n"
        f"        consumers: {{docker: [{{service: app, env: {consumer_env}}}]}}\n",
    )


def _stored(block: str) -> str:
    value = Secret.load(block).value.get_secret_value()  # type: ignore[union-attr]
    assert isinstance(value, str)
    return value


def test_postgres_role_rotation_keeps_the_app_working_on_the_new_password(
    lab: Lab, pg_role: PgRole, caplog: pytest.LogCaptureFixture
) -> None:
    _pg_lab(lab, pg_role)
    caplog.set_level(logging.DEBUG)

    state, report = lab.run(secret_name="app-db")

    assert state.is_completed(), state.message
    [outcome] = report.secrets
    assert outcome.status == "rotated", outcome
    new = _stored(lab.block)
    assert new != pg_role.password and len(new) == 32
    assert not pg_role.logs_in(pg_role.password)  # the old password no longer logs in
    assert pg_role.logs_in(new)
    assert lab.env_of(lab.container)["DB_PASSWORD"] == new  # the app runs on the new value
    lab.wait_health(lab.container, "healthy")  # and keeps answering its health check
    assert lab.inspect(lab.container + PREVIOUS_SUFFIX) is None  # the old container is gone
    row, steps = lab.run_rows(state)
    assert row.status == "complete"
    assert [s.step for s in steps] == [
        "read_secret_store",
        "check_current_credential",
        "create_credential",
        "write_secret_store",
        "roll_consumer",
        "verify_credential",
        "check_consumer",
        "revoke_credential",
        "rotated",
        "remove_previous_container",
    ]
    rotated = next(s for s in steps if s.step == "rotated")
    assert (rotated.target, rotated.status) == ("app-db", "complete")
    assert "ALTER ROLE replaced" in next(s for s in steps if s.step == "revoke_credential").summary
    written = lab.everything_written(state) + caplog.text
    for value in (pg_role.password, new):
        assert value not in written

    # nothing is due a moment later (rotate_every 30d): the monthly run changes nothing
    again, due = lab.run()
    assert again.is_completed(), again.message
    assert due.secrets == [] and _stored(lab.block) == new


def test_postgres_rotation_whose_consumer_fails_is_rolled_back(
    lab: Lab, pg_role: PgRole, caplog: pytest.LogCaptureFixture
) -> None:
    # the inventory names an env var the app does not read: it keeps logging in with the old
    # password, which ALTER ROLE replaced, so its health check fails on the new container
    _pg_lab(lab, pg_role, consumer_env="DB_PASS_UNUSED")
    caplog.set_level(logging.DEBUG)

    state, report = lab.run(secret_name="app-db")

    assert state.is_failed(), state.message
    [outcome] = report.secrets
    assert outcome.status == "rolled-back", outcome
    assert "unhealthy" in outcome.error
    assert pg_role.logs_in(pg_role.password)  # the old password works again
    assert _stored(lab.block) == pg_role.password  # and the store holds it
    env = lab.env_of(lab.container)
    assert env["DB_PASSWORD"] == pg_role.password and "DB_PASS_UNUSED" not in env
    lab.wait_health(lab.container, "healthy")
    failed_env = lab.env_of(lab.container + FAILED_SUFFIX)  # kept stopped, for its logs
    new = failed_env["DB_PASS_UNUSED"]
    assert not pg_role.logs_in(new)  # the new value was made invalid again
    row, steps = lab.run_rows(state)
    assert row.status == "rolled-back"
    names = [s.step for s in steps]
    assert "rotated" not in names and "revoke_credential" not in names
    assert names[-6:] == [
        "restore_secret_store",
        "restore_credential",
        "roll_back_consumer",
        "retire_new_credential",
        "check_current_credential",
        "rollback",
    ]
    assert next(s for s in steps if s.step == "rollback").status == "complete"
    written = lab.everything_written(state) + caplog.text
    for value in (pg_role.password, new):
        assert value not in written


# --- Redis ACL user, two Docker consumers ----------------------------------------------------


@dataclass
class AclUser:
    server: RedisServer
    name: str
    password: str

    def authenticates(self, password: str) -> bool:
        with redis.Redis(
            host=self.server.host,
            port=self.server.port,
            username=self.name,
            password=password,
            socket_timeout=5,
        ) as client:
            try:
                return bool(client.ping())
            except redis.AuthenticationError:
                return False

    def password_hashes(self) -> list[str]:
        with self.server.client() as client:
            return list(client.acl_getuser(self.name)["passwords"])


@pytest.fixture
def acl_user(redis_own_server: RedisServer) -> Iterator[AclUser]:
    user = AclUser(redis_own_server, f"rot_{secrets.token_hex(4)}", secrets.token_hex(16))
    with redis_own_server.client() as client:
        client.execute_command(
            "ACL", "SETUSER", user.name, "on", ">" + user.password, "~*", "+@all"
        )
    yield user
    with redis_own_server.client() as client:
        client.execute_command("ACL", "DELUSER", user.name)


def _redis_lab(lab: Lab, user: AclUser, worker_comes_up: bool = True) -> str:
    Secret(value=user.password).save(lab.block, overwrite=True)
    env = {
        "REDIS_PASSWORD": user.password,
        "REDIS_PORT": str(user.server.port),
        "REDIS_USER": user.name,
    }
    lab.start_consumer(env, _REDIS_HEALTH)
    worker = lab.start_consumer(
        env, _REDIS_HEALTH, name=f"{lab.container}-worker", ready_file=not worker_comes_up
    )
    lab.write_inventory(
        f"        - {{name: app, container: {lab.container}}}\n"
        f"        - {{name: worker, container: {worker}}}\n",
        "      - name: cache-user\n        kind: redis_acl\n"
        f"        role: {user.name}\n        admin: cache\n"
        f"        store: {{prefect_secret: {lab.block}}}\n"
        "        consumers: {docker: [{service: app, env: REDIS_PASSWORD}, "
        "{service: worker, env: REDIS_PASSWORD}]}\n",
        extra=f'    redis:\n      - {{name: cache, url: "{user.server.url}"}}\n',
    )
    return worker


def test_redis_acl_rotation_adds_the_new_password_then_revokes_the_old(
    lab: Lab, acl_user: AclUser, caplog: pytest.LogCaptureFixture
) -> None:
    worker = _redis_lab(lab, acl_user)
    caplog.set_level(logging.DEBUG)

    state, report = lab.run(secret_name="cache-user")

    assert state.is_completed(), state.message
    assert report.secrets[0].status == "rotated"
    new = _stored(lab.block)
    assert new != acl_user.password
    assert acl_user.authenticates(new) and not acl_user.authenticates(acl_user.password)
    assert len(acl_user.password_hashes()) == 1  # the old one was removed, nothing else added
    for name in (lab.container, worker):
        assert lab.env_of(name)["REDIS_PASSWORD"] == new
        lab.wait_health(name, "healthy")
    _row, steps = lab.run_rows(state)
    assert [s.step for s in steps].count("roll_consumer") == 2
    assert next(s for s in steps if s.step == "rotated").target == "cache-user"
    written = lab.everything_written(state) + caplog.text
    for value in (acl_user.password, new):
        assert value not in written


def test_redis_rotation_rolls_every_consumer_back_when_one_does_not_come_up(
    lab: Lab, acl_user: AclUser
) -> None:
    worker = _redis_lab(lab, acl_user, worker_comes_up=False)

    state, report = lab.run(secret_name="cache-user")

    assert state.is_failed(), state.message
    assert report.secrets[0].status == "rolled-back", report.secrets[0]
    assert _stored(lab.block) == acl_user.password
    assert acl_user.authenticates(acl_user.password)
    old_hash = hashlib.sha256(acl_user.password.encode()).hexdigest()
    assert acl_user.password_hashes() == [old_hash]  # the new password was removed again
    for name in (lab.container, worker):  # both back on their own containers, old value
        assert lab.env_of(name)["REDIS_PASSWORD"] == acl_user.password
        assert lab.inspect(name + PREVIOUS_SUFFIX) is None
    lab.wait_health(lab.container, "healthy")
    row, steps = lab.run_rows(state)
    assert row.status == "rolled-back"
    backs = [s.target for s in steps if s.step == "roll_back_consumer"]
    assert backs == ["docker worker", "docker app"]  # newest first
    assert next(s for s in steps if s.step == "retire_new_credential").status == "complete"


# --- API key, Docker consumer -----------------------------------------------------------------


class KeyApp:
    """An application with API keys: POST /keys and DELETE /keys/<id> need the admin token,
    GET /verify answers 200 to an active key in X-API-Key, 401 otherwise."""

    def __init__(self) -> None:
        self.admin = secrets.token_hex(12)
        self.keys: dict[str, str] = {"k0": secrets.token_hex(16)}
        self.made = 0
        app = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: dict[str, Any] | None = None) -> None:
                data = json.dumps(body or {}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                active = self.headers.get("X-API-Key") in app.keys.values()
                self._answer(200 if self.path == "/verify" and active else 401)

            def do_POST(self) -> None:
                if self.headers.get("X-Admin-Token") != app.admin:
                    return self._answer(403)
                app.made += 1
                key_id, key = f"k{app.made}", secrets.token_urlsafe(24)
                app.keys[key_id] = key
                self._answer(201, {"id": key_id, "key": key})

            def do_DELETE(self) -> None:
                if self.headers.get("X-Admin-Token") != app.admin:
                    return self._answer(403)
                found = app.keys.pop(self.path.rsplit("/", 1)[-1], None)
                self._answer(204 if found else 404)

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@pytest.fixture
def key_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[KeyApp]:
    app = KeyApp()
    monkeypatch.setenv(ADMIN_TOKEN_VAR, app.admin)
    yield app
    app.server.shutdown()
    app.server.server_close()


def _key_lab(lab: Lab, key_app: KeyApp, comes_up: bool = True) -> str:
    old = key_app.keys["k0"]
    Secret(value=f"k0:{old}").save(lab.block, overwrite=True)  # <id>:<key>
    env = {"API_KEY": old, "VERIFY_URL": f"{key_app.url}/verify"}
    lab.start_consumer(env, _API_HEALTH, ready_file=not comes_up)
    lab.write_inventory(
        f"        - {{name: app, container: {lab.container}}}\n",
        "      - name: app-key\n        kind: api_key\n"
        f"        api: {{create: {key_app.url}/keys, revoke: '{key_app.url}/keys/{{id}}', "
        f"verify: {key_app.url}/verify, headers: {{X-Admin-Token: 'env:{ADMIN_TOKEN_VAR}'}}}}\n"
        f"        store: {{prefect_secret: {lab.block}}}\n"
        "        consumers: {docker: [{service: app, env: API_KEY}]}\n",
    )
    return old


def test_api_key_rotation_creates_a_key_rolls_the_consumer_and_revokes_the_old(
    lab: Lab, key_app: KeyApp, caplog: pytest.LogCaptureFixture
) -> None:
    old = _key_lab(lab, key_app)
    caplog.set_level(logging.DEBUG)

    state, report = lab.run(secret_name="app-key")

    assert state.is_completed(), state.message
    assert report.secrets[0].status == "rotated"
    assert list(key_app.keys) == ["k1"]  # the old key was revoked, the new one is active
    new = key_app.keys["k1"]
    assert _stored(lab.block) == f"k1:{new}"
    assert lab.env_of(lab.container)["API_KEY"] == new
    lab.wait_health(lab.container, "healthy")
    _row, steps = lab.run_rows(state)
    assert next(s for s in steps if s.step == "rotated").details["key_id"] == "k1"
    written = lab.everything_written(state) + caplog.text
    for value in (old, new, key_app.admin):
        assert value not in written

    # a store without the key's id: refused before anything changes (no key made)
    Secret(value=new).save(lab.block, overwrite=True)
    state, report = lab.run(secret_name="app-key")
    assert state.is_failed()
    assert report.secrets[0].status == "failed"
    assert "holds no key id" in report.secrets[0].error
    assert "Nothing was changed" in report.secrets[0].error
    assert key_app.made == 1 and list(key_app.keys) == ["k1"]
    assert lab.run_rows(state)[0].status == "failed"


def test_api_key_rotation_rolled_back_revokes_the_new_key(lab: Lab, key_app: KeyApp) -> None:
    old = _key_lab(lab, key_app, comes_up=False)  # the recreated consumer never comes up

    state, report = lab.run(secret_name="app-key")

    assert state.is_failed(), state.message
    assert report.secrets[0].status == "rolled-back", report.secrets[0]
    assert key_app.made == 1 and key_app.keys == {"k0": old}  # the new key k1 was revoked
    assert _stored(lab.block) == f"k0:{old}"
    assert lab.env_of(lab.container)["API_KEY"] == old
    lab.wait_health(lab.container, "healthy")
    row, steps = lab.run_rows(state)
    assert row.status == "rolled-back"
    retired = next(s for s in steps if s.step == "retire_new_credential")
    assert (retired.status, retired.summary) == ("complete", "API key k1 revoked")


# --- Kubernetes Secret store, Kubernetes deployment consumer ----------------------------------


def test_postgres_role_in_a_kubernetes_secret_restarts_the_deployment(
    lab: Lab, pg_role: PgRole, kube_cluster: KubeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    ns, api = kube_cluster.namespace, kube_cluster.api
    encoded = base64.b64encode(pg_role.password.encode()).decode()
    api.create(
        f"/api/v1/namespaces/{ns}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "app-db", "namespace": ns},
            "data": {"password": encoded, "other": "eA=="},
        },
    )
    lab.write_inventory(
        "        - {name: app, container: unused}\n",
        "      - name: app-db\n        kind: postgres_role\n"
        f"        role: {pg_role.name}\n        admin: main\n"
        "        store: {kubernetes_secret: app-db, key: password}\n"
        "        consumers: {kubernetes: [app]}\n",
        extra=f"    kubernetes: {{namespace: {ns}, api_url: {kube_cluster.url}}}\n",
    )
    deployment = f"/apis/apps/v1/namespaces/{ns}/deployments/app"
    caplog.set_level(logging.DEBUG)

    with kube_cluster.controller:
        state, report = lab.run(secret_name="app-db")

    assert state.is_completed(), state.message
    assert report.secrets[0].status == "rotated"
    stored = api.get(f"/api/v1/namespaces/{ns}/secrets/app-db")
    assert stored is not None
    new = base64.b64decode(stored["data"]["password"]).decode()
    assert new != pg_role.password and stored["data"]["other"] == "eA=="
    assert stored["metadata"]["annotations"]["opsflow.io/rotated-at"].endswith("Z")
    assert pg_role.logs_in(new) and not pg_role.logs_in(pg_role.password)
    dep = api.get(deployment)
    assert dep is not None
    assert RESTARTED_AT in dep["spec"]["template"]["metadata"]["annotations"]
    assert dep["status"]["availableReplicas"] == 4  # the rolling restart finished
    _row, steps = lab.run_rows(state)
    assert [s.target for s in steps if s.step == "roll_consumer"] == [f"deployment {ns}/app"]
    written = lab.everything_written(state) + caplog.text
    for value in (pg_role.password, new, encoded):
        assert value not in written
