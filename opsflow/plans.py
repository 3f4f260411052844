"""Plans: the ordered steps a runbook will take, built before anything is touched.

A plan is a pure function of inventory + parameters. ``--dry-run`` stops after publishing it;
approvals show it; unit tests check it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class PlanStep(BaseModel):
    action: str = Field(description="task name, verb_object")
    target: str = Field(description="the one system this step touches")
    why: str = Field(description="the reason, in the operator's words")
    changes: bool = Field(False, description="True when the step changes something")


class Plan(BaseModel):
    runbook: str
    env: str
    steps: list[PlanStep]
    parameters: dict[str, Any] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)

    @property
    def changes_anything(self) -> bool:
        return any(step.changes for step in self.steps)

    def to_markdown(self) -> str:
        lines = [f"## Plan: {self.runbook} on `{self.env}`", ""]
        if self.parameters:
            params = ", ".join(f"`{k}={v}`" for k, v in sorted(self.parameters.items()))
            lines += [f"Parameters: {params}", ""]
        lines += ["| # | action | target | changes | why |", "|---|---|---|---|---|"]
        for number, step in enumerate(self.steps, start=1):
            mark = "yes" if step.changes else "no"
            lines.append(f"| {number} | `{step.action}` | {step.target} | {mark} | {step.why} |")
        if self.notes:
            lines += ["", *[f"- {note}" for note in self.notes]]
        return "\n".join(lines) + "\n"
