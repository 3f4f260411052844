"""The security review's checks (tasks/security) against real components: TLS servers in a
thread with certificates made by ``cryptography``, log files, the session's PostgreSQL (roles
made for the test and dropped after), the Kubernetes API emulator (tests/fixtures/kube_api.py)
and a ledger on SQLite."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from psycopg import sql

import opsflow.ledger
from opsflow.inventory import (
    AccessPolicy,
    Database,
    Endpoint,
    Environment,
    FailedLogins,
    KubernetesTarget,
    RotatedSecret,
    SmokeTest,
    TlsCheck,
)
from opsflow.inventory.security import Security
from opsflow.ledger import Ledger
from opsflow.security import CheckOutcome, Severity
from tasks.security.access import check_kubernetes_access, check_postgres_access
from tasks.security.logins import check_failed_logins
from tasks.security.secrets_age import check_secrets_age
from tasks.security.tls import check_tls, tls_urls
from tests.fixtures.databases import PostgresDatabase, PostgresServer
from tests.fixtures.kube_api import KubeApiServer
from tests.fixtures.tls_servers import Serve
from tests.support.net import free_port

pytestmark = pytest.mark.integration
ENV = "prod"
RBAC = "/apis/rbac.authorization.k8s.io/v1"

# --- TLS ---------------------------------------------------------------------------------------


def _severities(outcome: CheckOutcome) -> list[Severity]:
    return [f.severity for f in outcome.findings]


def test_certificate_expiring_in_3_days_is_high(tls_server: Serve) -> None:
    url, ca = tls_server(3)
    outcome = check_tls.fn(ENV, url, TlsCheck(ca_file=ca), 14)
    port = url.split(":")[2].split("/")[0]
    assert outcome.usable and outcome.target == f"127.0.0.1:{port}"
    assert _severities(outcome) == [Severity.HIGH], outcome.findings
    finding = outcome.findings[0]
    assert "expires in 3.0 days" in finding.summary and "notAfter" in finding.summary
    assert finding.target == outcome.target and finding.check == "tls"


def test_untrusted_certificate_is_high_and_its_expiry_is_still_read(tls_server: Serve) -> None:
    url, _ = tls_server(3)
    outcome = check_tls.fn(ENV, url, TlsCheck(), 14)  # the system store does not know it
    summaries = [f.summary for f in outcome.findings]
    assert _severities(outcome) == [Severity.HIGH, Severity.HIGH], summaries
    assert "expires in 3.0 days" in summaries[0]
    assert "certificate not trusted: self-signed certificate" in summaries[1]
    assert outcome.details["verified"] is False


def test_expired_certificate_is_critical(tls_server: Serve) -> None:
    url, ca = tls_server(-1)
    outcome = check_tls.fn(ENV, url, TlsCheck(ca_file=ca), 14)
    assert _severities(outcome) == [Severity.CRITICAL], outcome.findings
    assert "EXPIRED 1.0 days ago" in outcome.findings[0].summary


def test_healthy_certificate_with_its_ca_file_has_no_finding(tls_server: Serve) -> None:
    url, ca = tls_server(90)
    outcome = check_tls.fn(ENV, url, TlsCheck(ca_file=ca), 14)
    assert outcome.usable and outcome.findings == [], outcome.findings
    assert outcome.details["protocol"] == "TLSv1.3" and outcome.details["verified"] is True
    assert outcome.details["below_min_version"].startswith("refused")
    assert outcome.details["weak_ciphers"].startswith("refused")


def test_a_server_that_accepts_tls_1_1_is_high(tls_server: Serve) -> None:
    url, ca = tls_server(90, "TLSv1", "TLSv1_3", "ALL:@SECLEVEL=0")
    outcome = check_tls.fn(ENV, url, TlsCheck(ca_file=ca), 14)
    assert _severities(outcome) == [Severity.HIGH], outcome.findings
    assert outcome.findings[0].summary.startswith("accepts TLSv1.1, below security.tls.min_version")


def test_negotiating_below_min_version_is_high(tls_server: Serve) -> None:
    url, ca = tls_server(90, "TLSv1_2", "TLSv1_2")
    outcome = check_tls.fn(ENV, url, TlsCheck(ca_file=ca, min_version="TLSv1.3"), 14)
    assert _severities(outcome) == [Severity.HIGH], outcome.findings
    assert "negotiated TLSv1.2, older than security.tls.min_version TLSv1.3" in (
        outcome.findings[0].summary
    )


def test_a_weak_cipher_accepted_or_negotiated_is_high(tls_server: Serve) -> None:
    url, ca = tls_server(90, "TLSv1_2", "TLSv1_3", "ALL:eNULL:@SECLEVEL=0")
    accepted = check_tls.fn(ENV, url, TlsCheck(ca_file=ca), 14)
    assert _severities(accepted) == [Severity.HIGH], accepted.findings
    assert accepted.findings[0].summary.startswith("accepts weak cipher ECDHE-ECDSA-NULL-SHA")
    assert accepted.details["protocol"] == "TLSv1.3"  # a modern client still gets a good one

    url, ca = tls_server(90, "TLSv1_2", "TLSv1_2", "eNULL:@SECLEVEL=0")  # nothing else
    only = check_tls.fn(ENV, url, TlsCheck(ca_file=ca), 14)
    assert [f.summary.split(" (")[0] for f in only.findings] == [
        "negotiated weak cipher ECDHE-ECDSA-NULL-SHA"
    ]
    assert "modern_client_refused" in only.details


def test_unreachable_server_is_an_unusable_outcome_naming_the_url() -> None:
    url = f"https://127.0.0.1:{free_port()}/health"
    outcome = check_tls.fn(ENV, url, TlsCheck(timeout=timedelta(seconds=2)), 14)
    assert not outcome.usable and outcome.worst is Severity.HIGH
    assert url in outcome.summary and "Connection refused" in outcome.summary


def test_tls_urls_are_the_https_ones_once_per_host_and_port() -> None:
    env = Environment(
        endpoints=[
            Endpoint(name="api", url="https://api.example.com/health"),
            Endpoint(name="plain", url="http://api.example.com/health"),
        ],
        smoke_tests=[SmokeTest(name="home", url="https://api.example.com:443/")],
        security=Security(tls=TlsCheck(urls=["https://admin.example.com:8443/", "https://x.io"])),
    )
    assert tls_urls(env) == [
        "https://api.example.com/health",
        "https://admin.example.com:8443/",
        "https://x.io",
    ]


# --- failed logins -----------------------------------------------------------------------------


def _auth_line(when: datetime, ip: str, user: str) -> str:
    return f"{when.isoformat()} web sshd[812]: Failed password for {user} from {ip} port 4122 ssh2"


def test_failed_logins_over_the_threshold_name_the_ip_and_user(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    old = [_auth_line(now - timedelta(hours=3), "10.0.0.66", "root") for _ in range(100)]
    lines = [
        _auth_line(now - timedelta(minutes=50 - i), "10.0.0.7", "root" if i % 5 else "admin")
        for i in range(50)
    ]
    lines[10:10] = [_auth_line(now - timedelta(minutes=30), "10.0.0.9", "bob") for _ in range(5)]
    lines.insert(3, f"{now.isoformat()} web sshd[9]: Accepted publickey for deploy from 10.0.0.2")
    log = tmp_path / "auth.log"
    log.write_text("\n".join(old + lines) + "\n")
    logins = FailedLogins(files=[str(log)], threshold=20, window=timedelta(hours=1))

    outcome = check_failed_logins.fn(ENV, Environment(), logins)

    assert outcome.usable, outcome.summary
    by_target = {f.target: f for f in outcome.findings}
    assert set(by_target) == {"ip 10.0.0.7", "user root"}, list(by_target)
    assert by_target["ip 10.0.0.7"].severity is Severity.HIGH
    assert by_target["ip 10.0.0.7"].summary.startswith(
        "brute force: 50 failed logins from 10.0.0.7 in 1h, users: admin, root"
    )
    assert by_target["user root"].summary.startswith("brute force: 40 failed logins for user root")
    assert outcome.summary.startswith("55 failed login(s) from 2 IP(s) for 3 user(s)")


def test_a_missing_log_file_is_an_unusable_outcome_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "auth.log"
    outcome = check_failed_logins.fn(ENV, Environment(), FailedLogins(files=[str(missing)]))
    assert not outcome.usable and outcome.worst is Severity.HIGH
    assert f"log file {missing} does not exist" in outcome.findings[0].summary


# --- PostgreSQL access -------------------------------------------------------------------------


@pytest.fixture()
def roles(postgres_server: PostgresServer) -> Iterator[Callable[[str, str], str]]:
    """``make(suffix, options)``: a role ``sec_<random>_<suffix>`` created WITH ``options``
    (dropped after the test); returns its name."""
    prefix = f"sec_{secrets.token_hex(3)}"
    made: list[str] = []

    def make(suffix: str, options: str) -> str:
        name = f"{prefix}_{suffix}"
        with postgres_server.connect() as conn:
            conn.execute(sql.SQL("create role {} with " + options).format(sql.Identifier(name)))
        made.append(name)
        return name

    yield make
    with postgres_server.connect() as conn:
        for name in reversed(made):
            conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))


def _pg(monkeypatch: pytest.MonkeyPatch, database: PostgresDatabase) -> Database:
    monkeypatch.setenv("OPSFLOW_TEST_SECURITY_DSN", database.dsn)
    return Database(name="main", kind="postgres", dsn="env:OPSFLOW_TEST_SECURITY_DSN")


def test_postgres_superuser_not_on_the_list_is_critical(
    roles: Callable[[str, str], str],
    postgres_server: PostgresServer,
    postgres_database: PostgresDatabase,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rogue = roles("rogue", "superuser login")
    admin = roles("admin", "superuser login")
    app = roles("app", "login")
    expired = roles("old", "login valid until '2001-01-01'")
    writer = roles("writer", "nologin in role pg_write_all_data")
    sneaky = roles("sneaky", f"nologin in role {rogue}")
    maker = roles("maker", "nologin createdb")
    policy = AccessPolicy(
        postgres_superusers=[postgres_server.superuser, admin], postgres_logins=[app, expired]
    )

    outcome = check_postgres_access.fn(
        ENV, _pg(monkeypatch, postgres_database), "databases[0]", policy, None, None
    )

    assert outcome.usable and outcome.target == "postgres main", outcome.summary
    mine = {}
    for f in outcome.findings:
        mine.setdefault(f.target.rsplit(" ", 1)[1], []).append((f.severity, f.summary))
    assert [s for s, _ in mine[rogue]] == [Severity.CRITICAL, Severity.HIGH], mine[rogue]
    assert f"role {rogue} is a superuser, not in access.postgres_superusers" in mine[rogue][0][1]
    assert f"login role {rogue} is not in access.postgres_logins" in mine[rogue][1][1]
    assert mine[sneaky] == [(Severity.CRITICAL, mine[sneaky][0][1])]
    assert f"is a member of superuser {rogue}" in mine[sneaky][0][1]
    assert [s for s, _ in mine[writer]] == [Severity.HIGH] and "pg_write_all_data" in (
        mine[writer][0][1]
    )
    assert [s for s, _ in mine[maker]] == [Severity.MEDIUM] and "CREATEDB" in mine[maker][0][1]
    assert [s for s, _ in mine[expired]] == [Severity.MEDIUM]
    assert "password expired at 2001-01-01" in mine[expired][0][1]
    assert admin not in mine and app not in mine  # allowed: no finding
    assert postgres_server.superuser not in mine


def test_postgres_lists_left_out_are_not_audited(
    roles: Callable[[str, str], str],
    postgres_database: PostgresDatabase,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rogue = roles("rogue", "superuser login")
    outcome = check_postgres_access.fn(
        ENV, _pg(monkeypatch, postgres_database), "databases[0]", AccessPolicy(), None, None
    )
    assert outcome.usable
    assert not [f for f in outcome.findings if f.target.endswith(rogue)]
    assert outcome.summary.endswith(
        "not audited (no list): access.postgres_superusers, access.postgres_logins"
    )


def test_postgres_that_does_not_answer_is_an_unusable_outcome(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPSFLOW_TEST_SECURITY_DSN", f"postgresql://app@127.0.0.1:{free_port()}/x")
    db = Database(name="main", kind="postgres", dsn="env:OPSFLOW_TEST_SECURITY_DSN")
    outcome = check_postgres_access.fn(ENV, db, "databases[0]", AccessPolicy(), None, None)
    assert not outcome.usable and outcome.target == "postgres main"
    assert "the roles of postgres main (prod) could not be read" in outcome.summary


# --- Kubernetes --------------------------------------------------------------------------------


@pytest.fixture()
def namespace(kube_api_server: KubeApiServer) -> Iterator[str]:
    """A fresh namespace; the ClusterRoleBindings a test makes (named after it) are deleted."""
    name = f"sec-{uuid.uuid4().hex[:8]}"
    yield name
    api = kube_api_server.client()
    for binding in api.list(f"{RBAC}/clusterrolebindings"):
        if binding["metadata"]["name"].startswith(name):
            api.delete(f"{RBAC}/clusterrolebindings/{binding['metadata']['name']}")


def _binding(name: str, role: str, *subjects: dict[str, str], **labels: str) -> dict:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "metadata": {"name": name, "labels": labels},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": list(subjects),
    }


def test_kubernetes_subjects_not_on_the_list_are_findings(
    kube_api_server: KubeApiServer, namespace: str
) -> None:
    api = kube_api_server.client()
    api.create(
        f"{RBAC}/namespaces/{namespace}/rolebindings",
        _binding(
            "edit",
            "edit",
            {"kind": "User", "name": "mallory", "apiGroup": "rbac.authorization.k8s.io"},
            {"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"},
            {"kind": "ServiceAccount", "name": "deployer"},
        ),
    )
    api.create(
        f"{RBAC}/clusterrolebindings",
        _binding(
            f"{namespace}-admin",
            "cluster-admin",
            {
                "kind": "ServiceAccount",
                "name": "ci",
                "namespace": namespace,
            },
        ),
    )
    api.create(  # another namespace's account: not this environment's
        f"{RBAC}/clusterrolebindings",
        _binding(
            f"{namespace}-other",
            "view",
            {
                "kind": "ServiceAccount",
                "name": "ci",
                "namespace": "elsewhere",
            },
        ),
    )
    api.create(  # the API server's own default binding
        f"{RBAC}/clusterrolebindings",
        _binding(
            f"{namespace}-system",
            "cluster-admin",
            {"kind": "Group", "name": "system:masters", "apiGroup": "rbac.authorization.k8s.io"},
            **{"kubernetes.io/bootstrapping": "rbac-defaults"},
        ),
    )
    target = KubernetesTarget(namespace=namespace, api_url=kube_api_server.url)
    policy = AccessPolicy(
        kubernetes_subjects=["User:alice", f"ServiceAccount:{namespace}/deployer"]
    )

    outcome = check_kubernetes_access.fn(ENV, target, policy)

    assert outcome.usable, outcome.summary
    found = {
        f.target: f for f in outcome.findings if namespace in f.summary or "mallory" in f.target
    }
    assert set(found) == {"User:mallory", f"ServiceAccount:{namespace}/ci"}, outcome.findings
    assert found["User:mallory"].severity is Severity.HIGH
    assert f"by RoleBinding edit in {namespace}" in found["User:mallory"].summary
    ci = found[f"ServiceAccount:{namespace}/ci"]
    assert ci.severity is Severity.CRITICAL
    assert f"ClusterRole cluster-admin by ClusterRoleBinding {namespace}-admin" in ci.summary
    assert not [f for f in outcome.findings if "system:masters" in f.target]

    unaudited = check_kubernetes_access.fn(ENV, target, AccessPolicy())
    assert unaudited.findings == [] and "not audited" in unaudited.summary


# --- secrets age -------------------------------------------------------------------------------


@pytest.fixture()
def ledger(tmp_path: Path, ledger_home: Path) -> Iterator[Ledger]:
    opened = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield opened
    opened.close()


def _rotated(
    ledger: Ledger, monkeypatch: pytest.MonkeyPatch, when: datetime, target: str, **row: str
) -> None:
    with monkeypatch.context() as patch:
        patch.setattr(opsflow.ledger, "utcnow", lambda: when.replace(tzinfo=None))
        ledger.record_step(
            **{
                "flow_run_id": f"rotate-{when:%Y%m%d}",
                "runbook": "rotate-secret",
                "env": ENV,
                "step": "rotated",
                "target": target,
                "status": "complete",
                "summary": "rotated",
                **row,
            }
        )


def _secret(name: str, age: timedelta, kind: str = "Opaque", **annotations: str) -> dict:
    created = (datetime.now(UTC) - age).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": kind,
        "metadata": {"name": name, "creationTimestamp": created, "annotations": annotations},
        "data": {"password": "c2VjcmV0"},
    }


def test_secrets_age_overdue_rotation_and_old_kubernetes_secrets(
    kube_api_server: KubeApiServer,
    namespace: str,
    ledger: Ledger,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    api = kube_api_server.client()
    recent = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    for body in (
        _secret("app-db", timedelta(days=400)),  # the rotated secret's store: covered by (a)
        _secret("legacy-token", timedelta(days=200)),
        _secret("fresh", timedelta(days=2)),
        _secret("renewed", timedelta(days=300), **{"opsflow.io/rotated-at": recent}),
        _secret("sa", timedelta(days=500), "kubernetes.io/service-account-token"),
        _secret("sh.helm.release.v1.app.v1", timedelta(days=500), "helm.sh/release.v1"),
    ):
        api.create(f"/api/v1/namespaces/{namespace}/secrets", body)
    now = datetime.now(UTC)
    _rotated(ledger, monkeypatch, now - timedelta(days=40), "app-db")
    _rotated(ledger, monkeypatch, now - timedelta(days=2), "app-db", status="failed")
    _rotated(ledger, monkeypatch, now - timedelta(days=1), "app-db", env="staging")
    monkeypatch.setenv("OPSFLOW_TEST_SECURITY_DSN", "postgresql://app@127.0.0.1/app")
    env = Environment(
        kubernetes=KubernetesTarget(namespace=namespace, api_url=kube_api_server.url),
        databases=[Database(name="main", kind="postgres", dsn="env:OPSFLOW_TEST_SECURITY_DSN")],
        secrets=[
            RotatedSecret.model_validate(
                {
                    "name": "app-db",
                    "kind": "postgres_role",
                    "role": "app",
                    "admin": "main",
                    "store": {"kubernetes_secret": "app-db", "key": "password"},
                    "rotate_every": "30d",
                }
            ),
            RotatedSecret.model_validate(
                {
                    "name": "never",
                    "kind": "postgres_role",
                    "role": "reporting",
                    "admin": "main",
                    "store": {"kubernetes_secret": "missing", "key": "password"},
                }
            ),
        ],
    )

    outcome = check_secrets_age.fn(ENV, env, ledger, now=now)

    assert outcome.usable, outcome.summary
    by_target = {f.target: f for f in outcome.findings}
    assert set(by_target) == {
        "secret app-db",
        "secret never",
        f"Kubernetes Secret {namespace}/legacy-token",
    }, list(by_target)
    overdue = by_target["secret app-db"]
    assert overdue.severity is Severity.HIGH
    assert overdue.summary == (
        "overdue by 10 days (rotate_every 30d): "
        f"opsflow run rotate-secret --env {ENV} --param secret_name=app-db"
    )
    never = by_target["secret never"]
    assert never.severity is Severity.MEDIUM
    assert never.summary.startswith("never rotated by opsflow, age unknown")
    old = by_target[f"Kubernetes Secret {namespace}/legacy-token"]
    assert old.severity is Severity.MEDIUM and "last changed 200 days ago" in old.summary


def test_secrets_age_of_prefect_secret_blocks(
    prefect_api: str, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.blocks.system import Secret

    stored, other = f"sec-{secrets.token_hex(3)}-db", f"sec-{secrets.token_hex(3)}-api"
    for name in (stored, other):
        Secret(value=f"value-of-{name}").save(name, overwrite=True)
    missing = f"sec-{secrets.token_hex(3)}-gone"
    env = Environment(
        databases=[
            Database(name="main", kind="postgres", dsn=f"secret:{other}"),
            Database(name="second", kind="postgres", dsn=f"secret:{missing}"),
        ],
        secrets=[
            RotatedSecret.model_validate(
                {
                    "name": "app-db",
                    "kind": "postgres_role",
                    "role": "app",
                    "admin": "main",
                    "store": {"prefect_secret": stored},
                }
            )
        ],
    )

    today = check_secrets_age.fn(ENV, env, ledger)
    assert not today.usable  # the block `missing` does not exist
    assert [f.summary for f in today.findings] == [
        f"Prefect Secret block {missing} (referenced by environments.{ENV}.databases[1].dsn) "
        "does not exist (fix: create it, or correct the reference)"
    ]

    later = check_secrets_age.fn(ENV, env, ledger, now=datetime.now(UTC) + timedelta(days=100))
    by_target = {f.target: f for f in later.findings}
    assert by_target["secret app-db"].severity is Severity.HIGH
    assert by_target["secret app-db"].summary.startswith("overdue by 70 days (rotate_every 30d)")
    assert by_target[f"Prefect Secret block {other}"].severity is Severity.MEDIUM
    assert "last changed 100 days ago" in by_target[f"Prefect Secret block {other}"].summary
    assert "value-of-" not in later.model_dump_json()
