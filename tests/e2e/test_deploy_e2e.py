"""The served deploy runbook end to end: `opsflow up` serves prefect.yaml, a deploy of a bad
image is triggered through the REST API on a protected environment, approved through the API
by a second identity, rolled back by itself; the ledger and the artifacts are read back. A
change freeze then refuses the same deploy whether it comes from the API or the CLI.

The environment ``shop`` (a container of tests.support.images' app on the real Docker engine)
is added to the e2e workspace's inventory for this module, before the runner starts (the
served ``env`` parameter is the inventory's names), and removed afterwards."""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import docker
import docker.errors
import httpx
import pytest

from tests.e2e.test_health_check_e2e import deployment_id, wait_for_run
from tests.fixtures.docker_engine import SESSION_ID, SESSION_LABEL
from tests.fixtures.e2e_env import Workspace, run_cli
from tests.support.approvers import Authenticator, approvers_yaml, wait_until
from tests.support.images import DEPLOY_APP_PORT, deploy_app_image
from tests.support.net import free_port
from tests.support.prefect_api import api_post

pytestmark = pytest.mark.e2e


@dataclass
class Shop:
    client: docker.DockerClient
    container: str
    port: int
    images: dict[str, str]
    inventory: str
    """The shop environment's inventory text (appended to the workspace's)."""

    def version(self) -> str:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                answer = httpx.get(f"http://127.0.0.1:{self.port}/", timeout=2)
                if answer.status_code == 200:
                    return str(answer.json()["version"])
            assert time.monotonic() < deadline, f"nothing answers on port {self.port}"
            time.sleep(0.2)

    def inspect(self) -> dict[str, Any]:
        found: dict[str, Any] = self.client.api.inspect_container(self.container)
        return found


@pytest.fixture(scope="module")
def shop(
    e2e_workspace: Workspace, docker_engine: str, docker_engine_client: docker.DockerClient
) -> Iterator[Shop]:
    client = docker_engine_client
    images = {v: deploy_app_image(client, v) for v in ("v1", "v2", "v3")}
    name, port = f"opsflow-shop-{uuid.uuid4().hex[:8]}", free_port()
    base = f"http://127.0.0.1:{port}"
    text = f"""
  shop:
    protected: true
    approvals: {{approvers: {approvers_yaml("alice", "bob")}, timeout: 10m}}
    disks: ["{e2e_workspace.root}"]
    docker:
      host: "{docker_engine}"
      services: [{{name: web, container: {name}}}]
    endpoints: [{{name: web, url: "{base}/health"}}]
    metrics: [{{name: web, url: "{base}/metrics"}}]
    smoke_tests: [{{name: health, url: "{base}/health", expect_body: healthy}}]
    backup_store: {{url: "file://{e2e_workspace.store}"}}
    deploy: {{health_timeout: 60s, verify: {{duration: 2s, interval: 1s, failure_limit: 1}}}}
"""
    original = e2e_workspace.inventory.read_text()
    e2e_workspace.inventory.write_text(original.rstrip() + "\n" + text)
    client.containers.run(
        images["v1"],
        name=name,
        detach=True,
        environment={"APP_PORT": str(DEPLOY_APP_PORT)},
        ports={f"{DEPLOY_APP_PORT}/tcp": ("127.0.0.1", port)},
        labels={SESSION_LABEL: SESSION_ID},
    )
    try:
        yield Shop(client, name, port, images, original.rstrip() + "\n" + text)
    finally:
        e2e_workspace.inventory.write_text(original)
        for suffix in ("", ".opsflow-previous", ".opsflow-failed"):
            with contextlib.suppress(docker.errors.NotFound):
                client.api.remove_container(name + suffix, force=True)


@pytest.fixture(scope="module")
def shop_served(shop: Shop, served: subprocess.Popen[bytes]) -> Shop:
    """The runner serves prefect.yaml with ``shop`` in the inventory (fixture order)."""
    return shop


def _paused(api: str, run_id: str) -> bool:
    run = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()
    return bool(run["state"]["type"] == "PAUSED")


def _trigger(api: str, image: str) -> str:
    dep = deployment_id(api, "deploy", "on-demand")
    response = api_post(
        f"{api}/deployments/{dep}/create_flow_run",
        json={"parameters": {"env": "shop", "requested_by": "alice", "image": image}},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_a_bad_image_deployed_through_the_api_is_approved_then_rolled_back(
    shop_served: Shop, e2e_workspace: Workspace, prefect_api: str
) -> None:
    shop = shop_served
    assert shop.version() == "v1"
    before = shop.inspect()
    planned = run_cli(
        e2e_workspace.env,
        "plan",
        "deploy",
        "--env",
        "shop",
        "--param",
        f"image={shop.images['v2']}",
    )
    assert planned.returncode == 0, planned.stdout + planned.stderr
    assert f"`set_image` | container {shop.container}" in planned.stdout
    assert f"{shop.images['v1']} -> {shop.images['v2']}" in planned.stdout
    run_id = _trigger(prefect_api, shop.images["v2"])
    wait_until(lambda: _paused(prefect_api, run_id), "the deploy to ask for approval", 120)
    assert shop.inspect()["Id"] == before["Id"]  # nothing changed while it waits
    codes = Authenticator(e2e_workspace.ledger_url)
    try:
        codes.answer(prefect_api, run_id, "bob", "CHG-2001 release v2")
    finally:
        codes.close()
    run = wait_for_run(prefect_api, run_id, timeout=300)
    assert run["state"]["type"] == "FAILED", run["state"]
    assert "rolled back" in run["state"]["message"]

    assert shop.version() == "v1"
    after = shop.inspect()
    assert after["Id"] == before["Id"] and after["Config"]["Image"] == shop.images["v1"]
    ledger = e2e_workspace.ledger()
    (row,) = [r for r in ledger.runs(env="shop", limit=20) if r.flow_run_id == run_id]
    assert row.status == "rolled-back" and row.triggered_by == "alice"
    assert row.details["approved_by"] == ["bob"]
    assert row.details["changes"][0]["to_image"] == shop.images["v2"]
    assert row.details["failed_check"].startswith("set_image web")
    assert row.details["rollback"][0]["outcome"] == "rolled back"
    assert [e.event for e in ledger.approval_events(run_id)] == ["requested", "approved"]
    found = api_post(
        f"{prefect_api}/artifacts/filter",
        json={"artifacts": {"flow_run_id": {"any_": [run_id]}}},
        timeout=10,
    ).json()
    by_key = {a["key"]: a["data"] for a in found}
    assert "ROLLED BACK" in by_key["deploy-shop"] and "bob" in by_key["deploy-shop"]
    assert shop.images["v2"] in by_key["deploy-shop-plan"]


def test_a_change_freeze_refuses_an_api_and_a_cli_deploy_naming_it(
    shop_served: Shop, e2e_workspace: Workspace, prefect_api: str
) -> None:
    shop = shop_served
    now = datetime.now(UTC).replace(microsecond=0)
    ends = now + timedelta(hours=3)
    starts, until = (now - timedelta(hours=1)).isoformat(), ends.isoformat()
    freeze = f"    change_freezes: [{{name: launch-week, start: '{starts}', end: '{until}'}}]\n"
    e2e_workspace.inventory.write_text(shop.inventory + freeze)
    try:
        run_id = _trigger(prefect_api, shop.images["v3"])
        run = wait_for_run(prefect_api, run_id, timeout=180)
        assert run["state"]["type"] == "FAILED", run["state"]
        assert "change freeze 'launch-week'" in run["state"]["message"]
        (row,) = [
            r for r in e2e_workspace.ledger().runs(env="shop", limit=20) if r.flow_run_id == run_id
        ]
        assert row.status == "refused" and row.details["window"] == "launch-week"

        cli = run_cli(
            e2e_workspace.env,
            "run",
            "deploy",
            "--env",
            "shop",
            "--param",
            f"image={shop.images['v3']}",
            "--as",
            "alice",
        )
        assert cli.returncode == 1, cli.stdout + cli.stderr
        said = " ".join((cli.stdout + cli.stderr).split())
        assert "change freeze 'launch-week'" in said
        assert f"until {ends:%Y-%m-%d %H:%M} UTC" in said
    finally:
        e2e_workspace.inventory.write_text(shop.inventory)
    assert shop.version() == "v1"

    # bad input of a served run is refused where it runs, as bad input (exit 2, field named)
    missing = "opsflow-test/no-such-image:1"
    cli = run_cli(
        e2e_workspace.env,
        "run",
        "deploy",
        "--env",
        "shop",
        "--param",
        f"image={missing}",
        "--as",
        "alice",
    )
    said = " ".join((cli.stdout + cli.stderr).split())
    assert cli.returncode == 2, said
    assert "image" in said and "is not on the Docker engine" in said
    assert shop.inspect()["Config"]["Image"] == shop.images["v1"]
