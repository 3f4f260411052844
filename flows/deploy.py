"""Production deploy (seeds 001 deploy-production.sh, 000 rolling update, 003 environment
promotion and deployment verification, 004 docker-compose deploy + change management).

Order: plan (per service of ``deploy.services``: the image now → the new one, replicas, what
is backed up) → change freeze / maintenance window (``opsflow.windows.change_allowed``, for
every run however started; ``override_window_reason`` overrides it with an approval) → one
deploy of the environment at a time (the lock ``deploy-<env>``, ``deploy.on_busy``) →
approval on protected environments → the environment's lock ``env-<env>`` (no backup,
restore or drill of it meanwhile) → pre-deploy backup (the backup runbook as a subflow;
``skip_backup`` is recorded) → per service in order: set the image and wait until it serves
(rollout / container health) → health check (the health-check runbook as a subflow) → smoke
tests → verification window (``deploy.verify``) → the previous containers are dropped →
notify. A failed step after an image changed rolls every changed service back, in reverse
order, verified by the same checks. The report ``deploy-<env>`` and the ledger run tell both
stories (``opsflow.releases.ReleaseReport`` is the run's details).

A deploy of what already runs is a no-op, reported as such. A crashed deploy's rerun keeps
its deploy id (``opsflow.releases``) and resumes: an image set for that id is not set again,
and the backup taken for it is reused.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prefect import tags
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags
from prefect.states import Completed, State

from flows.backup import backup as backup_flow
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
from opsflow.errors import PermanentError
from opsflow.inventory import Deploy, DeployService, Environment, Inventory
from opsflow.locks import deploy_lock_name
from opsflow.plans import Plan, PlanStep
from opsflow.redaction import redact
from opsflow.releases import (
    ReleaseReport,
    ServiceChange,
    check_options,
    check_request,
    promotion_source,
    require_deploy,
)
from opsflow.windows import change_allowed
from tasks import release
from tasks.release import Live

RUNBOOK = "deploy"
BACKUP_TAG = "opsflow-deploy:"


Reader = Callable[[Environment, DeployService], Live]
"""What a service runs now (``tasks.release.read_live``; unit tests pass their own)."""


def read_outside_flow(env: Environment, service: DeployService) -> Live:
    return release.read_live(env, service, in_flow=False)


def target_images(
    env_name: str,
    env: Environment,
    live: dict[str, Live],
    *,
    image: str | None,
    version: str | None,
    promote_from: str | None,
    inventory: Inventory | None = None,
    read: Reader = read_outside_flow,
) -> dict[str, str]:
    """The image each service is to run: ``image`` for all, ``version`` as the tag of each
    service's current repository, or what runs in ``promote_from``."""
    inventory = check_request(
        env_name, env, image=image, version=version, promote_from=promote_from, inventory=inventory
    )
    services = require_deploy(env_name, env).services
    if image:
        ref = str(releases.parse_image(image, "image"))
        return {s.name: ref for s in services}
    if version:
        tag = releases.check_tag(version)
        return {
            s.name: str(releases.parse_image(live[s.name].image, "image").with_tag(tag))
            for s in services
        }
    assert promote_from is not None
    source, there = promotion_source(env_name, promote_from, inventory, services)
    return {
        s.name: str(releases.parse_image(read(source, there[s.name]).image, "promote_from"))
        for s in services
    }


def changes_for(
    env: Environment, live: dict[str, Live], targets: dict[str, str], deploy_id: str | None
) -> list[ServiceChange]:
    """Per service: change, resume (the image was set by this deploy id: a rerun) or
    unchanged (it runs the target image already)."""
    out: list[ServiceChange] = []
    for s in require_deploy("", env).services:
        now, want = live[s.name], targets[s.name]
        change = ServiceChange(
            service=s.name,
            target=now.target,
            from_image=now.image,
            to_image=want,
            replicas=now.replicas,
            revision=now.revision,
        )
        if now.image == want and deploy_id is not None and now.deploy_id == deploy_id:
            change.action, change.from_image = "resume", now.previous_image or now.image
        elif now.image == want:
            change.action, change.outcome = "unchanged", "unchanged"
        out.append(change)
    return out


def build_deploy_plan(
    env_name: str,
    env: Environment,
    changes: list[ServiceChange],
    *,
    deploy_id: str,
    skip_backup: bool = False,
    override_window_reason: str | None = None,
) -> Plan:
    """The ordered steps of a deploy (pure)."""
    settings = check_options(env_name, env, skip_backup, override_window_reason)
    todo = [c for c in changes if c.action != "unchanged"]
    steps: list[PlanStep] = []
    notes = [f"deploy id {deploy_id}"]
    window = "a change freeze refuses it" + (
        "; so does being outside the maintenance window" if settings.require_window else ""
    )
    steps.append(PlanStep(action="check_change_window", target=env_name, why=window))
    if env.protected or override_window_reason:
        steps.append(
            PlanStep(
                action="request_approval",
                target=env_name,
                why="protected environment"
                if env.protected
                else f"the window is overridden: {override_window_reason}",
            )
        )
    if not todo:
        notes.append("every service already runs its target image: nothing to do")
    elif settings.backup and not skip_backup:
        steps.append(
            PlanStep(
                action="backup",
                target=env_name,
                changes=True,
                why=f"the backup runbook as a subflow ({len(env.databases)} database(s), "
                f"{len(env.redis)} Redis) to {env.backup_store.url if env.backup_store else '-'}",
            )
        )
    elif skip_backup:
        notes.append("no pre-deploy backup: skip_backup=true (recorded in the ledger)")
    for c in todo:
        what = (
            "resume: already set by this deploy id, wait for it"
            if c.action == "resume"
            else (f"{c.from_image} -> {c.to_image}")
        )
        replicas = f", {c.replicas} replica(s)" if c.replicas is not None else ""
        steps.append(
            PlanStep(action="set_image", target=c.target, changes=True, why=what + replicas)
        )
    for c in changes:
        if c.action == "unchanged":
            notes.append(f"{c.service} already runs {c.to_image}: unchanged")
    if todo:
        if settings.health_check:
            steps.append(PlanStep(action="health_check", target=env_name, why="subflow"))
        steps += [
            PlanStep(action="run_smoke_test", target=t.name, why=f"{t.method} {t.url}")
            for t in env.smoke_tests
        ]
        if settings.verify is not None:
            v = settings.verify
            steps.append(
                PlanStep(
                    action="verify_window",
                    target=env_name,
                    why=f"{v.duration} every {v.interval}: error rate <= {v.max_error_rate_pct}%"
                    f", p95 <= {v.max_p95_ms} ms; {v.failure_limit} failed sample(s) fail it",
                )
            )
        notes.append("a failed step after an image changed rolls every changed service back")
    return Plan(
        runbook=RUNBOOK,
        env=env_name,
        steps=steps,
        parameters={
            "images": ", ".join(f"{c.service}={c.to_image}" for c in changes),
            "skip_backup": skip_backup,
        },
        notes=notes,
    )


def _live(env: Environment, read: Reader) -> dict[str, Live]:
    return {s.name: read(env, s) for s in require_deploy("", env).services}


def plan_deploy(
    env_name: str,
    env: Environment,
    image: str | None = None,
    version: str | None = None,
    promote_from: str | None = None,
    skip_backup: bool = False,
    override_window_reason: str | None = None,
    deploy_id: str | None = None,
    *,
    inventory: Inventory | None = None,
    read: Reader = read_outside_flow,
    present: Callable[[Environment, str], None] = release.image_present,
) -> Plan:
    """The deploy plan: reads what runs now (Docker engine / Kubernetes API, read only) and
    checks that every target image is on the Docker engine; bad input raises InputError."""
    check_options(env_name, env, skip_backup, override_window_reason)
    inventory = check_request(
        env_name,
        env,
        image=image,
        version=version,
        promote_from=promote_from,
        inventory=inventory,
        deploy_id=deploy_id,
    )
    checked = {str(releases.parse_image(image))} if image else set()
    for ref in checked:
        present(env, ref)  # before reading anything else
    live = _live(env, read)
    targets = target_images(
        env_name,
        env,
        live,
        image=image,
        version=version,
        promote_from=promote_from,
        inventory=inventory,
        read=read,
    )
    for ref in sorted(set(targets.values()) - checked):
        present(env, ref)
    changes = changes_for(env, live, targets, deploy_id)
    did = deploy_id or releases.deploy_id_base(env_name, targets) + "-<n>"
    return build_deploy_plan(
        env_name,
        env,
        changes,
        deploy_id=did,
        skip_backup=skip_backup,
        override_window_reason=override_window_reason,
    )


# --- applying ----------------------------------------------------------------------------------


def _ended_ids(run: RunbookRun) -> list[str]:
    rows = run.ledger.runs(env=run.env_name, runbook=RUNBOOK, limit=10_000)
    return [str((r.details or {}).get("deploy_id") or "") for r in rows]


def check_window(run: RunbookRun, settings: Deploy, override: str | None) -> str:
    """The change freeze / maintenance window guard; returns what the report says about it.
    Refused (no override): the run is recorded ``refused`` and ends here, naming the freeze or
    window and when it ends."""
    verdict = change_allowed(run.env, datetime.now(UTC), needs_window=settings.require_window)
    if verdict.allowed:
        return verdict.reason
    if override:
        return f"{verdict.reason}; overridden: {override}"
    message = (
        f"{RUNBOOK} of {run.env_name} refused: {verdict.reason}; nothing was changed (fix: "
        "deploy after it ends, or pass override_window_reason=<why> and get it approved)"
    )
    run.finish("refused", message, {"window": verdict.name, "reason": verdict.reason})
    raise PermanentError(message)


def _backup_runs(deploy_id: str) -> list[str]:
    """Completed backup subflow runs tagged with this deploy id (a rerun reuses them)."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[BACKUP_TAG + deploy_id]))
        )
    return [str(r.id) for r in runs if r.state is not None and r.state.is_completed()]


def _pre_deploy_backup(run: RunbookRun, report: ReleaseReport, skip: bool) -> bool:
    """The pre-deploy backup; False when it failed (nothing was changed yet)."""
    settings = require_deploy(run.env_name, run.env)
    if skip or not settings.backup:
        why = "skip_backup=true" if skip else "deploy.backup is false"
        report.backup = f"skipped ({why}, requested by {run.requested_by})"
        run.record("backup", run.env_name, "skipped", f"{why}, requested by {run.requested_by}")
        return True
    with run.step("backup", run.env_name) as step:
        done = _backup_runs(report.deploy_id)
        if not done:
            with tags(BACKUP_TAG + report.deploy_id):
                state = backup_flow(
                    env=run.env_name, requested_by=run.requested_by, return_state=True
                )
            if not state.is_completed():
                report.failed_check = f"backup: {redact(state.message or 'failed')}"
                step.fail(report.failed_check)
                return False
            done = [str(state.state_details.flow_run_id)]
            report.backup = f"taken by backup run {done[0]}"
        else:
            report.backup = f"reused from backup run {done[0]} (taken for this deploy id)"
        report.backup_ids = [
            b.backup_id
            for b in run.ledger.backups(env=run.env_name, limit=200)
            if b.flow_run_id in done
        ]
        step.summary = f"{report.backup}: {len(report.backup_ids)} backup(s)"
        step.details = {"backup_ids": report.backup_ids, "deploy_id": report.deploy_id}
    return True


def _service(env: Environment, name: str) -> DeployService:
    return next(s for s in require_deploy("", env).services if s.name == name)


def apply_change(run: RunbookRun, change: ServiceChange, deploy_id: str) -> bool:
    """Set one service's image and wait until it serves, as one step; False when it failed."""
    with run.step("set_image", change.target) as step:
        step.details = {
            "deploy_id": deploy_id,
            "from": change.from_image,
            "to": change.to_image,
            "resume": change.action == "resume",
        }
        started = time.monotonic()
        try:
            now = release.set_image(
                run.env, _service(run.env, change.service), change.to_image, deploy_id
            )
        except Exception as exc:  # noqa: BLE001 - the failure is the deploy's outcome
            change.outcome, change.error = "failed", redact(str(exc) or type(exc).__name__)
            step.fail(change.error)
            return False
        finally:
            change.seconds = round(time.monotonic() - started, 3)
        change.outcome, change.revision = "changed", now.revision
        step.summary = f"{change.from_image} -> {now.image} serving"
    return True


def roll_back(run: RunbookRun, report: ReleaseReport, changed: list[ServiceChange]) -> None:
    """Put every changed service back, newest first, then verify as the deploy was."""
    errors: list[str] = []
    for c in reversed(changed):
        back = ServiceChange(
            service=c.service,
            target=c.target,
            from_image=c.to_image,
            to_image=c.from_image,
            replicas=c.replicas,
        )
        report.rollback.append(back)
        with run.step("roll_back", c.target) as step:
            service, started = _service(run.env, c.service), time.monotonic()
            try:
                now = release.read_live(run.env, service)
                if now.image == c.from_image and now.deploy_id != report.deploy_id:
                    back.outcome = "already back"  # the change itself was undone (or never made)
                else:
                    now = release.put_back(run.env, service, c.from_image, report.deploy_id)
                    back.outcome = "rolled back"
            except Exception as exc:  # noqa: BLE001 - reported; the others are still tried
                back.outcome, back.error = "failed", redact(str(exc) or type(exc).__name__)
                errors.append(f"{c.service}: {back.error}")
                step.fail(back.error)
                continue
            finally:
                back.seconds = round(time.monotonic() - started, 3)
            step.summary = f"{c.service} {back.outcome}: runs {now.image}"
    if errors:
        report.rollback_error = "; ".join(errors)
        return
    settings = require_deploy(run.env_name, run.env)
    lines, failed = verify_release(
        run, health_flow if settings.health_check else None, settings.verify
    )
    report.rollback_checks = lines
    if failed:
        report.rollback_error = f"after the rollback: {failed}"


def release_changes(run: RunbookRun, report: ReleaseReport, skip_backup: bool) -> State[Any]:
    """Everything that changes something, under the environment's lock."""
    settings = require_deploy(run.env_name, run.env)
    changed: list[ServiceChange] = []
    if _pre_deploy_backup(run, report, skip_backup):
        for change in report.changes:
            if change.action == "unchanged":
                continue
            changed.append(change)
            if not apply_change(run, change, report.deploy_id):
                report.failed_check = f"set_image {change.service}: {change.error}"
                break
        if report.failed_check is None:
            report.checks, report.failed_check = verify_release(
                run, health_flow if settings.health_check else None, settings.verify
            )
    if report.failed_check is None:
        for change in changed:
            with run.step("keep_new", change.target) as step:
                try:
                    step.summary = release.keep_new(run.env, _service(run.env, change.service))
                except Exception as exc:  # noqa: BLE001 - the deploy is verified: it stays
                    step.fail(f"{redact(str(exc))} (the new version serves; remove it by hand)")
                    report.checks.append(f"keep_new {change.service}: {step.summary}")
        report.outcome = "deployed"
    elif changed:
        roll_back(run, report, changed)
        report.outcome = "rollback failed" if report.rollback_error else "rolled back"
    return finish_release(run, report)


@runbook_flow(
    RUNBOOK,
    "Deploy an image: plan, change window, approval on protected environments, pre-deploy "
    "backup, set image per service, rollout/health wait, health check, smoke tests, "
    "verification window; automatic rollback when any of them fails.",
    timeout_seconds=6 * 3600,
)
def deploy(
    env: str = "local",
    *,
    requested_by: str,
    image: str | None = None,
    version: str | None = None,
    promote_from: str | None = None,
    skip_backup: bool = False,
    override_window_reason: str | None = None,
    deploy_id: str | None = None,
    dry_run: bool = False,
    approval_timeout_seconds: ApprovalWait = None,
    wait_for_lock: LockWait = LOCK_WAIT_SECONDS,
) -> State[Any]:
    """Deploy a new image to every deploy service of ``env``.

    Args:
        env: environment name from the inventory.
        image: the image reference every service gets (name[:tag][@sha256:...]).
        version: a tag: each service gets its current repository at this tag.
        promote_from: an environment: each service gets the image it runs there.
        skip_backup: no pre-deploy backup (the ledger records who skipped it).
        override_window_reason: deploy despite a change freeze or closed window; needs an
            approval and this reason.
        deploy_id: resume or name this attempt (default: derived, stable across reruns).
        dry_run: only publish the plan.
        requested_by: who asks for this run (required; on a protected environment the
            approvers must be others).
        approval_timeout_seconds: how long to wait for approval (default: the inventory's).
        wait_for_lock: seconds to wait for the environment's lock (a backup, restore or drill
            of it) after approval (0: fail at once).
    """
    run = RunbookRun.start(RUNBOOK, env, requested_by)
    settings = check_options(env, run.env, skip_backup, override_window_reason)
    check_request(  # bad input is refused before waiting for anything
        env,
        run.env,
        image=image,
        version=version,
        promote_from=promote_from,
        inventory=run.inventory,
        deploy_id=deploy_id,
    )
    if dry_run:
        plan, report = _prepare(
            run, image, version, promote_from, skip_backup, override_window_reason, deploy_id
        )
        report.dry_run = True
        return Completed(message="dry run: plan published", data=report)
    busy = releases.busy_wait_seconds(settings)
    # the plan is made under the lock: a deploy that waited sees what the other one left
    with run.exclusive(busy, name=deploy_lock_name(env), fix=releases.BUSY_FIX):
        plan, report = _prepare(
            run, image, version, promote_from, skip_backup, override_window_reason, deploy_id
        )
        if all(c.action == "unchanged" for c in report.changes):
            report.outcome = "unchanged"
            return finish_release(run, report)
        report.window = check_window(run, settings, override_window_reason)
        if run.env.protected or override_window_reason:
            report.approved_by = run.approve(
                plan,
                approval_timeout_seconds,
                {"deploy_id": report.deploy_id, "outcome": "rejected"},
            )
            report.window = check_window(run, settings, override_window_reason)
        with run.exclusive(wait_for_lock):
            return release_changes(run, report, skip_backup)


def _prepare(
    run: RunbookRun,
    image: str | None,
    version: str | None,
    promote_from: str | None,
    skip_backup: bool,
    override_window_reason: str | None,
    deploy_id: str | None,
) -> tuple[Plan, ReleaseReport]:
    """Read what runs, decide the images and the deploy id, publish the plan."""
    env = run.env_name
    live = _live(run.env, release.read_live)
    targets = target_images(
        env,
        run.env,
        live,
        image=image,
        version=version,
        promote_from=promote_from,
        inventory=run.inventory,
        read=release.read_live,
    )
    for ref in sorted(set(targets.values())):
        release.image_present(run.env, ref)
    did = deploy_id or releases.deploy_id(env, targets, _ended_ids(run))
    changes = changes_for(run.env, live, targets, did)
    plan = build_deploy_plan(
        env,
        run.env,
        changes,
        deploy_id=did,
        skip_backup=skip_backup,
        override_window_reason=override_window_reason,
    )
    run.publish_plan(plan)
    report = ReleaseReport(
        runbook=RUNBOOK,
        env=env,
        deploy_id=did,
        requested_by=run.requested_by,
        changes=changes,
        override_reason=override_window_reason,
    )
    return plan, report
