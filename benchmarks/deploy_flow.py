"""Issue 11, the whole deploy runbook on Docker (``flows.deploy.deploy`` in this process,
against the benchmark's Prefect server and the real test engine; ``benchmarks/docker_deploy.py``
measures the target's tasks alone).

An environment with one service (the deploy-app of ``tests.support.images``), a health
endpoint and a smoke test, ``verify: null`` (no verification window: its length is the
operator's choice) and no pre-deploy backup, p50 of ``RUNS``:

(a) a healthy deploy (v1 <-> v3): the flow call, start to end — plan, locks, replace +
    health wait, the health-check subflow, the smoke test, dropping the previous container,
    report and ledger. Goal <= 15 s.
(b) a deploy of v2 (its /health fails): the flow call, start to end (the health wait fails,
    the automatic rollback, its health-check subflow and smoke test), and the ``roll_back``
    step alone (from the ledger: rename back + health wait of the old container).

The seed's ``deploy-production.sh`` allows a rollout 600 s and leaves the rollback to a person.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors

from benchmarks.common import Row, free_port, median, timed_rows
from benchmarks.docker_deploy import remove_app, start_app
from tests.fixtures.docker_engine import running_docker_engine
from tests.support.images import deploy_app_image

RUNS = 3
SEED_ROLLOUT_WAIT_S = 600.0


@dataclass
class DeployFlowFigures:
    deploy_s: list[float] = field(default_factory=list)
    rolled_back_s: list[float] = field(default_factory=list)
    roll_back_step_s: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def rows(self) -> list[Row]:
        seed = SEED_ROLLOUT_WAIT_S
        deploy = median(self.deploy_s)
        table = (
            ("healthy deploy, whole flow (no verification window)", deploy,
             f"up to {seed:.0f} s allowed", f"1/{seed / deploy:.0f} of it", 15.0),
            ("deploy of an unhealthy image -> rolled back, whole flow",
             median(self.rolled_back_s), f">= {seed:.0f} s + a human", "", None),
            ("  of which: the roll_back step (rename back + health wait)",
             median(self.roll_back_step_s), "", "", None),
        )  # fmt: skip
        return timed_rows("Deploy runbook, Docker (issue 11)", RUNS, table)


def _inventory(root: Path, url: str, name: str, port: int) -> Path:
    base = f"http://127.0.0.1:{port}"
    path = root / "inventory.yaml"
    path.write_text(f"""
environments:
  bench:
    disks: ["{root}"]
    docker: {{host: "{url}", services: [{{name: web, container: {name}}}]}}
    endpoints: [{{name: web, url: "{base}/health"}}]
    smoke_tests: [{{name: health, url: "{base}/health", expect_body: healthy}}]
    deploy: {{backup: false, verify: null, health_timeout: 60s}}
""")
    return path


def run(runs: int = RUNS) -> DeployFlowFigures:
    from flows.deploy import deploy
    from opsflow.ledger import Ledger

    figures = DeployFlowFigures()
    with running_docker_engine() as url, tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        client = docker.DockerClient(base_url=url, timeout=60)
        images = {v: deploy_app_image(client, v) for v in ("v1", "v2", "v3")}
        name, port = f"opsflow-bench-flow-{uuid.uuid4().hex[:8]}", free_port()
        saved = {k: os.environ.get(k) for k in ("OPSFLOW_INVENTORY", "OPSFLOW_LEDGER_URL")}
        os.environ["OPSFLOW_INVENTORY"] = str(_inventory(root, url, name, port))
        os.environ["OPSFLOW_LEDGER_URL"] = f"sqlite:///{root / 'ledger.db'}"
        start_app(client, images["v1"], name, port)
        try:
            version = "v1"
            for _ in range(runs):
                new = "v3" if version == "v1" else "v1"
                started = time.monotonic()
                state = deploy(env="bench", requested_by="bench", image=images[new],
                               return_state=True)  # fmt: skip
                figures.deploy_s.append(time.monotonic() - started)
                if not state.is_completed():
                    raise RuntimeError(f"the healthy deploy failed: {state.message}")
                version = new
                started = time.monotonic()
                state = deploy(env="bench", requested_by="bench", image=images["v2"],
                               return_state=True)  # fmt: skip
                figures.rolled_back_s.append(time.monotonic() - started)
                if "rolled back" not in (state.message or ""):
                    raise RuntimeError(f"v2 was not rolled back: {state.message}")
                steps = Ledger().steps(str(state.state_details.flow_run_id))
                (step,) = [s for s in steps if s.step == "roll_back"]
                figures.roll_back_step_s.append(step.duration_ms / 1000)
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            remove_app(client, name)
            client.close()
    return figures
