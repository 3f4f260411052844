"""The security review end to end, in-process on the session's Prefect server, against real
targets: an OSV directory and a requirements file, a TLS server whose certificate expires in 3
days, a log of 50 failed logins from one IP, and the session's PostgreSQL with a SUPERUSER role
that is not on the allow-list. The run fails, each problem is a finding of the right check and
severity (and the safe package, the few failures of another IP and the allowed roles are not),
the critical finding opens a run of the incident deployment, and `opsflow run security-review
--json` prints the findings. An advisory source that does not parse is reported as unusable,
never as "no vulnerabilities"; a clean environment passes."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prefect.client.orchestration import get_client
from psycopg import sql

from flows.security_review import security_review
from opsflow.ledger import Ledger
from opsflow.security import SecurityReport, Severity
from tests.fixtures.databases import PostgresServer
from tests.fixtures.tls_servers import Serve
from tests.support.cli import OPSFLOW
from tests.support.osv_records import REQUESTS, URLLIB3
from tests.support.prefect_api import api_post

pytestmark = pytest.mark.integration
ENV = "sec"
REPO = Path(__file__).resolve().parents[2]
BAD_IP, FEW_IP = "203.0.113.9", "198.51.100.4"


def _dsn(server: PostgresServer) -> str:
    return f"postgresql://{server.superuser}@{server.host}:{server.port}/postgres"


@pytest.fixture()
def rogue_role(postgres_server: PostgresServer) -> Iterator[tuple[str, list[str]]]:
    """A SUPERUSER LOGIN role made for the test, and the superusers that were there before
    (the allow-list), dropped after."""
    name = f"rogue_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_dsn(postgres_server), autocommit=True) as conn:
        before = [r[0] for r in conn.execute("select rolname from pg_roles where rolsuper")]
        conn.execute(sql.SQL("create role {} superuser login").format(sql.Identifier(name)))
    yield name, before
    with psycopg.connect(_dsn(postgres_server), autocommit=True) as conn:
        conn.execute(sql.SQL("drop role if exists {}").format(sql.Identifier(name)))


def write_lab(tmp_path: Path, osv_records: list[Any] | str, tls_url: str, ca: str) -> Path:
    osv_dir = tmp_path / "osv"
    osv_dir.mkdir()
    if isinstance(osv_records, str):
        (osv_dir / "broken.json").write_text(osv_records)
    else:
        for record in osv_records:
            (osv_dir / f"{record['id']}.json").write_text(json.dumps(record))
    (tmp_path / "requirements.txt").write_text("requests==2.25.0\nurllib3==1.26.18\n")
    now = datetime.now(UTC)
    lines = [
        f"{(now - timedelta(seconds=i)).isoformat()} sshd: Failed password for root from "
        f"{BAD_IP} port 22"
        for i in range(50)
    ]
    lines += [f"{now.isoformat()} sshd: Failed password for bob from {FEW_IP} port 22"] * 5
    (tmp_path / "auth.log").write_text("\n".join(lines) + "\n")
    return osv_dir


def write_inventory(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    body: str,
) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text(f"environments:\n  {ENV}:\n" + "".join(f"    {x}\n" for x in body.splitlines()))
    monkeypatch.setenv("OPSFLOW_INVENTORY", str(path))
    monkeypatch.setenv("OPSFLOW_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")


def security_body(tmp_path: Path, osv_dir: Path, tls_url: str, ca: str) -> str:
    return f"""security:
  advisories: {{path: "{osv_dir}"}}
  python: [{{name: api, requirements: "{tmp_path / "requirements.txt"}"}}]
  tls: {{urls: ["{tls_url}"], ca_file: "{ca}"}}
  logins: {{files: ["{tmp_path / "auth.log"}"], threshold: 20, window: 1h}}"""


@pytest.fixture()
def incident_deployment(prefect_api: str) -> Iterator[list[str]]:
    """The incident runbook's deployment on the session server (paused: nothing runs what the
    review starts); the flow runs started of it are deleted after."""
    started: list[str] = []

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("incident")
        client.create_deployment(
            flow_id=flow_id,
            name="on-demand",
            entrypoint="flows/incident.py:incident",
            paused=True,
        )
    yield started
    with get_client(sync_client=True) as client:
        for run_id in started:
            client.delete_flow_run(uuid.UUID(run_id))


def test_each_problem_is_a_finding_the_run_fails_and_an_incident_is_opened(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    prefect_api: str,
    postgres_server: PostgresServer,
    tls_server: Serve,
    rogue_role: tuple[str, list[str]],
    incident_deployment: list[str],
) -> None:
    rogue, superusers = rogue_role
    tls_url, ca = tls_server(3)
    osv_dir = write_lab(tmp_path, [REQUESTS, URLLIB3], tls_url, ca)
    monkeypatch.setenv("SEC_TEST_DSN", _dsn(postgres_server))
    write_inventory(
        tmp_path,
        monkeypatch,
        security_body(tmp_path, osv_dir, tls_url, ca)
        + f"""
databases: [{{name: main, kind: postgres, dsn: "env:SEC_TEST_DSN"}}]
access: {{postgres_superusers: {json.dumps(superusers)}}}""",
    )
    state = security_review(env=ENV, requested_by="tester", return_state=True)
    report = state.result(raise_on_failure=False)
    assert isinstance(report, SecurityReport)
    if report.incident_run:
        incident_deployment.append(report.incident_run)
    assert state.is_failed(), state.message
    found = {(f.check, f.severity) for f in report.findings}
    targets = " | ".join(f"{f.check}: {f.target}: {f.summary}" for f in report.findings)
    assert ("dependencies", Severity.MEDIUM) in found, targets  # requests: MODERATE
    assert "requests" in targets and "GHSA-j8r2-6x86-q33q" in targets and "2.31.0" in targets
    assert "urllib3" not in targets
    assert ("tls", Severity.HIGH) in found and "expires in 3.0 days" in targets
    assert ("logins", Severity.HIGH) in found and BAD_IP in targets and FEW_IP not in targets
    assert ("access", Severity.CRITICAL) in found and rogue in targets
    access = [f.target for f in report.findings if f.check == "access"]
    assert access == [f"postgres main role {rogue}"]  # the allowed superusers are not findings
    assert report.findings[0].severity == Severity.CRITICAL  # most severe first
    assert report.counts["critical"] >= 1 and not report.passed

    # the critical finding opened a run of the incident deployment, naming it
    assert report.incident_run is not None
    with get_client(sync_client=True) as client:
        incident = client.read_flow_run(uuid.UUID(report.incident_run))
    assert incident.parameters["env"] == ENV
    assert rogue in incident.parameters["summary"]

    # the ledger: one step per check, graded by its worst finding, and the run failed
    run_id = str(state.state_details.flow_run_id)
    steps = {(s.step, s.status) for s in Ledger().steps(run_id)}
    assert {
        ("load_advisories", "complete"),
        ("check_python_packages", "degraded"),
        ("check_tls", "failed"),
        ("check_failed_logins", "failed"),
        ("check_postgres_access", "critical"),
        ("start_incident", "complete"),
    } <= steps, steps
    assert Ledger().runs(env=ENV, runbook="security-review")[0].status == "failed"
    artifacts = api_post(
        f"{prefect_api}/artifacts/filter",
        json={"artifacts": {"flow_run_id": {"any_": [run_id]}}},
        timeout=10,
    ).json()
    assert {f"security-review-{ENV}", f"security-review-{ENV}-findings"} <= {
        a["key"] for a in artifacts
    }


def _cli_json(tmp_path: Path, prefect_api: str) -> tuple[int, dict[str, Any]]:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PREFECT_API_URL": prefect_api,
        "OPSFLOW_HOME": str(tmp_path / "home"),
        "OPSFLOW_INVENTORY": str(tmp_path / "inventory.yaml"),
        "OPSFLOW_LEDGER_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
        "OPSFLOW_RETRY_DELAY_SCALE": "0.1",
    }
    done = subprocess.run(
        [*OPSFLOW, "run", "security-review", "--env", ENV, "--local", "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, json.loads(done.stdout)


def test_an_advisory_source_that_does_not_parse_is_unusable_not_no_vulnerabilities(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_api: str, tls_server: Serve
) -> None:
    tls_url, ca = tls_server(90)
    osv_dir = write_lab(tmp_path, '{"id": "GHSA-x", "affected": [', tls_url, ca)
    write_inventory(tmp_path, monkeypatch, security_body(tmp_path, osv_dir, tls_url, ca))
    code, printed = _cli_json(tmp_path, prefect_api)
    assert code == 1, printed
    findings = printed["findings"]
    assert {"severity", "check", "target", "summary"} <= set(findings[0])
    unusable = [f for f in findings if f["check"] == "dependencies"]
    assert [f["severity"] for f in unusable] == ["high"], findings
    assert "advisory source unusable" in unusable[0]["summary"]
    assert "broken.json" in unusable[0]["summary"]
    assert not any("no vulnerab" in f["summary"].lower() for f in findings)
    checks = {c["check"]: c for c in printed["checks"]}
    assert checks["dependencies"]["usable"] is False
    assert checks["tls"]["usable"] is True  # the other checks still ran


def test_a_clean_environment_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_api: str, tls_server: Serve
) -> None:
    tls_url, ca = tls_server(90)
    osv_dir = write_lab(tmp_path, [URLLIB3], tls_url, ca)
    (tmp_path / "auth.log").write_text("")
    write_inventory(tmp_path, monkeypatch, security_body(tmp_path, osv_dir, tls_url, ca))
    code, printed = _cli_json(tmp_path, prefect_api)
    assert code == 0, printed
    assert printed["findings"] == []
    assert sorted(c["check"] for c in printed["checks"]) == ["dependencies", "logins", "tls"]
