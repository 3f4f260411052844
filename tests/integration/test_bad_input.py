"""Every bad input an operator can give is refused cleanly: exit 2, the field named, no
traceback, a bounded answer, and nothing changed.

Each case runs the real ``opsflow`` command against a real workspace: an inventory, a SQLite
ledger (``OPSFLOW_LEDGER_URL``), ``OPSFLOW_HOME``, a local backup store holding real backups of
a SQLite file and a PostgreSQL database made by the real backup runbook. Before and after each
case the test takes a snapshot of everything the command could change — the ledger's row
count per table, every file in the store and in ``OPSFLOW_HOME``, the SQLite file's bytes, the
PostgreSQL database's rows and the server's database names — and asserts it is unchanged.

Cases that are refused before a flow run exists point ``PREFECT_API_URL`` at a port where no
server listens: if one needed a server, validation would be too late (it fails loudly instead
of being refused). Only what can be known only where the flow runs (a missing ``env:``
variable or ``secret:`` block, the live database behind a DSN reference) goes through the
session's Prefect server, and is refused there before the first ledger row.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.fixtures.databases import PostgresServer
from tests.support.cli import OPSFLOW

pytestmark = pytest.mark.integration

NO_SERVER = "http://127.0.0.1:9/api"
"""Nothing listens there: a case that contacted the Prefect API would fail, not pass."""
MAX_OUTPUT = 3000
PG_VAR = "BADIN_PG_DSN"


@dataclass
class Workspace:
    root: Path
    pg: PostgresServer
    pg_name: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.db"

    @property
    def lite(self) -> Path:
        return self.root / "lite.db"

    def run(
        self, args: list[str], extra: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.env, **(extra or {})}
        return subprocess.run(
            [*OPSFLOW, *args], env=env, capture_output=True, text=True, timeout=300, check=False
        )


def inventory_text(root: Path, pg_dsn_reference: str) -> str:
    store = f"file://{root / 'store'}"
    return f"""
environments:
  local:
    disks: ["{root}"]
    databases:
      - {{name: lite, kind: sqlite, path: "{root / "lite.db"}"}}
      - {{name: main, kind: postgres, dsn: "{pg_dsn_reference}"}}
    backup_store: {{url: "{store}"}}
  shop:
    docker:
      host: "unix://{root / "no-docker.sock"}"
      services: [{{name: web, container: web-1}}]
    deploy: {{backup: false}}
  shop-staging:
    docker:
      host: "unix://{root / "no-docker.sock"}"
      services: [{{name: api, container: api-1}}]
    deploy: {{backup: false}}
  refs:
    databases: [{{name: lite, kind: sqlite, path: "{root / "lite.db"}"}}]
    redis: [{{name: cache, url: "env:BADIN_MISSING_REDIS_URL"}}]
    notify: [{{webhook: "secret:badin-no-such-block"}}]
    backup_store: {{url: "{store}"}}
"""


@pytest.fixture(scope="module")
def workspace(
    tmp_path_factory: pytest.TempPathFactory, prefect_api: str, postgres_server: PostgresServer
) -> Iterator[Workspace]:
    root = tmp_path_factory.mktemp("bad-input")
    name = f"opsflow_badin_{secrets.token_hex(4)}"
    with postgres_server.connect() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    with psycopg.connect(postgres_server.dsn(name), autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id int primary key, balance int)")
        conn.execute("INSERT INTO accounts SELECT g, g * 10 FROM generate_series(1, 3) g")
    with sqlite3.connect(root / "lite.db") as lite:
        lite.execute("CREATE TABLE t (x)")
        lite.executemany("INSERT INTO t VALUES (?)", [(1,), (2,), (3,)])
    lite.close()
    (root / "inventory.yaml").write_text(inventory_text(root, f"env:{PG_VAR}"))
    ws = Workspace(root, postgres_server, name)
    ws.env = {
        "OPSFLOW_INVENTORY": str(root / "inventory.yaml"),
        "OPSFLOW_HOME": str(root / "home"),
        "OPSFLOW_LEDGER_URL": f"sqlite:///{root / 'ledger.db'}",
        "PREFECT_API_URL": prefect_api,
        PG_VAR: postgres_server.dsn(name),
        "OPSFLOW_USER": "tester",
    }
    for var in ("OPSFLOW_LEDGER_KEY", "OPSFLOW_LEDGER_KEY_FILE", "OPSFLOW_LEDGER_TIMEOUT"):
        os.environ.pop(var, None)
    for _ in range(2):  # real backups, so "--limit -5" is refused while backups exist
        done = ws.run(["run", "backup", "--env", "local"])
        assert done.returncode == 0, done.stdout + done.stderr
    listed = ws.run(["backups", "list", "--env", "local", "--json"])
    assert listed.returncode == 0 and listed.stdout.count('"backup_id"') == 4, listed.stdout
    try:
        yield ws
    finally:
        with postgres_server.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(top: Path) -> list[tuple[str, int, str]]:
    if not top.exists():
        return []
    return sorted(
        (str(p.relative_to(top)), p.stat().st_size, _digest(p))
        for p in top.rglob("*")
        if p.is_file()
    )


def snapshot(ws: Workspace) -> dict[str, Any]:
    """Everything a command could change."""
    ledger = sqlite3.connect(f"file:{ws.ledger}?mode=ro", uri=True)
    try:
        tables = [t for (t,) in ledger.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        counts = {t: ledger.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
    finally:
        ledger.close()
    with ws.pg.connect() as conn:
        # this workspace's database and any a restore would create (others' are not ours)
        found = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s OR datname = 'copy'",
            (ws.pg_name + "%",),
        )
        names = sorted(r[0] for r in found)
    with psycopg.connect(ws.pg.dsn(ws.pg_name)) as conn:
        rows = conn.execute("SELECT id, balance FROM accounts ORDER BY id").fetchall()
    return {
        "ledger rows": counts,
        "store": _files(ws.root / "store"),
        "home": _files(ws.root / "home"),
        "sqlite": _digest(ws.lite),
        "postgres databases": names,
        "postgres rows": rows,
    }


# --- the cases -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    args: list[str]
    field: str
    """Text that must appear in stderr: the field (or option / variable) refused."""
    inventory: str | bytes | None = None
    """Contents of an inventory file given as ``{inv}`` in args or as OPSFLOW_INVENTORY."""
    env: dict[str, str] = field(default_factory=dict)
    server: bool = False
    """The refusal can only happen where the flow runs (the session's Prefect server)."""
    also: tuple[str, ...] = ()
    """More text the message must hold (the fix, a bound)."""


def inv_check(case_id: str, text: str | bytes, expected: str, *also: str) -> Case:
    return Case(case_id, ["inventory", "check", "{inv}"], expected, inventory=text, also=also)


def env_of(body: str) -> str:
    return "environments:\n  p:\n" + "".join(f"    {line}\n" for line in body.splitlines())


DEEP = "environments: " + "[" * 100_000 + "]" * 100_000
LAUGHS = (
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n"
        for i in range(8)
    )
    + "environments: {local: {disks: *i}}\n"
)
MANY_ERRORS = (
    "environments:\n  p:\n    endpoints:\n" + "      - {name: 1, url: ftp://x, kind: no}\n" * 700
)

INVENTORY_CASES = [
    Case("inventory-is-a-directory", ["inventory", "check", "{dir}"], "is a directory"),
    Case("inventory-missing", ["inventory", "check", "{dir}/nope.yaml"], "not found"),
    inv_check(
        "inventory-latin1",
        "environments:\n  local: {description: 'caf\xe9'}\n".encode("latin-1"),
        "UTF-8",
        "line 2",
    ),
    inv_check("inventory-random-bytes", bytes(range(128, 256)) * 20, "UTF-8"),
    inv_check("inventory-nul-bytes", b"environments:\x00\x00\n", "NUL"),
    inv_check("inventory-100k-deep", DEEP, "nests deeper than"),
    inv_check("inventory-billion-laughs", LAUGHS, "billion laughs"),
    inv_check("inventory-2100-problems-bounded", MANY_ERRORS, "endpoints[0]", "… and 2080 more"),
    inv_check("inventory-too-big", "# " + "x" * (5 * 1024 * 1024) + "\n", "larger than"),
    inv_check(
        "inventory-bad-yaml", "environments:\n  p: {endpoints: [}\n", "not valid YAML at line 2"
    ),
    inv_check("inventory-not-a-mapping", "- a list\n", "environments"),
    inv_check("inventory-unknown-field", env_of("endpoinds: []"), "endpoinds", "did you mean"),
    inv_check("inventory-env-name", "environments: {Prod: {}}\n", "lowercase"),
    inv_check(  # a field name that is rich markup is printed as written, not rendered
        "inventory-rich-markup-kept",
        env_of('"[bold]endpoinds[/bold]": []'),
        "environments.p.[bold]endpoinds[/bold]",
        "unknown field",
    ),
    # alert rules against prefect.yaml's runbooks and the inventory's environments
    inv_check(
        "alert-rule-unknown-runbook",
        env_of("alert_rules: [{match: {alertname: HighMemory}, runbook: high-memoryy}]"),
        "environments.p.alert_rules[0].runbook",
        "unknown runbook 'high-memoryy'",
        "choose one of prefect.yaml's runbooks: backup,",
    ),
    inv_check(
        "alert-rule-unknown-environment",
        "environments: {p: {}}\n"
        "alert_rules: [{match: {alertname: Down, env: qa}, runbook: health-check}]\n",
        "alert_rules[0].match.env",
        "unknown environment 'qa'",
        "name one of the inventory's environments: p",
    ),
    inv_check(
        "approvals-timeout-zero",
        env_of("approvals: {approvers: [a], timeout: 0}"),
        "approvals.timeout",
    ),
    inv_check(
        "endpoint-timeout-zero",
        env_of("endpoints: [{name: a, url: 'http://h', timeout: 0}]"),
        "endpoints[0].timeout",
    ),
    # literal credentials, each with the fix of a reference
    inv_check(
        "dsn-key-value-password",
        env_of("databases: [{name: m, kind: postgres, dsn: 'host=h dbname=d password=hunter2'}]"),
        "databases[0].dsn",
        "env:VAR_NAME",
    ),
    inv_check(
        "dsn-url-password",
        env_of("databases: [{name: m, kind: postgres, dsn: 'postgresql://u:hunter2@h/d'}]"),
        "databases[0].dsn",
        "env:VAR_NAME",
    ),
    inv_check(
        "dsn-query-password",
        env_of(
            "databases: [{name: m, kind: postgres, dsn: 'postgresql://u@h/d?password=hunter2'}]"
        ),
        "databases[0].dsn",
        "password=",
    ),
    inv_check(
        "endpoint-access-token",
        env_of("endpoints: [{name: a, url: 'https://h/health?access_token=hunter2'}]"),
        "endpoints[0].url",
        "access_token=",
    ),
    inv_check(
        "endpoint-userinfo",
        env_of("endpoints: [{name: a, url: 'https://u:hunter2@h/health'}]"),
        "endpoints[0].url",
        "env:VAR_NAME",
    ),
    inv_check(
        "smoke-test-signature",
        env_of("smoke_tests: [{name: a, url: 'https://h/?sig=hunter2'}]"),
        "smoke_tests[0].url",
        "sig=",
    ),
    inv_check(
        "metrics-api-key",
        env_of("metrics: [{name: a, url: 'http://h/metrics?api_key=hunter2'}]"),
        "metrics[0].url",
        "api_key=",
    ),
    inv_check(
        "header-authorization",
        env_of(
            "endpoints: [{name: a, url: 'http://h', headers: {Authorization: 'Bearer hunter2'}}]"
        ),
        "endpoints[0].headers",
        "Authorization",
    ),
    inv_check(
        "header-api-key",
        env_of("metrics: [{name: a, url: 'http://h', headers: {X-Api-Key: hunter2}}]"),
        "metrics[0].headers",
        "X-Api-Key",
    ),
    inv_check(
        "webhook-slack",
        env_of("notify: [{webhook: 'https://hooks.slack.com/services/T000/B000/hunter2'}]"),
        "notify[0].webhook",
        "Slack",
    ),
    inv_check(
        "webhook-telegram",
        env_of("notify: [{webhook: 'https://api.telegram.org/bot123:hunter2/sendMessage'}]"),
        "notify[0].webhook",
        "Telegram",
    ),
    inv_check(
        "webhook-discord",
        env_of("notify: [{webhook: 'https://discord.com/api/webhooks/1/hunter2'}]"),
        "notify[0].webhook",
        "Discord",
    ),
    inv_check(
        "webhook-userinfo",
        env_of("notify: [{webhook: 'https://hunter2@hooks.example.com/x'}]"),
        "notify[0].webhook",
        "secret:",
    ),
    inv_check(
        "webhook-query-token",
        env_of("notify: [{webhook: 'https://h/hook?token=hunter2'}]"),
        "notify[0].webhook",
        "token=",
    ),
    inv_check(
        "store-s3-keys",
        env_of("backup_store: {url: 's3://AKIAEXAMPLE:hunter2@bucket/prefix'}"),
        "backup_store.url",
        "boto3",
    ),
    inv_check(
        "store-endpoint-signature",
        env_of(
            "backup_store: {url: 's3://b', endpoint_url: 'http://minio:9000/?X-Amz-Signature=hunter2'}"
        ),
        "backup_store.endpoint_url",
        "X-Amz-Signature",
    ),
    inv_check(
        "store-endpoint-userinfo",
        env_of("backup_store: {url: 's3://b', endpoint_url: 'http://key:hunter2@minio:9000'}"),
        "backup_store.endpoint_url",
        "credential",
    ),
    inv_check(
        "store-encryption-key-literal",
        env_of("backup_store: {url: 's3://b', encryption_key: hunter2hunter2}"),
        "backup_store.encryption_key",
        "secret:",
    ),
    inv_check(
        "redis-password",
        env_of("redis: [{name: c, url: 'redis://:hunter2@h:6379'}]"),
        "redis[0].url",
        "env:VAR_NAME",
    ),
    inv_check(
        "kubernetes-api-url-token",
        env_of("kubernetes: {namespace: n, api_url: 'https://k8s:6443/?token=hunter2'}"),
        "kubernetes.api_url",
        "token=",
    ),
    inv_check(
        "kubernetes-token-literal",
        env_of("kubernetes: {namespace: n, token: hunter2}"),
        "kubernetes.token",
        "secret:",
    ),
    inv_check(
        "docker-host-userinfo",
        env_of("docker: {host: 'tcp://u:hunter2@h:2376'}"),
        "docker.host",
        "credential",
    ),
    inv_check(
        "maintenance-mode-sig",
        env_of("maintenance_mode: {url: 'https://h/admin?signature=hunter2'}"),
        "maintenance_mode.url",
        "signature=",
    ),
]

SETTINGS_CASES = [
    Case(
        "receiver-token-too-short",
        ["receiver"],
        "OPSFLOW_RECEIVER_TOKEN",
        env={"OPSFLOW_RECEIVER_TOKEN": "hunter2"},
        also=("shorter than 16 characters", "openssl rand -hex 32"),
    ),
    Case(
        "receiver-without-token",
        ["receiver"],
        "OPSFLOW_RECEIVER_TOKEN",
        env={"OPSFLOW_RECEIVER_TOKEN": ""},
        also=("is not set",),
    ),
    Case(
        "receiver-token-reference-unset",
        ["receiver"],
        "OPSFLOW_RECEIVER_TOKEN",
        env={"OPSFLOW_RECEIVER_TOKEN": "env:BADIN_NO_SUCH_TOKEN"},
        also=("BADIN_NO_SUCH_TOKEN is not set",),
    ),
    Case(
        "receiver-rule-unknown-runbook",
        ["receiver", "--port", "1"],
        "environments.p.alert_rules[0].runbook",
        inventory=env_of("alert_rules: [{match: {alertname: X}, runbook: nope}]"),
        env={"OPSFLOW_RECEIVER_TOKEN": "a-token-long-enough-0123"},
        also=("unknown runbook 'nope'",),
    ),
    Case(
        "setting-ledger-timeout-text",
        ["history"],
        "OPSFLOW_LEDGER_TIMEOUT",
        env={"OPSFLOW_LEDGER_TIMEOUT": "abc"},
    ),
    Case(
        "setting-ledger-timeout-negative",
        ["history"],
        "OPSFLOW_LEDGER_TIMEOUT",
        env={"OPSFLOW_LEDGER_TIMEOUT": "-1"},
    ),
    Case(
        "setting-lock-lease-short",
        ["history"],
        "OPSFLOW_LOCK_LEASE_SECONDS",
        env={"OPSFLOW_LOCK_LEASE_SECONDS": "5"},
    ),
    Case(
        "setting-ledger-url-garbage",
        ["history"],
        "OPSFLOW_LEDGER_URL",
        env={"OPSFLOW_LEDGER_URL": "garbage"},
    ),
    Case(
        "setting-ledger-url-mysql",
        ["history"],
        "OPSFLOW_LEDGER_URL",
        env={"OPSFLOW_LEDGER_URL": "mysql://h/db"},
    ),
    Case("setting-home-is-a-file", ["history"], "OPSFLOW_HOME", env={"OPSFLOW_HOME": "{file}"}),
    Case(
        "setting-ledger-key-literal",
        ["history"],
        "OPSFLOW_LEDGER_KEY",
        env={"OPSFLOW_LEDGER_KEY": "hunter2"},
    ),
    Case(
        "setting-key-file-directory",
        ["history"],
        "OPSFLOW_LEDGER_KEY_FILE",
        env={"OPSFLOW_LEDGER_KEY_FILE": "{dir}"},
    ),
    Case(
        "setting-inventory-directory",
        ["plan", "backup", "--env", "local"],
        "is a directory",
        env={"OPSFLOW_INVENTORY": "{dir}"},
    ),
    Case(
        "setting-inventory-latin1",
        ["run", "health-check", "--env", "local"],
        "UTF-8",
        inventory="environments: {local: {description: 'caf\xe9'}}\n".encode("latin-1"),
    ),
]

RESTORE = ["run", "restore", "--env", "local"]
CLI_CASES = [
    Case(
        "history-unknown-env",
        ["history", "--env", "nope"],
        "--env",
        also=("choose one of: local, refs",),
    ),
    Case(
        "backups-list-unknown-env", ["backups", "list", "--env", "nope"], "--env", also=("local",)
    ),
    Case(
        "backups-list-negative-limit",
        ["backups", "list", "--env", "local", "--limit", "-5"],
        "--limit",
    ),
    Case(
        "backups-list-zero-limit", ["backups", "list", "--env", "local", "--limit", "0"], "--limit"
    ),
    Case("history-negative-limit", ["history", "--limit", "-5"], "--limit"),
    Case(
        "history-unknown-runbook",
        ["history", "--runbook", "nightly"],
        "--runbook",
        also=("health-check",),
    ),
    Case(
        "backups-list-unknown-kind",
        ["backups", "list", "--env", "local", "--kind", "mysql"],
        "--kind",
    ),
    Case(
        "run-unknown-runbook",
        ["run", "nightly", "--env", "local"],
        "runbook",
        also=("choose one of",),
    ),
    Case("plan-unknown-runbook", ["plan", "nightly", "--env", "local"], "runbook"),
    Case(
        "run-unknown-env", ["run", "health-check", "--env", "prod"], "environment", also=("local",)
    ),
    Case("plan-unknown-env", ["plan", "backup", "--env", "lcoal"], "did you mean 'local'"),
    Case(
        "run-unknown-param",
        ["run", "health-check", "--env", "local", "--param", "foo=1"],
        "--param foo",
    ),
    Case(
        "run-param-without-value",
        ["run", "health-check", "--env", "local", "--param", "novalue"],
        "--param",
    ),
    Case(
        "run-param-empty-name",
        ["run", "health-check", "--env", "local", "--param", "=1"],
        "--param",
    ),
    Case(
        "run-param-bad-bool",
        ["run", "health-check", "--env", "local", "--param", "notify=maybe"],
        "notify",
    ),
    Case(
        "run-param-reserved",
        ["run", "backup", "--env", "local", "--param", "env=prod"],
        "--param env",
    ),
    Case(
        "approval-timeout-negative",
        [*RESTORE, "--param", "approval_timeout_seconds=-5"],
        "approval_timeout_seconds",
    ),
    Case(
        "approval-timeout-zero",
        [*RESTORE, "--param", "approval_timeout_seconds=0"],
        "approval_timeout_seconds",
    ),
    Case(
        "approval-timeout-text",
        [*RESTORE, "--param", "approval_timeout_seconds=soon"],
        "approval_timeout_seconds",
    ),
    Case(
        "wait-for-lock-negative",
        ["run", "backup", "--env", "local", "--param", "wait_for_lock=-1"],
        "wait_for_lock",
    ),
    Case("codec-unknown", ["run", "backup", "--env", "local", "--param", "codec=lz4"], "codec"),
    Case("restore-mode-unknown", [*RESTORE, "--param", "mode=overwrite"], "mode"),
    Case(
        "restore-database-unknown",
        [*RESTORE, "--param", "database=nope"],
        "database",
        also=("lite, main",),
    ),
    Case(
        "restore-backup-id-unknown",
        [*RESTORE, "--param", "backup_id=nope", "--param", "database=lite"],
        "backup_id",
    ),
    Case(
        "restore-target-db-live-file",
        [*RESTORE, "--param", "database=lite", "--param", "target_db={root}/lite.db"],
        "target_db",
        also=("live file",),
    ),
    Case(
        "restore-target-db-bad-name",
        [*RESTORE, "--param", "database=main", "--param", "target_db=bad name;drop"],
        "target_db",
    ),
    Case(
        "restore-target-db-empty",
        [*RESTORE, "--param", "database=lite", "--param", "target_db= "],
        "target_db",
    ),
    Case(
        "restore-target-db-two-databases",
        [*RESTORE, "--param", "target_db=copy"],
        "target_db",
        also=("database=",),
    ),
    Case(
        "dr-drill-wait-negative",
        ["run", "dr-drill", "--env", "local", "--param", "wait_for_lock=-3"],
        "wait_for_lock",
    ),
    Case(
        "recover-wait-negative",
        ["run", "recover", "--env", "local", "--param", "wait_for_lock=-2"],
        "wait_for_lock",
    ),
    Case("ledger-verify-store-scheme", ["ledger", "verify", "--store", "ftp://h/x"], "url"),
    Case("ledger-verify-store-keys", ["ledger", "verify", "--store", "s3://AKIA:hunter2@b"], "url"),
    Case("ledger-verify-heads-directory", ["ledger", "verify", "--heads", "{dir}"], "--heads"),
    Case(
        "ledger-verify-heads-missing", ["ledger", "verify", "--heads", "{dir}/none.json"], "--heads"
    ),
    Case("up-port-negative", ["up", "--port", "-1"], "--port"),
    Case("up-port-too-big", ["up", "--port", "70000"], "--port"),
    Case(
        "approve-bad-run-id", ["approve", "not-a-run-id", "--as", "bob", "--reason", "ok"], "RUN_ID"
    ),
    Case("unknown-option", ["history", "--evn", "local"], "--evn"),
]

FLOW_CASES = [
    Case(
        "missing-env-var-and-secret-block-backup",
        ["run", "backup", "--env", "refs"],
        "BADIN_MISSING_REDIS_URL",
        server=True,
        also=("badin-no-such-block", "redis[0].url", "notify[0].webhook"),
    ),
    Case(
        "missing-env-var-health-check",
        ["run", "health-check", "--env", "refs"],
        "BADIN_MISSING_REDIS_URL",
        server=True,
    ),
    Case(
        "missing-env-var-of-dsn",
        ["run", "backup", "--env", "local"],
        PG_VAR,
        env={PG_VAR: ""},
        server=True,
        also=("databases[1].dsn",),
    ),
    Case(
        "restore-target-db-is-live-database-behind-reference",
        [*RESTORE, "--param", "database=main", "--param", "target_db={pg_name}"],
        "target_db",
        server=True,
        also=("live database",),
    ),
    Case(
        "restore-target-db-directory-missing",
        [*RESTORE, "--param", "database=lite", "--param", "target_db={root}/no/such/dir/copy.db"],
        "target_db",
        server=True,
        also=("does not exist",),
    ),
]

ROTATION_INVENTORY = env_of("""kubernetes: {namespace: shop, api_url: "http://127.0.0.1:9"}
docker:
  host: "unix:///nowhere/docker.sock"
  services: [{name: api, container: api-1}]
databases: [{name: main, kind: postgres, dsn: "postgresql://app@127.0.0.1:9/app"}]
secrets:
  - name: app-db
    kind: postgres_role
    role: app
    admin: main
    store: {prefect_secret: app-db}
    consumers: {docker: [{service: api, env: DB_PASSWORD}]}
  - {name: lonely, kind: postgres_role, role: app, admin: main, store: {prefect_secret: x}}
  - name: pods-key
    kind: postgres_role
    role: app
    admin: main
    store: {prefect_secret: pods-key}
    consumers: {kubernetes: [api]}""")
ROTATE = ["run", "rotate-secret", "--env", "p"]
ROTATION_CASES = [
    Case(
        "rotate-secret-unknown",
        [*ROTATE, "--param", "secret_name=app-bd"],
        "secret_name: environment p has no secret 'app-bd'",
        inventory=ROTATION_INVENTORY,
        also=("app-db", "lonely", "due"),
    ),
    Case(
        "rotate-secret-without-consumers",
        [*ROTATE, "--param", "secret_name=lonely"],
        "secrets[1].consumers",
        inventory=ROTATION_INVENTORY,
        also=("nothing would use the new value",),
    ),
    Case(
        "plan-rotate-secret-pods-cannot-read-a-prefect-block",
        ["plan", "rotate-secret", "--env", "p", "--param", "secret_name=pods-key"],
        "secrets[2].store",
        inventory=ROTATION_INVENTORY,
        also=("kubernetes_secret",),
    ),
]

DEPLOY = ["run", "deploy", "--env", "shop"]
DEPLOY_CASES = [
    Case(
        "deploy-image-bad-format",
        [*DEPLOY, "--param", "image=Shop/Web:1"],
        "image",
        also=("name[:tag][@sha256:",),
    ),
    Case(
        "plan-deploy-image-bad-format",
        ["plan", "deploy", "--env", "shop", "--param", "image=web@sha256:abc"],
        "image",
    ),
    Case("deploy-image-missing", DEPLOY, "image", also=("exactly one of image, version",)),
    Case(
        "deploy-image-and-version",
        [*DEPLOY, "--param", "image=web:2", "--param", "version=2"],
        "version",
    ),
    Case("deploy-version-bad", [*DEPLOY, "--param", "version=-rc1"], "version"),
    Case(
        "deploy-promote-from-unknown-env",
        [*DEPLOY, "--param", "promote_from=stagign"],
        "promote_from",
        also=("unknown environment 'stagign'",),
    ),
    Case(
        "deploy-promote-from-env-without-service",
        [*DEPLOY, "--param", "promote_from=shop-staging"],
        "promote_from",
        also=("has no deploy service web",),
    ),
    Case(
        "deploy-env-without-target",
        ["run", "deploy", "--env", "local", "--param", "image=web:2"],
        "environments.local.deploy",
        also=("no deploy target",),
    ),
    Case(
        "rollback-env-without-target",
        ["run", "rollback", "--env", "local"],
        "environments.local.deploy",
    ),
    Case(
        "rollback-image-bad-format",
        ["run", "rollback", "--env", "shop", "--param", "image=web::2"],
        "image",
    ),
    Case(
        "deploy-override-without-approvers",
        [*DEPLOY, "--param", "image=web:2", "--param", "override_window_reason=hotfix"],
        "override_window_reason",
        also=("no approvers",),
    ),
    Case(
        "deploy-image-not-on-the-engine",
        ["run", "deploy", "--env", "p", "--param", "image=opsflow-test/no-such-image:1"],
        "image",
        also=("is not on the Docker engine", "nothing was changed"),
        inventory=env_of(
            'docker: {host: "{docker_host}", services: [{name: web, container: web-1}]}\n'
            "deploy: {backup: false}"
        ),
    ),
    inv_check(
        "deploy-smoke-test-bad-url",
        env_of("smoke_tests: [{name: s, url: 'ftp://h/x'}]"),
        "smoke_tests[0].url",
    ),
    inv_check(
        "deploy-verify-error-rate-out-of-range",
        env_of(
            "docker: {services: [{name: web, container: w}]}\n"
            "deploy: {verify: {max_error_rate_pct: 250}}"
        ),
        "deploy.verify.max_error_rate_pct",
    ),
    inv_check(
        "deploy-verify-interval-too-long",
        env_of(
            "docker: {services: [{name: web, container: w}]}\n"
            "deploy: {verify: {duration: 5s, interval: 1m}}"
        ),
        "interval is longer than duration",
    ),
    inv_check(
        "deploy-unknown-service",
        env_of("docker: {services: [{name: web, container: w}]}\ndeploy: {services: [api]}"),
        "['api'] are not docker.services",
    ),
]

MAINTENANCE = ["run", "maintenance", "--env", "local"]
REDIS_C = "redis: [{name: c, url: 'redis://127.0.0.1:9/0'}]\n"
MAINTENANCE_CASES = [
    inv_check(
        "maintenance-window-cron-bad",
        env_of("maintenance_window: {cron: '0 2 * *', duration: 2h}"),
        "maintenance_window.cron",
        "5 fields",
    ),
    inv_check(
        "maintenance-window-duration-zero",
        env_of("maintenance_window: {cron: '0 2 * * SUN', duration: 0s}"),
        "maintenance_window.duration",
        "longer than zero",
    ),
    inv_check(
        "maintenance-window-duration-over-a-day",
        env_of("maintenance_window: {cron: '0 2 * * SUN', duration: 25h}"),
        "maintenance_window.duration",
        "at most 24h",
    ),
    inv_check(
        "maintenance-redis-flush-all-unconfirmed",
        env_of(REDIS_C + "maintenance: {redis_cleanup: [{redis: c, pattern: '*', flush: true}]}"),
        "maintenance.redis_cleanup[0]",
        "confirm_flush_all: true",
    ),
    inv_check(
        "maintenance-redis-rule-without-action",
        env_of(REDIS_C + "maintenance: {redis_cleanup: [{redis: c, pattern: 'cache:*'}]}"),
        "maintenance.redis_cleanup[0]",
        "exactly one of `idle_over`",
    ),
    inv_check(
        "maintenance-redis-unknown-target",
        env_of(REDIS_C + "maintenance: {redis_cleanup: [{redis: d, pattern: 'x:*', flush: true}]}"),
        "maintenance.redis_cleanup[0].redis",
        "use one of: c",
    ),
    inv_check(
        "maintenance-mode-url-password",
        env_of("maintenance_mode: {url: 'https://ops:hunter2@h/admin/maintenance'}"),
        "maintenance_mode.url",
    ),
    inv_check(
        "maintenance-mode-literal-bearer",
        env_of("maintenance_mode: {url: 'https://h/m', headers: {Authorization: Bearer hunter2}}"),
        "maintenance_mode.headers",
        "literal credential",
    ),
    inv_check(
        "maintenance-log-archive-relative",
        env_of("maintenance: {log_archive: [{path: 'logs/*.log', max_size: 1MiB}]}"),
        "maintenance.log_archive[0].path",
        "absolute",
    ),
    inv_check(
        "maintenance-log-archive-size",
        env_of("maintenance: {log_archive: [{path: '/l/*.log', max_size: lots}]}"),
        "maintenance.log_archive[0].max_size",
        "100MiB",
    ),
    Case(
        "maintenance-vacuum-full-without-approvers",
        [*MAINTENANCE, "--param", "vacuum_full=true"],
        "vacuum_full",
        also=("no approvers", "VACUUM FULL locks"),
    ),
    Case(
        "maintenance-emergency-without-reason",
        [*MAINTENANCE, "--param", "variant=emergency"],
        "reason",
        also=("needs a reason",),
    ),
    Case("maintenance-variant-unknown", [*MAINTENANCE, "--param", "variant=daily"], "variant"),
    Case(
        "maintenance-override-without-approvers",
        [*MAINTENANCE, "--param", "override_window_reason=now"],
        "override_window_reason",
        also=("no approvers",),
    ),
]

PG_M = "databases: [{name: m, kind: postgres, dsn: 'postgresql://127.0.0.1:9/m'}]\n"
SECRET_M = "secrets: [{name: app-db, kind: postgres_role, role: app, admin: m, "
STORE = "store: {prefect_secret: app-db-pw}"
SECURITY_CASES = [
    inv_check(
        "security-rotate-every-does-not-parse",
        env_of(PG_M + SECRET_M + STORE + ", rotate_every: monthly}]"),
        "secrets[0].rotate_every",
        "15m",
    ),
    inv_check(
        "security-rotated-secret-admin-unknown",
        env_of(
            PG_M + "secrets: [{name: s, kind: postgres_role, role: app, admin: n, " + STORE + "}]"
        ),
        "admin 'n' is not a PostgreSQL database",
        "['m']",
    ),
    inv_check(
        "security-rotated-secret-store-ambiguous",
        env_of(PG_M + SECRET_M + "store: {prefect_secret: a, kubernetes_secret: b, key: k}}]"),
        "secrets[0].store",
        "exactly one of",
    ),
    inv_check(
        "security-consumer-not-a-service",
        env_of(PG_M + SECRET_M + STORE + ", consumers: {docker: [{service: api, env: PW}]}}]"),
        "consumer 'api' is not in docker.services",
    ),
    inv_check(
        "security-packages-without-advisories",
        env_of("security: {python: [{name: api, requirements: /srv/req.txt}]}"),
        "security",
        "advisories",
    ),
    inv_check(
        "security-advisories-both-path-and-url",
        env_of("security: {advisories: {path: /osv, url: 'http://127.0.0.1:9/osv.json'}}"),
        "security.advisories",
        "exactly one of `path` or `url`",
    ),
    inv_check(
        "security-login-pattern-without-ip",
        env_of("security: {logins: {files: [/var/log/auth.log], pattern: 'Failed password'}}"),
        "security.logins.pattern",
        "(?P<ip>",
    ),
    inv_check(
        "security-kubernetes-subject-not-kind-name",
        env_of("access: {kubernetes_subjects: [alice]}"),
        "access.kubernetes_subjects",
        "User:alice",
    ),
]

CASES = (
    INVENTORY_CASES
    + SETTINGS_CASES
    + CLI_CASES
    + FLOW_CASES
    + DEPLOY_CASES
    + MAINTENANCE_CASES
    + SECURITY_CASES
    + ROTATION_CASES
)


def test_the_suite_is_big_enough() -> None:
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_cleanly(
    workspace: Workspace, case: Case, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory\n")
    inv = tmp_path / "inventory.yaml"
    if case.inventory is not None:
        text = case.inventory if isinstance(case.inventory, bytes) else case.inventory.encode()
        if b"{docker_host}" in text:  # a real engine, only for the cases that need one
            text = text.replace(b"{docker_host}", request.getfixturevalue("docker_engine").encode())
        inv.write_bytes(text)
    places = {
        "{inv}": str(inv),
        "{dir}": str(tmp_path),
        "{file}": str(a_file),
        "{root}": str(workspace.root),
        "{pg_name}": workspace.pg_name,
    }

    def fill(text: str) -> str:
        for key, value in places.items():
            text = text.replace(key, value)
        return text

    extra = {k: fill(v) for k, v in case.env.items()}
    if case.inventory is not None and "{inv}" not in case.args:
        extra["OPSFLOW_INVENTORY"] = str(inv)
    if not case.server:
        extra["PREFECT_API_URL"] = NO_SERVER
    before = snapshot(workspace)
    done = workspace.run([fill(a) for a in case.args], extra)
    output = done.stdout + done.stderr
    flat = " ".join(done.stderr.split())
    assert done.returncode == 2, output[-3000:]
    assert case.field in flat, done.stderr
    for text in case.also:
        assert text in flat, done.stderr
    assert "Traceback" not in output, output[-3000:]
    assert len(output) <= MAX_OUTPUT, f"{len(output)} characters:\n{output[:3000]}"
    assert "hunter2" not in output
    assert snapshot(workspace) == before


def test_records_of_an_environment_removed_from_the_inventory_stay_readable(
    workspace: Workspace, tmp_path: Path
) -> None:
    """`local` has runs and backups in the ledger; an inventory without it still shows them
    (history and backups list read records, not the inventory), while a name with neither an
    inventory entry nor records is refused."""
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("environments:\n  other: {}\n")
    extra = {"OPSFLOW_INVENTORY": str(inventory), "PREFECT_API_URL": NO_SERVER}
    history = workspace.run(["history", "--env", "local", "--json"], extra)
    assert history.returncode == 0, history.stderr
    assert history.stdout.count('"env": "local"') == 2
    backups = workspace.run(["backups", "list", "--env", "local", "--json"], extra)
    assert backups.returncode == 0, backups.stderr
    assert backups.stdout.count('"backup_id"') == 4
    unknown = workspace.run(["history", "--env", "gone"], extra)
    assert unknown.returncode == 2
    assert "choose one of: other" in unknown.stderr


def test_backups_list_with_a_limit_lists_that_many(workspace: Workspace) -> None:
    listed = workspace.run(
        ["backups", "list", "--env", "local", "--limit", "1", "--json"],
        {"PREFECT_API_URL": NO_SERVER},
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count('"backup_id"') == 1
