"""Kubernetes deploy target: read, set and follow the container image of a Deployment.

* ``read_deployment_image``: what one container of a Deployment runs now, with the revision,
  generation and the opsflow annotations.
* ``set_deployment_image``: one merge patch of the pod template's ``containers`` list (read,
  modify, write back whole: a JSON merge replaces lists, and so does kmock) plus the
  annotations ``opsflow.io/deploy-id``, ``opsflow.io/previous-image`` and
  ``kubernetes.io/change-cause``, guarded by the ``resourceVersion`` read (a concurrent change
  answers 409, a ``TransientError``: the retry reads again). Idempotent: an image already set
  by the same deploy id is not patched again (a rerun of a crashed deploy).
* ``wait_for_rollout``: ``kubectl rollout status`` semantics over ``rollout_verdict``, on each
  state a watch of the Deployment delivers (as kubectl does: the current state, then every
  change; benchmarks/rollout.py measured it against polling) until done, failed
  (``ProgressDeadlineExceeded``, a paused Deployment: ``PermanentError`` at once) or
  ``timeout_seconds`` (the flow's backstop: ``PermanentError`` naming the unmet condition and
  the counts; never retried).

A rollback is ``set_deployment_image(previous_image, rollback id)`` + ``wait_for_rollout``: the
previous image by name, never ``rollout undo`` to a revision nobody recorded.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import kubernetes.client
import kubernetes.watch
import urllib3.exceptions
from pydantic import BaseModel

from connectors.kubernetes import REQUEST_TIMEOUT, kube_api, kube_errors
from opsflow.errors import InputError, PermanentError, TransientError
from opsflow.inventory import KubernetesTarget
from tasks.policy import api_task

log = logging.getLogger(__name__)

DEPLOY_ID = "opsflow.io/deploy-id"
PREVIOUS_IMAGE = "opsflow.io/previous-image"
CHANGE_CAUSE = "kubernetes.io/change-cause"
REVISION = "deployment.kubernetes.io/revision"
ROLLOUT_BACKSTOP_S = 600.0  # the seed's `kubectl rollout status --timeout=600s`
MAX_ROLLOUT_WAIT_S = 3600.0  # the largest backstop a caller may ask for
MERGE_PATCH = "application/merge-patch+json"
WATCH_S = 60.0  # one watch of the rollout lasts at most this long, then it is opened again
# the declared task timeout: the longest wait, plus a last watch or read that hangs
WAIT_TASK_TIMEOUT_S = MAX_ROLLOUT_WAIT_S + 2 * REQUEST_TIMEOUT[1] + 30


class WorkloadImage(BaseModel):
    """What runs now in one container of one Deployment."""

    deployment: str
    container: str
    image: str
    revision: int | None  # deployment.kubernetes.io/revision annotation
    generation: int
    replicas: int  # spec.replicas
    deploy_id: str | None  # annotation opsflow.io/deploy-id (who set this image)
    previous_image: str | None  # annotation opsflow.io/previous-image
    resource_version: str | None = None  # metadata.resourceVersion when it was read
    patched: bool = False  # set_deployment_image sent a patch (False: already set, or a read)


class RolloutStatus(BaseModel):
    deployment: str
    image: str
    revision: int | None
    replicas: int
    updated: int
    available: int
    seconds: float  # how long the wait took
    polls: int


# --- the pure decision ------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """Where a rollout stands: ``done``, ``failed`` (stop now) or ``progressing`` (``message``
    says which condition is not met yet, with the counts)."""

    state: Literal["done", "failed", "progressing"]
    message: str


def _count(status: dict[str, Any], field: str) -> int:
    return int(status.get(field) or 0)  # the API server omits zero counts


def _replicas(deployment: dict[str, Any]) -> int:
    spec = deployment.get("spec") or {}
    return int(spec["replicas"]) if spec.get("replicas") is not None else 1  # the API default


def _revision(deployment: dict[str, Any]) -> int | None:
    value = str(((deployment.get("metadata") or {}).get("annotations") or {}).get(REVISION, ""))
    return int(value) if value.isdigit() else None


def rollout_verdict(deployment: dict[str, Any]) -> Verdict:
    """``kubectl rollout status`` on a Deployment as JSON (camelCase, as the API answers).

    In kubectl's order: the spec change observed (observedGeneration >= generation); then
    Progressing with reason ProgressDeadlineExceeded fails; updatedReplicas = spec.replicas; no
    old replicas left (status.replicas = updatedReplicas); availableReplicas = updatedReplicas.
    One addition: a paused Deployment fails at once (it would never progress; kubectl waits).
    """
    meta = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    name = meta.get("name", "?")
    generation = int(meta.get("generation") or 0)
    observed = _count(status, "observedGeneration")
    if observed < generation:
        return Verdict(
            "progressing",
            f"the spec change is not observed yet (observedGeneration {observed} < "
            f"generation {generation})",
        )
    if spec.get("paused"):
        return Verdict(
            "failed",
            f"deployment {name} is paused: it does not roll out (fix: kubectl rollout resume "
            f"deployment/{name})",
        )
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Progressing" and (
            condition.get("reason") == "ProgressDeadlineExceeded"
        ):
            return Verdict(
                "failed",
                f"deployment {name} exceeded its progress deadline: "
                f"{condition.get('message') or 'no message'}",
            )
    desired = _replicas(deployment)
    replicas, updated = _count(status, "replicas"), _count(status, "updatedReplicas")
    available = _count(status, "availableReplicas")
    if updated < desired:
        return Verdict("progressing", f"{updated} out of {desired} new replicas have been updated")
    if replicas > updated:
        return Verdict("progressing", f"{replicas - updated} old replicas are pending termination")
    if available < updated:
        return Verdict("progressing", f"{available} of {updated} updated replicas are available")
    return Verdict("done", f"deployment {name} successfully rolled out")


# --- reading and writing ----------------------------------------------------------------------


def deployment_json(api: kubernetes.client.ApiClient, ns: str, name: str) -> dict[str, Any]:
    """The Deployment as the API's JSON (no model objects: cheaper per poll)."""
    apps = kubernetes.client.AppsV1Api(api)
    with kube_errors(api, f"deployment {ns}/{name}"):
        response: Any = apps.read_namespaced_deployment(
            name, ns, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
        )
        data: dict[str, Any] = json.loads(response.data)
    return data


def _read_known(api: kubernetes.client.ApiClient, ns: str, name: str) -> dict[str, Any]:
    """``deployment_json``; a Deployment that does not exist is named with those that do."""
    try:
        return deployment_json(api, ns, name)
    except PermanentError as exc:
        if "not found (404)" not in str(exc):
            raise
    apps = kubernetes.client.AppsV1Api(api)
    with kube_errors(api, f"deployments in namespace {ns}"):
        listing: Any = apps.list_namespaced_deployment(
            ns, _preload_content=False, _request_timeout=REQUEST_TIMEOUT
        )
        names = sorted(str(d["metadata"]["name"]) for d in json.loads(listing.data)["items"])
    raise PermanentError(
        f"deployment {ns}/{name} not found (deployments in {ns}: {', '.join(names) or 'none'}; "
        "fix: name one of them in the inventory's kubernetes deploy target)"
    )


def _containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    spec = (deployment.get("spec") or {}).get("template", {}).get("spec") or {}
    return list(spec.get("containers") or [])


def workload_image(deployment: dict[str, Any], container: str) -> WorkloadImage:
    """One container's image and the Deployment's bookkeeping, from its JSON."""
    meta = deployment.get("metadata") or {}
    name = str(meta.get("name", "?"))
    containers = _containers(deployment)
    found = next((c for c in containers if c.get("name") == container), None)
    if found is None:
        have = ", ".join(str(c.get("name")) for c in containers) or "none"
        raise PermanentError(
            f"deployment {meta.get('namespace', '?')}/{name} has no container {container!r} "
            f"(its containers: {have}; fix: name one of them as the deploy target's container)"
        )
    annotations = meta.get("annotations") or {}
    return WorkloadImage(
        deployment=name,
        container=container,
        image=str(found.get("image") or ""),
        revision=_revision(deployment),
        generation=int(meta.get("generation") or 0),
        replicas=_replicas(deployment),
        deploy_id=annotations.get(DEPLOY_ID),
        previous_image=annotations.get(PREVIOUS_IMAGE),
        resource_version=meta.get("resourceVersion"),
    )


def image_patch(deployment: dict[str, Any], container: str, image: str, deploy_id: str) -> Any:
    """The merge patch that sets ``container``'s image, guarded by the resourceVersion read.

    The whole containers list goes back (a merge patch replaces lists); when the image is
    already ``image`` only the deploy id changes (no spec change: no new rollout, and the
    recorded previous image stays the one before the last change)."""
    now = workload_image(deployment, container)
    meta: dict[str, Any] = {
        "resourceVersion": now.resource_version,
        "annotations": {DEPLOY_ID: deploy_id},
    }
    if now.image == image:
        return {"metadata": meta}
    meta["annotations"] |= {
        PREVIOUS_IMAGE: now.image,
        CHANGE_CAUSE: f"opsflow {deploy_id}: {container} {now.image} -> {image}",
    }
    containers = [
        {**c, "image": image} if c.get("name") == container else c for c in _containers(deployment)
    ]
    return {"metadata": meta, "spec": {"template": {"spec": {"containers": containers}}}}


@api_task("read_deployment_image", timeout_seconds=90)  # a hung API: 2 tries x 30 s, + slack
def read_deployment_image(
    target: KubernetesTarget, deployment: str, container: str
) -> WorkloadImage:
    """What ``container`` of ``deployment`` (in the target's namespace) runs now."""
    with kube_api(target) as api:
        return workload_image(_read_known(api, target.namespace, deployment), container)


@api_task("set_deployment_image", timeout_seconds=150)  # hung GET 2 x 30 s + PATCH 30 s + slack
def set_deployment_image(
    target: KubernetesTarget, deployment: str, container: str, image: str, deploy_id: str
) -> WorkloadImage:
    """Set ``container``'s image (one patch, annotations recording who and what was before);
    no patch when ``image`` is already set by ``deploy_id``. Returns the state after."""
    for field, value in (("image", image), ("deploy_id", deploy_id)):
        if (
            not value
            or len(value) > 512
            or any(ch.isspace() or not ch.isprintable() for ch in value)
        ):
            raise InputError(
                field, f"{value!r:.80} is not usable", "give a non-empty value without spaces"
            )
    ns = target.namespace
    with kube_api(target) as api:
        current = _read_known(api, ns, deployment)
        now = workload_image(current, container)
        if now.image == image and now.deploy_id == deploy_id:
            log.info("deployment %s/%s: %s already set by %s", ns, deployment, image, deploy_id)
            return now
        apps = kubernetes.client.AppsV1Api(api)
        with kube_errors(api, f"set the image of deployment {ns}/{deployment}"):
            response: Any = apps.patch_namespaced_deployment(
                deployment,
                ns,
                image_patch(current, container, image, deploy_id),
                _content_type=MERGE_PATCH,
                _preload_content=False,
                _request_timeout=REQUEST_TIMEOUT,
            )
            after = workload_image(json.loads(response.data), container)
    return after.model_copy(update={"patched": True})


@api_task("wait_for_rollout", timeout_seconds=WAIT_TASK_TIMEOUT_S)
def wait_for_rollout(
    target: KubernetesTarget,
    deployment: str,
    timeout_seconds: float = ROLLOUT_BACKSTOP_S,
    poll_seconds: float = 1.0,
    container: str | None = None,
) -> RolloutStatus:
    """Follow the rollout as ``kubectl rollout status`` does (``rollout_verdict`` on each state
    a watch of the Deployment delivers: at once, then at every change). Failed (progress
    deadline, paused) or not done after ``timeout_seconds``: ``PermanentError`` (not retried).
    A watch that fails transiently is opened again after ``poll_seconds`` until the deadline;
    failing at the deadline it is a ``TransientError``. ``polls``: the states looked at.
    ``container``: report that container's image (default: every container's, comma-joined)."""
    if not 0 < timeout_seconds <= MAX_ROLLOUT_WAIT_S:
        raise InputError(
            "timeout_seconds",
            f"{timeout_seconds!r} is out of range",
            f"give a rollout timeout above 0 and at most {MAX_ROLLOUT_WAIT_S:g} s",
        )
    if not 0 < poll_seconds <= 60:
        raise InputError(
            "poll_seconds", f"{poll_seconds!r} is out of range", "poll every 0 to 60 s"
        )
    ns = target.namespace
    started = time.monotonic()
    polls, watches = 0, [0]
    verdict: Verdict | None = None
    failure: TransientError | None = None
    with kube_api(target) as api:
        states = deployment_states(
            api, ns, deployment, started + timeout_seconds, poll_seconds, watches
        )
        for seen in states:
            if isinstance(seen, TransientError):
                failure = seen
                log.warning("deployment %s/%s: watch failed: %s", ns, deployment, seen)
                continue
            polls, failure, verdict = polls + 1, None, rollout_verdict(seen)
            if verdict.state == "failed":
                raise PermanentError(
                    f"rollout of deployment {ns}/{deployment} failed: {verdict.message} "
                    f"(seen at poll {polls}, after {time.monotonic() - started:.1f} s)"
                )
            if verdict.state == "done":
                return _rollout_status(seen, container, time.monotonic() - started, polls)
    waited = time.monotonic() - started
    if failure is not None:
        raise TransientError(
            f"rollout of deployment {ns}/{deployment}: the API did not answer at the end of the "
            f"{waited:.0f} s wait: {failure}"
        )
    if verdict is None:
        raise PermanentError(
            f"deployment {ns}/{deployment} not found (nothing seen in {waited:.1f} s)"
        )
    raise PermanentError(
        f"rollout of deployment {ns}/{deployment} not complete after {waited:.1f} s (timeout "
        f"{timeout_seconds:g} s, {polls} polls, {watches[0]} watches): {verdict.message} (fix: "
        "look at the deployment's pods and events; raise the timeout if it is only slow)"
    )


def deployment_states(
    api: kubernetes.client.ApiClient,
    ns: str,
    name: str,
    deadline: float,
    pause: float,
    watches: list[int],
) -> Iterator[dict[str, Any] | TransientError]:
    """The Deployment as it is, then at each change, until ``deadline`` (``time.monotonic``).

    A watch (its first event is the current state) of at most ``WATCH_S``, opened again when it
    ends; ``watches[0]`` counts them. A watch that fails to open or breaks is yielded as the
    ``TransientError`` and opened again after ``pause`` seconds (a new watch starts with the
    current state, so no change is missed).
    """
    apps = kubernetes.client.AppsV1Api(api)
    while (left := deadline - time.monotonic()) > 0:
        window = min(left, WATCH_S)
        watch = kubernetes.watch.Watch()
        watches[0] += 1
        try:
            with kube_errors(api, f"watch of deployment {ns}/{name}"):
                try:
                    for event in watch.stream(
                        apps.list_namespaced_deployment,
                        ns,
                        field_selector=f"metadata.name={name}",
                        timeout_seconds=max(1, math.ceil(window)),
                        deserialize=False,
                        _request_timeout=(REQUEST_TIMEOUT[0], window),
                    ):
                        obj = event.get("object") or {}
                        if (obj.get("metadata") or {}).get("name") != name:
                            continue  # an API server that ignores fieldSelector (kmock)
                        if event.get("type") == "DELETED":
                            raise PermanentError(f"deployment {ns}/{name} was deleted")
                        yield obj
                        if time.monotonic() >= deadline:
                            return
                except urllib3.exceptions.ReadTimeoutError:
                    pass  # nothing changed for the whole window: watch again
        except TransientError as exc:
            yield exc
            time.sleep(max(min(pause, deadline - time.monotonic()), 0))
        finally:
            watch.stop()


def _rollout_status(
    deployment: dict[str, Any], container: str | None, seconds: float, polls: int
) -> RolloutStatus:
    status = deployment.get("status") or {}
    containers = [c for c in _containers(deployment) if container in (None, c.get("name"))]
    return RolloutStatus(
        deployment=str((deployment.get("metadata") or {}).get("name")),
        image=", ".join(str(c.get("image")) for c in containers),
        revision=_revision(deployment),
        replicas=_replicas(deployment),
        updated=_count(status, "updatedReplicas"),
        available=_count(status, "availableReplicas"),
        seconds=round(seconds, 3),
        polls=polls,
    )
