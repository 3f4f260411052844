"""The incident's diagnostics snapshot (``flows/incident.py``): what runs and how it is, read
once, for the report and the post-mortem.

* ``snapshot_containers``: each ``docker.services`` container's state, exit code, OOM kill,
  restart count, image, start time, and its last ``lines`` log lines with the error lines
  (``logs.pattern``) picked out.
* ``snapshot_pods``: each pod of the Kubernetes target: phase, readiness, restarts, waiting
  and terminated reasons, its last ``lines`` log lines with the error lines, and the recent
  events of the namespace about the deployment, its ReplicaSets and pods.
* ``rollout_history``: the Deployment's revisions (its ReplicaSets: revision, images,
  created, replicas, change cause).
* ``recent_changes``: the last deploys and rollbacks of the environment in the ledger, with
  their approval events.

Every line from a system is redacted (``opsflow.redaction.redact``): application logs carry
secrets. Each returns plain JSON-ready dicts; a container or pod that cannot be read gets its
(redacted) ``error``; an unreachable engine or API raises (the flow records the diagnostic
failed, the others go on).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from opsflow.errors import PermanentError
from opsflow.inventory import DockerTarget, KubernetesTarget
from opsflow.ledger import Ledger
from opsflow.redaction import redact
from tasks.policy import probe_task

ERROR_LINES = 20
"""At most this many error lines are kept per container or pod (the last ones)."""
EVENTS = 50
CHANGES = 5
DEPLOY_RUNBOOKS = ("deploy", "rollback")


def pick_errors(lines: list[str], pattern: str) -> list[str]:
    """The last ``ERROR_LINES`` lines matching ``pattern`` (lines already redacted)."""
    regex = re.compile(pattern)
    return [line for line in lines if regex.search(line)][-ERROR_LINES:]


def _tail(raw: list[str], pattern: str) -> dict[str, Any]:
    lines = [redact(line.rstrip("\r")) for line in raw]
    return {"lines": lines, "error_lines": pick_errors(lines, pattern), "pattern": pattern}


def _time(value: Any) -> str | None:
    if value is None:
        return None
    return value.isoformat() if isinstance(value, datetime) else str(value)


# --- Docker ------------------------------------------------------------------------------------


@probe_task("snapshot_containers", timeout_seconds=120)
def snapshot_containers(target: DockerTarget, lines: int, pattern: str) -> list[dict[str, Any]]:
    """One entry per inventory service's container (see the module docstring)."""
    import docker.errors

    from connectors.docker import docker_client, docker_errors
    from tasks.docker.checks import _log_lines

    client = docker_client(target)
    found: list[dict[str, Any]] = []
    try:
        for service in target.services:
            name = service.container
            item: dict[str, Any] = {"kind": "container", "name": name, "service": service.name}
            try:
                with docker_errors(f"container {name}"):
                    try:
                        container = client.containers.get(name)
                    except docker.errors.NotFound:
                        item.update(state="missing", error=f"container {name} does not exist")
                        found.append(item)
                        continue
                    attrs = container.attrs
                    state = attrs.get("State") or {}
                    item.update(
                        state=state.get("Status"),
                        restarting=bool(state.get("Restarting")),
                        exit_code=state.get("ExitCode"),
                        oom_killed=bool(state.get("OOMKilled")),
                        error_message=redact(str(state.get("Error") or "")) or None,
                        restart_count=int(attrs.get("RestartCount") or 0),
                        started_at=state.get("StartedAt"),
                        finished_at=state.get("FinishedAt"),
                        health=(state.get("Health") or {}).get("Status"),
                        image=(attrs.get("Config") or {}).get("Image"),
                        created=attrs.get("Created"),
                    )
                    chunks = client.api.logs(
                        name, stream=True, follow=False, tail=lines, timestamps=True
                    )
                    item.update(_tail(list(_log_lines(chunks)), pattern))
            except PermanentError as exc:
                item["error"] = redact(str(exc))
            found.append(item)
    finally:
        client.close()
    return found


# --- Kubernetes --------------------------------------------------------------------------------


def _pod_entry(pod: Any) -> dict[str, Any]:
    status = pod.status
    containers = list(status.init_container_statuses or []) + list(status.container_statuses or [])
    reasons: list[str] = []
    exit_code = None
    for c in containers:
        waiting = c.state.waiting if c.state else None
        if waiting is not None and waiting.reason:
            reasons.append(f"{c.name} {waiting.reason}")
        for when, st in (("now", c.state), ("last", c.last_state)):
            ended = st.terminated if st else None
            if ended is not None:
                reasons.append(f"{c.name} {when} terminated {ended.reason} ({ended.exit_code})")
                exit_code = ended.exit_code if exit_code is None else exit_code
    return {
        "kind": "pod",
        "name": pod.metadata.name,
        "state": status.phase,
        "ready": any(c.type == "Ready" and c.status == "True" for c in status.conditions or []),
        "restart_count": sum(int(c.restart_count or 0) for c in containers),
        "reasons": reasons,
        "exit_code": exit_code,
        "node": pod.spec.node_name,
        "images": [c.image for c in pod.spec.containers],
        "started_at": _time(status.start_time),
    }


def _events(api: Any, target: KubernetesTarget, names: set[str]) -> list[dict[str, Any]]:
    import kubernetes.client

    from connectors.kubernetes import REQUEST_TIMEOUT, kube_errors

    core = kubernetes.client.CoreV1Api(api)
    with kube_errors(api, f"events in namespace {target.namespace}"):
        items = core.list_namespaced_event(target.namespace, _request_timeout=REQUEST_TIMEOUT).items
    events: list[dict[str, Any]] = []
    for ev in items:
        involved = ev.involved_object
        if involved is None or involved.name not in names:
            continue
        last = ev.last_timestamp or ev.event_time or ev.first_timestamp
        events.append(
            {
                "object": f"{(involved.kind or '').lower()}/{involved.name}",
                "type": ev.type,
                "reason": ev.reason,
                "message": redact(ev.message or ""),
                "count": ev.count,
                "last_seen": _time(last),
            }
        )
    events.sort(key=lambda e: e["last_seen"] or "", reverse=True)
    return events[:EVENTS]


@probe_task("snapshot_pods", timeout_seconds=180)
def snapshot_pods(target: KubernetesTarget, lines: int, pattern: str) -> dict[str, Any]:
    """``{"pods": [...], "events": [...]}`` for the target (see the module docstring)."""
    import kubernetes.client

    from connectors.kubernetes import (
        REQUEST_TIMEOUT,
        kube_api,
        kube_errors,
        list_pods,
        pod_selector,
    )
    from tasks.kubernetes.checks import _lines

    with kube_api(target) as api:
        selector, deployment = pod_selector(api, target)
        pods = list_pods(api, target, selector)
        core = kubernetes.client.CoreV1Api(api)
        entries: list[dict[str, Any]] = []
        for pod in pods:
            item = _pod_entry(pod)
            entries.append(item)
            if pod.status.phase == "Pending":
                item.update(lines=[], error_lines=[], pattern=pattern)
                continue
            kwargs: dict[str, Any] = {"container": target.container} if target.container else {}
            try:
                with kube_errors(api, f"logs of pod {target.namespace}/{item['name']}"):
                    response: Any = core.read_namespaced_pod_log(
                        item["name"],
                        target.namespace,
                        tail_lines=lines,
                        timestamps=True,
                        _preload_content=False,
                        _request_timeout=REQUEST_TIMEOUT,
                        **kwargs,
                    )
                    try:
                        item.update(_tail(list(_lines(response)), pattern))
                    finally:
                        response.release_conn()
            except PermanentError as exc:
                item["error"] = redact(str(exc))
        names = {p["name"] for p in entries}
        if deployment is not None:
            names.add(deployment.metadata.name)
            apps = kubernetes.client.AppsV1Api(api)
            with kube_errors(api, f"replicasets in namespace {target.namespace}"):
                sets: Any = apps.list_namespaced_replica_set(
                    target.namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT
                ).items
            names |= {rs.metadata.name for rs in sets}
        events = _events(api, target, names)
    return {"pods": entries, "events": events}


@probe_task("rollout_history", timeout_seconds=90)
def rollout_history(target: KubernetesTarget) -> list[dict[str, Any]]:
    """The Deployment's revisions, newest first: its ReplicaSets with their revision, images,
    replicas, creation time and change cause (``kubectl rollout history``)."""
    import kubernetes.client

    from connectors.kubernetes import REQUEST_TIMEOUT, kube_api, kube_errors, pod_selector
    from tasks.kubernetes.rollout import CHANGE_CAUSE, DEPLOY_ID, REVISION

    with kube_api(target) as api:
        selector, deployment = pod_selector(api, target)
        if deployment is None:
            return []
        apps = kubernetes.client.AppsV1Api(api)
        with kube_errors(api, f"replicasets of deployment {target.deployment}"):
            sets: Any = apps.list_namespaced_replica_set(
                target.namespace, label_selector=selector, _request_timeout=REQUEST_TIMEOUT
            ).items
    revisions: list[dict[str, Any]] = []
    uid = deployment.metadata.uid
    for rs in sets:
        owners = rs.metadata.owner_references or []
        if owners and uid and not any(o.uid == uid for o in owners):
            continue
        notes = rs.metadata.annotations or {}
        try:
            number = int(notes.get(REVISION, "0"))
        except ValueError:
            number = 0
        revisions.append(
            {
                "revision": number,
                "replicaset": rs.metadata.name,
                "images": [c.image for c in rs.spec.template.spec.containers],
                "replicas": int(rs.status.replicas or 0) if rs.status else 0,
                "created": _time(rs.metadata.creation_timestamp),
                "change_cause": redact(notes.get(CHANGE_CAUSE, "")),
                "deploy_id": notes.get(DEPLOY_ID, ""),
            }
        )
    revisions.sort(key=lambda r: r["revision"], reverse=True)
    return revisions


# --- the ledger --------------------------------------------------------------------------------


def recent_changes(ledger: Ledger, env: str, limit: int = CHANGES) -> dict[str, Any]:
    """The last ``limit`` deploy and rollback runs of ``env`` (newest first) and the approval
    events of each (requested, approved by whom, rejected…)."""
    runs = [r for name in DEPLOY_RUNBOOKS for r in ledger.runs(env=env, runbook=name, limit=limit)]
    runs.sort(key=lambda r: r.finished_at, reverse=True)
    found: list[dict[str, Any]] = []
    approvals: list[dict[str, Any]] = []
    for r in runs[:limit]:
        found.append(
            {
                "runbook": r.runbook,
                "flow_run_id": r.flow_run_id,
                "status": r.status,
                "started_at": _time(r.started_at),
                "finished_at": _time(r.finished_at),
                "triggered_by": r.triggered_by,
                "summary": redact(r.summary or ""),
            }
        )
        for a in ledger.approval_events(r.flow_run_id):
            approvals.append(
                {
                    "flow_run_id": a.flow_run_id,
                    "action": a.action,
                    "event": a.event,
                    "actor": a.actor,
                    "requested_by": a.requested_by,
                    "at": _time(a.recorded_at),
                    "reason": redact(a.reason or ""),
                }
            )
    return {"runs": found, "approvals": approvals}
