"""A deliberately thin stand-in for kube-controller-manager + kubelet, over the API's HTTP.

``FakeController(url, namespace)`` reconciles every Deployment of one namespace whose
``metadata.generation`` differs from ``status.observedGeneration`` (a spec change: image,
replicas, anything in the template):

* the pod template's hash names the ReplicaSet (``<deployment>-<hash>``): a new template
  gets a new ReplicaSet with revision ``max + 1``; going back to an earlier template (a
  rollback) reuses that ReplicaSet and gives it the next revision, as Kubernetes does; the
  Deployment's ``deployment.kubernetes.io/revision`` annotation follows its new ReplicaSet's;
* the new ReplicaSet gets ``spec.replicas`` pods at once (no surge/unavailable stepping),
  Running and Ready; pods of older ReplicaSets are deleted and those scaled to 0;
* an image passed to ``fail_image(image)`` never becomes ready: its pods sit in
  ``ImagePullBackOff`` (Pending) or ``CrashLoopBackOff`` (Running, not ready, restarts), the
  old pods stay (the rollout is stuck) and the Deployment reports ``Progressing=False`` with
  reason ``ProgressDeadlineExceeded`` right away;
* the Deployment status gets ``observedGeneration``, ``replicas``, ``updatedReplicas``,
  ``readyReplicas``, ``availableReplicas``, ``unavailableReplicas`` (zero fields omitted, as
  the API server does) and ``Available``/``Progressing`` conditions;
* ``terminate_slowly(seconds)``: a pod the controller removes stays Terminating for
  ``seconds``, as a pod in its termination grace period does (still Running: its process may
  still write): it gets a finalizer, then the DELETE, so the API server (kmock honours
  finalizers) only sets ``metadata.deletionTimestamp``; the finalizer is dropped when the time
  is up and the pod goes. Like the real controllers, a Terminating pod no longer counts in the
  ReplicaSet's or Deployment's ``status.replicas``.

Drive it with ``reconcile()`` (one pass, returns how many Deployments it changed) or in the
background with ``start(interval)`` / ``stop()`` (also a context manager).

What it does NOT prove compared with a real cluster: rolling-update pacing (maxSurge /
maxUnavailable), readiness/liveness probes, real ``progressDeadlineSeconds`` timing, pod
scheduling, image pulls, restarts over time, PodMetrics for new pods, events, HPA, PDBs,
finalizers or garbage collection, and strategic-merge semantics (kmock replaces lists). Slow
termination is a fixed delay per pod, not a real grace period (no SIGTERM, no preStop hooks, no
kubelet force-kill).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from typing import Any, Literal, Self

import requests

Obj = dict[str, Any]
FailMode = Literal["ImagePullBackOff", "CrashLoopBackOff"]
REVISION = "deployment.kubernetes.io/revision"
TERMINATING = "opsflow.test/terminating"  # the finalizer that keeps a pod Terminating


class KubeJson:
    """Minimal JSON client for the test API (paths like ``/api/v1/namespaces/x/pods``)."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    def _call(self, method: str, path: str, body: Any = None, **params: str) -> Any:
        headers = {"Content-Type": "application/merge-patch+json"} if method == "PATCH" else {}
        response = self.session.request(
            method,
            self.url + path,
            json=body,
            params=params or None,
            headers=headers,
            timeout=self.timeout,
        )
        if response.status_code == 404 and method in ("GET", "DELETE"):
            return None
        response.raise_for_status()
        return response.json()

    def get(self, path: str) -> Obj | None:
        result: Obj | None = self._call("GET", path)
        return result

    def list(self, path: str, **params: str) -> list[Obj]:
        result = self._call("GET", path, **params)
        return list(result["items"]) if result else []

    def create(self, path: str, body: Obj) -> Obj:
        result: Obj = self._call("POST", path, body)
        return result

    def patch(self, path: str, body: Obj) -> Obj:
        result: Obj = self._call("PATCH", path, body)
        return result

    def delete(self, path: str) -> None:
        self._call("DELETE", path)


def template_hash(template: Obj) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


def _owner(kind: str, obj: Obj, api_version: str) -> Obj:
    meta = obj["metadata"]
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": meta["name"],
        "uid": meta.get("uid", ""),
        "controller": True,
    }


def pod_status(template: Obj, mode: str) -> Obj:
    """A pod status: ``Running`` (ready), ``CrashLoopBackOff``, ``ImagePullBackOff``,
    ``Pending`` (unschedulable) or ``OOMKilled`` (running, last state OOMKilled)."""
    containers = template["spec"]["containers"]
    statuses: list[Obj] = []
    for container in containers:
        pulled = mode in ("Running", "OOMKilled", "CrashLoopBackOff")
        digest = hashlib.sha256(container["image"].encode()).hexdigest()
        status: Obj = {
            "name": container["name"],
            "image": container["image"],
            "imageID": f"{container['image']}@sha256:{digest}" if pulled else "",
            "ready": mode == "Running",
            "restartCount": 0,
        }
        if mode in ("Running", "OOMKilled"):
            status["state"] = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}
            status["started"] = True
        if mode == "OOMKilled":
            status["ready"] = True
            status["restartCount"] = 3
            status["lastState"] = {"terminated": {"reason": "OOMKilled", "exitCode": 137}}
        elif mode == "CrashLoopBackOff":
            status["restartCount"] = 12
            status["state"] = {
                "waiting": {
                    "reason": "CrashLoopBackOff",
                    "message": "back-off 5m0s restarting failed container",
                }
            }
            status["lastState"] = {"terminated": {"reason": "Error", "exitCode": 1}}
        elif mode == "ImagePullBackOff":
            status["state"] = {
                "waiting": {
                    "reason": "ImagePullBackOff",
                    "message": f'Back-off pulling image "{container["image"]}"',
                }
            }
        elif mode == "Pending":
            status = {}
        if status:
            statuses.append(status)
    ready = mode in ("Running", "OOMKilled")
    phase = "Running" if mode in ("Running", "OOMKilled", "CrashLoopBackOff") else "Pending"
    result: Obj = {
        "phase": phase,
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False" if mode == "Pending" else "True",
                **(
                    {
                        "reason": "Unschedulable",
                        "message": "0/3 nodes are available: 3 Insufficient memory.",
                    }
                    if mode == "Pending"
                    else {}
                ),
            },
            {"type": "Ready", "status": "True" if ready else "False"},
        ],
    }
    if statuses:
        result["containerStatuses"] = statuses
    return result


class FakeController:
    """Reconciles the Deployments of one namespace (see the module docstring)."""

    def __init__(self, url: str, namespace: str) -> None:
        self.api = KubeJson(url)
        self.namespace = namespace
        self.failing: dict[str, FailMode] = {}
        self.termination_seconds = 0.0
        self.terminating: dict[str, float] = {}  # pod name -> when it is finally deleted
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors: list[BaseException] = []

    # -- knobs -----------------------------------------------------------------------------
    def fail_image(self, image: str, mode: FailMode = "ImagePullBackOff") -> None:
        """Pods with this image never become ready; rollouts to it exceed their deadline."""
        self.failing[image] = mode

    def heal_image(self, image: str) -> None:
        self.failing.pop(image, None)

    def terminate_slowly(self, seconds: float) -> None:
        """Pods removed from now on stay Terminating (deletionTimestamp set) for ``seconds``."""
        self.termination_seconds = seconds

    # -- running ---------------------------------------------------------------------------
    def reconcile(self) -> int:
        """One pass over the namespace's Deployments; returns how many it acted on."""
        with self._lock:
            self._reap()
            ns = self.namespace
            changed = 0
            for dep in self.api.list(f"/apis/apps/v1/namespaces/{ns}/deployments"):
                generation = int(dep["metadata"].get("generation") or 1)
                if (dep.get("status") or {}).get("observedGeneration") != generation:
                    self._reconcile_deployment(dep, generation)
                    changed += 1
            return changed

    def start(self, interval: float = 0.1) -> Self:
        """Reconcile in a background thread every ``interval`` seconds until ``stop()``."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._loop,
                args=(interval,),
                name=f"fake-controller-{self.namespace}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join(timeout=10)
            self._thread = None
        if self.errors:
            raise RuntimeError(f"fake controller failed: {self.errors[0]!r}") from self.errors[0]

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.reconcile()
            except Exception as exc:  # surfaced by stop()
                self.errors.append(exc)
                return

    # -- the actual work -------------------------------------------------------------------
    def _reconcile_deployment(self, dep: Obj, generation: int) -> None:
        ns, name = self.namespace, dep["metadata"]["name"]
        spec = dep["spec"]
        template = spec["template"]
        desired = int(spec.get("replicas", 1))
        pod_hash = template_hash(template)
        rs_base = f"/apis/apps/v1/namespaces/{ns}/replicasets"
        owned = [
            rs
            for rs in self.api.list(rs_base)
            if any(ref.get("name") == name for ref in rs["metadata"].get("ownerReferences", []))
        ]
        revisions = [int(rs["metadata"].get("annotations", {}).get(REVISION, 0)) for rs in owned]
        top = max(revisions, default=0)
        new_name = f"{name}-{pod_hash}"
        new_rs = next((rs for rs in owned if rs["metadata"]["name"] == new_name), None)
        revision = top
        if new_rs is None:
            revision = top + 1
            new_rs = self.api.create(rs_base, make_replicaset(dep, pod_hash, revision, desired))
            owned.append(new_rs)
        elif int(new_rs["metadata"].get("annotations", {}).get(REVISION, 0)) != top:
            revision = top + 1
            self.api.patch(
                f"{rs_base}/{new_name}", {"metadata": {"annotations": {REVISION: str(revision)}}}
            )
        if (dep["metadata"].get("annotations") or {}).get(REVISION) != str(revision):
            self.api.patch(
                f"/apis/apps/v1/namespaces/{ns}/deployments/{name}",
                {"metadata": {"annotations": {REVISION: str(revision)}}},
            )

        images = [c["image"] for c in template["spec"]["containers"]]
        failure = next((self.failing[i] for i in images if i in self.failing), None)
        pod_base = f"/api/v1/namespaces/{ns}/pods"
        pods = self.api.list(pod_base)
        by_rs: dict[str, list[Obj]] = {rs["metadata"]["name"]: [] for rs in owned}
        for pod in pods:
            if pod["metadata"].get("deletionTimestamp"):
                continue  # terminating: no longer counted, gone once its time is up
            for ref in pod["metadata"].get("ownerReferences", []):
                if ref.get("name") in by_rs:
                    by_rs[ref["name"]].append(pod)

        mine = sorted(by_rs[new_name], key=lambda p: _is_ready(p))  # unready ones go first
        while len(mine) > desired:
            self._remove_pod(mine.pop(0))
        while len(mine) < desired:
            mine.append(self.api.create(pod_base, make_pod(new_rs, template, failure or "Running")))
        self._set_rs(new_rs, desired, mine)

        old_pods: list[Obj] = []
        for rs in owned:
            rs_name = rs["metadata"]["name"]
            if rs_name == new_name:
                continue
            if failure is None:
                for pod in by_rs[rs_name]:
                    self._remove_pod(pod)
                self._set_rs(rs, 0, [])
            else:
                old_pods += by_rs[rs_name]

        ready = sum(1 for p in mine + old_pods if _is_ready(p))
        total = len(mine) + len(old_pods)
        updated = len(mine)
        complete = failure is None and updated == desired and ready >= desired == total
        if failure is not None:
            progressing = {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": f'ReplicaSet "{new_name}" has timed out progressing.',
            }
        elif complete:
            progressing = {
                "type": "Progressing",
                "status": "True",
                "reason": "NewReplicaSetAvailable",
                "message": f'ReplicaSet "{new_name}" has successfully progressed.',
            }
        else:
            progressing = {
                "type": "Progressing",
                "status": "True",
                "reason": "ReplicaSetUpdated",
                "message": f'ReplicaSet "{new_name}" is progressing.',
            }
        available = {
            "type": "Available",
            "status": "True" if ready >= desired else "False",
            "reason": "MinimumReplicasAvailable"
            if ready >= desired
            else "MinimumReplicasUnavailable",
        }
        status = {
            "observedGeneration": generation,
            "replicas": total or None,
            "updatedReplicas": updated or None,
            "readyReplicas": ready or None,
            "availableReplicas": ready or None,
            "unavailableReplicas": max(desired - ready, 0) or None,
            "conditions": [available, progressing],
        }
        self.api.patch(
            f"/apis/apps/v1/namespaces/{ns}/deployments/{name}/status", {"status": status}
        )

    def _remove_pod(self, pod: Obj) -> None:
        """Delete a pod, or mark it Terminating when ``terminate_slowly`` is on."""
        name = pod["metadata"]["name"]
        path = f"/api/v1/namespaces/{self.namespace}/pods/{name}"
        if self.termination_seconds <= 0:
            self.api.delete(path)
            return
        self.api.patch(path, {"metadata": {"finalizers": [TERMINATING]}})
        self.api.delete(path)  # with a finalizer: only deletionTimestamp is set
        self.terminating[name] = time.monotonic() + self.termination_seconds

    def _reap(self) -> None:
        """Delete the Terminating pods whose time is up."""
        now = time.monotonic()
        for name, due in list(self.terminating.items()):
            if due <= now:  # no finalizer left: the API server removes the pod
                path = f"/api/v1/namespaces/{self.namespace}/pods/{name}"
                self.api.patch(path, {"metadata": {"finalizers": []}})
                del self.terminating[name]

    def _set_rs(self, rs: Obj, replicas: int, pods: list[Obj]) -> None:
        ready = sum(1 for p in pods if _is_ready(p))
        path = f"/apis/apps/v1/namespaces/{self.namespace}/replicasets/{rs['metadata']['name']}"
        self.api.patch(path, {"spec": {"replicas": replicas}})
        self.api.patch(
            f"{path}/status",
            {
                "status": {
                    "replicas": len(pods),
                    "readyReplicas": ready or None,
                    "availableReplicas": ready or None,
                    "observedGeneration": int(rs["metadata"].get("generation") or 1) + 1,
                }
            },
        )


def _is_ready(pod: Obj) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions", [])
    )


def make_replicaset(dep: Obj, pod_hash: str, revision: int, replicas: int) -> Obj:
    meta = dep["metadata"]
    labels = {
        **dep["spec"]["template"]["metadata"].get("labels", {}),
        "pod-template-hash": pod_hash,
    }
    template = json.loads(json.dumps(dep["spec"]["template"]))
    template["metadata"]["labels"] = labels
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": f"{meta['name']}-{pod_hash}",
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": {REVISION: str(revision)},
            "ownerReferences": [_owner("Deployment", dep, "apps/v1")],
        },
        "spec": {
            "replicas": replicas,
            "selector": {
                "matchLabels": {
                    **dep["spec"]["selector"]["matchLabels"],
                    "pod-template-hash": pod_hash,
                }
            },
            "template": template,
        },
    }


def make_pod(rs: Obj, template: Obj, mode: str, name: str | None = None) -> Obj:
    meta = rs["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name or f"{meta['name']}-{uuid.uuid4().hex[:5]}",
            "namespace": meta["namespace"],
            "labels": dict(rs["spec"]["template"]["metadata"]["labels"]),
            "ownerReferences": [_owner("ReplicaSet", rs, "apps/v1")],
        },
        "spec": {**template["spec"], "nodeName": "node-1" if mode != "Pending" else None},
        "status": pod_status(template, mode),
    }


def build_seed(api: KubeJson, namespace: str) -> dict[str, Any]:
    """Deployment ``app`` (4 desired): 2 ready pods, 1 CrashLoopBackOff, 1 Pending,
    PodMetrics for the running pods, and an unrelated pod that shares the namespace."""
    labels = {"app": "app", "tier": "web"}
    dep_body: Obj = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": "app",
            "namespace": namespace,
            "labels": labels,
            "annotations": {REVISION: "1"},
        },
        "spec": {
            "replicas": 4,
            "progressDeadlineSeconds": 600,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": "registry.local/app:1.0",
                            "resources": {
                                "requests": {"cpu": "100m", "memory": "128Mi"},
                                "limits": {"cpu": "500m", "memory": "256Mi"},
                            },
                        }
                    ]
                },
            },
        },
    }
    dep = api.create(f"/apis/apps/v1/namespaces/{namespace}/deployments", dep_body)
    pod_hash = template_hash(dep["spec"]["template"])
    rs = api.create(
        f"/apis/apps/v1/namespaces/{namespace}/replicasets", make_replicaset(dep, pod_hash, 1, 4)
    )
    template = dep["spec"]["template"]
    pods: dict[str, str] = {}
    for role, mode in (
        ("ready-1", "Running"),
        ("ready-2", "Running"),
        ("crashloop", "CrashLoopBackOff"),
        ("pending", "Pending"),
    ):
        pod = api.create(
            f"/api/v1/namespaces/{namespace}/pods",
            make_pod(rs, template, mode, name=f"app-{pod_hash}-{role}"),
        )
        pods[role] = pod["metadata"]["name"]
    other = make_pod(rs, template, "CrashLoopBackOff", name="other-db-0")
    other["metadata"]["labels"] = {"app": "other"}
    other["metadata"]["ownerReferences"] = []
    api.create(f"/api/v1/namespaces/{namespace}/pods", other)
    api.patch(
        f"/apis/apps/v1/namespaces/{namespace}/deployments/app/status",
        {
            "status": {
                "observedGeneration": 1,
                "replicas": 4,
                "updatedReplicas": 4,
                "readyReplicas": 2,
                "availableReplicas": 2,
                "unavailableReplicas": 2,
                "conditions": [
                    {
                        "type": "Available",
                        "status": "False",
                        "reason": "MinimumReplicasUnavailable",
                    },
                    {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"},
                ],
            }
        },
    )
    for role, memory, cpu in (
        ("ready-1", "100Mi", "100m"),
        ("ready-2", "244Mi", "460m"),
        ("crashloop", "20Mi", "5m"),
    ):
        api.create(
            f"/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods",
            {
                "apiVersion": "metrics.k8s.io/v1beta1",
                "kind": "PodMetrics",
                "metadata": {"name": pods[role], "namespace": namespace, "labels": labels},
                "timestamp": "2026-01-01T00:00:00Z",
                "window": "30s",
                "containers": [{"name": "app", "usage": {"cpu": cpu, "memory": memory}}],
            },
        )
    return {"deployment": "app", "container": "app", "pods": pods, "pod_hash": pod_hash}
