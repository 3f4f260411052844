"""Answering approvals: ``approve`` and ``reject`` (checked against the local ledger's pending
request and the environment's policy before the answer is sent)."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.app import EXIT_BAD_INPUT, app, err, fail, out, use_server_if_running
from opsflow.errors import InputError
from opsflow.redaction import redact

RunId = Annotated[str, typer.Argument(help="the paused flow run id")]
Approver = Annotated[str, typer.Option("--as", help="your name, as in the approvers list")]
Reason = Annotated[str, typer.Option("--reason", help="why (required)")]


def _answer(run_id: str, approved: bool, as_user: str, reason: str) -> None:
    from opsflow.ledger import Ledger

    if not reason.strip():
        fail(EXIT_BAD_INPUT, "--reason: a reason is required (fix: say why, e.g. a ticket number)")
    pending = Ledger().pending_approval(run_id)
    if pending is not None:
        from opsflow.approvals import Approval, policy_violation
        from opsflow.inventory import load_inventory

        try:
            policy = load_inventory().environment(pending.env).approvals
        except InputError as exc:
            fail(EXIT_BAD_INPUT, str(exc))
        if policy is not None:
            answer = Approval(approved=approved, approver=as_user, reason=reason)
            violation = policy_violation(answer, policy, pending.requested_by)
            if violation:
                fail(EXIT_BAD_INPUT, f"--as {as_user}: {violation}")
    else:
        err.print(
            "note: no pending approval for this run in the local ledger; "
            "the flow will check the answer against its policy"
        )
    use_server_if_running()
    from opsflow.approvals import resume_with_answer

    try:
        resume_with_answer(run_id, approved=approved, approver=as_user, reason=reason)
    except InputError as exc:
        fail(EXIT_BAD_INPUT, str(exc))
    verb = "approved" if approved else "rejected"
    out.print(f"{verb} run {run_id} as {as_user}: {redact(reason)}")


@app.command()
def approve(
    run_id: RunId,
    as_user: Approver,
    reason: Reason,
) -> None:
    """Approve a paused run (four-eyes: not the requester; must be a listed approver)."""
    _answer(run_id, True, as_user, reason)


@app.command()
def reject(
    run_id: RunId,
    as_user: Approver,
    reason: Reason,
) -> None:
    """Reject a paused run; nothing is changed."""
    _answer(run_id, False, as_user, reason)
