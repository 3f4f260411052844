"""The runbooks opsflow knows, read from prefect.yaml: the one source of names, entrypoints,
deployments and schedules.

A runbook's name is its flow function's name with ``-`` for ``_`` (``flows/dr_drill.py:dr_drill``
is ``dr-drill``, which is also the flow's Prefect name); its plan builder is ``plan_<function>``
in the same module; its default deployment is the first entry of prefect.yaml with that
entrypoint. Flow modules are imported only when a runbook is used, so the CLI does not pay for
every runbook's imports.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from opsflow.errors import InputError
from opsflow.plans import Plan

PROJECT_DIR = Path(__file__).resolve().parent.parent
PREFECT_YAML = PROJECT_DIR / "prefect.yaml"


def read_deployment_specs(path: Path = PREFECT_YAML) -> list[dict[str, Any]]:
    """The ``deployments:`` entries of prefect.yaml."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    specs = data.get("deployments") or []
    if not isinstance(specs, list) or not specs:
        raise ValueError(f"{path}: no deployments listed (fix: add entries under `deployments:`)")
    return specs


def import_flow(entrypoint: str) -> Any:
    """The flow of a prefect.yaml entrypoint (``flows/<module>.py:<function>``), imported by
    module name."""
    path, function = entrypoint.split(":")
    return flow_by_name(path.removesuffix(".py").replace("/", "."), function)


def flow_by_name(module: str, function: str) -> Any:
    """The flow ``function`` of ``module`` (how a served flow travels to its run's process)."""
    return getattr(importlib.import_module(module), function)


@dataclass(frozen=True)
class Runbook:
    name: str
    entrypoint: str
    """``flows/<module>.py:<function>``, as in prefect.yaml."""
    deployment: str
    """The default deployment's name (the first of prefect.yaml for this entrypoint)."""

    @property
    def module(self) -> str:
        return self.entrypoint.split(":")[0].removesuffix(".py").replace("/", ".")

    @property
    def function(self) -> str:
        return self.entrypoint.split(":")[1]

    @property
    def flow(self) -> Any:
        return import_flow(self.entrypoint)

    @property
    def plan(self) -> Callable[..., Plan]:
        plan: Callable[..., Plan] = getattr(
            importlib.import_module(self.module), f"plan_{self.function}"
        )
        return plan

    @property
    def deployment_name(self) -> str:
        """``<flow name>/<deployment name>`` as Prefect addresses it."""
        return f"{self.name}/{self.deployment}"


@cache
def runbooks() -> dict[str, Runbook]:
    """Every runbook of prefect.yaml, by name."""
    found: dict[str, Runbook] = {}
    for spec in read_deployment_specs():
        entrypoint = str(spec["entrypoint"])
        name = entrypoint.split(":")[1].replace("_", "-")
        found.setdefault(name, Runbook(name, entrypoint, str(spec["name"])))
    return found


def get_runbook(name: str) -> Runbook:
    known = runbooks()
    try:
        return known[name]
    except KeyError:
        raise InputError(
            "runbook", f"unknown runbook {name!r}", f"choose one of: {', '.join(sorted(known))}"
        ) from None
