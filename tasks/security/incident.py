"""Escalation of the security review: critical findings open an incident run."""

from __future__ import annotations

from prefect.client.schemas.objects import FlowRun
from prefect.deployments import run_deployment
from prefect.exceptions import ObjectNotFound

from tasks.policy import api_task

INCIDENT_DEPLOYMENT = "incident/on-demand"
INCIDENT_SEVERITY = "P2"


@api_task("start_incident", timeout_seconds=60)
def start_incident(env_name: str, requested_by: str, summary: str) -> str | None:
    """Start a run of the incident runbook's deployment for ``env_name`` (it is not waited
    for) and return its id; None when that deployment does not exist on this server (nothing
    serves the incident runbook), so the caller notifies instead."""
    try:
        flow_run: FlowRun = run_deployment(  # type: ignore[assignment]  # sync here
            INCIDENT_DEPLOYMENT,
            parameters={
                "env": env_name,
                "requested_by": requested_by,
                "summary": summary,
                "severity": INCIDENT_SEVERITY,
            },
            timeout=0,
            as_subflow=False,
        )
    except ObjectNotFound:
        return None
    return str(flow_run.id)
