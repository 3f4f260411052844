"""Approvals for protected environments, by verified approvers.

``request_approval`` records a pending request in the ledger, notifies, and pauses the flow
run until somebody answers with an ``Approval`` (the Prefect UI's Resume form, ``opsflow
approve|reject``, or ``POST /api/flow_runs/{id}/resume``). Every answer carries a one-time code
(TOTP, RFC 6238) made from the approver's own secret, which the inventory holds as a reference
(``approvals.approvers.<name>.totp``). opsflow checks the code in constant time within one time
step either side, and spends it in the ledger (``used_codes``) before it judges the answer, so
a code read back from Prefect's API (which keeps every resume input) is worthless.

Policy: the approver must be listed and give their own valid, unused code and a reason, and
must differ from the requester when four-eyes is on. With ``required: N`` the run goes on after
N distinct approvers approved (none the requester under four-eyes); any valid rejection rejects.
An answer that breaks the policy is recorded as ``refused`` and the run keeps waiting. No
valid decision before the timeout means **rejected**: nothing is changed. The code and the
secrets are never logged or stored. Threat model: docs/approvals.md.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

import pyotp
from pydantic import ValidationError

from opsflow.errors import ApprovalRejected, InputError
from opsflow.inventory import Approvals, Environment
from opsflow.plans import Plan
from opsflow.secrets import resolve

if TYPE_CHECKING:  # the CLI's quick paths import this module without Prefect or SQLAlchemy
    from opsflow.approval_input import Approval
    from opsflow.ledger import ApprovalRow, Ledger

POLL_SECONDS = 2
DECISIONS = ("approved", "rejected", "timed_out")
WINDOW = 1
"""TOTP time steps accepted either side of now (RFC 6238 §5.2: one step of clock drift)."""
MIN_SECRET_BYTES = 16
"""RFC 4226 §4: a shared secret of at least 128 bits."""
UNKNOWN = "unknown"
NO_ANSWER = "the run was resumed without an answer (no approver, code, reason)"
NAME_CHARS = 64


class Answer(Protocol):
    """The fields of an answer (``opsflow.approval_input.Approval``, the Resume form)."""

    approved: bool
    approver: str
    code: str
    reason: str


def requester(env_name: str, env: Environment, requested_by: str) -> str:
    """Who asked for the run. A protected environment's run needs one (``InputError``
    otherwise, before any side effect); elsewhere a missing one is ``unknown``."""
    name = " ".join(requested_by.split())
    if len(name) > NAME_CHARS:
        raise InputError(
            "requested_by",
            f"is {len(name)} characters long",
            f"give a name of at most {NAME_CHARS}",
        )
    if env.protected and name.casefold() in ("", UNKNOWN):
        raise InputError(
            "requested_by",
            f"{env_name} is protected and this run names no requester",
            "say who asks: `opsflow run` sends $OPSFLOW_USER or your login name (or --as NAME); "
            "the Prefect UI's run form and the API take requested_by",
        )
    return name or UNKNOWN


def policy_violation(
    approver: str, reason: str, policy: Approvals, requested_by: str
) -> str | None:
    """Why this approver may not decide the request whatever their code, or None when they may
    (the CLI checks this before it sends an answer; the flow checks it again)."""
    if approver not in policy.approvers:
        return f"{approver!r} is not an approver here (approvers: {', '.join(policy.approvers)})"
    if not reason.strip():
        return "a reason is required for approval and rejection"
    if policy.four_eyes and approver.casefold() == requested_by.casefold():
        return f"{approver!r} requested this run and cannot approve it (four-eyes rule)"
    return None


def _totp(reference: str, field: str) -> pyotp.TOTP:
    """A TOTP from a secret reference (resolved, so registered for redaction)."""
    secret = resolve(reference, field)
    return totp_of(secret, field)


def totp_of(secret: str, field: str) -> pyotp.TOTP:
    """A TOTP for a base32 secret; a secret that is not base32 or shorter than 128 bits is an
    ``InputError`` (the message never holds the secret)."""
    cleaned = "".join(secret.split()).upper()
    try:
        raw = base64.b32decode(cleaned + "=" * (-len(cleaned) % 8))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) < MIN_SECRET_BYTES:
        raise InputError(
            field,
            "is not a base32 TOTP secret of at least 128 bits",
            'make one with `python -c "import pyotp; print(pyotp.random_base32())"`, add it to '
            "the approver's authenticator app and store it where the reference points",
        )
    return pyotp.TOTP(cleaned)


def matching_steps(totp: pyotp.TOTP, code: str, now: float) -> list[int]:
    """The time steps within ``WINDOW`` of ``now`` whose code is ``code`` (each compared in
    constant time, all of them compared)."""
    given = "".join(code.split()).encode()
    counter = totp.timecode(now)
    steps = range(counter - WINDOW, counter + WINDOW + 1)
    return [s for s in steps if hmac.compare_digest(totp.generate_otp(s).encode(), given)]


@dataclass
class Verifier:
    """The approvers' codes for one request: checks an answer's code and spends every code it
    matches (whoever's it is: an answer naming the wrong approver still shows the code)."""

    totps: dict[str, pyotp.TOTP]
    ledger: Ledger
    flow_run_id: str
    clock: Callable[[], float] = time.time

    @classmethod
    def for_policy(
        cls, env_name: str, policy: Approvals, ledger: Ledger, flow_run_id: str
    ) -> Verifier:
        field = f"environments.{env_name}.approvals.approvers"
        totps = {n: _totp(a.totp, f"{field}.{n}.totp") for n, a in policy.approvers.items()}
        return cls(totps, ledger, flow_run_id)

    def check(self, approver: str, code: str) -> str | None:
        """Spend the code; why it does not prove ``approver`` (None: it does, first use)."""
        now = self.clock()
        fresh: dict[str, bool] = {}
        for name, totp in self.totps.items():
            spent = [
                self.ledger.use_code(name, s, self.flow_run_id)
                for s in matching_steps(totp, code, now)
            ]
            if spent:
                fresh[name] = any(spent)
        if approver not in fresh:
            return f"wrong or expired one-time code for {approver!r}"
        if not fresh[approver]:
            return f"this one-time code of {approver!r} was used before (wait for the next one)"
        return None


def judge(
    answer: Answer,
    approver: str,
    policy: Approvals,
    requested_by: str,
    verifier: Verifier,
    approved_by: Iterable[str] = (),
) -> str | None:
    """Why ``answer`` may not count, or None when it does. Its code is spent first, whatever
    else is wrong with the answer: once sent, Prefect shows it to anyone who asks."""
    code_problem = verifier.check(approver, answer.code)
    if approver not in policy.approvers:
        return policy_violation(approver, answer.reason, policy, requested_by)
    problem = code_problem or policy_violation(approver, answer.reason, policy, requested_by)
    if problem is None and answer.approved and approver in approved_by:
        problem = f"{approver!r} approved already; the others must approve too"
    return problem


def _eligible(policy: Approvals, requested_by: str) -> list[str]:
    if not policy.four_eyes:
        return list(policy.approvers)
    return [n for n in policy.approvers if n.casefold() != requested_by.casefold()]


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
) -> list[Approval]:
    """Pause until ``policy.required`` valid approvals arrived (returned); raise
    ``ApprovalRejected`` on a valid rejection or the timeout, ``InputError`` before asking when
    the policy cannot be met or an approver's secret cannot be resolved."""
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import pause_flow_run

    from opsflow.approval_input import Approval

    eligible = _eligible(policy, requested_by)
    if len(eligible) < policy.required:
        raise InputError(
            f"environments.{env}.approvals.required",
            f"{policy.required} approvals are required but only {len(eligible)} approver(s) "
            f"other than the requester {requested_by!r} can give one",
            "list more approvers, lower required, or have someone else request the run",
        )
    verifier = Verifier.for_policy(env, policy, ledger, flow_run_id)
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
    needed = f"{policy.required} of " if policy.required > 1 else ""
    message = (
        f"Approval needed: {action} on {env}, requested by {requested_by}. Approvers: "
        f"{needed}{', '.join(eligible)}. Answer within {timeout}s with `opsflow approve "
        f"{flow_run_id} --as NAME --reason TEXT` (or reject; it asks for your one-time code), "
        "or the Resume button of the run in the Prefect UI."
    )
    log(message)
    if notify is not None:
        notify(f"opsflow: approval needed for {action} on {env}", message + "\n\n" + plan_md)
    approvals: dict[str, Approval] = {}
    deadline = time.monotonic() + timeout
    while True:
        remaining = int(deadline - time.monotonic())
        try:
            if remaining < 1:
                raise FlowPauseTimeout
            answer = pause_flow_run(
                wait_for_input=Approval, timeout=remaining, poll_interval=POLL_SECONDS
            )
        except FlowPauseTimeout:
            return _timed_out(record, action, env, timeout, len(approvals), policy.required)
        except ValidationError:  # resumed without an answer (its state set to Running)
            record(event="refused", reason=NO_ANSWER)
            log(f"{NO_ANSWER}. Still waiting.")
            continue
        approver = answer.approver.strip()[:NAME_CHARS]
        problem = judge(answer, approver, policy, requested_by, verifier, approvals)
        if problem:
            record(event="refused", actor=approver, reason=problem)
            log(f"Answer from {approver!r} refused: {problem}. Still waiting.")
            continue
        if not answer.approved:
            record(event="rejected", actor=approver, reason=answer.reason)
            raise ApprovalRejected(
                f"{action} on {env} rejected by {approver}: {answer.reason}. Nothing was changed."
            )
        approvals[approver] = answer
        done = len(approvals) >= policy.required
        record(event="approved" if done else "endorsed", actor=approver, reason=answer.reason)
        count = f" ({len(approvals)} of {policy.required})" if policy.required > 1 else ""
        log(f"{action} on {env} approved by {approver}{count}: {answer.reason}")
        if done:
            return list(approvals.values())


def _timed_out(
    record: Callable[..., Any], action: str, env: str, timeout: int, got: int, required: int
) -> list[Approval]:
    short = f" ({got} of {required} approvals)" if got else ""
    reason = f"no valid approval within {timeout}s{short}, treated as rejected"
    record(event="timed_out", reason=reason)
    raise ApprovalRejected(f"{action} on {env}: {reason}. Nothing was changed.")


def parse_run_id(run_id: str) -> UUID:
    """``run_id`` as a flow run id; anything else is bad input (checked before anything is
    asked of the approver)."""
    try:
        return UUID(run_id)
    except ValueError:
        raise InputError(
            "RUN_ID",
            f"{run_id!r} is not a flow run id",
            "copy the id from the UI or `opsflow history`",
        ) from None


def resume_with_answer(
    run_id: str, *, approved: bool, approver: str, code: str, reason: str
) -> None:
    """Answer a paused approval through the Prefect API (what the CLI's approve/reject do)."""
    from prefect.exceptions import FlowPauseTimeout, NotPausedError, ObjectNotFound
    from prefect.flow_runs import resume_flow_run

    flow_run_id = parse_run_id(run_id)
    answer = {"approved": approved, "approver": approver, "code": code, "reason": reason}
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


def events_after(ledger: Ledger, flow_run_id: str, seq: int) -> list[ApprovalRow]:
    """The run's approval events written after ledger seq ``seq`` (what an answer caused)."""
    return [e for e in ledger.approval_events(flow_run_id) if e.seq > seq]


def final_decision(ledger: Ledger, flow_run_id: str) -> ApprovalRow | None:
    """The run's last rejection or timeout, if it ended that way (the server may have failed a
    timed-out paused run itself, so its state alone does not say why)."""
    events = [e for e in ledger.approval_events(flow_run_id) if e.event in DECISIONS]
    if events and events[-1].event in {"rejected", "timed_out"}:
        return events[-1]
    return None
