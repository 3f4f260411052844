"""The deploy runbook against Kubernetes: kmock's API emulator and the fake controller
(tests/fixtures/kube_api.py says what that does not prove), in-process on the session's
Prefect server (the killed run: a child process).

The seeded Deployment ``app`` runs ``registry.local/app:1.0`` (4 replicas, some pods unready:
the first deploy rolls a whole healthy ReplicaSet out)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from flows.deploy import deploy
from opsflow.ledger import Ledger
from opsflow.releases import ReleaseReport
from tasks.kubernetes.rollout import DEPLOY_ID, PREVIOUS_IMAGE
from tests.fixtures.kube_api import KubeCluster

pytestmark = pytest.mark.integration
V1, V2, BAD = "registry.local/app:1.0", "registry.local/app:2.0", "registry.local/app:bad"
LEASE_SECONDS = 60  # the killed run's locks expire after their lease (the minimum)
REPO = Path(__file__).resolve().parents[2]


def kube_inventory(
    tmp_path: Path, cluster: KubeCluster, env: str = "k8s", on_busy: str = "fail", extra: str = ""
) -> Path:
    """An inventory whose environment ``env`` deploys the cluster's Deployment ``app``
    (``extra``: more lines of that environment)."""
    path = tmp_path / "inventory.yaml"
    path.write_text(f"""
environments:
  {env}:
{extra}    disks: ["{tmp_path}"]
    kubernetes: {{namespace: {cluster.namespace}, api_url: "{cluster.url}"}}
    deploy:
      target: kubernetes
      services: [{{name: app, container: app}}]
      rollout_timeout: 60s
      verify: null
      backup: false
      health_check: false
      on_busy: {on_busy}
      busy_wait: 3m
""")
    return path


@pytest.fixture
def k8s(
    kube_cluster: KubeCluster, prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> KubeCluster:
    monkeypatch.setenv("OPSFLOW_INVENTORY", str(kube_inventory(tmp_path, kube_cluster)))
    monkeypatch.setenv("OPSFLOW_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("OPSFLOW_HOME", str(tmp_path / ".opsflow"))
    return kube_cluster


def _path(cluster: KubeCluster) -> str:
    return f"/apis/apps/v1/namespaces/{cluster.namespace}/deployments/app"


def _deployment(cluster: KubeCluster) -> dict[str, Any]:
    found = cluster.api.get(_path(cluster))
    assert found is not None
    return found


def _image(cluster: KubeCluster) -> str:
    return str(_deployment(cluster)["spec"]["template"]["spec"]["containers"][0]["image"])


def _deploy(image: str, **params: Any) -> tuple[Any, ReleaseReport]:
    state = deploy(env="k8s", requested_by="tester", image=image, return_state=True, **params)
    report = state.result(raise_on_failure=False)
    assert isinstance(report, ReleaseReport), report
    return state, report


def test_a_rollout_goes_live_and_one_past_its_deadline_is_rolled_back(k8s: KubeCluster) -> None:
    k8s.controller.start(0.05)
    try:
        state, report = _deploy(V2)
        assert state.is_completed(), report.summary()
        assert report.outcome == "deployed"
        (change,) = report.changes
        assert (change.from_image, change.to_image, change.replicas) == (V1, V2, 4)
        dep = _deployment(k8s)
        assert _image(k8s) == V2 and dep["status"]["availableReplicas"] == 4
        annotations = dep["metadata"]["annotations"]
        assert annotations[DEPLOY_ID] == report.deploy_id
        assert annotations[PREVIOUS_IMAGE] == V1

        k8s.controller.fail_image(BAD)  # its pods never get ready: ProgressDeadlineExceeded
        state, report = _deploy(BAD)
        assert state.is_failed() and report.outcome == "rolled back", report.summary()
        assert report.failed_check is not None
        assert "progress deadline" in report.failed_check, report.failed_check
        (back,) = report.rollback
        assert (back.from_image, back.to_image, back.outcome) == (BAD, V2, "rolled back")
        assert _image(k8s) == V2
        assert _deployment(k8s)["status"]["availableReplicas"] == 4
        run_id = str(state.state_details.flow_run_id)
        (row,) = [r for r in Ledger().runs(env="k8s", limit=10) if r.flow_run_id == run_id]
        assert row.status == "rolled-back"
        assert row.details["changes"][0]["revision"] is not None
        steps = [(s.step, s.status) for s in Ledger().steps(run_id)]
        assert ("set_image", "failed") in steps and ("roll_back", "complete") in steps
    finally:
        k8s.controller.stop()


def test_a_deploy_killed_after_its_patch_resumes_without_patching_again(
    k8s: KubeCluster, tmp_path: Path
) -> None:
    """The controller is stopped, so the first run patches and then waits for a rollout that
    does not come; it is killed there. The rerun (same images, so the same deploy id) finds
    the image set by its id, does not patch, waits for the rollout and completes."""
    os.environ["OPSFLOW_INVENTORY"] = str(kube_inventory(tmp_path, k8s, on_busy="wait"))
    env = {**os.environ, "OPSFLOW_LOCK_LEASE_SECONDS": str(LEASE_SECONDS)}
    code = (
        f"from flows.deploy import deploy; deploy(env='k8s', requested_by='tester', image='{V2}')"
    )
    before = len(k8s.server.requests(_path(k8s)))
    child = subprocess.Popen(
        [sys.executable, "-c", code], cwd=REPO, env=env, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while _image(k8s) != V2:
            assert child.poll() is None, "the deploy ended before it patched"
            assert time.monotonic() < deadline, "the deploy did not patch in time"
            time.sleep(0.1)
        time.sleep(1.0)  # it is in the rollout wait now
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait(30)
    patched = _deployment(k8s)["metadata"]
    first_id = patched["annotations"][DEPLOY_ID]
    patches = [m for m, _ in k8s.server.requests(_path(k8s))[before:] if m == "PATCH"]
    assert len(patches) == 1 and patched["generation"] == 2  # one image patch, nothing else

    k8s.controller.start(0.05)
    try:
        state, report = _deploy(V2, wait_for_lock=180)
    finally:
        k8s.controller.stop()
    assert state.is_completed(), report.summary()
    assert report.outcome == "deployed" and report.deploy_id == first_id
    assert [c.action for c in report.changes] == ["resume"]
    assert report.changes[0].from_image == V1  # from the annotation the first run wrote
    # the rerun did not patch the spec again (the controller's status and annotation patches
    # do not change the generation; an image patch would)
    assert _deployment(k8s)["metadata"]["generation"] == 2
    assert _image(k8s) == V2 and _deployment(k8s)["status"]["availableReplicas"] == 4
