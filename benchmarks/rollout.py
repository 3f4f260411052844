"""Benchmark of issue 11 (Kubernetes, mock): the rollout wait of ``tasks.kubernetes.rollout``
against the kmock API emulator and the fake controller (tests/fixtures/kube_api.py), in this
process, the tasks called as functions (``.fn``: the wait's own cost, no Prefect engine):

* the cost of one poll (GET the Deployment, parse, ``rollout_verdict``), p50 of 200, and the
  API load it means at the shipped ``poll_seconds`` (requests per minute per Deployment);
* the time from the controller writing ``ProgressDeadlineExceeded`` to ``wait_for_rollout``
  raising (goal <= 2 s), p50 of 5, the condition written at 5 phases of the poll interval;
  against the seed: ``kubectl rollout status --timeout=10m``, then a human;
* for comparison (not what the task uses), the same detection by a Kubernetes watch.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import kubernetes.client
import kubernetes.watch

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


@dataclass
class RolloutFigures:
    poll_ms: list[float] = field(default_factory=list)
    detect_s: list[float] = field(default_factory=list)
    detect_polls: list[int] = field(default_factory=list)
    watch_detect_s: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "poll_ms_p50": round(median(self.poll_ms), 2),
            "poll_seconds": POLL_S,
            "requests_per_minute": 60 / POLL_S,
            "detect_s": [round(s, 3) for s in self.detect_s],
            "detect_polls": self.detect_polls,
            "watch_detect_s": [round(s, 4) for s in self.watch_detect_s],
            "baseline_s": ROLLOUT_BACKSTOP_S,
        }

    def rows(self) -> list[Row]:
        name = "Kubernetes rollout wait (mock)"
        detect, worst = median(self.detect_s), max(self.detect_s)
        return [
            Row(
                name,
                f"one poll (GET + verdict), p50 of {len(self.poll_ms)}",
                f"{median(self.poll_ms):.2f} ms",
            ),
            Row(name, f"API load at poll_seconds={POLL_S:g}", f"{60 / POLL_S:.0f} GET/min"),
            Row(
                name,
                f"ProgressDeadlineExceeded -> raised, p50 of {len(self.detect_s)}",
                f"{detect:.2f} s",
                f"{ROLLOUT_BACKSTOP_S:.0f} s",
                f"{ROLLOUT_BACKSTOP_S / detect:.0f}x sooner",
                f"<= {GOAL_S:g} s",
                verdict(detect <= GOAL_S),
            ),
            Row(
                name,
                "  same, slowest",
                f"{worst:.2f} s",
                goal=f"<= {GOAL_S:g} s",
                result=verdict(worst <= GOAL_S),
            ),
            Row(
                name,
                f"  for comparison: a watch, p50 of {len(self.watch_detect_s)}",
                f"{median(self.watch_detect_s) * 1000:.1f} ms",
            ),
        ]


def _measure_polls(target: KubernetesTarget, figures: RolloutFigures) -> None:
    with kube_api(target) as api:
        for _ in range(POLLS):
            started = time.perf_counter()
            rollout_verdict(deployment_json(api, target.namespace, "app"))
            figures.poll_ms.append((time.perf_counter() - started) * 1000)


def _detect_once(
    target: KubernetesTarget, controller: FakeController, bad: str, phase: float
) -> tuple[float, int]:
    """Seconds from the controller's ProgressDeadlineExceeded to the wait raising, polls."""
    set_deployment_image.fn(target, "app", "app", bad, f"bench-{bad}")
    controller.fail_image(bad)
    caught: dict[str, Any] = {}

    def wait() -> None:
        try:
            wait_for_rollout.fn(target, "app", timeout_seconds=60, poll_seconds=POLL_S)
        except PermanentError as exc:
            caught["at"], caught["error"] = time.perf_counter(), str(exc)

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(POLL_S * phase)  # the condition lands at this phase of the poll interval
    controller.reconcile()  # its last write is the status with the condition
    written = time.perf_counter()
    waiter.join(timeout=90)
    if "exceeded its progress deadline" not in str(caught.get("error", "")):
        raise RuntimeError(f"the wait did not fail on the progress deadline: {caught}")
    polls = int(caught["error"].split("seen at poll ", 1)[1].split(",", 1)[0])
    _rollback(target, controller)
    return caught["at"] - written, polls


def _rollback(target: KubernetesTarget, controller: FakeController) -> None:
    set_deployment_image.fn(target, "app", "app", GOOD, f"bench-rollback-{uuid.uuid4().hex[:6]}")
    controller.reconcile()
    wait_for_rollout.fn(target, "app", timeout_seconds=30, poll_seconds=0.05)


def _watch_once(target: KubernetesTarget, controller: FakeController, bad: str) -> float:
    """The same detection by a watch on the namespace's Deployments (benchmark only)."""
    set_deployment_image.fn(target, "app", "app", bad, f"bench-watch-{bad}")
    controller.fail_image(bad)
    seen: dict[str, float] = {}
    ready = threading.Event()

    def watch() -> None:
        with kube_api(target) as api:
            apps = kubernetes.client.AppsV1Api(api)
            stream = kubernetes.watch.Watch().stream(
                apps.list_namespaced_deployment, target.namespace, _request_timeout=(5, 30)
            )
            for event in stream:
                ready.set()
                if rollout_verdict(event["raw_object"]).state == "failed":
                    seen["at"] = time.perf_counter()
                    return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    ready.wait(timeout=10)  # the initial ADDED event: the watch is established
    controller.reconcile()
    written = time.perf_counter()
    watcher.join(timeout=30)
    _rollback(target, controller)
    return seen["at"] - written


def run() -> RolloutFigures:
    figures = RolloutFigures()
    server = KubeApiServer(with_metrics=False).start()
    try:
        namespace = f"bench-{uuid.uuid4().hex[:6]}"
        build_seed(server.client(), namespace)
        target = KubernetesTarget(namespace=namespace, api_url=server.url)
        controller = FakeController(server.url, namespace)
        _rollback(target, controller)  # a healthy rollout first: every pod ready
        _measure_polls(target, figures)
        for run_index in range(RUNS):
            phase = (run_index + 0.5) / RUNS  # 0.1, 0.3, ... 0.9 of the interval
            seconds, polls = _detect_once(
                target, controller, f"registry.local/app:bad-{run_index}", phase
            )
            figures.detect_s.append(seconds)
            figures.detect_polls.append(polls)
        for run_index in range(RUNS):
            figures.watch_detect_s.append(
                _watch_once(target, controller, f"registry.local/app:watch-{run_index}")
            )
    finally:
        server.stop()
    return figures
