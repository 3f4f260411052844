"""The alert receiver on a real port with a real Prefect server: `opsflow up` (its own Prefect
server, so the session's e2e runner, which serves the same deployment names, takes none of
these runs) serves the runbooks and runs the receiver beside them; alerts are POSTed as
Alertmanager's version-4 webhook payload, and once by the real Alertmanager. Asserted: the
mapped runbook's deployment gets a flow run with the right parameters that completes; a repeat
starts nothing (deduplicated); the token, the payload checks, unmatched alerts, resolved
alerts and the rate limit, each in the ledger's ``alerts`` rows."""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

from deployments.receiver import start_for_up
from deployments.up import start_embedded_server, stop_process_group
from opsflow.ledger import AlertRow, Ledger
from opsflow.ledger.keys import create_key_file, read_key_file
from tests.fixtures.alertmanager import Alertmanager
from tests.support.cli import OPSFLOW, start_up
from tests.support.net import free_port
from tests.support.prefect_api import api_get, api_post, wait_until_served

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
DEPLOYMENT = "health-check/daily"
GK = '{}:{alertname="DiskCheck"}'


@dataclass
class Intake:
    root: Path
    api: str
    url: str
    token: str
    ledger_url: str
    key_file: Path
    up_log: Path

    def post(self, payload: Any, token: str | None = None, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        headers.update(kwargs.pop("headers", {}))
        content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return httpx.post(
            f"{self.url}/alertmanager", content=content, headers=headers, timeout=30, **kwargs
        )

    def ledger(self) -> Ledger:
        return Ledger(self.ledger_url, key=read_key_file(self.key_file))

    def rows(self, **filters: Any) -> list[AlertRow]:
        ledger = self.ledger()
        try:
            return ledger.alerts(limit=None, **filters)
        finally:
            ledger.close()

    def started(self, fingerprint: str, timeout: float = 60) -> AlertRow:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = [r for r in self.rows(fingerprint=fingerprint) if r.outcome != "accepted"]
            if done and done[0].outcome in ("started", "failed_to_start"):
                assert done[0].outcome == "started", done[0].reason
                return done[0]
            time.sleep(0.1)
        raise AssertionError(f"no run was started for {fingerprint}: {self.up_log.read_text()}")

    def runs_of_deployment(self) -> list[dict[str, Any]]:
        deployment = api_get(f"{self.api}/deployments/name/{DEPLOYMENT}").json()
        body = {"deployments": {"id": {"any_": [deployment["id"]]}}}
        return list(api_post(f"{self.api}/flow_runs/filter", json=body).json())


def inventory_text(root: Path) -> str:
    return f"""
environments:
  local:
    disks: ["{root}"]
    alerting: {{dedup_window: 10m, max_runs_per_hour: 50}}
    alert_rules:
      - {{match: {{alertname: DiskCheck}}, runbook: health-check, params: {{notify: false}},
          auto_remediate: true}}
      - {{match: {{alertname: MemoryHigh}}, runbook: high-memory, auto_remediate: true,
          params: {{dry_run: true, restart: false}}}}
      - {{match: {{alertname: AmCheck}}, runbook: health-check, params: {{notify: false}}}}
  limited:
    disks: ["{root}"]
    alerting: {{max_runs_per_hour: 1}}
alert_rules:
  - {{match: {{alertname: Limited}}, runbook: health-check, params: {{notify: false}}}}
"""


@pytest.fixture(scope="module")
def intake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Intake]:
    root = tmp_path_factory.mktemp("receiver")
    port = free_port()
    server = start_embedded_server(root / "prefect", port, Console(quiet=True))
    api = f"http://127.0.0.1:{port}/api"
    (root / "inventory.yaml").write_text(inventory_text(root))
    key_file = root / "home" / "ledger.key"
    create_key_file(key_file)
    token = secrets.token_hex(24)
    receiver_port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OPSFLOW_")},
        "PREFECT_API_URL": api,
        "OPSFLOW_HOME": str(root / "home"),
        "OPSFLOW_INVENTORY": str(root / "inventory.yaml"),
        "OPSFLOW_LEDGER_URL": f"sqlite:///{root / 'ledger.db'}",
        "OPSFLOW_RECEIVER_TOKEN": token,
        "OPSFLOW_RECEIVER_PORT": str(receiver_port),
    }
    up_log = root / "up.log"
    runner = start_up(REPO, env, up_log)
    url = f"http://127.0.0.1:{receiver_port}"
    try:
        wait_until_served(api, DEPLOYMENT)
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, up_log.read_text()
            time.sleep(0.1)
        yield Intake(root, api, url, token, env["OPSFLOW_LEDGER_URL"], key_file, up_log)
    finally:
        stop_process_group(runner, timeout=20)
        stop_process_group(server)


def alert(fingerprint: str, name: str = "DiskCheck", **over: Any) -> dict[str, Any]:
    return {
        "status": "firing",
        "labels": {"alertname": name, "instance": "web-1:9100", "severity": "critical"},
        "annotations": {"summary": f"{name} on web-1", "description": "disk 91% full"},
        "startsAt": "2026-12-01T11:58:45.828Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=disk",
        "fingerprint": fingerprint,
        **over,
    }


def payload(*alerts: dict[str, Any], group_key: str = GK, status: str = "firing") -> dict[str, Any]:
    """Alertmanager's documented webhook payload, version 4."""
    return {
        "version": "4",
        "groupKey": group_key,
        "truncatedAlerts": 0,
        "status": status,
        "receiver": "opsflow",
        "groupLabels": {"alertname": alerts[0]["labels"]["alertname"]},
        "commonLabels": alerts[0]["labels"],
        "commonAnnotations": alerts[0]["annotations"],
        "externalURL": "http://alertmanager:9093",
        "alerts": list(alerts),
    }


def wait_final(api: str, run_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = dict(api_get(f"{api}/flow_runs/{run_id}").json())
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not finish")


def test_a_v4_payload_starts_the_mapped_runbook_and_a_repeat_starts_nothing(
    intake: Intake,
) -> None:
    before = len(intake.runs_of_deployment())
    answer = intake.post(payload(alert("d15c0000000000a1")))
    assert answer.status_code == 200, answer.text
    [taken] = answer.json()["alerts"]
    assert (taken["outcome"], taken["env"], taken["runbook"]) == (
        "accepted",
        "local",
        "health-check",
    )
    started = intake.started("d15c0000000000a1")
    run = api_get(f"{intake.api}/flow_runs/{started.flow_run_id}").json()
    deployment = api_get(f"{intake.api}/deployments/name/{DEPLOYMENT}").json()
    assert run["deployment_id"] == deployment["id"]
    # health-check takes no `alert` nor `auto_remediate` parameter, so neither is passed
    assert run["parameters"] == {"env": "local", "notify": False, "requested_by": "alertmanager"}
    assert "alertmanager" in run["tags"]
    assert wait_final(intake.api, started.flow_run_id)["state"]["type"] == "COMPLETED"
    assert started.labels["alertname"] == "DiskCheck"
    assert started.group_key == GK and started.runbook == "health-check"

    again = intake.post(payload(alert("d15c0000000000a1")))
    assert again.status_code == 200
    [repeat] = again.json()["alerts"]
    assert repeat["outcome"] == "deduplicated"
    assert repeat["flow_run_id"] == started.flow_run_id
    assert "within the dedup window (10m)" in repeat["reason"]
    time.sleep(2)  # a start would have been recorded by now
    outcomes = [r.outcome for r in intake.rows(fingerprint="d15c0000000000a1")]
    assert outcomes == ["deduplicated", "started", "accepted"]
    assert len(intake.runs_of_deployment()) == before + 1


def test_a_runbook_that_takes_the_alert_gets_it_and_the_rules_auto_remediate(
    intake: Intake,
) -> None:
    from deployments.runbooks import get_runbook

    firing = alert("3e3e000000000001", name="MemoryHigh")
    assert intake.post(payload(firing, group_key='{}:{alertname="MemoryHigh"}')).status_code == 200
    started = intake.started("3e3e000000000001")
    run = api_get(f"{intake.api}/flow_runs/{started.flow_run_id}").json()
    deployment = api_get(
        f"{intake.api}/deployments/name/{get_runbook('high-memory').deployment_name}"
    ).json()
    assert run["deployment_id"] == deployment["id"]
    params = run["parameters"]
    assert params["alert"] == {
        "labels": firing["labels"],
        "annotations": firing["annotations"],
        "startsAt": "2026-12-01T11:58:45.828000+00:00",
        "fingerprint": "3e3e000000000001",
        "groupKey": '{}:{alertname="MemoryHigh"}',
        "status": "firing",
    }
    assert (params["auto_remediate"], params["dry_run"], params["restart"]) == (True, True, False)
    assert (params["env"], params["requested_by"]) == ("local", "alertmanager")


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-token-000000000"}, {"Authorization": "Basic abc"}],
    ids=["no-token", "wrong-token", "basic-auth"],
)
def test_without_the_token_401_and_nothing_recorded(
    intake: Intake, headers: dict[str, str]
) -> None:
    rows = len(intake.rows())
    answer = httpx.post(
        f"{intake.url}/alertmanager",
        json=payload(alert("401000000000000a")),
        headers=headers,
        timeout=30,
    )
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"] == "Bearer"
    assert "bearer token" in answer.json()["error"]
    assert intake.token not in answer.text
    assert len(intake.rows()) == rows


@pytest.mark.parametrize(
    ("body", "status", "reason"),
    [
        (b'{"version": "4", "alerts": [', 400, "is not JSON"),
        (
            json.dumps({**payload(alert("b4d0000000000001")), "version": "3"}).encode(),
            400,
            "version: must be '4'",
        ),
        (json.dumps(payload(alert("../etc/passwd"))).encode(), 400, "alerts[0].fingerprint"),
        (b"x" * (1024 * 1024 + 1), 400, "at most 1048576"),
    ],
    ids=["not-json", "version-3", "bad-fingerprint", "over-1-MiB"],
)
def test_malformed_or_oversized_is_refused_with_a_reason_and_nothing_started(
    intake: Intake, body: bytes, status: int, reason: str
) -> None:
    rows, runs = len(intake.rows()), len(intake.runs_of_deployment())
    answer = intake.post(body)
    assert answer.status_code == status, answer.text
    assert reason in answer.json()["error"]
    assert len(intake.rows()) == rows
    assert len(intake.runs_of_deployment()) == runs


def test_an_unknown_alertname_is_recorded_unmatched_with_200(intake: Intake) -> None:
    runs = len(intake.runs_of_deployment())
    answer = intake.post(payload(alert("0e0e000000000001", name="NobodyKnows")))
    assert answer.status_code == 200
    [row] = intake.rows(fingerprint="0e0e000000000001")
    assert (row.outcome, row.alertname, row.flow_run_id) == ("unmatched", "NobodyKnows", "")
    assert row.reason == "no rule of any environment (no env label) matches alert 'NobodyKnows'"
    time.sleep(1)
    assert len(intake.runs_of_deployment()) == runs


def test_a_resolved_alert_is_recorded_with_the_run_its_firing_started(intake: Intake) -> None:
    firing = alert("2e50000000000001")
    assert intake.post(payload(firing)).status_code == 200
    started = intake.started("2e50000000000001")
    resolved = {**firing, "status": "resolved", "endsAt": "2026-12-01T12:10:00Z"}
    answer = intake.post(payload(resolved, status="resolved"))
    assert answer.status_code == 200
    [taken] = answer.json()["alerts"]
    assert (taken["outcome"], taken["flow_run_id"]) == ("resolved", started.flow_run_id)
    row = intake.rows(fingerprint="2e50000000000001")[0]
    assert (row.status, row.outcome, row.flow_run_id) == (
        "resolved",
        "resolved",
        started.flow_run_id,
    )
    assert row.ends_at.isoformat() == "2026-12-01T12:10:00"
    assert intake.rows(flow_run_id=started.flow_run_id)[0].outcome == "resolved"


def test_past_the_rate_limit_alerts_are_recorded_rate_limited(intake: Intake) -> None:
    labels = {"alertname": "Limited", "env": "limited"}
    first = intake.post(payload(alert("1100000000000001", name="Limited", labels=labels)))
    assert [a["outcome"] for a in first.json()["alerts"]] == ["accepted"]
    second = intake.post(payload(alert("1100000000000002", name="Limited", labels=labels)))
    [limited] = second.json()["alerts"]
    assert limited["outcome"] == "rate_limited"
    assert "environment 'limited' had 1 alert runs in the last hour" in limited["reason"]
    assert intake.started("1100000000000001").env == "limited"
    [row] = intake.rows(fingerprint="1100000000000002")
    assert (row.outcome, row.env, row.flow_run_id) == ("rate_limited", "limited", "")


def test_the_real_alertmanager_delivers_and_the_runbook_starts(
    intake: Intake, alertmanager_factory: Callable[[str, str], Alertmanager]
) -> None:
    manager = alertmanager_factory(f"{intake.url}/alertmanager", intake.token)
    manager.add("alertname=AmCheck", "env=local", "instance=web-2", annotations={"summary": "s"})
    deadline = time.monotonic() + 30
    while not [r for r in intake.rows() if r.alertname == "AmCheck"]:
        assert time.monotonic() < deadline, manager.log.read_text()[-2000:]
        time.sleep(0.2)
    # its intake row (the starter adds a `started` row beside it at any moment)
    [intake_row] = [r for r in intake.rows() if r.alertname == "AmCheck" and r.outcome != "started"]
    assert intake_row.outcome == "accepted"
    assert intake_row.group_key == '{}:{alertname="AmCheck", env="local"}'
    assert intake_row.labels == {"alertname": "AmCheck", "env": "local", "instance": "web-2"}
    assert intake_row.details["receiver"] == "opsflow"
    started = intake.started(intake_row.fingerprint)
    assert wait_final(intake.api, started.flow_run_id)["state"]["type"] == "COMPLETED"


def test_healthz_and_no_token_in_the_log(intake: Intake) -> None:
    assert httpx.get(f"{intake.url}/healthz", timeout=10).json()["status"] == "ok"
    log = intake.up_log.read_text()
    assert f"alert receiver on {intake.url}/alertmanager" in log
    assert "DiskCheck (local) firing: accepted" in log
    assert intake.token not in log
    assert intake.ledger().verify().ok


def test_opsflow_receiver_alone_and_on_a_busy_port(intake: Intake) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OPSFLOW_")},
        "PREFECT_API_URL": intake.api,
        "OPSFLOW_HOME": str(intake.root / "home"),
        "OPSFLOW_INVENTORY": str(intake.root / "inventory.yaml"),
        "OPSFLOW_LEDGER_URL": intake.ledger_url,
        "OPSFLOW_RECEIVER_TOKEN": intake.token,
    }
    busy_port = intake.url.rsplit(":", 1)[1]
    busy = subprocess.run(
        [*OPSFLOW, "receiver", "--port", busy_port],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert busy.returncode == 2, busy.stdout + busy.stderr
    assert f"--port: 127.0.0.1:{busy_port} cannot be listened on" in " ".join(busy.stderr.split())
    assert "Traceback" not in busy.stderr

    port = free_port()
    log = intake.root / "receiver.log"
    with log.open("wb") as out:
        alone = subprocess.Popen(
            [*OPSFLOW, "receiver", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert alone.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        answer = httpx.post(
            f"{url}/alertmanager",
            json=payload(alert("a10e000000000001", name="Alone")),
            headers={"Authorization": f"Bearer {intake.token}"},
            timeout=30,
        )
        assert answer.json()["alerts"][0]["outcome"] == "unmatched"
    finally:
        stop_process_group(alone)
    assert [r.outcome for r in intake.rows(fingerprint="a10e000000000001")] == ["unmatched"]
    assert intake.token not in log.read_text()


def test_up_runs_no_receiver_without_a_token_and_goes_on_when_its_port_is_busy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "inventory.yaml").write_text(inventory_text(tmp_path))
    monkeypatch.setenv("OPSFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OPSFLOW_INVENTORY", str(tmp_path / "inventory.yaml"))
    monkeypatch.setenv("OPSFLOW_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.delenv("OPSFLOW_RECEIVER_TOKEN", raising=False)
    console = Console(record=True, width=200)
    assert start_for_up(console) is None
    assert "alert receiver off: OPSFLOW_RECEIVER_TOKEN is not set" in console.export_text()

    token = secrets.token_hex(20)
    monkeypatch.setenv("OPSFLOW_RECEIVER_TOKEN", token)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setenv("OPSFLOW_RECEIVER_PORT", str(taken.getsockname()[1]))
        console = Console(record=True, width=200)
        assert start_for_up(console) is None
    text = console.export_text()
    assert "warning: alert receiver off: 127.0.0.1:" in text
    assert "set OPSFLOW_RECEIVER_PORT to a free port" in text
    assert token not in text
