"""Benchmark of issue 11 (Kubernetes, mock): the rollout wait of ``tasks.kubernetes.rollout``
against the kmock API emulator and the fake controller (tests/fixtures/kube_api.py), in this
process, the tasks called as functions (``.fn``: the wait's own cost, no Prefect engine):

* the time from the controller writing ``ProgressDeadlineExceeded`` to ``wait_for_rollout``
  raising (goal <= 2 s), p50 of 5, timed from the controller sending the status PATCH that
  carries it; against the seed: ``kubectl rollout status --timeout=10m``, then a human;
* the task follows a watch: the requests it makes per minute of a wait where nothing changes;
* the alternative it was chosen over: polling (GET the Deployment, parse, ``rollout_verdict``)
  every second: the cost of one poll (p50 of 200), its load (60 GET/min) and its detection
  time, the condition written at 5 phases of the poll interval.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.common import Row, median, verdict
from connectors.kubernetes import kube_api
from opsflow.errors import PermanentError
from opsflow.inventory import KubernetesTarget
from tasks.kubernetes.rollout import (
    ROLLOUT_BACKSTOP_S,
    deployment_json,
    rollout_verdict,
    set_deployment_image,
    wait_for_rollout,
)
from tests.fixtures.kube_api import KubeApiServer
from tests.support.fake_controller import FakeController, build_seed

RUNS = 5
POLLS = 200
POLL_S = 1.0  # wait_for_rollout's default poll_seconds
GOAL_S = 2.0
GOOD = "registry.local/app:2.0"
QUIET_S = 130.0  # over two watch windows (tasks.kubernetes.rollout.WATCH_S)


@dataclass
class RolloutFigures:
    detect_s: list[float] = field(default_factory=list)  # the task (a watch)
    quiet_wait_s: float = 0.0  # a wait on a rollout that does not change
    quiet_requests: int = 0  # the requests the task made during it
    poll_ms: list[float] = field(default_factory=list)  # the polling alternative
    poll_detect_s: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "watch_detect_s": [round(s, 4) for s in self.detect_s],
            "watch_requests_per_minute": round(self.quiet_requests * 60 / self.quiet_wait_s, 1),
            "poll_ms_p50": round(median(self.poll_ms), 2),
            "poll_seconds": POLL_S,
            "poll_requests_per_minute": 60 / POLL_S,
            "poll_detect_s": [round(s, 3) for s in self.poll_detect_s],
            "baseline_s": ROLLOUT_BACKSTOP_S,
        }

    def rows(self) -> list[Row]:
        name = "Kubernetes rollout wait (mock)"
        detect, worst = median(self.detect_s), max(self.detect_s)
        per_minute = self.quiet_requests * 60 / self.quiet_wait_s
        return [
            Row(
                name,
                f"ProgressDeadlineExceeded -> raised (watch), p50 of {len(self.detect_s)}",
                f"{detect * 1000:.1f} ms",
                f"{ROLLOUT_BACKSTOP_S:.0f} s",
                f"{ROLLOUT_BACKSTOP_S / detect:,.0f}x sooner",
                f"<= {GOAL_S:g} s",
                verdict(detect <= GOAL_S),
            ),
            Row(
                name,
                "  same, slowest",
                f"{worst * 1000:.1f} ms",
                goal=f"<= {GOAL_S:g} s",
                result=verdict(worst <= GOAL_S),
            ),
            Row(
                name,
                f"watch: API requests while waiting ({self.quiet_wait_s:.0f} s quiet)",
                f"{per_minute:.1f} /min",
            ),
            Row(
                name,
                f"polling instead: one poll (GET + verdict), p50 of {len(self.poll_ms)}",
                f"{median(self.poll_ms):.2f} ms",
            ),
            Row(name, f"polling instead: load at {POLL_S:g} s", f"{60 / POLL_S:.0f} /min"),
            Row(
                name,
                f"polling instead: deadline -> seen, p50 of {len(self.poll_detect_s)}",
                f"{median(self.poll_detect_s):.2f} s",
                f"{ROLLOUT_BACKSTOP_S:.0f} s",
                f"{ROLLOUT_BACKSTOP_S / median(self.poll_detect_s):.0f}x sooner",
            ),
        ]


def _measure_polls(target: KubernetesTarget, figures: RolloutFigures) -> None:
    with kube_api(target) as api:
        for _ in range(POLLS):
            started = time.perf_counter()
            rollout_verdict(deployment_json(api, target.namespace, "app"))
            figures.poll_ms.append((time.perf_counter() - started) * 1000)


def _poll_until_failed(target: KubernetesTarget) -> float:
    """The polling alternative: GET + verdict every POLL_S until failed; when it saw it."""
    with kube_api(target) as api:
        while rollout_verdict(deployment_json(api, target.namespace, "app")).state != "failed":
            time.sleep(POLL_S)
    return time.perf_counter()


def _wait_until_failed(target: KubernetesTarget) -> float:
    """The task: when wait_for_rollout raised on the progress deadline."""
    try:
        wait_for_rollout.fn(target, "app", timeout_seconds=60)
    except PermanentError as exc:
        if "exceeded its progress deadline" not in str(exc):
            raise
        return time.perf_counter()
    raise RuntimeError("the rollout to a failing image succeeded")


def _detect_once(
    target: KubernetesTarget,
    controller: FakeController,
    bad: str,
    phase: float,
    follow: Callable[[KubernetesTarget], float],
) -> float:
    """Seconds from the controller's ProgressDeadlineExceeded to ``follow`` seeing it."""
    set_deployment_image.fn(target, "app", "app", bad, f"bench-{bad}")
    controller.fail_image(bad)
    seen: dict[str, Any] = {}

    def wait() -> None:
        try:
            seen["at"] = follow(target)
        except Exception as exc:  # reported below
            seen["error"] = exc

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(POLL_S * phase)  # the condition lands at this phase of a poll interval
    controller.reconcile()
    waiter.join(timeout=90)
    if "at" not in seen or "status" not in WRITES:
        raise RuntimeError(f"the progress deadline was not seen: {seen}")
    _rollback(target, controller)
    return float(seen["at"] - WRITES.pop("status"))


WRITES: dict[str, float] = {}  # when the controller sent the Deployment's status (perf_counter)


def _time_status_writes(controller: FakeController) -> None:
    """Note when the controller sends the status PATCH that carries the condition."""
    send = controller.api.patch

    def patch(path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path.endswith("/deployments/app/status") and "ProgressDeadlineExceeded" in str(body):
            WRITES["status"] = time.perf_counter()
        return send(path, body)

    controller.api.patch = patch  # type: ignore[method-assign]


def _rollback(target: KubernetesTarget, controller: FakeController) -> None:
    set_deployment_image.fn(target, "app", "app", GOOD, f"bench-rollback-{uuid.uuid4().hex[:6]}")
    controller.reconcile()
    wait_for_rollout.fn(target, "app", timeout_seconds=30, poll_seconds=0.05)


def _quiet_wait(server: KubeApiServer, target: KubernetesTarget, seconds: float) -> int:
    """Requests of a wait on a rollout nobody moves on (no controller), for ``seconds``."""
    set_deployment_image.fn(target, "app", "app", "registry.local/app:quiet", "bench-quiet")
    before = len(server.requests(f"/namespaces/{target.namespace}/deployments"))
    with contextlib.suppress(PermanentError):
        wait_for_rollout.fn(target, "app", timeout_seconds=seconds)
    return len(server.requests(f"/namespaces/{target.namespace}/deployments")) - before


def run() -> RolloutFigures:
    figures = RolloutFigures()
    server = KubeApiServer(with_metrics=False).start()
    try:
        namespace = f"bench-{uuid.uuid4().hex[:6]}"
        build_seed(server.client(), namespace)
        target = KubernetesTarget(namespace=namespace, api_url=server.url)
        controller = FakeController(server.url, namespace)
        _time_status_writes(controller)
        _rollback(target, controller)  # a healthy rollout first: every pod ready
        _measure_polls(target, figures)  # first: kmock's reads slow down as objects pile up
        for run_index in range(RUNS):
            phase = (run_index + 0.5) / RUNS  # 0.1, 0.3, ... 0.9 of the interval
            for follow, into in (
                (_wait_until_failed, figures.detect_s),
                (_poll_until_failed, figures.poll_detect_s),
            ):
                bad = f"registry.local/app:bad-{run_index}-{len(into)}-{follow.__name__}"
                into.append(_detect_once(target, controller, bad, phase, follow))
        figures.quiet_wait_s = QUIET_S
        figures.quiet_requests = _quiet_wait(server, target, QUIET_S)
    finally:
        server.stop()
    return figures
