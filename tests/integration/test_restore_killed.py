"""A restore whose process is killed (SIGKILL) after it scaled the application down: the records
it left next to the application (the replicas annotation) are what `opsflow recover` brings
back, and the live database is as it was. Kubernetes is kmock + the fake controller (see
tests/fixtures/kube_api.py for what that does not prove)."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from flows.backup import backup
from tests.fixtures.kube_api import KubeCluster
from tests.fixtures.restores import RestoreLab, kubernetes_entry
from tests.support.cli import OPSFLOW

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
ANNOTATION = "opsflow.io/replicas-before-restore"
LEASE_SECONDS = 60  # the lock of the killed run expires after its lease (the minimum)


def deployment(kube: KubeCluster) -> dict[str, Any]:
    path = f"/apis/apps/v1/namespaces/{kube.namespace}/deployments/{kube.deployment}"
    found = kube.api.get(path)
    assert found is not None
    return found


def annotation(dep: dict[str, Any]) -> str | None:
    value = (dep["metadata"].get("annotations") or {}).get(ANNOTATION)
    return None if value is None else str(value)


def test_a_restore_killed_after_scale_down_is_brought_back_by_recover(
    restore_lab: RestoreLab, kube_cluster: KubeCluster
) -> None:
    lab = restore_lab
    lab.write_inventory(kubernetes_entry(kube_cluster))
    state = backup(env="lab", requested_by="tester", return_state=True)
    assert state.is_completed(), state.message
    lab.change_data()
    live = lab.checksums()
    env = {**lab.env, "OPSFLOW_LOCK_LEASE_SECONDS": str(LEASE_SECONDS)}
    with kube_cluster.controller:
        before = deployment(kube_cluster)["spec"]["replicas"]
        assert before == 4
        kube_cluster.controller.terminate_slowly(30)  # the scale-down waits: room to kill it
        restore = subprocess.Popen(
            [*OPSFLOW, "run", "restore", "--env", "lab", "--as", "alice", "-p", "database=main"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 120
            while deployment(kube_cluster)["spec"]["replicas"] != 0:
                assert restore.poll() is None, "the restore ended before it scaled down"
                assert time.monotonic() < deadline, "the restore never scaled the app down"
                time.sleep(0.05)
        finally:
            restore.kill()  # SIGKILL: no finally, no scale-up
            restore.wait()
        assert restore.returncode == -9
        kube_cluster.controller.terminate_slowly(0)
        dep = deployment(kube_cluster)
        assert dep["spec"]["replicas"] == 0  # the application is left down ...
        assert annotation(dep) == "4"  # ... with the record of what it was

        recovered = subprocess.run(
            [*OPSFLOW, "recover", "--env", "lab", "--as", "bob"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

        assert recovered.returncode == 0, recovered.stdout + recovered.stderr
        dep = deployment(kube_cluster)
        assert dep["spec"]["replicas"] == 4
        assert dep["status"].get("readyReplicas") == 4
        assert annotation(dep) is None
    assert lab.checksums() == live  # the killed restore had not touched the live database
    runs = lab.ledger().runs(env="lab", runbook="recover")
    assert [r.status for r in runs] == ["complete"]
    [step] = lab.ledger().steps(runs[0].flow_run_id)
    assert (step.step, step.status) == ("scale_up_app", "complete")
    assert "back to 4 replica(s)" in step.summary
    # and nothing was left to recover: a second run says so and changes nothing
    again = subprocess.run(
        [*OPSFLOW, "recover", "--env", "lab", "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout) == "nothing was scaled down"
