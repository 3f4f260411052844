"""The secret scan of issue 9: a succeeding and a failing run of every runbook, through the
opsflow CLI, with known secret values — then every output is searched for every form of them.

Secrets go in where an operator's would: ``env:`` references resolved as a DSN's password, the
backup store's encryption key, a webhook URL's token and a Kubernetes bearer token, plus the
AWS secret key boto3's own chain finds. Others reach opsflow without it ever resolving them: in
an application's log lines and in an endpoint's error body (a password, a bearer token, an
``access_token=``, an AWS secret key). Real components: the session's Prefect server, PostgreSQL,
moto S3 over HTTP, the Kubernetes mock API, a local HTTP application and a webhook recorder.

Searched afterwards: the CLI's stdout and stderr, every row of every ledger table, every object
in the backup store (manifests, ledger heads, the dumps themselves), the files under
OPSFLOW_HOME, every notification the recorder received, and from the Prefect server's API the
flow runs (parameters, state, state history), task runs (state history), every log, event and
artifact of those runs. Each known secret is searched as written, percent-encoded,
JSON/repr-escaped and base64 (at every alignment); a marker written next to the secrets must be
found in each kind of output, so an empty read cannot pass.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
import pytest
from psycopg import sql

from tests.fixtures.databases import PostgresDatabase, PostgresServer
from tests.fixtures.http_targets import ModeSwitch, WebhookReceiver, start_canned_app
from tests.fixtures.kube_api import KubeCluster
from tests.support.cli import OPSFLOW

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
MARK_LOG = "scanmarkerlogline"  # written next to the secrets in the application's log
MARK_BODY = "scanmarkerbody"  # written next to the tokens in the endpoint's error body
MISSING_DB = "scanmarkerdb_missing"  # the failing environment's DSN names this database
LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _token(prefix: str, alphabet: str = "") -> str:
    chars = alphabet or LETTERS + "23456789"
    return prefix + "".join(secrets.choice(chars) for _ in range(28))


@dataclass(frozen=True)
class Secrets:
    """Every secret of the scan, by where it comes from."""

    db_password: str = field(default_factory=lambda: _token("Db/Pw+"))
    backup_key: str = field(
        default_factory=lambda: base64.b64encode(secrets.token_bytes(32)).decode()
    )
    webhook_token: str = field(default_factory=lambda: _token("hk"))
    kube_token: str = field(default_factory=lambda: _token("kt"))
    aws_secret: str = field(default_factory=lambda: _token("aws/", "ABCDEFabcdef0123456789+/"))
    # letters only: the log check replaces digits by <n> before it shows a line
    log_password: str = field(default_factory=lambda: _token("lp", LETTERS))
    log_bearer: str = field(default_factory=lambda: _token("lb", LETTERS))
    log_aws_secret: str = field(default_factory=lambda: _token("la/", LETTERS + "/+"))
    log_client_secret: str = field(default_factory=lambda: _token("lc", LETTERS))
    body_access_token: str = field(default_factory=lambda: _token("ba"))
    body_bearer: str = field(default_factory=lambda: _token("bb"))
    url_access_token: str = field(default_factory=lambda: _token("ua"))
    mode_token: str = field(default_factory=lambda: _token("mt"))  # maintenance mode's header

    def values(self) -> dict[str, str]:
        return dict(vars(self))


def secret_forms(value: str) -> dict[str, str]:
    """``value`` as written and as text re-encoding turns it: percent-encoded, escaped, base64
    (the characters that encode only its bytes, at each alignment inside a longer blob)."""
    forms = {
        "raw": value,
        "quote": quote(value, safe=""),
        "quote_plus": quote_plus(value),
        "json": json.dumps(value)[1:-1],
        "repr": repr(value)[1:-1],
    }
    for pad in range(3):
        encoded = base64.b64encode(b"\0" * pad + value.encode()).decode()
        middle = encoded[4:-4]  # away from the padding's bits at either end
        forms[f"base64+{pad}"] = middle
        forms[f"urlsafe+{pad}"] = middle.replace("+", "-").replace("/", "_")
    return forms


@dataclass
class Outputs:
    """Every text read back, by the kind of output it came from."""

    texts: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, value: Any) -> None:
        """Every string inside ``value`` (JSON values walked; keys too)."""
        found = self.texts.setdefault(kind, [])
        stack = [value]
        while stack:
            item = stack.pop()
            if isinstance(item, str):
                found.append(item)
            elif isinstance(item, bytes):
                found.append(item.decode("utf-8", "replace"))
            elif isinstance(item, dict):
                stack += [*item.keys(), *item.values()]
            elif isinstance(item, list | tuple):
                stack += list(item)
            elif item is not None:
                found.append(str(item))

    def find(self, needle: str) -> list[str]:
        """The kinds of output whose texts contain ``needle``."""
        return sorted(k for k, texts in self.texts.items() if any(needle in t for t in texts))


def leaks(outputs: Outputs, known: Secrets) -> list[str]:
    """``secret/form in kinds`` for every form of every secret found anywhere."""
    found = []
    for name, value in known.values().items():
        for form, text in secret_forms(value).items():
            where = outputs.find(text)
            if where:
                found.append(f"{name}/{form} in {', '.join(where)}")
    return found


def test_the_scan_finds_every_form_it_looks_for() -> None:
    """The scan itself can fail: each form of a secret, buried in a JSON document, is found."""
    known = Secrets()
    for form, text in secret_forms(known.db_password).items():
        outputs = Outputs()
        outputs.add("probe", {"rows": [f"before {text} after"]})
        assert f"db_password/{form} in probe" in leaks(outputs, known)
    outputs = Outputs()
    outputs.add("probe", base64.b64encode(b"user:" + known.aws_secret.encode()))
    assert [line for line in leaks(outputs, known) if line.startswith("aws_secret/base64")]
    assert leaks(Outputs({"probe": ["nothing secret here", MARK_LOG]}), known) == []


# --- the lab ----------------------------------------------------------------------------------


@dataclass
class ScanLab:
    root: Path
    env: dict[str, str]
    known: Secrets
    bucket: str
    ledger_path: Path
    database: PostgresDatabase
    s3: Any
    receiver: WebhookReceiver
    api: str
    started: datetime
    runs: list[tuple[list[str], subprocess.CompletedProcess[str]]] = field(default_factory=list)

    def cli(self, *args: str, expect: int) -> subprocess.CompletedProcess[str]:
        if args[0] == "run":  # in this process: the session's `served` runner (tests/fixtures/
            args = (*args, "--local")  # e2e_env.py) serves the same deployments another inventory
        result = subprocess.run(
            [*OPSFLOW, *args], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=300
        )
        self.runs.append((list(args), result))
        if result.returncode != expect:
            pytest.fail(
                f"`opsflow {' '.join(args)}` exited {result.returncode}, expected {expect}:\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result


def write_log(path: Path, known: Secrets, errors: bool) -> None:
    """An application's log: the secrets in ERROR lines (counted and shown by the health
    check) or in INFO lines only (not shown)."""
    level = "ERROR" if errors else "INFO"
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = [
        f"{now} {level} {MARK_LOG} login failed password={known.log_password} user=app",
        f"{now} {level} {MARK_LOG} upstream refused Authorization: Bearer {known.log_bearer}",
        f"{now} {level} {MARK_LOG} s3 init aws_secret_access_key={known.log_aws_secret}",
        f'{now} {level} {MARK_LOG} oauth answered {{"client_secret": "{known.log_client_secret}"}}',
        f"{now} INFO request served in 12 ms",
    ]
    path.write_text("\n".join(lines) + "\n")


def write_inventory(lab_root: Path, urls: dict[str, str], bucket: str, kube: KubeCluster) -> Path:
    inventory = lab_root / "inventory.yaml"
    store = f'endpoint_url: "{urls["s3"]}", encryption_key: "env:SCAN_BACKUP_KEY"'
    notify = '[{webhook: "env:SCAN_WEBHOOK"}]'
    inventory.write_text(f"""
environments:
  scan:
    endpoints: [{{name: app, url: "{urls["app"]}/health"}}, {{name: api, url: "env:SCAN_API_URL"}}]
    databases: [{{name: main, kind: postgres, dsn: "env:SCAN_DSN",
                 checksum_tables: [scanmarker_accounts]}}]
    backup_store: {{url: "s3://{bucket}/prod", {store}}}
    logs: {{files: [{{path: "{lab_root / "quiet.log"}"}}]}}
    disks: []
    notify: {notify}
    maintenance_mode: {{url: "{urls["mode"]}", headers: {{Authorization: "env:SCAN_MODE_AUTH"}}}}
    security: {{logins: {{files: ["{lab_root / "quiet.log"}"]}}}}
  scan-broken:
    endpoints: [{{name: app, url: "{urls["app"]}/health/echo"}}]
    databases: [{{name: main, kind: postgres, dsn: "env:SCAN_BAD_DSN"}}]
    backup_store: {{url: "s3://{bucket}-missing/prod", {store}}}
    logs: {{files: [{{path: "{lab_root / "errors.log"}"}}]}}
    disks: []
    notify: {notify}
    security: {{logins: {{files: ["{lab_root / "errors.log"}"], threshold: 1}}}}
    access: {{postgres_superusers: [], postgres_logins: []}}
  scan-app:
    kubernetes: {{namespace: {kube.namespace}, deployment: {kube.deployment},
                 api_url: "{kube.url}", token: "env:SCAN_KUBE_TOKEN"}}
    deploy: {{backup: false, verify: null, health_check: false, rollout_timeout: 60s}}
  scan-app-broken:
    kubernetes: {{namespace: {kube.namespace}, deployment: scanmarker-missing,
                 api_url: "{kube.url}", token: "env:SCAN_KUBE_TOKEN"}}
""")
    return inventory


@pytest.fixture
def scan_lab(
    tmp_path: Path,
    prefect_api: str,
    postgres_server: PostgresServer,
    postgres_database_factory: Callable[..., PostgresDatabase],
    moto_s3_endpoint: str,
    moto_s3_bucket: str,
    moto_s3_client: Any,
    webhook_receiver: WebhookReceiver,
    kube_cluster: KubeCluster,
    mode_switch: ModeSwitch,
) -> Iterator[ScanLab]:
    known = Secrets()
    database = postgres_database_factory(prefix="opsflow_scan")
    with closing(postgres_server.connect(database.name)) as conn:
        conn.execute("create table scanmarker_accounts (id integer primary key, owner text)")
        conn.execute(
            "insert into scanmarker_accounts select i, 'owner ' || i from generate_series(1, 50) i"
        )
    write_log(tmp_path / "quiet.log", known, errors=False)
    write_log(tmp_path / "errors.log", known, errors=True)
    echo = {
        "status": f"error: {MARK_BODY} invalid access_token={known.body_access_token}",
        "checks": {"auth": f"{MARK_BODY} rejected Authorization: Bearer {known.body_bearer}"},
    }
    app_url, stop_app = start_canned_app(
        {"/health": (200, {"status": "healthy"}), "/health/echo": (200, echo)}
    )
    webhook = webhook_receiver.url.replace(
        "/hook", f"/hook/services/TSCAN/BSCAN/{known.webhook_token}"
    )
    inventory = write_inventory(
        tmp_path,
        {"app": app_url, "s3": moto_s3_endpoint, "mode": mode_switch.url},
        moto_s3_bucket,
        kube_cluster,
    )
    superuser = postgres_server.superuser
    env = {
        **os.environ,
        "OPSFLOW_INVENTORY": str(inventory),
        "OPSFLOW_HOME": str(tmp_path / ".opsflow"),
        "OPSFLOW_LEDGER_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
        "PREFECT_API_URL": prefect_api,
        "SCAN_DSN": postgres_server.dsn(database.name, user=superuser, password=known.db_password),
        "SCAN_BAD_DSN": postgres_server.dsn(MISSING_DB, user=superuser, password=known.db_password),
        "SCAN_BACKUP_KEY": known.backup_key,
        "SCAN_WEBHOOK": webhook,
        "SCAN_KUBE_TOKEN": known.kube_token,
        "SCAN_MODE_AUTH": f"Bearer {known.mode_token}",
        # an endpoint whose URL carries its token (a reference: the inventory refuses it inline)
        "SCAN_API_URL": f"{app_url}/health?access_token={known.url_access_token}",
        "AWS_SECRET_ACCESS_KEY": known.aws_secret,  # found by boto3's chain, not by opsflow
    }
    lab = ScanLab(
        tmp_path,
        env,
        known,
        moto_s3_bucket,
        tmp_path / "ledger.db",
        database,
        moto_s3_client,
        webhook_receiver,
        prefect_api,
        datetime.now(UTC),
    )
    try:
        yield lab
    finally:
        stop_app()
        with closing(postgres_server.connect()) as admin:
            rows = admin.execute(
                "select datname from pg_database where datname like %s",
                (f"{database.name}_%",),
            ).fetchall()
            for (name,) in rows:
                admin.execute(
                    sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name))
                )


# --- reading every output back ----------------------------------------------------------------


def _post_all(api: str, path: str, body: dict[str, Any], page: int = 200) -> list[Any]:
    items: list[Any] = []
    while True:
        response = httpx.post(f"{api}{path}", json={**body, "limit": page, "offset": len(items)})
        response.raise_for_status()
        batch = response.json()
        items += batch
        if len(batch) < page:
            return items


def _events(api: str, since: datetime) -> list[dict[str, Any]]:
    response = httpx.post(
        f"{api}/events/filter",
        json={"filter": {"occurred": {"since": since.isoformat()}, "order": "ASC"}, "limit": 50},
    )
    response.raise_for_status()
    page = response.json()
    events = list(page["events"])
    while page.get("next_page"):
        page = httpx.get(page["next_page"]).raise_for_status().json()
        events += page["events"]
    return events


def _wait_for(what: str, fetch: Callable[[], Any], ready: Callable[[Any], bool]) -> Any:
    """Fetch until ``ready`` (the server writes logs and events a moment after the client)."""
    deadline = time.monotonic() + 60
    while True:
        value = fetch()
        if ready(value):
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"the Prefect server never showed {what}")
        time.sleep(0.5)


def read_prefect(lab: ScanLab, outputs: Outputs) -> list[dict[str, Any]]:
    api = lab.api
    since = {"start_time": {"after_": lab.started.isoformat()}}
    flow_runs = _post_all(api, "/flow_runs/filter", {"flow_runs": since})
    ids = [run["id"] for run in flow_runs]
    outputs.add("prefect flow runs", flow_runs)  # names, parameters, states, messages
    outputs.add("prefect parameters", [run["parameters"] for run in flow_runs])
    for run_id in ids:
        states = httpx.get(f"{api}/flow_run_states/", params={"flow_run_id": run_id})
        outputs.add("prefect flow run states", states.raise_for_status().json())
    task_runs = _post_all(api, "/task_runs/filter", {"flow_runs": {"id": {"any_": ids}}})
    outputs.add("prefect task runs", task_runs)
    for task_run in task_runs:
        states = httpx.get(f"{api}/task_run_states/", params={"task_run_id": task_run["id"]})
        outputs.add("prefect task run states", states.raise_for_status().json())
    terminal = {f"prefect.flow-run.{run['id']}" for run in flow_runs}
    events = _wait_for(
        "a state event of every flow run",
        lambda: _events(api, lab.started),
        lambda found: terminal <= {e["resource"]["prefect.resource.id"] for e in found},
    )
    outputs.add("prefect events", events)
    logs = _wait_for(
        "the logs of every flow run",
        lambda: _post_all(api, "/logs/filter", {"logs": {"flow_run_id": {"any_": ids}}}),
        lambda found: {log["flow_run_id"] for log in found} >= set(ids),
    )
    outputs.add("prefect logs", logs)
    artifacts = _post_all(api, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": ids}}})
    outputs.add("prefect artifacts", artifacts)
    return flow_runs


def read_ledger(lab: ScanLab, outputs: Outputs) -> None:
    with closing(sqlite3.connect(lab.ledger_path)) as conn:
        tables = [r[0] for r in conn.execute("select name from sqlite_master where type='table'")]
        for table in tables:
            outputs.add("ledger", [list(row) for row in conn.execute(f'select * from "{table}"')])
    assert {"runs", "steps", "backups"} <= set(tables), tables


def read_store(lab: ScanLab, outputs: Outputs) -> list[str]:
    keys = [
        item["Key"]
        for page in lab.s3.get_paginator("list_objects_v2").paginate(Bucket=lab.bucket)
        for item in page.get("Contents", [])
    ]
    for key in keys:
        body = lab.s3.get_object(Bucket=lab.bucket, Key=key)["Body"].read()
        outputs.add("backup store manifests" if key.endswith(".json") else "backup store", body)
    return keys


def read_files(root: Path, kind: str, outputs: Outputs) -> None:
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        outputs.add(kind, path.read_bytes())


# --- the scan ---------------------------------------------------------------------------------


def test_no_secret_in_any_output_of_any_runbook(
    scan_lab: ScanLab, kube_cluster: KubeCluster, mode_switch: ModeSwitch
) -> None:
    lab = scan_lab
    # Succeeding runs (the backup first: the others restore it or check its age).
    lab.cli("run", "backup", "--env", "scan", expect=0)
    lab.cli("run", "health-check", "--env", "scan", expect=0)
    copy = f"{lab.database.name}_copy"
    restore = ("run", "restore", "--env", "scan", "-p", "database=main", "-p")
    lab.cli(*restore, f"target_db={copy}", expect=0)
    lab.cli("run", "dr-drill", "--env", "scan", expect=0)
    lab.cli("run", "recover", "--env", "scan-app", expect=0)
    lab.cli("run", "maintenance", "--env", "scan", expect=0)  # backup, VACUUM, mode on/off
    incident = ("run", "incident", "--env", "scan", "-p", "summary=scan incident", "-p")
    lab.cli(*incident, "severity=P3", expect=0)  # acknowledge, snapshot, post-mortem draft
    lab.cli("run", "db-connections", "--env", "scan", expect=0)  # the password DSN
    lab.cli("run", "security-review", "--env", "scan", "--json", expect=0)  # the quiet log
    # Failing runs: an application whose log and error body hold secrets, a missing database
    # and bucket, a backup object gone from the store, a deployment that does not exist.
    lab.cli("run", "health-check", "--env", "scan-broken", expect=1)
    lab.cli("run", "health-check", "--env", "scan-broken", "--json", expect=1)
    lab.cli("run", "backup", "--env", "scan-broken", expect=1)
    for page in lab.s3.get_paginator("list_objects_v2").paginate(Bucket=lab.bucket):
        for item in page.get("Contents", []):
            if "/main/" in item["Key"] and not item["Key"].endswith((".json", ".sha256")):
                lab.s3.delete_object(Bucket=lab.bucket, Key=item["Key"])
    lab.cli(*restore, f"target_db={copy}2", expect=1)
    lab.cli("run", "dr-drill", "--env", "scan", expect=1)
    lab.cli("run", "recover", "--env", "scan-app-broken", expect=1)
    lab.cli("run", "maintenance", "--env", "scan-broken", "-p", "skip_backup=true", expect=1)
    broken = ("run", "incident", "--env", "scan-broken", "-p", "summary=broken", "-p")
    # an incident on a broken environment completes (it diagnoses what is wrong): its snapshot
    # and health check read the endpoint that echoes tokens and the log with passwords
    lab.cli(*broken, "severity=P1", expect=0)
    lab.cli("run", "db-connections", "--env", "scan-broken", expect=1)  # a missing database
    # the access audit through the password DSN of a missing database, the log with passwords
    lab.cli("run", "security-review", "--env", "scan-broken", expect=1)
    # Deploy and rollback through the Kubernetes API with its bearer token: a rollout that
    # succeeds, one past its progress deadline (rolled back), a rollback to the previous
    # image and one to an image that never gets ready.
    bad = "registry.local/app:scanmarker-bad"
    kube_cluster.controller.fail_image(bad)
    kube_cluster.controller.start(0.05)
    try:
        deploy = ("run", "deploy", "--env", "scan-app", "-p")
        lab.cli(*deploy, "image=registry.local/app:2.0", expect=0)
        lab.cli(*deploy, f"image={bad}", expect=1)
        lab.cli("run", "rollback", "--env", "scan-app", expect=0)
        lab.cli("run", "rollback", "--env", "scan-app", "-p", f"image={bad}", expect=1)
    finally:
        kube_cluster.controller.stop()
    # What an operator reads besides the runs.
    lab.cli("plan", "backup", "--env", "scan-broken", expect=0)
    lab.cli("inventory", "check", expect=0)
    lab.cli("history", "--env", "scan-broken", expect=0)
    lab.cli("backups", "list", "--env", "scan", expect=0)

    outputs = Outputs()
    for _args, result in lab.runs:
        outputs.add("cli stdout", result.stdout)
        outputs.add("cli stderr", result.stderr)
    flow_runs = read_prefect(lab, outputs)
    read_ledger(lab, outputs)
    keys = read_store(lab, outputs)
    read_files(lab.root / ".opsflow", "OPSFLOW_HOME", outputs)
    received = lab.receiver.received
    outputs.add("notifications", [{"headers": n["headers"], "body": n["body"]} for n in received])

    # The reads found what the runs wrote: 15 flow runs, manifests, a notification, and the
    # text next to the secrets in every kind of output that carries it.
    assert len(flow_runs) >= 15, [r["name"] for r in flow_runs]
    assert any(k.endswith(".json") for k in keys), keys
    assert lab.receiver.received, "the failing health check notified no one"
    for marker, kinds in (
        (MARK_LOG, {"cli stdout", "ledger", "prefect logs", "prefect artifacts", "notifications"}),
        (MARK_BODY, {"cli stdout", "ledger", "prefect logs", "prefect artifacts", "notifications"}),
        (MISSING_DB, {"ledger", "prefect logs", "prefect task run states", "prefect events"}),
        ("scan-broken", {"prefect parameters", "prefect flow runs"}),
        ("scanmarker_accounts", {"backup store manifests"}),  # row counts per table
    ):
        missing = kinds - set(outputs.find(marker))
        assert not missing, f"{marker!r} not found in {sorted(missing)}"
    assert {"cli stdout", "cli stderr"} & set(outputs.find(MISSING_DB))

    assert leaks(outputs, lab.known) == []
    # the maintenance mode's credential was sent, and only there
    assert [h["Authorization"] for h in mode_switch.headers] == [
        f"Bearer {lab.known.mode_token}"
    ] * 2
