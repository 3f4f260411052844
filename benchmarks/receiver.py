"""Benchmark of issue 13: the alert receiver that `opsflow up` runs beside its runner.

* alert → first task of the runbook running: an Alertmanager v4 payload POSTed for a fresh
  alert mapped to ``health-check``, to the Running state (on the server) of the run's first
  task run, p50 of ``STARTS`` (one at a time; the served runner's run start dominates);
* an alert storm: ``RATE`` POSTs a second for ``SECONDS`` s (open loop: each is sent at its
  time whatever the earlier ones did), one alert each — 100 fingerprints of a matched alert,
  so the environment's rate limit and the dedup window take most of them, and every tenth
  an alert no rule matches — POST → 2xx p50/p99 (goal p99 <= 50 ms), and no alert lost: the
  ledger holds one intake row for every alert answered 2xx.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from benchmarks.common import Row, free_port, percentile, stop_process_group, verdict
from tests.support.cli import start_up

REPO = Path(__file__).resolve().parent.parent
STARTS = 5
RATE = 100
SECONDS = 10
SENDERS = 32
GOAL_P99_S = 0.050
DEPLOYMENT = "health-check/daily"
INTAKE = ("accepted", "deduplicated", "rate_limited", "unmatched", "resolved")


@dataclass
class ReceiverFigures:
    to_task_s: list[float] = field(default_factory=list)
    latencies_s: list[float] = field(default_factory=list)
    sent: int = 0
    answered_2xx: int = 0
    recorded: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    send_lag_s_max: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "alert_to_first_task_s": self.to_task_s,
            "alert_to_first_task_s_p50": round(percentile(self.to_task_s, 50), 3),
            "post_to_2xx_ms_p50": round(percentile(self.latencies_s, 50) * 1000, 2),
            "post_to_2xx_ms_p99": round(percentile(self.latencies_s, 99) * 1000, 2),
            "post_to_2xx_ms_max": round(max(self.latencies_s) * 1000, 2),
            "rate_per_s": RATE,
            "seconds": SECONDS,
            "sent": self.sent,
            "answered_2xx": self.answered_2xx,
            "ledger_intake_rows": self.recorded,
            "outcomes": self.outcomes,
            "send_lag_s_max": round(self.send_lag_s_max, 3),
        }

    def rows(self) -> list[Row]:
        name = "alert receiver (opsflow up)"
        p50, p99 = percentile(self.latencies_s, 50), percentile(self.latencies_s, 99)
        lost = self.sent - self.recorded
        return [
            Row(
                name,
                f"alert -> first task of health-check running, p50 of {len(self.to_task_s)}",
                f"{percentile(self.to_task_s, 50):.2f} s",
            ),
            Row(name, f"POST -> 2xx at {RATE}/s for {SECONDS} s, p50", f"{p50 * 1000:.1f} ms"),
            Row(
                name,
                f"POST -> 2xx at {RATE}/s for {SECONDS} s, p99",
                f"{p99 * 1000:.1f} ms",
                goal=f"<= {GOAL_P99_S * 1000:g} ms",
                result=verdict(p99 <= GOAL_P99_S),
            ),
            Row(
                name,
                f"alerts lost of {self.sent} (2xx: {self.answered_2xx}, ledger rows)",
                str(lost),
                goal="0",
                result=verdict(lost == 0 and self.answered_2xx == self.sent),
            ),
        ]


def write_inventory(workdir: Path) -> Path:
    path = workdir / "receiver-inventory.yaml"
    path.write_text(
        f"""
environments:
  local:
    disks: ["{workdir}"]
    alerting: {{dedup_window: 10m, max_runs_per_hour: {STARTS + 20}}}
    alert_rules:
      - {{match: {{alertname: BenchStart}}, runbook: health-check, params: {{notify: false}}}}
      - {{match: {{alertname: BenchLoad}}, runbook: health-check, params: {{notify: false}}}}
"""
    )
    return path


def payload(name: str, fingerprint: str) -> bytes:
    labels = {"alertname": name, "instance": "web-1:9100", "severity": "warning"}
    alert = {
        "status": "firing",
        "labels": labels,
        "annotations": {"summary": f"{name} on web-1"},
        "startsAt": "2026-12-01T12:00:00Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph",
        "fingerprint": fingerprint,
    }
    return json.dumps(
        {
            "version": "4",
            "groupKey": f'{{}}:{{alertname="{name}"}}',
            "truncatedAlerts": 0,
            "status": "firing",
            "receiver": "opsflow",
            "groupLabels": {"alertname": name},
            "commonLabels": labels,
            "commonAnnotations": alert["annotations"],
            "externalURL": "http://alertmanager:9093",
            "alerts": [alert],
        }
    ).encode()


def _ledger(home: Path, url: str) -> Any:
    from opsflow.ledger import Ledger
    from opsflow.ledger.keys import read_key_file

    return Ledger(url, key=read_key_file(home / "ledger.key"))


def _first_task_running(api: str, run_id: str) -> float:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        run = httpx.get(f"{api}/flow_runs/{run_id}", timeout=30).json()
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        time.sleep(0.2)
    for _ in range(50):  # task runs are recorded from events, a moment after
        found = httpx.post(
            f"{api}/task_runs/filter",
            json={"flow_runs": {"id": {"any_": [run_id]}}},
            timeout=30,
        ).json()
        starts = [r["start_time"] for r in found if r.get("start_time")]
        if starts:
            return min(datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp() for s in starts)
        time.sleep(0.2)
    raise RuntimeError(f"run {run_id} has no task run that started")


def _starts(url: str, headers: dict[str, str], api: str, ledger: Any) -> list[float]:
    figures = []
    for i in range(STARTS):
        fingerprint = f"5a{i:014x}"
        sent = time.time()
        answer = httpx.post(url, content=payload("BenchStart", fingerprint), headers=headers)
        answer.raise_for_status()
        deadline = time.monotonic() + 60
        while True:
            rows = [r for r in ledger.alerts(fingerprint=fingerprint) if r.outcome == "started"]
            if rows:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"alert {fingerprint} started no run")
            time.sleep(0.05)
        figures.append(_first_task_running(api, rows[0].flow_run_id) - sent)
    return figures


def _storm(url: str, headers: dict[str, str], figures: ReceiverFigures) -> None:
    """``RATE`` POSTs a second from ``SENDERS`` threads, each on its own keep-alive
    connection (``http.client``: the lightest client, so the sender's CPU stays small)."""
    parts = urlsplit(url)
    local = threading.local()
    lock = threading.Lock()

    def send(i: int, at: float) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        delay = at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        name = "BenchOther" if i % 10 == 9 else "BenchLoad"
        body = payload(name, f"10ad{i % 100:012x}")
        began = time.perf_counter()
        conn.request("POST", parts.path, body=body, headers=headers)
        answer = conn.getresponse()
        answer.read()
        took = time.perf_counter() - began
        with lock:
            figures.latencies_s.append(took)
            figures.send_lag_s_max = max(figures.send_lag_s_max, began - at)
            if 200 <= answer.status < 300:
                figures.answered_2xx += 1

    total = RATE * SECONDS
    start = time.perf_counter() + 0.5
    with ThreadPoolExecutor(SENDERS) as pool:
        for i in range(total):
            pool.submit(send, i, start + i / RATE)
    figures.sent = total


def run(workdir: Path) -> ReceiverFigures:
    from opsflow.ledger.keys import create_key_file

    api = os.environ["PREFECT_API_URL"]
    home = workdir / "receiver-home"
    create_key_file(home / "ledger.key")
    ledger_url = f"sqlite:///{home / 'ledger.db'}"
    token = secrets.token_hex(24)
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OPSFLOW_")},
        "OPSFLOW_HOME": str(home),
        "OPSFLOW_LEDGER_URL": ledger_url,
        "OPSFLOW_INVENTORY": str(write_inventory(workdir)),
        "OPSFLOW_RECEIVER_TOKEN": token,
        "OPSFLOW_RECEIVER_PORT": str(port),
    }
    url = f"http://127.0.0.1:{port}/alertmanager"
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    up = start_up(REPO, env, workdir / "receiver-up.log")
    figures = ReceiverFigures()
    try:
        _wait_served(api, f"http://127.0.0.1:{port}/healthz", up, workdir)
        ledger = _ledger(home, ledger_url)
        figures.to_task_s = _starts(url, headers, api, ledger)
        _storm(url, headers, figures)
        rows = [
            r
            for r in ledger.alerts(limit=None)
            if r.alertname in ("BenchLoad", "BenchOther") and r.outcome in INTAKE
        ]
        figures.recorded = len(rows)
        for row in rows:
            figures.outcomes[row.outcome] = figures.outcomes.get(row.outcome, 0) + 1
        ledger.close()
    finally:
        stop_process_group(up, timeout=20)
    return figures


def _wait_served(api: str, healthz: str, up: subprocess.Popen[bytes], workdir: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if up.poll() is not None:
            break
        try:
            deployment = httpx.get(f"{api}/deployments/name/{DEPLOYMENT}", timeout=5)
            if (
                deployment.status_code == 200
                and deployment.json().get("status") == "READY"
                and httpx.get(healthz, timeout=2).status_code == 200
            ):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    log = (workdir / "receiver-up.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"`opsflow up` did not serve the receiver: {log}")
