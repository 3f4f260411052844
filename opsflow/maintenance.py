"""Maintenance (``flows/maintenance.py``), the pure parts: what one maintenance step reports
(before and after figures), the run's report and its markdown, and which steps a variant runs.

Every maintenance task returns a ``MaintenanceStep``; the flow records it as a ledger step (its
``before`` / ``after`` figures in the step's details, where the capacity report and the next
run's window planning read them back).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from opsflow.reports import report_header

Variant = Literal["weekly", "monthly", "quarterly", "emergency"]
StepStatus = Literal["complete", "degraded", "failed", "skipped"]
Figure = float | int | str | None

RUNBOOK = "maintenance"


class MaintenanceStep(BaseModel):
    """What one maintenance step did, with the figures before and after it."""

    step: str
    target: str
    status: StepStatus = "complete"
    summary: str = ""
    before: dict[str, Figure] = Field(default_factory=dict)
    after: dict[str, Figure] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)
    seconds: float = 0.0

    def ledger_details(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after, **self.details}


class MaintenanceReport(BaseModel):
    """The report ``maintenance-<env>`` and the ledger run's details."""

    env: str
    variant: Variant
    requested_by: str
    window: str = ""
    reason: str | None = None
    approved_by: list[str] = Field(default_factory=list)
    backup: str = ""
    rollback: str = ""
    """Whether a rollback is possible: the newest backups verified / drill-passed, or why not."""
    maintenance_mode: str = "not configured"
    steps: list[MaintenanceStep] = Field(default_factory=list)
    outcome: str = "failed"
    error: str | None = None
    seconds: float = 0.0
    dry_run: bool = False

    @property
    def skipped(self) -> list[MaintenanceStep]:
        return [s for s in self.steps if s.status == "skipped"]

    @property
    def failed(self) -> list[MaintenanceStep]:
        return [s for s in self.steps if s.status == "failed"]

    @property
    def degraded(self) -> list[MaintenanceStep]:
        return [s for s in self.steps if s.status == "degraded"]

    def grade(self) -> str:
        """complete, degraded (a step degraded or was skipped) or failed."""
        if self.error or self.failed:
            return "failed"
        return "degraded" if self.degraded or self.skipped else "complete"

    def summary(self) -> str:
        done = sum(s.status in ("complete", "degraded") for s in self.steps)
        parts = [f"{self.variant}: {done}/{len(self.steps)} step(s) done"]
        for label, items in (
            ("failed", self.failed),
            ("degraded", self.degraded),
            ("skipped", self.skipped),
        ):
            if items:
                parts.append(f"{label}: " + ", ".join(f"{s.step} {s.target}" for s in items))
        if self.error:
            parts.append(self.error)
        return "; ".join(parts)


def _cell(value: Any) -> str:
    text = "-" if value is None or value == "" else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _figures(step: MaintenanceStep) -> list[str]:
    keys = list(dict.fromkeys([*step.before, *step.after]))
    return [f"{k}: {_cell(step.before.get(k))} → {_cell(step.after.get(k))}" for k in keys]


def render_maintenance_report(report: MaintenanceReport, started: datetime) -> str:
    title = f"Maintenance ({report.variant}): `{report.env}` **{report.outcome.upper()}**"
    lines = [
        *report_header(title, started, report.seconds, report.summary()),
        "",
        f"- requested by: {report.requested_by}",
        f"- approved by: {', '.join(report.approved_by) or '-'}",
        f"- window: {report.window or '-'}",
    ]
    if report.reason:
        lines.append(f"- reason: {report.reason}")
    lines += [
        f"- pre-maintenance backup: {report.backup or '-'}",
        f"- rollback possible: {report.rollback or '-'}",
        f"- maintenance mode: {report.maintenance_mode}",
        "",
        "## Steps",
        "",
        "| step | target | status | seconds | summary | before → after |",
        "|---|---|---|---|---|---|",
    ]
    for s in report.steps:
        lines.append(
            f"| {_cell(s.step)} | {_cell(s.target)} | {s.status} | {s.seconds:.1f} | "
            f"{_cell(s.summary)} | {_cell('; '.join(_figures(s)))} |"
        )
    if report.skipped:
        lines += ["", "## Skipped", ""]
        lines += [f"- **{s.step} {s.target}**: {s.summary}" for s in report.skipped]
    if report.error:
        lines += ["", f"**Error:** {report.error}"]
    return "\n".join(lines) + "\n"
