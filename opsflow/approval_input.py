"""The answer to an approval request, as Prefect's ``RunInput``: the UI builds the paused
run's Resume form from these fields, and ``pause_flow_run`` validates an answer against it.

Kept apart from ``opsflow.approvals`` (the policy and the one-time codes), which the CLI imports
on its quick paths without Prefect.
"""

from __future__ import annotations

from prefect.input import RunInput
from pydantic import Field


class Approval(RunInput):
    """The answer to an approval request (the UI builds its Resume form from these fields)."""

    approved: bool = Field(description="true to go ahead, false to reject")
    approver: str = Field(description="your name, as listed in the environment's approvers")
    code: str = Field(
        repr=False,
        description="the 6-digit one-time code your authenticator app shows now (each code "
        "works once)",
    )
    reason: str = Field(description="why: a ticket, a change number, a sentence")
