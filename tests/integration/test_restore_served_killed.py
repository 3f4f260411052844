"""A served restore outlives the terminal: `opsflow run restore` follows a flow run of the
restore deployment that `opsflow up` serves; the CLI is killed (SIGKILL) while the run has the
application scaled down, and the run completes on the runner anyway: the application is back
at its replicas, the database is restored, and the ledger and `opsflow history` show one
complete run. Kubernetes is kmock + the fake controller (see tests/fixtures/kube_api.py).

This test starts its own Prefect server and runner: the e2e `served` runner serves the same
deployment names for another inventory and would take runs of the session server."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from deployments.up import start_embedded_server, stop_process_group
from tests.fixtures.kube_api import KubeCluster
from tests.fixtures.restores import RestoreLab, kubernetes_entry
from tests.support.cli import OPSFLOW, start_up
from tests.support.net import free_port
from tests.support.prefect_api import api_get, wait_until_served

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = start_embedded_server(tmp_path / "own-prefect", port, Console(quiet=True))
    try:
        yield f"http://127.0.0.1:{port}/api"
    finally:
        stop_process_group(proc)


def replicas(kube: KubeCluster) -> int:
    path = f"/apis/apps/v1/namespaces/{kube.namespace}/deployments/{kube.deployment}"
    found = kube.api.get(path)
    assert found is not None
    return int(found["spec"]["replicas"])


def wait_for(predicate: Any, what: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_cli_killed_during_a_served_restore_the_run_completes_on_the_runner(
    restore_lab: RestoreLab, kube_cluster: KubeCluster, own_server: str
) -> None:
    lab = restore_lab
    lab.write_inventory(kubernetes_entry(kube_cluster))
    with (lab.root / "inventory.yaml").open("a") as inventory:  # prefect.yaml's default env
        inventory.write(f'  local:\n    disks: ["{lab.root}"]\n')
    env = {**lab.env, "PREFECT_API_URL": own_server}
    taken = subprocess.run(
        [*OPSFLOW, "run", "backup", "--env", "lab", "--local"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert taken.returncode == 0, taken.stdout + taken.stderr
    backed_up = lab.checksums()
    lab.change_data()
    assert lab.checksums() != backed_up

    runner = start_up(REPO, env, lab.root / "up.log")
    try:
        wait_until_served(own_server, "restore/manual")
        with kube_cluster.controller:
            assert replicas(kube_cluster) == 4
            kube_cluster.controller.terminate_slowly(3)  # the scale-down takes a moment
            cli_log = lab.root / "cli.log"
            with cli_log.open("wb") as out:
                cli = subprocess.Popen(
                    [
                        *OPSFLOW,
                        "run",
                        "restore",
                        "--env",
                        "lab",
                        "--as",
                        "alice",
                        "-p",
                        "database=main",
                    ],
                    cwd=REPO,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            try:
                wait_for(lambda: replicas(kube_cluster) == 0, "the scale-down")
                assert cli.poll() is None, cli_log.read_text()
            finally:
                cli.kill()  # SIGKILL: the terminal is gone
                cli.wait()
            assert cli.returncode == -9
            run_id = cli_log.read_text().split(": run ", 1)[1].split()[0]
            run = api_get(f"{own_server}/flow_runs/{run_id}", timeout=10).json()
            assert run["deployment_id"] is not None

            def final() -> bool:
                state = api_get(f"{own_server}/flow_runs/{run_id}", timeout=10).json()
                return state["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")

            wait_for(final, "the restore to end on the runner", timeout=300)
            state = api_get(f"{own_server}/flow_runs/{run_id}", timeout=10).json()["state"]
            assert state["type"] == "COMPLETED", state
            wait_for(lambda: replicas(kube_cluster) == 4, "the app back at 4 replicas", 60)
    finally:
        stop_process_group(runner, timeout=20)

    assert lab.checksums() == backed_up  # restored on the runner after the CLI was gone
    runs = lab.ledger().runs(env="lab", runbook="restore")
    assert [(r.flow_run_id, r.status) for r in runs] == [(run_id, "complete")]
    steps = {s.step: s.status for s in lab.ledger().steps(run_id)}
    assert steps["scale_down_app"] == steps["scale_up_app"] == "complete", steps
    assert steps["restore_postgres"] == "complete", steps
    history = subprocess.run(
        [*OPSFLOW, "history", "--env", "lab", "--runbook", "restore", "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert history.returncode == 0, history.stderr
    assert [(h["flow_run_id"], h["status"]) for h in json.loads(history.stdout)] == [
        (run_id, "complete")
    ]
