"""Transport conformance: one table of checks, run against every ``Transport`` on real parts.

* ``LocalProcess``: processes on this machine.
* ``DockerExec``: a busybox container on the test Docker engine (tests/fixtures/docker_engine.py).
* ``PodExec``: the kmock API server's exec websocket (tests/fixtures/kube_api.py) answered by
  ``ShellKubelet``, a fake kubelet that runs the argv as a local process group and, like a
  runtime that stops exec'd processes when the stream goes away, kills that group when the
  client disconnects. For pods this proves our side: that the client disconnects at the
  deadline, on an early stop and on a failed input (Kubernetes has no exec kill call).

Every check works through the transport itself (a temp dir from ``mktemp -d``, pid files and
``/proc`` read back with ``capture``), so the same code checks all three.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from docker.models.containers import Container

from connectors.transports import (
    CommandFailed,
    CommandTimedOut,
    DockerExec,
    LocalProcess,
    PodExec,
    Transport,
)
from opsflow.errors import PermanentError, TransientError
from opsflow.inventory import DockerTarget, KubernetesTarget
from tests.fixtures.kube_api import ExecCall, KubeApiServer, KubeCluster

pytestmark = pytest.mark.integration

MB = 1 << 20
SLACK_S = 5.0  # a kill (for docker: one more exec) and the error path, on a loaded machine
HANG = "echo $$ > {d}/pid; exec sleep 60"  # the pid of the hanging process itself


class ShellKubelet:
    """Exec handler: run the argv as a local process group, pump stdin/stdout/stderr as frames,
    kill the group when the client goes away."""

    def __call__(self, call: ExecCall) -> int:
        proc = subprocess.Popen(
            call.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None

        def kill() -> None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)

        def feed() -> None:
            assert proc.stdin is not None
            try:
                for chunk in call.stdin:
                    proc.stdin.write(chunk)
            except BrokenPipeError:
                return
            if call.disconnected.is_set():  # the input did not end: the client went away
                kill()
                return
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()

        def errors() -> None:
            assert proc.stderr is not None
            while data := proc.stderr.read1(65536):
                call.write_stderr(data)

        def watch() -> None:
            while proc.poll() is None:
                if call.disconnected.wait(0.1):
                    kill()
                    return

        helpers = [threading.Thread(target=t, daemon=True) for t in (feed, errors, watch)]
        for helper in helpers:
            helper.start()
        while data := proc.stdout.read1(65536):
            call.write_stdout(data)
        code = proc.wait()
        for helper in helpers:
            helper.join(timeout=10)
        return 128 - code if code < 0 else code  # killed by signal N: 128 + N, as in a shell


@pytest.fixture
def local_transport() -> Iterator[Transport]:
    yield LocalProcess()


@pytest.fixture
def docker_transport(
    docker_engine: str, docker_busybox_image: str, docker_test_containers: Callable[..., Container]
) -> Iterator[Transport]:
    box = docker_test_containers(docker_busybox_image, ["sleep", "600"])
    transport = DockerExec(DockerTarget(host=docker_engine), box.name)
    yield transport
    transport.close()


@pytest.fixture
def pod_transport(kube_cluster: KubeCluster, kube_api_server: KubeApiServer) -> Iterator[Transport]:
    kube_api_server.set_exec_stream_handler(ShellKubelet())
    target = KubernetesTarget(namespace=kube_cluster.namespace, api_url=kube_cluster.url)
    transport = PodExec(target, kube_cluster.deployment, container="app")
    try:
        yield transport
    finally:
        transport.close()
        kube_api_server.set_exec_stream_handler(None)


@pytest.fixture(params=["local", "docker", "pod"])
def transport(request: pytest.FixtureRequest) -> Transport:
    return request.getfixturevalue(f"{request.param}_transport")  # type: ignore[no-any-return]


@pytest.fixture
def tmp_dir(transport: Transport) -> Iterator[str]:
    """A fresh directory where the transport's commands run."""
    made = transport.capture(["mktemp", "-d"], timeout=30)
    assert made.code == 0, made
    path = made.stdout.decode().strip()
    yield path
    transport.capture(["rm", "-rf", path], timeout=30)


def sh(script: str) -> list[str]:
    return ["sh", "-c", script]


def gone(transport: Transport, d: str, seconds: float = SLACK_S) -> bool:
    """The process whose pid is in ``d/pid`` ended (no /proc entry, or a zombie) in time."""
    check = (
        f"p=$(cat {d}/pid); s=$(cut -d' ' -f3 /proc/$p/stat 2>/dev/null); "
        '[ -z "$s" ] || [ "$s" = Z ] && echo gone || echo alive'
    )
    deadline = time.monotonic() + seconds
    while True:
        answer = transport.capture(sh(check), timeout=30).stdout.strip()
        if answer == b"gone" or time.monotonic() > deadline:
            return answer == b"gone"
        time.sleep(0.2)


def wait_for_file(transport: Transport, path: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while transport.capture(["test", "-s", path], timeout=30).code != 0:
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def test_capture_returns_exit_code_stdout_and_stderr(transport: Transport) -> None:
    assert transport.capture(sh("echo out; echo err >&2; exit 3"), timeout=30) == (
        3,
        b"out\n",
        b"err\n",
    )
    assert transport.capture(sh("cat; echo done"), timeout=30, stdin=b"hello\n") == (
        0,
        b"hello\ndone\n",
        b"",
    )
    assert transport.capture(["true"], timeout=30).code == 0


def test_stream_out_moves_megabytes_in_chunks(transport: Transport, tmp_dir: str) -> None:
    size = 6 * MB
    chunks = list(
        transport.stream_out(sh(f"head -c {size} /dev/urandom | tee {tmp_dir}/sent"), timeout=60)
    )
    data = b"".join(chunks)
    assert len(data) == size and len(chunks) > 1  # streamed, not one buffer
    sent = transport.capture(["md5sum", f"{tmp_dir}/sent"], timeout=30)
    assert sent.stdout.split()[0].decode() == hashlib.md5(data).hexdigest()


def test_feed_in_moves_megabytes_checksummed_on_the_other_side(transport: Transport) -> None:
    chunks = [os.urandom(64 * 1024) for _ in range(96)]  # 6 MiB, more than any buffer
    done = transport.feed_in(sh("md5sum; echo fed >&2"), iter(chunks), timeout=60)
    assert done.code == 0
    assert done.stdout.split()[0].decode() == hashlib.md5(b"".join(chunks)).hexdigest()
    assert done.stderr == b"fed\n"
    empty = transport.feed_in(sh("wc -c; exit 5"), iter([]), timeout=60)
    assert (empty.code, empty.stdout.strip()) == (5, b"0")


def test_non_zero_exit_raises_after_the_output_with_the_redacted_stderr_tail(
    transport: Transport,
) -> None:
    script = (
        "echo partial; head -c 20000 /dev/zero | tr '\\0' x >&2; "
        "echo >&2; echo 'pg_dump: error: password=hunter2-secret broke' >&2; exit 4"
    )
    got: list[bytes] = []
    with pytest.raises(CommandFailed, match="exited with code 4") as failed:
        got.extend(transport.stream_out(sh(script), timeout=60))
    assert b"".join(got) == b"partial\n"
    message = str(failed.value)
    assert isinstance(failed.value, PermanentError) and failed.value.code == 4
    assert "broke" in message and "hunter2-secret" not in message and len(message) < 1200


@pytest.mark.parametrize("method", ["capture", "stream_out", "feed_in"])
def test_the_deadline_kills_a_command_that_hangs(
    transport: Transport, tmp_dir: str, method: str
) -> None:
    argv, timeout = sh(HANG.format(d=tmp_dir)), 1.0
    started = time.monotonic()
    with pytest.raises(CommandTimedOut) as caught:
        if method == "capture":
            transport.capture(argv, timeout)
        elif method == "stream_out":
            list(transport.stream_out(argv, timeout))
        else:
            transport.feed_in(argv, iter([b"input\n"]), timeout)
    elapsed = time.monotonic() - started
    assert elapsed < timeout + SLACK_S, f"{method} returned after {elapsed:.1f}s"
    assert isinstance(caught.value, TransientError)
    assert gone(transport, tmp_dir), "the command still runs after the deadline"


def test_the_idle_timeout_kills_a_command_that_goes_silent(
    transport: Transport, tmp_dir: str
) -> None:
    chunks = transport.stream_out(sh(f"echo first; {HANG.format(d=tmp_dir)}"), 60, idle_timeout=1)
    started = time.monotonic()
    assert next(chunks) == b"first\n"
    with pytest.raises(CommandTimedOut):
        list(chunks)
    assert time.monotonic() - started < 1 + SLACK_S
    assert gone(transport, tmp_dir)


def test_a_consumer_that_stops_early_kills_the_command(transport: Transport, tmp_dir: str) -> None:
    chunks = transport.stream_out(sh(f"echo $$ > {tmp_dir}/pid; exec cat /dev/zero"), 60)
    assert next(chunks)
    wait_for_file(transport, f"{tmp_dir}/pid")
    chunks.close()
    assert gone(transport, tmp_dir), "the command still runs after the consumer stopped"


def test_a_failing_chunk_source_kills_the_command_before_it_commits(
    transport: Transport, tmp_dir: str
) -> None:
    # "commits" when its input ends: a killed command never gets there
    script = f"echo $$ > {tmp_dir}/pid; cat > {tmp_dir}/partial && touch {tmp_dir}/committed"

    def broken() -> Iterator[bytes]:
        yield b"x" * 65536
        wait_for_file(transport, f"{tmp_dir}/pid")
        yield b"y" * 65536
        raise PermanentError("the backup's sha256 did not match")

    started = time.monotonic()
    with pytest.raises(PermanentError, match="sha256 did not match"):
        transport.feed_in(sh(script), broken(), timeout=60)
    assert time.monotonic() - started < 10 + SLACK_S
    assert gone(transport, tmp_dir), "the command still runs after its input failed"
    time.sleep(0.5)
    assert transport.capture(["test", "-e", f"{tmp_dir}/committed"], timeout=30).code == 1
