"""Small result models that tasks return and that reports and the ledger understand."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field


class Status(StrEnum):
    HEALTHY = "healthy"
    DEGRADED = "degraded"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return {"healthy": 0, "degraded": 1, "critical": 2}[self.value]


def worst(statuses: list[Status]) -> Status:
    """The overall status: the worst of the parts (healthy when there are none)."""
    return max(statuses, key=lambda s: s.rank, default=Status.HEALTHY)


def grade(value: float, degraded_at: float, critical_at: float | None = None) -> Status:
    """Grade a 'higher is worse' value against thresholds."""
    if critical_at is not None and value >= critical_at:
        return Status.CRITICAL
    if value >= degraded_at:
        return Status.DEGRADED
    return Status.HEALTHY


class CheckResult(BaseModel):
    """The outcome of one health check against one target."""

    check: str = Field(description="what was checked, e.g. endpoint, postgres, disk")
    target: str = Field(description="which thing, e.g. the endpoint or database name")
    status: Status
    summary: str
    details: dict[str, Any] = Field(default_factory=dict)
    duration_ms: int = 0

    @classmethod
    def failed(cls, check: str, target: str, error: BaseException | str) -> CheckResult:
        """A check that could not run at all is critical, with the reason as summary."""
        text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        return cls(check=check, target=target, status=Status.CRITICAL, summary=text)
