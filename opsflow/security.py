"""The security review's findings and report (pure: no I/O).

Each check of ``flows/security_review.py`` is a task returning a ``CheckOutcome``: what it
looked at (``summary``) and its ``findings``, each with a severity. A check that could not run
(an advisory source that does not parse, a lock file that is not there, an unreachable host)
is ``usable=False`` and carries a high finding saying so: the review never reports "no
vulnerabilities" for packages it could not match. The run is Completed when no finding is
high or critical, Failed otherwise.
"""

from __future__ import annotations

from collections import Counter
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

RUNBOOK = "security-review"


class Severity(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"

    @property
    def rank(self) -> int:
        return {"critical": 3, "high": 2, "medium": 1, "low": 0}[self.value]


FAILING = (Severity.CRITICAL, Severity.HIGH)


class SecurityFinding(BaseModel):
    """One finding: ``check`` (dependencies, images, tls, logins, secrets_age, access), the
    ``target`` it is about (a package in an environment, a URL, an IP, a role…) and what is
    wrong, with the fix where there is one."""

    severity: Severity
    check: str
    target: str
    summary: str
    details: dict[str, Any] = Field(default_factory=dict)


class CheckOutcome(BaseModel):
    """What one check task saw. ``usable`` is False when the check could not run at all."""

    check: str
    target: str
    summary: str
    findings: list[SecurityFinding] = Field(default_factory=list)
    usable: bool = True
    details: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def unusable(cls, check: str, target: str, problem: str, fix: str) -> CheckOutcome:
        """The check could not run: one high finding naming why and the fix."""
        summary = f"{problem} (fix: {fix})"
        finding = SecurityFinding(
            severity=Severity.HIGH, check=check, target=target, summary=summary
        )
        return cls(check=check, target=target, summary=summary, findings=[finding], usable=False)

    @property
    def worst(self) -> Severity | None:
        return max((f.severity for f in self.findings), key=lambda s: s.rank, default=None)


def by_severity(findings: list[SecurityFinding]) -> list[SecurityFinding]:
    """Most severe first, then by check and target."""
    return sorted(findings, key=lambda f: (-f.severity.rank, f.check, f.target))


class SecurityReport(BaseModel):
    """The review's result (what `opsflow run security-review --json` prints)."""

    env: str
    findings: list[SecurityFinding] = Field(default_factory=list)
    checks: list[CheckOutcome] = Field(default_factory=list)
    incident_run: str | None = None
    dry_run: bool = False

    def add(self, outcome: CheckOutcome) -> None:
        self.checks.append(outcome.model_copy(update={"findings": []}))
        self.findings = by_severity([*self.findings, *outcome.findings])

    @property
    def counts(self) -> dict[str, int]:
        counted = Counter(f.severity.value for f in self.findings)
        return {s.value: counted.get(s.value, 0) for s in Severity}

    @property
    def passed(self) -> bool:
        return not any(f.severity in FAILING for f in self.findings)

    def summary(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in self.counts.items() if n) or "no findings"
        unusable = [c.check + " " + c.target for c in self.checks if not c.usable]
        tail = f"; could not check: {', '.join(unusable)}" if unusable else ""
        return f"{len(self.checks)} check(s): {counts}{tail}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_security_report(report: SecurityReport) -> str:
    """The markdown report: the counts, every finding (most severe first), every check."""
    lines = [
        f"# Security review of {report.env}: {'passed' if report.passed else 'FAILED'}",
        "",
        report.summary(),
        "",
    ]
    if report.incident_run:
        lines += [f"Critical findings opened incident run `{report.incident_run}`.", ""]
    lines += ["## Findings", ""]
    if report.findings:
        lines += ["| severity | check | target | summary |", "|---|---|---|---|"]
        lines += [
            f"| {f.severity.value} | {f.check} | {_cell(f.target)} | {_cell(f.summary)} |"
            for f in report.findings
        ]
    else:
        lines.append("None.")
    lines += ["", "## Checks", "", "| check | target | result |", "|---|---|---|"]
    lines += [f"| {c.check} | {_cell(c.target)} | {_cell(c.summary)} |" for c in report.checks]
    return "\n".join(lines) + "\n"


def finding_rows(report: SecurityReport) -> list[dict[str, str]]:
    """The findings table artifact's rows."""
    return [
        {"severity": f.severity.value, "check": f.check, "target": f.target, "summary": f.summary}
        for f in report.findings
    ]
