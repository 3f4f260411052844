"""Issue 11, Docker target: rollback time, healthy replace time and the port's downtime.

On the real test engine (``tests.fixtures.docker_engine.running_docker_engine``) with the
deploy-app images (``tests.support.images.deploy_app_image``: HEALTHCHECK every 1 s, unhealthy
after 2 failures), a container publishing 127.0.0.1:PORT, p50 of ``RUNS``:

(a) rollback: replace v1 by v2 (unhealthy), ``wait_container_healthy`` fails, then
    ``restore_previous_container``; measured from the moment Docker reports unhealthy (the
    ``End`` of the failing health probe that turned the status, the engine's clock — the same
    machine) to the first HTTP 200 of v1 on the port. Goal <= 10 s.
(b) a healthy replace (v1 <-> v3) + ``wait_container_healthy``, no verification window:
    ``replace_container`` start to ``healthy``. Goal <= 15 s.
(c) the port's downtime during (b): a thread GETs ``/`` every 20 ms; the longest gap between
    two answered requests.

The seed's ``deploy-production.sh`` waits up to 10 min (``rollout status --timeout=10m``) and
then stops with the failure; rollback is a human running ``rollback-production.sh``: its
rollback takes at least 600 s plus the human, and 600 s is the time it allows a deploy.
The tasks run through ``.fn`` (Prefect's per-task cost, ~4 ms, is the ``overhead`` benchmark).
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import docker
import docker.errors
import httpx

from benchmarks.common import Row, free_port, median, timed_rows
from opsflow.errors import PermanentError
from opsflow.inventory import DockerService, DockerTarget
from tasks.docker.deploy import (
    remove_previous_container,
    replace_container,
    restore_previous_container,
    wait_container_healthy,
)
from tasks.docker.recreate import FAILED_SUFFIX, PREVIOUS_SUFFIX
from tests.fixtures.docker_engine import SESSION_ID, SESSION_LABEL, running_docker_engine
from tests.support.images import DEPLOY_APP_PORT, deploy_app_image

RUNS = 5
SEED_ROLLOUT_WAIT_S = 600.0
POLL_S = 0.02


@dataclass
class DockerDeployFigures:
    rollback_s: list[float] = field(default_factory=list)
    detect_s: list[float] = field(default_factory=list)
    replace_healthy_s: list[float] = field(default_factory=list)
    downtime_s: list[float] = field(default_factory=list)
    switch_s: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def rows(self) -> list[Row]:
        rollback, healthy = median(self.rollback_s), median(self.replace_healthy_s)
        seed = SEED_ROLLOUT_WAIT_S
        table = (
            ("unhealthy reported -> old container serving (HTTP 200)", rollback,
             f">= {seed:.0f} s + a human", f"{seed / rollback:.0f}x faster", 10.0),
            ("  of which: unhealthy reported -> wait_container_healthy fails",
             median(self.detect_s), "", "", None),
            ("healthy replace + health wait (no verification window)", healthy,
             f"up to {seed:.0f} s allowed", f"1/{seed / healthy:.0f} of it", 15.0),
            ("port downtime during a healthy replace (longest gap)", median(self.downtime_s),
             "docker compose up -d: the same stop -> start", "", None),
            ("  of which: old stopped -> new started (switch_seconds)",
             median(self.switch_s), "", "", None),
        )  # fmt: skip
        return timed_rows("Docker deploy (issue 11)", RUNS, table)


class _Prober:
    """GET / every 20 ms; the longest time between two answered requests."""

    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}/"
        self.stop = threading.Event()
        self.longest = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        last_ok = time.monotonic()
        with httpx.Client(timeout=1.0) as client:
            while not self.stop.is_set():
                try:
                    client.get(self.url)
                    now = time.monotonic()
                    self.longest = max(self.longest, now - last_ok)
                    last_ok = now
                except httpx.HTTPError:
                    pass
                time.sleep(POLL_S)

    def __enter__(self) -> _Prober:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def _serving(port: int, version: str, timeout: float = 60) -> float:
    """Poll until ``version`` answers 200 on the port; return ``time.time()`` then."""
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() < deadline:
            try:
                response = client.get(f"http://127.0.0.1:{port}/")
                if response.status_code == 200 and response.json().get("version") == version:
                    return time.time()
            except httpx.HTTPError:
                pass
            time.sleep(POLL_S)
    raise RuntimeError(f"{version} never answered on port {port}")


def _stamp(text: str) -> float:
    """An engine timestamp (nanoseconds, ``Z`` or an offset) as seconds since the epoch."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", text)
    if m is None:
        raise ValueError(f"unexpected engine timestamp {text!r}")
    zone = "+00:00" if m[3] == "Z" else m[3]
    return datetime.fromisoformat(m[1] + zone).timestamp() + float("0." + (m[2] or "0"))


def _unhealthy_at(attrs: dict[str, Any]) -> float:
    """When the engine turned the container unhealthy: the end of the probe that made the
    failures reach the healthcheck's retries (v2 never passes one)."""
    retries = int(attrs["Config"]["Healthcheck"].get("Retries") or 3)
    failures = [p for p in attrs["State"]["Health"]["Log"] if p.get("ExitCode") != 0]
    if len(failures) < retries:
        raise RuntimeError(f"only {len(failures)} failed probes recorded, expected {retries}")
    return _stamp(failures[retries - 1]["End"])


def start_app(
    client: docker.DockerClient, image: str, name: str, port: int, **options: Any
) -> None:
    """The deploy-app container ``name`` of ``image``, publishing 127.0.0.1:``port``."""
    client.containers.run(
        image,
        name=name,
        detach=True,
        ports={f"{DEPLOY_APP_PORT}/tcp": ("127.0.0.1", port)},
        environment={"APP_PORT": str(DEPLOY_APP_PORT)},
        labels={SESSION_LABEL: SESSION_ID},
        **options,
    )


def remove_app(client: docker.DockerClient, name: str) -> None:
    """The container ``name`` and what a deploy kept beside it."""
    for suffix in ("", PREVIOUS_SUFFIX, FAILED_SUFFIX):
        try:
            client.api.remove_container(name + suffix, force=True)
        except docker.errors.NotFound:
            continue


def run(runs: int = RUNS) -> DockerDeployFigures:
    figures = DockerDeployFigures()
    with running_docker_engine() as url:
        client = docker.DockerClient(base_url=url, timeout=60)
        images = {v: deploy_app_image(client, v) for v in ("v1", "v2", "v3")}
        name = f"opsflow-bench-{uuid.uuid4().hex[:8]}"
        port = free_port()
        target = DockerTarget(host=url, services=[DockerService(name="web", container=name)])
        service = target.services[0]
        start_app(client, images["v1"], name, port, restart_policy={"Name": "unless-stopped"})
        try:
            wait_container_healthy.fn(target, service, timeout_seconds=60)
            version = "v1"
            for i in range(runs):
                # (b) + (c): a healthy replace, with the port probed all along
                new = "v3" if version == "v1" else "v1"
                with _Prober(port) as prober:
                    started = time.monotonic()
                    result = replace_container.fn(target, service, images[new], f"bench-b{i}")
                    wait_container_healthy.fn(target, service, timeout_seconds=60)
                    figures.replace_healthy_s.append(time.monotonic() - started)
                    _serving(port, new)
                    time.sleep(0.2)
                figures.downtime_s.append(prober.longest)
                figures.switch_s.append(result.switch_seconds or 0.0)
                remove_previous_container.fn(target, service)
                version = new
                # (a): an unhealthy image, rolled back
                replace_container.fn(target, service, images["v2"], f"bench-a{i}")
                try:
                    wait_container_healthy.fn(target, service, timeout_seconds=60)
                except PermanentError:
                    failed_at = time.time()
                else:
                    raise RuntimeError("v2 was reported healthy")
                reported = _unhealthy_at(client.api.inspect_container(name))
                restore_previous_container.fn(target, service)
                figures.rollback_s.append(_serving(port, version) - reported)
                figures.detect_s.append(failed_at - reported)
        finally:
            remove_app(client, name)
            client.close()
    return figures
