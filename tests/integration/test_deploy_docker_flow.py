"""The deploy and rollback runbooks on a real Docker engine, in-process on the session's
Prefect server: the app of ``tests.support.images`` (v1 healthy, v2 whose /health fails, v3
healthy, v4 healthy but a third of its requests 5xx) in a container with a rich
configuration (``tests.integration.test_docker_deploy.App``).

What an operator relies on: v1 serves; deploying v2 rolls back to v1 by itself with every
config field the same (docker inspect before and after); v3 goes live; v4 is rolled back by
the verification window while traffic flows; deploying what runs is a no-op; the rollback
runbook puts the previous image back; the ledger and the report say all of it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from flows.deploy import deploy
from flows.rollback import rollback
from opsflow.ledger import Ledger
from opsflow.releases import ReleaseReport
from tasks.docker.recreate import DEPLOY_ID_LABEL, PREVIOUS_SUFFIX
from tests.integration.test_docker_deploy import App, _assert_rich, _assert_same_config, app
from tests.support.images import deploy_app_image
from tests.support.prefect_api import api_post

pytestmark = pytest.mark.integration
__all__ = ["app"]  # the fixture, shared with the task-level tests

VERIFY = "{duration: 3s, interval: 1s, failure_limit: 1, max_error_rate_pct: 5}"


@dataclass
class Lab:
    app: App
    root: Path
    api: str

    def deploy(self, **params: Any) -> tuple[Any, ReleaseReport]:
        state = deploy(env="web", requested_by="tester", return_state=True, **params)
        report = state.result(raise_on_failure=False)
        assert isinstance(report, ReleaseReport), report
        return state, report

    def run_row(self, state: Any) -> Any:
        run_id = str(state.state_details.flow_run_id)
        rows = [r for r in Ledger().runs(env="web", limit=50) if r.flow_run_id == run_id]
        assert len(rows) == 1, rows
        return rows[0]

    def report_text(self, state: Any, key: str = "deploy-web") -> str:
        run_id = str(state.state_details.flow_run_id)
        found = api_post(
            f"{self.api}/artifacts/filter",
            json={"artifacts": {"flow_run_id": {"any_": [run_id]}, "key": {"any_": [key]}}},
            timeout=10,
        ).json()
        assert len(found) == 1, found
        return str(found[0]["data"])


@pytest.fixture
def lab(
    app: App, prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Lab]:
    app.images["v4"] = deploy_app_image(app.client, "v4")
    app.create()
    base = f"http://127.0.0.1:{app.port}"
    (tmp_path / "app.db").touch()
    (tmp_path / "inventory.yaml").write_text(f"""
environments:
  web:
    disks: ["{tmp_path}"]
    docker:
      host: "{app.target.host}"
      services: [{{name: web, container: "{app.name}"}}]
    endpoints: [{{name: app, url: "{base}/health"}}]
    metrics: [{{name: app, url: "{base}/metrics"}}]
    smoke_tests: [{{name: health, url: "{base}/health", expect_body: healthy}}]
    thresholds: {{error_rate_pct: 60}}
    databases: [{{name: app, kind: sqlite, path: "{tmp_path / "app.db"}"}}]
    backup_store: {{url: "file://{tmp_path / "store"}"}}
    deploy:
      services: [web]
      health_timeout: 60s
      verify: {VERIFY}
""")
    monkeypatch.setenv("OPSFLOW_INVENTORY", str(tmp_path / "inventory.yaml"))
    monkeypatch.setenv("OPSFLOW_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("OPSFLOW_HOME", str(tmp_path / ".opsflow"))
    assert app.version() == "v1"
    yield Lab(app, tmp_path, prefect_api)


class Traffic:
    """Requests to the app's / every 50 ms while it runs (the verification window needs
    requests to measure an error rate)."""

    def __init__(self, url: str) -> None:
        self.url, self.stop, self.sent = url, threading.Event(), 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=2) as client:
            while not self.stop.is_set():
                try:
                    client.get(self.url)
                    self.sent += 1
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def test_bad_images_roll_back_by_themselves_and_good_ones_go_live(lab: Lab) -> None:
    app = lab.app
    v1 = app.inspect()
    assert v1 is not None
    _assert_rich(v1, app.name, app.port)

    # v2: its /health fails, so its container never becomes healthy -> back to v1
    state, report = lab.deploy(image=app.images["v2"])
    assert state.is_failed()
    assert report.outcome == "rolled back", report.summary()
    assert report.failed_check is not None and "set_image web" in report.failed_check
    assert [c.outcome for c in report.rollback] == ["rolled back"]
    assert app.version() == "v1"
    after = app.inspect()
    assert after is not None and after["Id"] == v1["Id"]  # the very same container is back
    assert after["Config"]["Image"] == app.images["v1"]
    _assert_same_config(v1, after)
    _assert_rich(after, app.name, app.port)
    row = lab.run_row(state)
    assert row.status == "rolled-back"
    assert row.details["changes"][0]["from_image"] == app.images["v1"]
    assert row.details["changes"][0]["to_image"] == app.images["v2"]
    assert row.details["failed_check"] == report.failed_check
    assert row.details["backup_ids"]  # the pre-deploy backup was taken and catalogued
    text = lab.report_text(state)
    assert "ROLLED BACK" in text and "Automatic rollback" in text and app.images["v2"] in text
    steps = {s.step: s.status for s in Ledger().steps(row.flow_run_id)}
    assert steps["backup"] == "complete" and steps["set_image"] == "failed"
    assert steps["roll_back"] == "complete" and steps["verify_window"] == "complete"

    # v3: healthy -> live, with the same configuration; the previous container is dropped
    state, report = lab.deploy(image=app.images["v3"])
    assert state.is_completed(), report.summary()
    assert report.outcome == "deployed" and report.failed_check is None
    assert app.version() == "v3"
    v3 = app.inspect()
    assert v3 is not None and v3["Config"]["Image"] == app.images["v3"]
    assert v3["Config"]["Labels"][DEPLOY_ID_LABEL] == report.deploy_id
    _assert_same_config(v1, v3)
    assert app.inspect(PREVIOUS_SUFFIX) is None
    assert any(line.startswith("verify_window") for line in report.checks)
    assert lab.run_row(state).status == "complete"
    assert report.changes[0].seconds > 0
    v3_backups = lab.run_row(state).details["backup_ids"]
    assert v3_backups and report.backup.startswith("taken by backup run")

    # a rerun of that deploy id (as after a crash): nothing is replaced, the backup is reused
    state, again = lab.deploy(image=app.images["v3"], deploy_id=report.deploy_id)
    assert state.is_completed(), again.summary()
    assert [c.action for c in again.changes] == ["resume"] and again.outcome == "deployed"
    assert again.backup.startswith("reused from backup run")
    assert lab.run_row(state).details["backup_ids"] == v3_backups
    same = app.inspect()
    assert same is not None and same["Id"] == v3["Id"]

    # v3 again: what runs already -> a no-op, said so
    state, report = lab.deploy(image=app.images["v3"])
    assert state.is_completed() and report.outcome == "unchanged"
    same = app.inspect()
    assert same is not None and same["Id"] == v3["Id"] and same["State"]["Running"]
    assert Ledger().steps(str(state.state_details.flow_run_id)) == []

    # v4: healthy, but a third of its requests fail: the verification window rolls it back
    with Traffic(f"http://127.0.0.1:{app.port}/") as traffic:
        state, report = lab.deploy(image=app.images["v4"], skip_backup=True)
    assert traffic.sent > 20
    assert state.is_failed() and report.outcome == "rolled back", report.summary()
    assert report.failed_check is not None
    assert report.failed_check.startswith("verify_window"), report.failed_check
    assert app.version() == "v3"
    back = app.inspect()
    assert back is not None and back["Id"] == v3["Id"]
    _assert_same_config(v1, back)
    row = lab.run_row(state)
    assert row.details["backup"].startswith("skipped (skip_backup=true, requested by tester")

    # the rollback runbook: v3 -> the image the last successful deploy replaced (v1)
    state = rollback(env="web", requested_by="tester", return_state=True)
    rolled = state.result(raise_on_failure=False)
    assert isinstance(rolled, ReleaseReport)
    assert state.is_completed(), rolled.summary()
    assert rolled.outcome == "rolled back"
    assert [(c.from_image, c.to_image) for c in rolled.changes] == [
        (app.images["v3"], app.images["v1"])
    ]
    assert app.version() == "v1"
    final = app.inspect()
    assert final is not None and final["Config"]["Image"] == app.images["v1"]
    _assert_same_config(v1, final)
    assert "ROLLED BACK" in lab.report_text(state, "rollback-web")
