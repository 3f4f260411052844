"""Rollback (seed 001 rollback-production.sh, 000 "undo if needed"): put every deploy service
of an environment back on its previous image, or on a named ``image``.

The previous image of a service is, in this order: what the ledger's last successful deploy
of the environment replaced with the image the service runs now; the image a deploy that is
not verified yet keeps aside (Docker: the stopped ``<name>.opsflow-previous`` container, put
back by a rename; Kubernetes: the ``opsflow.io/previous-image`` annotation). None found is bad
input: name the image.

Order: plan → one deploy or rollback of the environment at a time (``deploy-<env>``) →
approval on protected environments → the environment's lock → per service, in reverse deploy
order: set the image and wait until it serves → the same verification as a deploy (health
check subflow, smoke tests, verification window) → notify. A change freeze does not refuse a
rollback (it restores a known state); a rollback whose verification fails is reported loudly
and left as it is (not rolled forward again). Report ``rollback-<env>``; ledger run details
are a ``ReleaseReport``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from prefect.states import Completed, State

from flows.common import (
    LOCK_WAIT_SECONDS,
    ApprovalWait,
    LockWait,
    RunbookRun,
    finish_release,
    runbook_flow,
    verify_release,
)
from flows.health_check import health_check as health_flow
from opsflow import releases
from opsflow.errors import InputError
from opsflow.inventory import Environment
from opsflow.ledger import Ledger, RunRow
from opsflow.locks import deploy_lock_name
from opsflow.plans import Plan, PlanStep
from opsflow.redaction import redact
from opsflow.releases import ReleaseReport, ServiceChange, require_deploy
from tasks import release
from tasks.release import Live

RUNBOOK = "rollback"
DEPLOY_RUNBOOK = "deploy"
LEDGER_SCAN = 1000


def previous_images(
    env_name: str, env: Environment, live: dict[str, Live], deploys: list[RunRow]
) -> dict[str, str]:
    """Each service's previous image (see the module docstring); InputError naming ``image``
    when one has none."""
    targets: dict[str, str] = {}
    for service in require_deploy(env_name, env).services:
        now = live[service.name]
        recorded = [
            c
            for row in deploys  # newest first
            if (row.details or {}).get("outcome") == "deployed"
            for c in (row.details or {}).get("changes", [])
            if c.get("service") == service.name
            and c.get("to_image") == now.image
            and c.get("from_image") != now.image
        ]
        previous = recorded[0]["from_image"] if recorded else now.previous_image
        if not previous or previous == now.image:
            raise InputError(
                "image",
                f"no previous image of {service.name} is recorded (it runs {now.image})",
                "name the image to roll back to: --param image=<name:tag>",
            )
        targets[service.name] = str(releases.parse_image(previous, "image"))
    return targets


def build_rollback_plan(
    env_name: str, env: Environment, changes: list[ServiceChange], rollback_id: str
) -> Plan:
    settings = require_deploy(env_name, env)
    steps: list[PlanStep] = []
    if env.protected:
        steps.append(PlanStep(action="request_approval", target=env_name, why="protected"))
    todo = [c for c in changes if c.action != "unchanged"]
    steps += [
        PlanStep(
            action="roll_back",
            target=c.target,
            changes=True,
            why=f"{c.from_image} -> {c.to_image}"
            + (f", {c.replicas} replica(s)" if c.replicas is not None else ""),
        )
        for c in reversed(todo)
    ]
    if todo and settings.health_check:
        steps.append(PlanStep(action="health_check", target=env_name, why="subflow"))
    if todo:
        steps += [
            PlanStep(action="run_smoke_test", target=t.name, why=f"{t.method} {t.url}")
            for t in env.smoke_tests
        ]
    if todo and settings.verify is not None:
        steps.append(
            PlanStep(action="verify_window", target=env_name, why=f"for {settings.verify.duration}")
        )
    notes = [f"rollback id {rollback_id}"]
    notes += [f"{c.service} already runs {c.to_image}: unchanged" for c in changes if c not in todo]
    return Plan(
        runbook=RUNBOOK,
        env=env_name,
        steps=steps,
        parameters={"images": ", ".join(f"{c.service}={c.to_image}" for c in changes)},
        notes=notes,
    )


def _changes(
    env_name: str, env: Environment, live: dict[str, Live], image: str | None, deploys: list[RunRow]
) -> dict[str, str]:
    if image:
        ref = str(releases.parse_image(image, "image"))
        return {s.name: ref for s in require_deploy(env_name, env).services}
    return previous_images(env_name, env, live, deploys)


def _as_changes(
    env: Environment, live: dict[str, Live], targets: dict[str, str]
) -> list[ServiceChange]:
    return [
        ServiceChange(
            service=s.name,
            target=live[s.name].target,
            from_image=live[s.name].image,
            to_image=targets[s.name],
            replicas=live[s.name].replicas,
            action="unchanged" if live[s.name].image == targets[s.name] else "change",
            outcome="unchanged" if live[s.name].image == targets[s.name] else "planned",
        )
        for s in require_deploy("", env).services
    ]


def plan_rollback(
    env_name: str,
    env: Environment,
    image: str | None = None,
    *,
    live: dict[str, Live] | None = None,
    deploys: list[RunRow] | None = None,
    present: Callable[[Environment, str], None] = release.image_present,
) -> Plan:
    """The rollback plan: reads what runs now and the ledger (read only)."""
    settings = require_deploy(env_name, env)
    if image:
        releases.parse_image(image, "image")
    if live is None:
        live = {s.name: release.read_live(env, s, in_flow=False) for s in settings.services}
    if deploys is None:
        deploys = Ledger().runs(env=env_name, runbook=DEPLOY_RUNBOOK, limit=LEDGER_SCAN)
    targets = _changes(env_name, env, live, image, deploys)
    for ref in sorted(set(targets.values())):
        present(env, ref)
    base = releases.deploy_id_base(env_name, targets, RUNBOOK) + "-<n>"
    return build_rollback_plan(env_name, env, _as_changes(env, live, targets), base)


def _roll_back(run: RunbookRun, report: ReleaseReport) -> State[Any]:
    settings = require_deploy(run.env_name, run.env)
    services = {s.name: s for s in settings.services}
    for change in reversed([c for c in report.changes if c.action != "unchanged"]):
        with run.step("roll_back", change.target) as step:
            step.details = {
                "rollback_id": report.deploy_id,
                "from": change.from_image,
                "to": change.to_image,
            }
            started = time.monotonic()
            try:
                now = release.restore_image(
                    run.env, services[change.service], change.to_image, report.deploy_id
                )
            except Exception as exc:  # noqa: BLE001 - the rollback's outcome
                change.outcome, change.error = "failed", redact(str(exc) or type(exc).__name__)
                report.failed_check = f"roll_back {change.service}: {change.error}"
                step.fail(change.error)
                break
            finally:
                change.seconds = round(time.monotonic() - started, 3)
            change.outcome, change.revision = "rolled back", now.revision
            step.summary = f"{change.from_image} -> {now.image} serving"
    if report.failed_check is None:
        report.checks, report.failed_check = verify_release(
            run, health_flow if settings.health_check else None, settings.verify
        )
    if report.failed_check is None:
        for change in report.changes:
            if change.action != "unchanged":
                with run.step("keep_new", change.target) as step:
                    step.summary = release.keep_new(run.env, services[change.service])
    report.outcome = "rolled back" if report.failed_check is None else "failed"
    return finish_release(run, report)


@runbook_flow(
    RUNBOOK,
    "Roll an environment back to its previous images (or a named one): approval on protected "
    "environments, then the same verification as a deploy.",
    timeout_seconds=4 * 3600,
)
def rollback(
    env: str = "local",
    *,
    requested_by: str,
    image: str | None = None,
    dry_run: bool = False,
    approval_timeout_seconds: ApprovalWait = None,
    wait_for_lock: LockWait = LOCK_WAIT_SECONDS,
) -> State[Any]:
    """Roll every deploy service of ``env`` back.

    Args:
        env: environment name from the inventory.
        image: roll back to this image (default: each service's previous recorded image).
        dry_run: only publish the plan.
        requested_by: who asks for this run (required; on a protected environment the
            approvers must be others).
        approval_timeout_seconds: how long to wait for approval (default: the inventory's).
        wait_for_lock: seconds to wait for the environment's lock after approval.
    """
    run = RunbookRun.start(RUNBOOK, env, requested_by)
    settings = require_deploy(env, run.env)
    if image:
        releases.parse_image(image, "image")  # bad input before waiting for anything
    if dry_run:
        report = _prepare(run, image)[1]
        report.dry_run = True
        return Completed(message="dry run: plan published", data=report)
    busy = releases.busy_wait_seconds(settings)
    with run.exclusive(busy, name=deploy_lock_name(env), fix=releases.BUSY_FIX):
        plan, report = _prepare(run, image)  # under the lock: what a deploy before it left
        if all(c.action == "unchanged" for c in report.changes):
            report.outcome = "unchanged"
            return finish_release(run, report)
        if run.env.protected:
            report.approved_by = run.approve(
                plan,
                approval_timeout_seconds,
                {"deploy_id": report.deploy_id, "outcome": "rejected"},
            )
        with run.exclusive(wait_for_lock):
            return _roll_back(run, report)


def _prepare(run: RunbookRun, image: str | None) -> tuple[Plan, ReleaseReport]:
    """Read what runs and the ledger, decide the images and the rollback id, publish the plan."""
    env, settings = run.env_name, require_deploy(run.env_name, run.env)
    live = {s.name: release.read_live(run.env, s) for s in settings.services}
    deploys = run.ledger.runs(env=env, runbook=DEPLOY_RUNBOOK, limit=LEDGER_SCAN)
    targets = _changes(env, run.env, live, image, deploys)
    for ref in sorted(set(targets.values())):
        release.image_present(run.env, ref)
    ended = [
        str((r.details or {}).get("deploy_id") or "")
        for r in run.ledger.runs(env=env, runbook=RUNBOOK, limit=LEDGER_SCAN)
    ]
    rid = releases.deploy_id(env, targets, ended, RUNBOOK)
    changes = _as_changes(run.env, live, targets)
    plan = build_rollback_plan(env, run.env, changes, rid)
    run.publish_plan(plan)
    report = ReleaseReport(
        runbook=RUNBOOK, env=env, deploy_id=rid, requested_by=run.requested_by, changes=changes
    )
    return plan, report
