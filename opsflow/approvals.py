"""Approvals for protected environments.

``request_approval`` records a pending request in the ledger, notifies, and pauses the flow
run until somebody answers with an ``Approval`` (the Prefect UI's Resume form, ``opsflow
approve|reject``, or ``POST /api/flow_runs/{id}/resume``). Policy: the approver must be on the
environment's list, must differ from the requester when four-eyes is on, and must give a
reason. An answer that breaks the policy is recorded as ``refused`` and the run keeps waiting.
No valid answer before the timeout means **rejected**: nothing is changed.

Prefect OSS has no user accounts, so identity is declared; put the server behind its
basic-auth string or an authenticating proxy (docs/approvals.md).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from prefect.exceptions import FlowPauseTimeout
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from pydantic import Field

from opsflow.errors import ApprovalRejected
from opsflow.inventory import Approvals
from opsflow.ledger import ApprovalRow, Ledger
from opsflow.plans import Plan

POLL_SECONDS = 2
DECISIONS = ("approved", "rejected", "timed_out")


class Approval(RunInput):
    """The answer to an approval request (the UI builds its Resume form from these fields)."""

    approved: bool = Field(description="true to go ahead, false to reject")
    approver: str = Field(description="your name, as listed in the environment's approvers")
    reason: str = Field(description="why: a ticket, a change number, a sentence")


def policy_violation(answer: Approval, policy: Approvals, requested_by: str) -> str | None:
    """Why ``answer`` may not decide this request, or None when it may."""
    approver = answer.approver.strip()
    if not answer.reason.strip():
        return "a reason is required for approval and rejection"
    if approver not in policy.approvers:
        return f"{approver!r} is not an approver here (approvers: {', '.join(policy.approvers)})"
    if policy.four_eyes and approver == requested_by:
        return f"{approver!r} requested this run and cannot approve it (four-eyes rule)"
    return None


def request_approval(
    *,
    flow_run_id: str,
    action: str,
    env: str,
    policy: Approvals,
    plan: Plan,
    requested_by: str,
    ledger: Ledger,
    log: Callable[[str], None],
    notify: Callable[[str, str], None] | None = None,
    timeout_seconds: int | None = None,
) -> Approval:
    """Pause until a valid approval arrives; raise ``ApprovalRejected`` on reject or timeout."""
    timeout = timeout_seconds or int(policy.timeout.total_seconds())
    plan_md = plan.to_markdown()
    record = functools.partial(
        ledger.record_approval,
        flow_run_id=flow_run_id,
        action=action,
        env=env,
        requested_by=requested_by,
    )
    record(event="requested", plan=plan_md)
    message = (
        f"Approval needed: {action} on {env}, requested by {requested_by}. "
        f"Approvers: {', '.join(policy.approvers)}. Answer within {timeout}s with "
        f"`opsflow approve {flow_run_id} --as NAME --reason TEXT` (or reject), "
        f"or the Resume button of the run in the Prefect UI."
    )
    log(message)
    if notify is not None:
        notify(f"opsflow: approval needed for {action} on {env}", message + "\n\n" + plan_md)
    deadline = time.monotonic() + timeout
    while True:
        remaining = int(deadline - time.monotonic())
        if remaining < 1:
            return _timed_out(record, action, env, timeout)
        try:
            answer = pause_flow_run(
                wait_for_input=Approval, timeout=remaining, poll_interval=POLL_SECONDS
            )
        except FlowPauseTimeout:
            return _timed_out(record, action, env, timeout)
        violation = policy_violation(answer, policy, requested_by)
        event = "refused" if violation else ("approved" if answer.approved else "rejected")
        record(event=event, actor=answer.approver, reason=violation or answer.reason)
        if violation:
            log(f"Answer from {answer.approver!r} refused: {violation}. Still waiting.")
            continue
        if not answer.approved:
            raise ApprovalRejected(
                f"{action} on {env} rejected by {answer.approver}: {answer.reason}. "
                "Nothing was changed."
            )
        log(f"{action} on {env} approved by {answer.approver}: {answer.reason}")
        return answer


def _timed_out(record: Callable[..., Any], action: str, env: str, timeout: int) -> Approval:
    record(event="timed_out", reason=f"no valid answer within {timeout}s")
    raise ApprovalRejected(
        f"{action} on {env}: no valid approval within {timeout}s, treated as rejected. "
        "Nothing was changed."
    )


def resume_with_answer(run_id: str, *, approved: bool, approver: str, reason: str) -> None:
    """Answer a paused approval through the Prefect API (what the CLI's approve/reject do)."""
    from uuid import UUID

    from prefect.exceptions import NotPausedError, ObjectNotFound
    from prefect.flow_runs import resume_flow_run

    from opsflow.errors import InputError

    try:
        flow_run_id = UUID(run_id)
    except ValueError:
        raise InputError(
            "RUN_ID",
            f"{run_id!r} is not a flow run id",
            "copy the id from the UI or `opsflow history`",
        ) from None
    answer = {"approved": approved, "approver": approver, "reason": reason}
    try:
        resume_flow_run(flow_run_id, run_input=answer)
    except ObjectNotFound:
        raise InputError(
            "RUN_ID",
            f"no flow run {run_id} on this Prefect server",
            "check PREFECT_API_URL points at the server that runs it",
        ) from None
    except NotPausedError:
        raise InputError(
            "RUN_ID",
            f"run {run_id} is not waiting for approval",
            "only paused runs can be approved or rejected",
        ) from None
    except FlowPauseTimeout:
        raise InputError(
            "RUN_ID",
            f"run {run_id} can no longer be resumed (timed out)",
            "start the runbook again",
        ) from None
    except RuntimeError as exc:
        raise InputError(
            "RUN_ID", f"the server refused the answer: {exc}", "check the approval fields"
        ) from None


def final_decision(ledger: Ledger, flow_run_id: str) -> ApprovalRow | None:
    """The run's last rejection or timeout, if it ended that way (the server may have failed a
    timed-out paused run itself, so its state alone does not say why)."""
    events = [e for e in ledger.approval_events(flow_run_id) if e.event in DECISIONS]
    if events and events[-1].event in {"rejected", "timed_out"}:
        return events[-1]
    return None
