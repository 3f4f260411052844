"""The runbooks opsflow knows: name -> flow, plan builder and served deployment name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flows.backup import backup, plan_backup
from flows.dr_drill import dr_drill, plan_dr_drill
from flows.health_check import health_check, plan_health_check
from flows.restore import plan_restore, restore
from opsflow.errors import InputError
from opsflow.inventory import Environment
from opsflow.plans import Plan


@dataclass(frozen=True)
class Runbook:
    name: str
    flow: Any
    plan: Callable[[str, Environment], Plan]
    deployment: str

    @property
    def deployment_name(self) -> str:
        """``<flow name>/<deployment name>`` as Prefect addresses it."""
        return f"{self.flow.name}/{self.deployment}"


RUNBOOKS: dict[str, Runbook] = {
    "health-check": Runbook("health-check", health_check, plan_health_check, "daily"),
    "backup": Runbook("backup", backup, plan_backup, "nightly"),
    "restore": Runbook("restore", restore, plan_restore, "manual"),
    "dr-drill": Runbook("dr-drill", dr_drill, plan_dr_drill, "monthly"),
}


def get_runbook(name: str) -> Runbook:
    try:
        return RUNBOOKS[name]
    except KeyError:
        raise InputError(
            "runbook", f"unknown runbook {name!r}", f"choose one of: {', '.join(sorted(RUNBOOKS))}"
        ) from None
