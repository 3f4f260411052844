"""Rotate a secret (issue 14, seed 002 "rotate credentials"): a PostgreSQL role's password,
a Redis ACL user's password or an application's API key, with every consumer rolled onto the
new value and nothing left half-done.

Order, per secret: plan -> approval on protected environments -> the environment lock ->
read the current value from the store (kept in memory only, for a rollback) -> it works now
-> the new credential valid (the old one too, where the system allows it) -> the store holds
the new value -> each Docker consumer recreated with it, one at a time, and each Kubernetes
deployment restarted -> log in with the new value, every consumer healthy -> revoke the old
-> ledger step ``rotated`` (target: the secret's name; the security review's secrets-age check
reads it) -> the replaced containers removed.

A failure before the revoke rolls back what was done: the store gets the old value back, the
old value is valid again (PostgreSQL: ALTER ROLE to it), the consumers go back to it, the new
credential is made invalid (Redis: its password removed; API: the new key revoked), and the old
one is checked; the ledger records a ``rollback`` step and the run ends ``rolled-back``
(Prefect: Failed). ``secret_name=due`` rotates every secret whose ``rotate_every`` has passed.

Values never leave memory: they are ``SecretValue`` objects (masked, unserialisable),
registered for redaction when made or read; no step, log line, report or state message
carries one.
docs/runbooks/rotate-secret.md tells the whole story.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any

from prefect.states import Completed, Failed, State

from flows.common import LOCK_WAIT_SECONDS, ApprovalWait, LockWait, RunbookRun, runbook_flow
from opsflow.inventory import DockerConsumer, Environment, RotatedSecret
from opsflow.ledger import Ledger, utcnow
from opsflow.plans import Plan
from opsflow.redaction import redact
from opsflow.reports import publish_markdown
from opsflow.rotation import (
    DUE,
    ROLLBACK_STEP,
    ROTATED_STEP,
    RUNBOOK,
    RotationReport,
    SecretRotation,
    SecretValue,
    build_plan,
    choose,
    consumer_targets,
    last_rotations,
    render_rotation_report,
)
from tasks.rotation.credentials import Consumers, Created, Credential
from tasks.rotation.store import StoredSecret, read_secret_store, write_secret_store

HISTORY_ROWS = 5000
"""How many ``rotated`` step rows ``secret_name=due`` reads to find each secret's last rotation."""


def _last(ledger: Ledger, env_name: str) -> dict[str, datetime]:
    rows = ledger.step_history(env_name, ROTATED_STEP, runbook=RUNBOOK, limit=HISTORY_ROWS)
    return last_rotations(rows)


def plan_rotate_secret(
    env_name: str,
    env: Environment,
    secret_name: str = DUE,
    last: dict[str, datetime] | None = None,
    now: datetime | None = None,
) -> Plan:
    """The rotation plan (pure but for ``secret_name=due`` without ``last``: then the ledger's
    ``rotated`` steps are read, read only). Bad input raises InputError here."""
    if last is None:
        last = _last(Ledger(), env_name) if secret_name == DUE else {}
    chosen = choose(env_name, env, secret_name, last, now or utcnow())
    return build_plan(env_name, env, chosen, secret_name)


# --- one secret -------------------------------------------------------------------------------


@dataclass
class Progress:
    """What a rotation of one secret has done so far: what a rollback must undo."""

    old: StoredSecret | None = None
    value: SecretValue | None = None  # a generated password, known before it is set
    created: Created | None = None
    attempted_create: bool = False
    stored: bool = False
    rolled_docker: list[DockerConsumer] = field(default_factory=list)
    restarted: list[str] = field(default_factory=list)
    revoking: bool = False

    @property
    def changed(self) -> bool:
        return self.attempted_create or self.stored


def _rotate(run: RunbookRun, index: int, secret: RotatedSecret, outcome: SecretRotation) -> None:
    """Rotate ``secret``; roll back on a failure before the revoke. Fills in ``outcome``."""
    started = time.monotonic()
    done = Progress()
    credential = Credential(run.env_name, run.env, index, secret)
    consumers = Consumers(run.env, secret)
    try:
        _forward(run, secret, credential, consumers, done)
        outcome.status = "rotated"
        _clean_up(run, secret, consumers, outcome)
    except Exception as exc:  # noqa: BLE001 - reported; rolled back when anything changed
        outcome.error = redact(str(exc) or type(exc).__name__)
        if done.revoking:
            outcome.status = "failed"
            outcome.error += (
                " (the new value is in the store and every consumer uses it; the old one may "
                "still be valid: revoke it by hand, see docs/runbooks/rotate-secret.md)"
            )
        elif not done.changed:
            outcome.status = "failed"
            outcome.error += " Nothing was changed."
        else:
            _roll_back(run, secret, credential, consumers, done, outcome)
    outcome.seconds = round(time.monotonic() - started, 3)


def _forward(
    run: RunbookRun,
    secret: RotatedSecret,
    credential: Credential,
    consumers: Consumers,
    done: Progress,
) -> None:
    name, store, k8s = secret.name, secret.store, run.env.kubernetes
    with run.step("read_secret_store", store.describe()) as step:
        done.old = read_secret_store(store, secret.kind, k8s)
        step.summary = "current value read (kept in memory only)"
        if done.old.key_id:
            step.summary += f"; key id {done.old.key_id}"
    with run.step("check_current_credential", name) as step:
        step.result(credential.check(done.old.value))
    with run.step("create_credential", name) as step:
        done.value = credential.new_value()
        done.attempted_create = done.value is not None  # a password may be set, then fail
        done.created = credential.create(done.value)
        done.attempted_create = True
        step.summary = done.created.summary
    new = done.created
    with run.step("write_secret_store", store.describe()) as step:
        done.stored = True
        step.result(write_secret_store(store, secret.kind, new.value, new.key_id, k8s))
    deploy_id = f"rotate-secret:{run.flow_run_id}:{name}"
    for consumer in secret.consumers.docker:
        with run.step("roll_consumer", f"docker {consumer.service}") as step:
            summary = consumers.roll_docker(consumer, new.value, deploy_id, done.rolled_docker)
            step.summary = summary
    ns = k8s.namespace if k8s else "-"
    for deployment in secret.consumers.kubernetes:
        with run.step("roll_consumer", f"deployment {ns}/{deployment}") as step:
            done.restarted.append(deployment)
            step.summary = consumers.restart(deployment)
    with run.step("verify_credential", name) as step:
        step.result(credential.check(new.value))
    for consumer in secret.consumers.docker:
        with run.step("check_consumer", f"docker {consumer.service}") as step:
            step.summary = consumers.check_docker(consumer)
    for deployment in secret.consumers.kubernetes:
        with run.step("check_consumer", f"deployment {ns}/{deployment}") as step:
            step.summary = consumers.check_deployment(deployment)
    done.revoking = True
    with run.step("revoke_credential", name) as step:
        step.summary = credential.revoke_old(done.old)
    with run.step(ROTATED_STEP, name) as step:
        rolled = consumer_targets(run.env, secret)
        step.summary = f"{secret.kind} {name} rotated; {len(rolled)} consumer(s) on the new value"
        step.details = {
            "kind": secret.kind,
            "store": store.describe(),
            "consumers": rolled,
            "key_id": new.key_id,
        }


def _clean_up(
    run: RunbookRun, secret: RotatedSecret, consumers: Consumers, outcome: SecretRotation
) -> None:
    """After ``rotated``: the replaced containers go (they hold the old value)."""
    for consumer in secret.consumers.docker:
        try:
            with run.step("remove_previous_container", f"docker {consumer.service}") as step:
                step.summary = consumers.remove_previous(consumer)
        except Exception as exc:  # noqa: BLE001 - the rotation is done; the run fails
            outcome.status = "failed"
            outcome.error = (
                f"rotated, but the replaced container of {consumer.service} was not removed: "
                f"{redact(str(exc))} (fix: docker rm it; it holds the old value)"
            )


def _roll_back(
    run: RunbookRun,
    secret: RotatedSecret,
    credential: Credential,
    consumers: Consumers,
    done: Progress,
    outcome: SecretRotation,
) -> None:
    """Undo what ``done`` says was done, each action a step; then the ``rollback`` step."""
    name, store, k8s, old = secret.name, secret.store, run.env.kubernetes, done.old
    assert old is not None  # nothing changes before the old value is read
    problems: list[str] = []

    def attempt(step_name: str, target: str, action: Callable[[], str | None]) -> None:
        try:
            with run.step(step_name, target) as step:
                step.summary = action() or "nothing to do"
            outcome.rollback.append(f"{step_name} {target}: done")
        except Exception as exc:  # noqa: BLE001 - every undo is tried; each failure reported
            problems.append(f"{step_name} {target}: {redact(str(exc))}")

    if done.stored:
        attempt(
            "restore_secret_store",
            store.describe(),
            lambda: write_secret_store(store, secret.kind, old.value, old.key_id, k8s),
        )
    if done.attempted_create and secret.kind == "postgres_role":  # elsewhere it stayed valid
        attempt("restore_credential", name, lambda: credential.put_back(old))
    for consumer in reversed(done.rolled_docker):
        attempt(
            "roll_back_consumer",
            f"docker {consumer.service}",
            partial(consumers.roll_back_docker, consumer),
        )
    ns = k8s.namespace if k8s else "-"
    for deployment in reversed(done.restarted):
        attempt(
            "roll_back_consumer",
            f"deployment {ns}/{deployment}",
            partial(consumers.restart, deployment),
        )
    if done.attempted_create:
        attempt(
            "retire_new_credential", name, lambda: credential.retire_new(done.created, done.value)
        )
    attempt("check_current_credential", name, lambda: credential.check(old.value))
    if problems:
        outcome.status = "failed"
        outcome.rollback += problems
        summary = "rollback incomplete: " + " | ".join(problems)
        run.record(
            ROLLBACK_STEP,
            name,
            "failed",
            summary + " (fix: see docs/runbooks/rotate-secret.md, 'By hand')",
        )
    else:
        outcome.status = "rolled-back"
        summary = f"rolled back: the old value of {name} is valid, stored and in use again"
        run.record(ROLLBACK_STEP, name, "complete", summary)


# --- the flow ---------------------------------------------------------------------------------


@runbook_flow(
    RUNBOOK,
    "Rotate a secret (PostgreSQL role password, Redis ACL password, API key) or every due "
    "one: new credential, store, consumers rolled, verified, old revoked; rolled back on "
    "failure.",
    timeout_seconds=4 * 3600,
)
def rotate_secret(
    env: str = "local",
    *,
    requested_by: str,
    secret_name: str = DUE,
    dry_run: bool = False,
    approval_timeout_seconds: ApprovalWait = None,
    wait_for_lock: LockWait = LOCK_WAIT_SECONDS,
) -> State[Any]:
    """Rotate a secret of ``env`` (or every due one) and roll its consumers onto it.

    Args:
        env: environment name from the inventory.
        secret_name: the name of one of the environment's `secrets`, or `due` (default): every
            secret whose rotate_every has passed since its last rotation (or never rotated).
        dry_run: only publish the plan.
        requested_by: who asks for this run (required; on a protected environment the
            approvers must be others, docs/approvals.md; schedules send `scheduler`).
        approval_timeout_seconds: how long to wait for approval (default: the inventory's).
        wait_for_lock: seconds to wait for the environment lock after approval (0: fail at once).
    """
    run = RunbookRun.start(RUNBOOK, env, requested_by)
    last = _last(run.ledger, env) if secret_name == DUE else {}
    chosen = choose(env, run.env, secret_name, last, utcnow())
    plan = build_plan(env, run.env, chosen, secret_name)
    run.publish_plan(plan)
    report = RotationReport(env=env, secret_name=secret_name, dry_run=dry_run)
    for _index, s in chosen:
        report.secrets.append(
            SecretRotation(
                name=s.name,
                kind=s.kind,
                store=s.store.describe(),
                consumers=consumer_targets(run.env, s),
            )
        )
    if dry_run:
        return Completed(message="dry run: plan published", data=report)
    if chosen:
        if run.env.protected and run.env.approvals is not None:
            run.approve(plan, approval_timeout_seconds)  # a rejection is recorded and raised
        with run.exclusive(wait_for_lock):
            for (index, s), outcome in zip(chosen, report.secrets, strict=True):
                _rotate(run, index, s, outcome)
    return _conclude(run, report)


def _conclude(run: RunbookRun, report: RotationReport) -> State[Any]:
    """Publish the report, record the run, notify (when something was rotated or tried) and
    end Completed or Failed."""
    env = run.env_name
    report.seconds = round(run.elapsed, 3)
    markdown = render_rotation_report(report, run.started_at)
    publish_markdown(run.key, markdown, f"Rotation on {env}")
    parts = [f"{s.name}: {s.status}" + (f" ({s.error})" if s.error else "") for s in report.secrets]
    summary = "; ".join(parts) or "nothing to rotate (nothing is due)"
    status = report.status
    run.finish(
        status,
        summary,
        {"secrets": [s.model_dump(mode="json") for s in report.secrets]},
    )
    send = run.notifier()
    if send is not None and report.secrets:
        send(f"opsflow: rotate-secret on {env} {status.upper()}", markdown)
    if status != "complete":
        return Failed(message=f"rotate-secret on {env} {status}: {summary}", data=report)
    return Completed(message=f"rotate-secret on {env}: {summary}", data=report)
