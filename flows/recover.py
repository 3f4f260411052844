"""Runbook: recover after a restore that was killed (seed 001: "if the restore fails, bring the
application back").

A restore records what it stops *before* it stops it, next to the application: the Kubernetes
deployment's replica count in the annotation ``opsflow.io/replicas-before-restore``, each Docker
container in a marker volume ``opsflow-stopped-<container>``. When the process running the
restore dies (SIGKILL, a lost worker) after the scale-down, the application stays down; this
runbook reads those records and brings back exactly what they name (``scale_up_app`` with no
state of its own). It takes the environment's lock without waiting: while a backup, restore or
drill of the environment still runs, recovering would start the application under it, so the
run fails and names the run holding the lock.
"""

from __future__ import annotations

from typing import Any

from prefect.states import Completed, Failed, State

from flows.common import LockWait, RunbookRun, app_target, runbook_flow, scales
from opsflow.inventory import Environment
from opsflow.plans import Plan, PlanStep
from opsflow.redaction import redact
from tasks.scaling import ScaleState, scale_up_app

RUNBOOK = "recover"

RECOVER_LOCK_WAIT_SECONDS = 300
"""How long recover waits for the environment's lock: a dead restore's lock is free once its
lease runs out (OPSFLOW_LOCK_LEASE_SECONDS); a live run keeps it, and recover then fails."""


def plan_recover(env_name: str, env: Environment) -> Plan:
    """Bring back what an interrupted restore stopped (pure: no I/O)."""
    if not scales(env):
        return Plan(
            runbook=RUNBOOK,
            env=env_name,
            steps=[],
            notes=["The environment has no deployment or Docker services: nothing to recover."],
        )
    step = PlanStep(
        action="scale_up_app",
        target=app_target(env),
        why="start what an interrupted restore recorded it stopped (the replicas annotation / "
        "the containers' marker volumes); nothing when there is no such record",
        changes=True,
    )
    notes = ["Fails without touching anything while another run holds the environment's lock."]
    return Plan(runbook=RUNBOOK, env=env_name, steps=[step], notes=notes)


@runbook_flow(
    RUNBOOK,
    "Recover after an interrupted restore: bring the application back from the records the "
    "restore left next to it (replica count annotation, container markers).",
    timeout_seconds=900,
)
def recover(
    env: str = "local",
    *,
    requested_by: str,
    dry_run: bool = False,
    wait_for_lock: LockWait = RECOVER_LOCK_WAIT_SECONDS,
) -> State[Any]:
    """Bring back the application of ``env`` that an interrupted restore left stopped.

    Args:
        env: environment name from the inventory.
        dry_run: only publish the plan.
        requested_by: who asks for this run (shown in the ledger; required: the UI's run
            form asks for it, schedules send `scheduler`).
        wait_for_lock: seconds to wait for the environment's lock (a killed run's lock is
            free once its lease ran out); a run still holding it then fails this one.
    """
    run = RunbookRun.start(RUNBOOK, env, requested_by)
    plan = plan_recover(env, run.env)
    run.publish_plan(plan)
    if dry_run or not plan.steps:
        summary = "dry run: plan published" if dry_run else "nothing to recover"
        return Completed(message=summary, data=summary)
    with run.exclusive(wait_for_lock), run.step("scale_up_app", app_target(run.env)) as step:
        state = scale_up_app(
            state=ScaleState(kind="none"),
            kubernetes_target=run.env.kubernetes,
            docker_target=run.env.docker,
            return_state=True,
        )
        if not state.is_completed():
            error = redact(str(state.result(raise_on_failure=False)))
            step.fail(error)
        else:
            step.summary = str(state.result())
    if step.status == "failed":
        run.finish("failed", step.summary)
        return Failed(message=f"recover of {env} failed: {step.summary}", data=step.summary)
    run.finish("complete", step.summary)
    return Completed(message=f"recover of {env}: {step.summary}", data=step.summary)
