"""tasks.docker against a real Docker engine (tests/fixtures/docker_engine.py)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from docker.models.containers import Container

from connectors.transports import Completed, DockerExec
from opsflow.errors import PermanentError, TransientError
from opsflow.inventory import DockerService, DockerTarget, Thresholds
from opsflow.results import Status
from tasks.docker.checks import check_containers, scan_container_logs
from tasks.scaling import STOPPED_LABEL, ScaleState, scale_down_app, scale_up_app
from tests.support.net import free_port

pytestmark = pytest.mark.integration
Run = Callable[..., Container]
SECOND_NS = 1_000_000_000


def _wait(container: Container, ready: Callable[[dict], bool], seconds: float = 20) -> dict:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        container.reload()
        if ready(container.attrs):
            return container.attrs
        time.sleep(0.1)
    raise AssertionError(f"{container.name} never got ready: {container.attrs['State']}")


def _target(engine: str, *containers: str) -> DockerTarget:
    return DockerTarget(
        host=engine, services=[DockerService(name=f"svc-{c}", container=c) for c in containers]
    )


def test_check_containers_grades_each_state(
    docker_engine: str, docker_busybox_image: str, docker_test_containers: Run
) -> None:
    restarting = docker_test_containers(
        docker_busybox_image,
        ["sh", "-c", "echo crash; exit 2"],
        restart_policy={"Name": "always"},
    )
    healthy = docker_test_containers(
        docker_busybox_image,
        ["sleep", "600"],
        healthcheck={"test": ["CMD", "true"], "interval": SECOND_NS // 5, "retries": 3},
    )
    unhealthy = docker_test_containers(
        docker_busybox_image,
        ["sleep", "600"],
        healthcheck={
            "test": ["CMD-SHELL", "echo db down; exit 1"],
            "interval": SECOND_NS // 5,
            "retries": 1,
        },
    )
    exited = docker_test_containers(docker_busybox_image, ["sh", "-c", "echo bye; exit 1"])
    _wait(healthy, lambda a: a["State"].get("Health", {}).get("Status") == "healthy")
    _wait(unhealthy, lambda a: a["State"].get("Health", {}).get("Status") == "unhealthy")
    _wait(exited, lambda a: a["State"]["Status"] == "exited")
    # backoff doubles from 100 ms: after 4 restarts the container sits >1.6 s in "restarting"
    _wait(restarting, lambda a: a["State"]["Status"] == "restarting" and a["RestartCount"] >= 4)

    target = _target(
        docker_engine,
        restarting.name,
        exited.name,
        "no-such-container",
        unhealthy.name,
        healthy.name,
    )
    results = check_containers.fn(target, Thresholds(restarts=3))
    by_name = {r.details.get("container"): r for r in results}
    assert [r.target for r in results] == [s.name for s in target.services]

    assert by_name[restarting.name].status is Status.CRITICAL
    assert "restarting" in by_name[restarting.name].summary
    assert by_name[restarting.name].details["restart_count"] >= 4
    assert "restarts (threshold 3)" in by_name[restarting.name].summary

    assert by_name[exited.name].status is Status.CRITICAL
    assert "exited with exit code 1" in by_name[exited.name].summary
    assert by_name[exited.name].details["exit_code"] == 1

    assert by_name["no-such-container"].status is Status.CRITICAL
    assert "does not exist" in by_name["no-such-container"].summary

    assert by_name[unhealthy.name].status is Status.CRITICAL
    assert "db down" in by_name[unhealthy.name].summary

    good = by_name[healthy.name]
    assert good.status is Status.HEALTHY, good.summary
    assert good.details["health"] == "healthy"
    assert 0 <= good.details["memory_pct"] < 5
    assert good.details["memory_bytes"] > 0
    assert good.details["memory_limit_bytes"] > 0
    assert 0 <= good.details["cpu_pct"] < 50


def test_check_containers_flags_memory_over_threshold(
    docker_engine: str, docker_busybox_image: str, docker_test_containers: Run
) -> None:
    limit = 32 * 1024 * 1024
    hog = docker_test_containers(
        docker_busybox_image,
        ["sh", "-c", "head -c 20971520 /dev/zero > /dev/shm/fill && echo filled && sleep 600"],
        mem_limit=limit,
    )
    deadline = time.monotonic() + 20
    while b"filled" not in hog.logs():
        assert time.monotonic() < deadline, hog.logs()
        time.sleep(0.1)

    result = check_containers.fn(_target(docker_engine, hog.name), Thresholds(memory_pct=40))[0]
    assert result.details["memory_limit_bytes"] == limit
    assert 55 <= result.details["memory_pct"] <= 100
    assert result.status is Status.DEGRADED
    assert "memory" in result.summary and "threshold 40%" in result.summary

    relaxed = check_containers.fn(_target(docker_engine, hog.name), Thresholds(memory_pct=95))
    assert relaxed[0].status is Status.HEALTHY


def test_scan_container_logs_counts_errors_inside_the_window(
    docker_engine: str, docker_busybox_image: str, docker_test_containers: Run
) -> None:
    script = (
        "echo 'ERROR old failure'; sleep 3; "
        "echo 'ERROR db timeout after 31 ms'; echo 'INFO all good' ; "
        "echo 'ERROR db timeout after 12 ms' >&2; echo 'ERROR cache miss storm'; "
        "echo done; sleep 600"
    )
    app = docker_test_containers(docker_busybox_image, ["sh", "-c", script])
    deadline = time.monotonic() + 20
    while b"done" not in app.logs():
        assert time.monotonic() < deadline
        time.sleep(0.1)

    target = _target(docker_engine, app.name, "missing-app")
    results = scan_container_logs.fn(
        target, timedelta(seconds=2), "ERROR", Thresholds(log_errors=3)
    )
    found, missing = results
    assert found.details["count"] == 3  # the old line is outside the 2 s window
    assert found.status is Status.CRITICAL
    assert found.details["top"][0] == ["ERROR db timeout after <n> ms", 2]
    assert missing.status is Status.CRITICAL and "not found" in missing.summary

    wide = scan_container_logs.fn(
        _target(docker_engine, app.name), timedelta(minutes=5), "ERROR", Thresholds(log_errors=10)
    )[0]
    assert wide.details["count"] == 4
    assert wide.status is Status.DEGRADED

    quiet = scan_container_logs.fn(
        _target(docker_engine, app.name), timedelta(minutes=5), "FATAL", Thresholds()
    )[0]
    assert quiet.status is Status.HEALTHY and quiet.details["count"] == 0


def test_exec_capture_returns_exit_code_stdout_and_stderr(
    docker_engine: str, docker_busybox_image: str, docker_test_containers: Run
) -> None:
    box = docker_test_containers(docker_busybox_image, ["sleep", "600"])
    exec_in = DockerExec(DockerTarget(host=docker_engine), box.name)
    try:
        assert exec_in.capture(["echo", "hi"], timeout=10) == (0, b"hi\n", b"")
        code, out, err = exec_in.capture(
            ["sh", "-c", "cat; echo oops >&2; exit 3"], timeout=10, stdin=b"hello\nworld\n"
        )
        assert (code, out, err) == (3, b"hello\nworld\n", b"oops\n")
        assert isinstance(exec_in.capture(["true"], timeout=10), Completed)
        with pytest.raises(TransientError, match="timed out"):
            exec_in.capture(["sleep", "5"], timeout=0.5)
        with pytest.raises(PermanentError, match="not found"):
            DockerExec(DockerTarget(host=docker_engine), "no-such-container").capture(
                ["true"], timeout=5
            )
    finally:
        exec_in.close()


def test_exec_stream_and_feed_move_megabytes(
    docker_engine: str, docker_busybox_image: str, docker_test_containers: Run
) -> None:
    box = docker_test_containers(docker_busybox_image, ["sleep", "600"])
    exec_in = DockerExec(DockerTarget(host=docker_engine), box.name)
    size = 8 * 1024 * 1024
    try:
        chunks = list(exec_in.stream_out(["head", "-c", str(size), "/dev/urandom"], timeout=60))
        assert sum(len(c) for c in chunks) == size
        assert len(chunks) > 1  # streamed, not one buffer

        payload = b"".join(chunks)
        code, out, _ = exec_in.feed_in(
            ["sh", "-c", "cat > /tmp/in && wc -c < /tmp/in && md5sum /tmp/in"],
            (payload[i : i + 65536] for i in range(0, size, 65536)),
            timeout=30,
        )
        assert code == 0
        assert out.split()[0] == str(size).encode()
        assert out.split()[1].decode() == hashlib.md5(payload).hexdigest()

        with pytest.raises(PermanentError, match=r"exited with code 4: .*broken"):
            list(exec_in.stream_out(["sh", "-c", "echo part; echo broken >&2; exit 4"], timeout=60))
        with pytest.raises(TransientError, match="timed out"):
            list(exec_in.stream_out(["sleep", "5"], timeout=60, idle_timeout=0.5))
    finally:
        exec_in.close()


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_unreachable_daemon_is_transient(kind: str) -> None:
    host = (
        "unix:///tmp/opsflow-no-such-docker.sock"
        if kind == "unix"
        else f"tcp://127.0.0.1:{free_port()}"
    )
    target = DockerTarget(host=host, services=[DockerService(name="web", container="web")])
    started = time.monotonic()
    with pytest.raises(TransientError, match="unreachable") as caught:
        check_containers.fn(target, Thresholds())
    assert host in str(caught.value)
    assert time.monotonic() - started < 15
    with pytest.raises(TransientError):
        scan_container_logs.fn(target, timedelta(minutes=1), "ERROR", Thresholds())


# --- scaling around a restore (tasks/scaling.py) ----------------------------------------------

LOOP = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 0.2; done"]


def test_a_retried_scale_down_remembers_what_the_first_attempt_stopped(
    docker_engine: str,
    docker_busybox_image: str,
    docker_test_containers: Run,
    docker_engine_client: Any,
) -> None:
    web = docker_test_containers(docker_busybox_image, LOOP)
    api = docker_test_containers(docker_busybox_image, LOOP)
    idle = docker_test_containers(docker_busybox_image, ["true"])
    idle.wait(timeout=30)
    target = _target(docker_engine, web.name, api.name, idle.name)
    running = sorted([web.name, api.name])

    first = scale_down_app.fn(kubernetes_target=None, docker_target=target)
    assert sorted(first.stopped) == running
    # that attempt's answer is lost (its task timed out, its process died): it is retried
    again = scale_down_app.fn(kubernetes_target=None, docker_target=target)
    assert sorted(again.stopped) == running  # it remembers what the first attempt stopped

    scale_up_app.fn(state=again, kubernetes_target=None, docker_target=target)
    for container in (web, api, idle):
        container.reload()
    assert (web.status, api.status, idle.status) == ("running", "running", "exited")
    assert _markers(docker_engine_client, web.name, api.name, idle.name) == []


def test_scale_up_after_a_crash_finds_what_was_stopped(
    docker_engine: str,
    docker_busybox_image: str,
    docker_test_containers: Run,
    docker_engine_client: Any,
) -> None:
    """The run that stopped the containers died with its ScaleState: the scale-up of the next
    run (or the flow's `finally`) finds what was stopped from the engine's own records."""
    web = docker_test_containers(docker_busybox_image, LOOP)
    target = _target(docker_engine, web.name)

    scale_down_app.fn(kubernetes_target=None, docker_target=target)
    web.reload()
    assert web.status == "exited"
    assert len(_markers(docker_engine_client, web.name)) == 1  # recorded next to the container
    back = scale_up_app.fn(
        state=ScaleState(kind="none"), kubernetes_target=None, docker_target=target
    )

    web.reload()
    assert web.status == "running" and back == f"started {web.name}"
    assert _markers(docker_engine_client, web.name) == []


def _markers(client: Any, *containers: str) -> list[str]:
    """The scale-down records (volumes labelled by tasks.scaling) of these containers."""
    volumes = client.volumes.list(filters={"label": STOPPED_LABEL})
    return sorted(
        v.name for v in volumes if (v.attrs.get("Labels") or {}).get(STOPPED_LABEL) in containers
    )
