"""Serve every deployment of prefect.yaml on this machine (what `make up` runs).

Each entry's entrypoint, parameters, schedules, tags and description come from prefect.yaml,
so that file stays the single source of what runs when. The ``env`` parameter's schema is
narrowed to the inventory's environment names, so the UI's run form offers a choice and the
server rejects an unknown environment before a run starts.

Warm starts: Prefect's runner starts each run of a flow it holds in a new process made with
multiprocessing's ``spawn`` (a fresh interpreter that imports Prefect and the runbook again:
~2 s before the first task). Here every run is a fork of one *forkserver* process that imported
the runbooks once when serving began (``warm_starts``): the run's process is fresh (its own
memory, environment, Prefect settings and log workers; nothing of an earlier run), only the
imports are already done. The consequence: a change to the code is served after `opsflow up`
restarts, as with any long-running service.
"""

from __future__ import annotations

import asyncio
import copyreg
import multiprocessing
import multiprocessing.forkserver
import os
import sys
from typing import Any

import prefect.flow_engine
from prefect import Flow
from prefect.deployments.runner import RunnerDeployment
from prefect.exceptions import TerminationSignal
from prefect.runner import Runner
from prefect.schedules import Cron, Schedule

from deployments.runbooks import PROJECT_DIR, flow_by_name, import_flow, read_deployment_specs
from opsflow.errors import InputError
from opsflow.inventory import load_inventory
from opsflow.settings import get_settings


def _schedules(spec: dict[str, Any]) -> list[Schedule]:
    result = []
    for item in spec.get("schedules") or []:
        if "cron" not in item:
            raise ValueError(f"deployment {spec['name']}: only cron schedules are served here")
        result.append(
            Cron(
                item["cron"],
                timezone=item.get("timezone", "UTC"),
                day_or=item.get("day_or", True),  # False: day-of-month AND day-of-week
                active=item.get("active", True),
                parameters=item.get("parameters") or {},  # requested_by: scheduler
            )
        )
    return result


def build_deployments(env_names: list[str]) -> list[tuple[Flow[..., Any], RunnerDeployment]]:
    """Each deployment of prefect.yaml with its flow (imported by module name, so a run's
    process finds it by reference)."""
    deployments = []
    for spec in read_deployment_specs():
        flow: Flow[..., Any] = import_flow(str(spec["entrypoint"]))
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
        deployments.append((flow, deployment))
    return deployments


async def _serve(deployments: list[tuple[Flow[..., Any], RunnerDeployment]], limit: int) -> None:
    runner = Runner(
        pause_on_shutdown=True, limit=limit, query_seconds=get_settings().runner_poll_seconds
    )
    for flow, deployment in deployments:
        deployment_id = await runner.aadd_deployment(deployment)
        # what Runner.add_flow does: the runner holds the flow, so a run starts from it
        # (prefect.flow_engine.run_flow_in_subprocess) instead of loading it from storage
        runner._deployment_registry.register_flow(deployment_id, flow)
    await runner.start()


class _Forkserver:
    """``multiprocessing`` as ``prefect.flow_engine`` sees it once ``warm_starts`` ran: the same
    module, except that the context it asks for (``spawn``, to start a run) is the forkserver."""

    def __getattr__(self, name: str) -> Any:
        return getattr(multiprocessing, name)

    @staticmethod
    def get_context(method: str | None = None) -> Any:
        return multiprocessing.get_context("forkserver")


def _reduce_flow(flow: Flow[..., Any]) -> Any:
    """A flow that is an attribute of its module travels to the run's process as its name
    (cloudpickle would copy its function by value, without the module's globals that its
    annotations name, e.g. ``Literal``); any other flow as cloudpickle makes it."""
    module, name = flow.fn.__module__, flow.fn.__name__
    if getattr(sys.modules.get(module), name, None) is flow:
        return flow_by_name, (module, name)
    return object.__reduce_ex__(flow, 2)


def warm_starts(modules: list[str]) -> None:
    """Start served runs as forks of a process that imported ``modules`` (see the module's
    docstring). Prefect 3.8's runner starts a flow it holds through
    ``prefect.flow_engine.run_flow_in_subprocess``, which takes its process context from the
    module's ``multiprocessing``: that is the one name replaced (test_warm_starts checks it)."""
    copyreg.pickle(Flow, _reduce_flow)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["deployments.runbooks", *modules])
    multiprocessing.forkserver.ensure_running()  # imports them now, not at the first run
    prefect.flow_engine.multiprocessing = _Forkserver()  # type: ignore[assignment]


def serve_all() -> None:
    """Serve all deployments until interrupted (Ctrl-C)."""
    os.environ.setdefault("OPSFLOW_PROJECT_DIR", str(PROJECT_DIR))
    env_names = sorted(load_inventory().environments)
    deployments = build_deployments(env_names)
    warm_starts(sorted({flow.fn.__module__ for flow, _ in deployments}))
    limit = int(os.environ.get("OPSFLOW_SERVE_LIMIT", "8"))
    try:
        asyncio.run(_serve(deployments, limit))
    except TerminationSignal:  # SIGTERM: stop like Ctrl-C (the runner pauses its deployments)
        raise KeyboardInterrupt from None


if __name__ == "__main__":
    serve_all()
