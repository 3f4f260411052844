"""Environment locks: Prefect global concurrency limits of limit 1, created (strict) by
opsflow, and who holds one (the holder tags its flow run ``opsflow-holds:<lock>``).
``flows.common.RunbookRun.exclusive`` takes them; see its module docstring."""

from __future__ import annotations

import uuid

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import StateType
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

HOLDER_TAG = "opsflow-holds:"


def lock_name(env_name: str) -> str:
    """The Prefect global concurrency limit that serialises the runs of one environment."""
    return f"env-{env_name}"


def deploy_lock_name(env_name: str) -> str:
    """The limit that lets one deploy or rollback of an environment run at a time (from its
    start, so a second one fails or waits before asking anyone for approval)."""
    return f"deploy-{env_name}"


def ensure_lock(name: str) -> None:
    """Create the global concurrency limit ``name`` (limit 1, active, no decay) if it is
    missing, or set it back to that if someone changed it."""
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1, active=True)
                )
                return
            except ObjectAlreadyExists:  # another run created it at the same moment
                limit = client.read_global_concurrency_limit_by_name(name)
        if limit.limit != 1 or not limit.active or limit.slot_decay_per_second:
            client.update_global_concurrency_limit(
                name,
                GlobalConcurrencyLimitUpdate(limit=1, active=True, slot_decay_per_second=0.0),
            )


def lock_holders(name: str, exclude: str = "") -> list[str]:
    """``<runbook> run '<name>' (<id>)`` of each running flow run tagged as holding ``name``."""
    running = FlowRunFilterState(
        type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PAUSED])
    )
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[HOLDER_TAG + name]), state=running
            ),
            limit=10,
        )
        return [
            f"{client.read_flow(r.flow_id).name} run '{r.name}' ({r.id})"
            for r in runs
            if str(r.id) != exclude
        ]


def is_locked(exc: ConcurrencySlotAcquisitionError) -> bool:
    """The limit exists and is full (HTTP 423), as opposed to a missing limit or an API error."""
    cause = exc.__cause__
    return isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 423


def flow_run_uuid(flow_run_id: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(flow_run_id)
    except ValueError:  # "local": not a Prefect flow run
        return None
