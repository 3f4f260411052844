"""Serve every deployment of prefect.yaml on this machine (what `make up` runs).

Each entry's entrypoint, parameters, schedules, tags and description come from prefect.yaml,
so that file stays the single source of what runs when. The ``env`` parameter's schema is
narrowed to the inventory's environment names, so the UI's run form offers a choice and the
server rejects an unknown environment before a run starts.
"""

from __future__ import annotations

import os
from typing import Any

from prefect import Flow, serve
from prefect.deployments.runner import RunnerDeployment
from prefect.flows import load_flow_from_entrypoint
from prefect.schedules import Cron, Schedule

from deployments.runbooks import PROJECT_DIR, read_deployment_specs
from opsflow.errors import InputError
from opsflow.inventory import load_inventory


def _schedules(spec: dict[str, Any]) -> list[Schedule]:
    result = []
    for item in spec.get("schedules") or []:
        if "cron" not in item:
            raise ValueError(f"deployment {spec['name']}: only cron schedules are served here")
        result.append(
            Cron(
                item["cron"],
                timezone=item.get("timezone", "UTC"),
                active=item.get("active", True),
                parameters=item.get("parameters") or {},  # requested_by: scheduler
            )
        )
    return result


def build_deployments(env_names: list[str]) -> list[RunnerDeployment]:
    deployments = []
    for spec in read_deployment_specs():
        flow: Flow[..., Any] = load_flow_from_entrypoint(str(PROJECT_DIR / spec["entrypoint"]))
        deployment: RunnerDeployment = flow.to_deployment(  # type: ignore[assignment]
            name=spec["name"],
            description=spec.get("description"),
            tags=spec.get("tags") or [],
            parameters=spec.get("parameters") or {},
            schedules=_schedules(spec),
        )
        env_schema = deployment._parameter_openapi_schema.properties.get("env")
        if env_schema is not None:
            env_schema["enum"] = sorted(env_names)
            chosen = (spec.get("parameters") or {}).get("env", env_schema.get("default"))
            if chosen not in env_names:
                raise InputError(
                    f"prefect.yaml: deployments[{spec['name']}].parameters.env",
                    f"environment {chosen!r} is not in the inventory ({', '.join(env_names)})",
                    "set parameters.env to one of those, or add it to the inventory",
                )
        deployments.append(deployment)
    return deployments


def serve_all() -> None:
    """Serve all deployments until interrupted (Ctrl-C)."""
    os.environ.setdefault("OPSFLOW_PROJECT_DIR", str(PROJECT_DIR))
    env_names = sorted(load_inventory().environments)
    deployments = build_deployments(env_names)
    serve(*deployments, limit=int(os.environ.get("OPSFLOW_SERVE_LIMIT", "8")))


if __name__ == "__main__":
    serve_all()
