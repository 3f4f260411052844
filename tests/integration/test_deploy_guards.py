"""What stands between a deploy and production: the approval of a protected environment, one
deploy per environment at a time (``deploy-<env>``, by ``deploy.on_busy``), and change
freezes. Kubernetes through kmock and the fake controller, in-process on the session's
Prefect server, approvals answered through its REST API with real TOTP codes."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from flows.deploy import deploy
from opsflow.errors import PermanentError
from opsflow.ledger import Ledger
from opsflow.releases import ReleaseReport
from tests.fixtures.kube_api import KubeCluster
from tests.integration.test_deploy_kubernetes_flow import kube_inventory
from tests.integration.test_env_lock import Started
from tests.support.approvers import Authenticator, approver_env, approvers_yaml, wait_until

pytestmark = pytest.mark.integration
V1, V2, V3 = "registry.local/app:1.0", "registry.local/app:2.0", "registry.local/app:3.0"


def _write(tmp_path: Path, cluster: KubeCluster, *, on_busy: str = "fail", extra: str = "") -> None:
    approvals = f"    approvals: {{approvers: {approvers_yaml('alice', 'bob')}, timeout: 5m}}\n"
    kube_inventory(tmp_path, cluster, "prod", on_busy, "    protected: true\n" + approvals + extra)


@pytest.fixture
def prod(
    kube_cluster: KubeCluster, prefect_api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[KubeCluster, Authenticator]]:
    for name, value in approver_env().items():
        monkeypatch.setenv(name, value)
    _write(tmp_path, kube_cluster)
    monkeypatch.setenv("OPSFLOW_INVENTORY", str(tmp_path / "inventory.yaml"))
    ledger_url = f"sqlite:///{tmp_path / 'ledger.db'}"
    monkeypatch.setenv("OPSFLOW_LEDGER_URL", ledger_url)
    monkeypatch.setenv("OPSFLOW_HOME", str(tmp_path / ".opsflow"))
    Ledger().close()  # the tables exist before two runs start at once
    codes = Authenticator(ledger_url)
    kube_cluster.controller.start(0.05)
    try:
        yield kube_cluster, codes
    finally:
        kube_cluster.controller.stop()
        codes.close()


def _image(cluster: KubeCluster) -> str:
    path = f"/apis/apps/v1/namespaces/{cluster.namespace}/deployments/app"
    found = cluster.api.get(path)
    assert found is not None
    return str(found["spec"]["template"]["spec"]["containers"][0]["image"])


def _paused_deploy(api: str) -> str:
    """The id of the deploy run waiting for approval (waits until there is one)."""
    found: list[str] = []

    def paused() -> bool:
        runs = httpx.post(
            f"{api}/flow_runs/filter",
            json={"flow_runs": {"state": {"type": {"any_": ["PAUSED"]}}}, "limit": 10},
            timeout=10,
        ).json()
        found[:] = [r["id"] for r in runs]
        return len(found) == 1

    wait_until(paused, "a deploy waiting for approval")
    return found[0]


def _start(image: str, **params: Any) -> Started:
    return Started(
        lambda: deploy(env="prod", requested_by="alice", image=image, return_state=True, **params)
    )


def test_a_rejected_deploy_changes_nothing_and_a_second_one_fails_while_it_waits(
    prod: tuple[KubeCluster, Authenticator], prefect_api: str
) -> None:
    cluster, codes = prod
    first = _start(V2)
    run_id = _paused_deploy(prefect_api)
    assert _image(cluster) == V1  # waiting: nothing changed yet

    second = deploy(env="prod", requested_by="carol", image=V3, return_state=True)
    assert second.is_failed()
    message = str(second.result(raise_on_failure=False))
    assert "prod is busy" in message and run_id in message and "deploy-prod" in message
    assert "deploy.on_busy: wait" in message

    codes.answer(prefect_api, run_id, "bob", "not during the sale", approved=False)
    state = first.state()
    assert state.is_failed()
    assert _image(cluster) == V1
    ledger = Ledger()
    (row,) = [r for r in ledger.runs(env="prod", limit=10) if r.flow_run_id == run_id]
    assert row.status == "rejected" and "rejected by bob" in row.summary
    assert [s.step for s in ledger.steps(run_id)] == []  # not one step was taken
    events = [e.event for e in ledger.approval_events(run_id)]
    assert events == ["requested", "rejected"]


def test_with_on_busy_wait_the_second_deploy_runs_after_the_first(
    prod: tuple[KubeCluster, Authenticator], prefect_api: str, tmp_path: Path
) -> None:
    cluster, codes = prod
    _write(tmp_path, cluster, on_busy="wait")
    first = _start(V2)
    first_id = _paused_deploy(prefect_api)
    second = Started(lambda: deploy(env="prod", requested_by="carol", image=V3, return_state=True))
    wait_until(
        lambda: "waiting for the lock deploy-prod" in _logs(prefect_api), "the second to wait"
    )
    codes.answer(prefect_api, first_id, "bob", "go")
    done = first.state()
    assert done.is_completed(), done.message
    assert _image(cluster) == V2
    second_id = _paused_deploy(prefect_api)  # now it holds the lock and asks for approval
    assert second_id != first_id
    codes.answer(prefect_api, second_id, "alice", "go")
    later = second.state()
    assert later.is_completed(), later.message
    report = later.result()
    assert isinstance(report, ReleaseReport)
    assert report.approved_by == ["alice"]
    assert [(c.from_image, c.to_image) for c in report.changes] == [(V2, V3)]
    assert _image(cluster) == V3


def _logs(api: str) -> str:
    logs = httpx.post(
        f"{api}/logs/filter", json={"limit": 200, "sort": "TIMESTAMP_DESC"}, timeout=10
    )
    return "\n".join(str(line["message"]) for line in logs.json())


def test_a_change_freeze_refuses_a_deploy_naming_it_and_when_it_ends(
    prod: tuple[KubeCluster, Authenticator], tmp_path: Path
) -> None:
    cluster, _codes = prod
    now = datetime.now(UTC).replace(microsecond=0)
    ends = now + timedelta(hours=2)
    freeze = (
        f"    change_freezes: [{{name: year-end, start: '{(now - timedelta(hours=1)).isoformat()}',"
        f" end: '{ends.isoformat()}', reason: books closing}}]\n"
    )
    _write(tmp_path, cluster, extra=freeze)
    state = deploy(env="prod", requested_by="alice", image=V2, return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, PermanentError)
    message = str(error)
    assert "change freeze 'year-end'" in message and "books closing" in message
    assert f"until {ends:%Y-%m-%d %H:%M} UTC" in message
    assert "override_window_reason" in message
    assert _image(cluster) == V1
    run_id = str(state.state_details.flow_run_id)
    (row,) = [r for r in Ledger().runs(env="prod", limit=10) if r.flow_run_id == run_id]
    assert row.status == "refused" and row.details["window"] == "year-end"
    assert Ledger().approval_events(run_id) == []  # refused before anyone was asked


def test_an_override_of_the_freeze_needs_an_approval_and_says_why(
    prod: tuple[KubeCluster, Authenticator], prefect_api: str, tmp_path: Path
) -> None:
    cluster, codes = prod
    now = datetime.now(UTC).replace(microsecond=0)
    start, end = (now - timedelta(hours=1)).isoformat(), (now + timedelta(hours=1)).isoformat()
    _write(
        tmp_path,
        cluster,
        extra=f"    change_freezes: [{{name: sale, start: '{start}', end: '{end}'}}]\n",
    )
    run = _start(V2, override_window_reason="INC-42 hotfix")
    run_id = _paused_deploy(prefect_api)
    assert _image(cluster) == V1
    codes.answer(prefect_api, run_id, "bob", "hotfix approved")
    state = run.state()
    assert state.is_completed(), state.message
    report = state.result()
    assert isinstance(report, ReleaseReport)
    assert "change freeze 'sale'" in report.window and "overridden: INC-42 hotfix" in report.window
    assert report.override_reason == "INC-42 hotfix" and report.approved_by == ["bob"]
    assert _image(cluster) == V2
