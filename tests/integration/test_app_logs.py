"""summarize_app_logs against the real Docker engine (a busybox container printing ERROR lines,
one with a fake secret) and the Kubernetes mock API (pod logs with ``tailLines``): the last N
lines per container/pod, error counts and top messages, secrets redacted; skipped with the
reason when there is nothing to read; degraded or failed when something cannot be read."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from docker.models.containers import Container

from opsflow.inventory import Environment
from tasks.app_logs import summarize_app_logs
from tests.fixtures.kube_api import KubeCluster
from tests.support.net import free_port

pytestmark = pytest.mark.integration
Run = Callable[..., Container]
SECRET = "hunter2secret"
SCRIPT = (
    "echo 'ERROR early failure, outside the tail' >&2; sleep 1; "  # stderr is read too
    "for i in 1 2 3 4 5 6 7 8 9 10; do echo INFO filler $i; done; "
    f"echo 'ERROR login failed password={SECRET} for user 7'; echo 'INFO ok'; "
    f"echo 'ERROR login failed password={SECRET} for user 9'; echo 'ERROR disk full'; "
    "echo done; sleep 600"
)


def _app(run: Run, image: str) -> Container:
    app = run(image, ["sh", "-c", SCRIPT])
    deadline = time.monotonic() + 20
    while b"done" not in app.logs():
        assert time.monotonic() < deadline, app.logs()
        time.sleep(0.1)
    return app


def _docker_env(host: str, *containers: str) -> Environment:
    services = [{"name": f"svc-{c}", "container": c} for c in containers]
    return Environment.model_validate({"docker": {"host": host, "services": services}})


def test_summarizes_the_tail_of_each_container_redacted(
    docker_engine: str, docker_busybox_image: str, docker_test_containers: Run
) -> None:
    app = _app(docker_test_containers, docker_busybox_image)

    step = summarize_app_logs.fn(_docker_env(docker_engine, app.name), 5)

    assert step.status == "complete", step.summary
    (tail,) = step.details["sources"]
    assert (tail["source"], tail["name"], tail["error"]) == ("container", app.name, None)
    assert tail["lines"] == 5 and tail["errors"] == 3  # the early ERROR is outside the tail
    assert tail["top"] == [
        ["ERROR login failed password=*** for user <n>", 2],
        ["ERROR disk full", 1],
    ]
    assert step.after == {"sources": 1, "lines": 5, "error_lines": 3}
    assert "3 of 5 line(s) match 'ERROR'" in step.summary
    assert SECRET not in step.model_dump_json()

    whole = summarize_app_logs.fn(_docker_env(docker_engine, app.name), 1000)
    assert whole.details["sources"][0]["errors"] == 4
    assert whole.details["sources"][0]["lines"] == 16
    assert SECRET not in whole.model_dump_json()


def test_a_missing_container_degrades_and_an_unreachable_daemon_fails(
    docker_engine: str, docker_busybox_image: str, docker_test_containers: Run
) -> None:
    app = _app(docker_test_containers, docker_busybox_image)
    step = summarize_app_logs.fn(_docker_env(docker_engine, app.name, "opsflow-missing-app"), 50)
    assert step.status == "degraded"
    by_name = {t["name"]: t for t in step.details["sources"]}
    assert by_name[app.name]["errors"] == 4
    assert "not found" in by_name["opsflow-missing-app"]["error"]
    assert "1 could not be read: opsflow-missing-app" in step.summary

    nowhere = _docker_env(f"tcp://127.0.0.1:{free_port()}", "app")
    failed = summarize_app_logs.fn(nowhere, 50)
    assert failed.status == "failed"
    assert "unreachable" in failed.details["sources"][0]["error"]


def test_summarizes_the_tail_of_each_started_pod(kube_cluster: KubeCluster) -> None:
    pods = kube_cluster.pods
    kube_cluster.server.add_log_lines(
        kube_cluster.namespace,
        pods["ready-2"],
        ["INFO hello", f"ERROR auth rejected password={SECRET}"],
    )
    env = Environment.model_validate(
        {
            "kubernetes": {
                "namespace": kube_cluster.namespace,
                "deployment": kube_cluster.deployment,
                "api_url": kube_cluster.url,
            }
        }
    )

    step = summarize_app_logs.fn(env, 3)

    assert step.status == "complete", step.summary
    by_pod = {t["name"].split("/", 1)[1]: t for t in step.details["sources"]}
    assert set(by_pod) == {pods["ready-1"], pods["ready-2"], pods["crashloop"]}  # not Pending
    ready = by_pod[pods["ready-1"]]
    assert ready["lines"] == 3 and ready["errors"] == 2  # the stale ERROR is 5 lines back
    assert ready["top"] == [["ERROR db timeout after <n> ms", 2]]
    assert by_pod[pods["ready-2"]]["top"] == [["ERROR auth rejected password=***", 1]]
    assert by_pod[pods["crashloop"]]["errors"] == 1  # FATAL does not match the pattern ERROR
    assert SECRET not in step.model_dump_json()
    assert step.target == f"kubernetes: {kube_cluster.namespace}/{kube_cluster.deployment}"

    wide = summarize_app_logs.fn(env, 1000)
    wide_ready = {t["name"].split("/", 1)[1]: t for t in wide.details["sources"]}[pods["ready-1"]]
    assert wide_ready["errors"] == 3 and wide_ready["lines"] == 5


def test_nothing_to_read_is_skipped_with_the_reason(docker_engine: str) -> None:
    zero = summarize_app_logs.fn(_docker_env(docker_engine, "app"), 0)
    assert zero.status == "skipped" and "container_log_lines is 0" in zero.summary
    empty = summarize_app_logs.fn(Environment.model_validate({}), 100)
    assert empty.status == "skipped"
    assert "no Docker services and no Kubernetes target" in empty.summary
