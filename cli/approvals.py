"""Answering approvals: ``approve`` and ``reject``.

The answer carries the approver's one-time code: ``--code`` (it lands in shell history, but it
is worthless once used or after ~90 s), else made from ``OPSFLOW_APPROVER_SECRET`` (the
approver's own TOTP secret), else asked for without echo. The policy is checked against the
local ledger's pending request and the inventory before the answer is sent (only the flow can
check the code); then the command waits a little for the flow's verdict in the ledger."""

from __future__ import annotations

import time
from typing import Annotated

import click
import typer

from cli.app import EXIT_BAD_INPUT, app, err, fail, out, use_server_if_running
from opsflow.errors import InputError
from opsflow.redaction import redact, register_secret

RunId = Annotated[str, typer.Argument(help="the paused flow run id")]
Approver = Annotated[str, typer.Option("--as", help="your name, as in the approvers list")]
Reason = Annotated[str, typer.Option("--reason", help="why (required)")]
Code = Annotated[
    str | None,
    typer.Option(
        "--code",
        help="your one-time code (lands in shell history; default: made from "
        "$OPSFLOW_APPROVER_SECRET, else asked for without echo)",
    ),
]
VERDICT_WAIT_SECONDS = 20.0
"""How long approve/reject wait for the flow's verdict (it polls every 2 s)."""


def _code(as_user: str, given: str | None) -> str:
    """The one-time code: given, made from the approver's own secret, or typed (no echo)."""
    from opsflow.settings import get_settings

    if given is not None:
        return given
    secret = get_settings().approver_secret
    if secret is not None:
        from opsflow.approvals import totp_of

        value = secret.get_secret_value()
        register_secret(value)
        try:
            return totp_of(value, "OPSFLOW_APPROVER_SECRET").now()
        except InputError as exc:
            fail(EXIT_BAD_INPUT, str(exc))
    try:
        typed: str = typer.prompt(f"one-time code of {as_user}", hide_input=True, err=True)
    except click.exceptions.Abort:
        fail(
            EXIT_BAD_INPUT,
            "no one-time code given (fix: type the code your authenticator app shows, or set "
            "OPSFLOW_APPROVER_SECRET to your own TOTP secret, or pass --code)",
        )
    return typed


def _answer(run_id: str, approved: bool, as_user: str, reason: str, code: str | None) -> None:
    from opsflow.approvals import events_after, parse_run_id, policy_violation, resume_with_answer
    from opsflow.ledger import Ledger

    try:
        parse_run_id(run_id)
    except InputError as exc:
        fail(EXIT_BAD_INPUT, str(exc))
    if not reason.strip():
        fail(EXIT_BAD_INPUT, "--reason: a reason is required (fix: say why, e.g. a ticket number)")
    ledger = Ledger()
    pending = ledger.pending_approval(run_id)
    if pending is not None:
        from opsflow.inventory import load_inventory

        try:
            policy = load_inventory().environment(pending.env).approvals
        except InputError as exc:
            fail(EXIT_BAD_INPUT, str(exc))
        if policy is not None:
            violation = policy_violation(as_user, reason, policy, pending.requested_by)
            if violation:
                fail(EXIT_BAD_INPUT, f"--as {as_user}: {violation}")
    else:
        err.print(
            "note: no pending approval for this run in the local ledger; "
            "the flow will check the answer against its policy"
        )
    one_time = _code(as_user, code)
    seen = max((e.seq for e in ledger.approval_events(run_id)), default=0)
    use_server_if_running()
    try:
        resume_with_answer(
            run_id, approved=approved, approver=as_user, code=one_time, reason=reason
        )
    except InputError as exc:
        fail(EXIT_BAD_INPUT, str(exc))
    verb = "approval" if approved else "rejection"
    if pending is None:
        out.print(f"sent the {verb} of run {run_id} as {as_user}: {redact(reason)}")
        return
    deadline = time.monotonic() + VERDICT_WAIT_SECONDS
    while time.monotonic() < deadline:
        for event in events_after(ledger, run_id, seen):
            if event.actor != as_user:
                continue  # another approver's answer
            if event.event == "refused":
                fail(EXIT_BAD_INPUT, f"the run refused the {verb} as {as_user}: {event.reason}")
            out.print(f"{event.event} run {run_id} as {as_user}: {redact(reason)}")
            return
        time.sleep(0.5)
    out.print(
        f"sent the {verb} of run {run_id} as {as_user}; the run has not answered yet "
        "(see its log, or `opsflow history`)"
    )


@app.command()
def approve(
    run_id: RunId,
    as_user: Approver,
    reason: Reason,
    code: Code = None,
) -> None:
    """Approve a paused run with your one-time code (four-eyes: not the requester; must be a
    listed approver)."""
    _answer(run_id, True, as_user, reason, code)


@app.command()
def reject(
    run_id: RunId,
    as_user: Approver,
    reason: Reason,
    code: Code = None,
) -> None:
    """Reject a paused run with your one-time code; nothing is changed."""
    _answer(run_id, False, as_user, reason, code)
