"""rollout_verdict: ``kubectl rollout status`` over Deployment JSON, and the image patch."""

from __future__ import annotations

from typing import Any

import pytest

from opsflow.errors import InputError, PermanentError
from opsflow.inventory import KubernetesTarget
from tasks.kubernetes.rollout import (
    CHANGE_CAUSE,
    DEPLOY_ID,
    PREVIOUS_IMAGE,
    image_patch,
    rollout_verdict,
    set_deployment_image,
    wait_for_rollout,
    workload_image,
)


def deployment(
    status: dict[str, Any] | None = None,
    generation: int = 2,
    desired: int | None = 3,
    paused: bool = False,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "template": {"spec": {"containers": [{"name": "app", "image": "app:2"}]}},
    }
    if desired is not None:
        spec["replicas"] = desired
    if paused:
        spec["paused"] = True
    return {
        "metadata": {
            "name": "web",
            "namespace": "prod",
            "generation": generation,
            "resourceVersion": "41",
            "annotations": {"deployment.kubernetes.io/revision": "7"},
        },
        "spec": spec,
        "status": status or {},
    }


DEADLINE = {
    "type": "Progressing",
    "status": "False",
    "reason": "ProgressDeadlineExceeded",
    "message": 'ReplicaSet "web-abc" has timed out progressing.',
}
DONE = {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 3, "availableReplicas": 3}


def test_done_when_every_condition_holds() -> None:
    verdict = rollout_verdict(deployment(DONE))
    assert (verdict.state, verdict.message) == ("done", "deployment web successfully rolled out")


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (
            {**DONE, "observedGeneration": 1},
            "the spec change is not observed yet (observedGeneration 1 < generation 2)",
        ),
        ({}, "the spec change is not observed yet (observedGeneration 0 < generation 2)"),
        ({**DONE, "updatedReplicas": 1}, "1 out of 3 new replicas have been updated"),
        ({**DONE, "replicas": 5}, "2 old replicas are pending termination"),
        ({**DONE, "availableReplicas": None}, "0 of 3 updated replicas are available"),
    ],
    ids=["not-observed", "no-status", "not-updated", "old-replicas", "not-available"],
)
def test_progressing_names_the_first_unmet_condition(status: dict[str, Any], message: str) -> None:
    verdict = rollout_verdict(deployment(status))
    assert (verdict.state, verdict.message) == ("progressing", message)


def test_progress_deadline_fails_once_observed() -> None:
    failed = rollout_verdict(deployment(DONE | {"updatedReplicas": 1, "conditions": [DEADLINE]}))
    assert failed.state == "failed"
    assert failed.message == (
        'deployment web exceeded its progress deadline: ReplicaSet "web-abc" has timed out '
        "progressing."
    )
    # a deadline left from the rollout before a new spec change is not this rollout's
    stale = rollout_verdict(deployment(DONE | {"conditions": [DEADLINE]}, generation=3))
    assert stale.state == "progressing"


def test_other_progressing_reasons_do_not_fail() -> None:
    ok = {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
    assert rollout_verdict(deployment(DONE | {"conditions": [ok]})).state == "done"


def test_a_paused_deployment_fails() -> None:
    verdict = rollout_verdict(deployment(DONE | {"updatedReplicas": 0}, paused=True))
    assert verdict.state == "failed" and "kubectl rollout resume deployment/web" in verdict.message


def test_replicas_default_to_one_and_zero_counts_are_omitted() -> None:
    one = {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1}
    assert rollout_verdict(deployment(one, desired=None)).state == "done"
    zero = rollout_verdict(deployment({"observedGeneration": 2}, desired=0))
    assert zero.state == "done"  # scaled to 0: nothing to wait for


def test_workload_image_reads_the_bookkeeping() -> None:
    dep = deployment(DONE)
    dep["metadata"]["annotations"] |= {DEPLOY_ID: "d-1", PREVIOUS_IMAGE: "app:1"}
    image = workload_image(dep, "app")
    assert (image.image, image.revision, image.generation, image.replicas) == ("app:2", 7, 2, 3)
    assert (image.deploy_id, image.previous_image, image.resource_version) == ("d-1", "app:1", "41")
    with pytest.raises(
        PermanentError, match=r"prod/web has no container 'db' \(its containers: app;"
    ):
        workload_image(dep, "db")


def test_image_patch_sends_every_container_and_the_precondition() -> None:
    dep = deployment()
    sidecar = {"name": "proxy", "image": "proxy:1", "ports": [{"containerPort": 80}]}
    dep["spec"]["template"]["spec"]["containers"].append(sidecar)
    patch = image_patch(dep, "app", "app:3", "d-2")
    assert patch["metadata"] == {
        "resourceVersion": "41",
        "annotations": {
            DEPLOY_ID: "d-2",
            PREVIOUS_IMAGE: "app:2",
            CHANGE_CAUSE: "opsflow d-2: app app:2 -> app:3",
        },
    }
    assert patch["spec"]["template"]["spec"]["containers"] == [
        {"name": "app", "image": "app:3"},
        sidecar,
    ]
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "app:2"  # not mutated


def test_image_patch_of_the_running_image_changes_no_spec() -> None:
    patch = image_patch(deployment(), "app", "app:2", "d-3")
    assert patch == {"metadata": {"resourceVersion": "41", "annotations": {DEPLOY_ID: "d-3"}}}


@pytest.mark.parametrize(("image", "deploy_id"), [("", "d-1"), ("app:2 --x", "d-1"), ("a:1", "")])
def test_set_refuses_an_unusable_image_or_deploy_id(image: str, deploy_id: str) -> None:
    target = KubernetesTarget(namespace="ns", api_url="http://127.0.0.1:9")  # never contacted
    with pytest.raises(InputError) as caught:
        set_deployment_image.fn(target, "app", "app", image, deploy_id)
    assert caught.value.field == ("image" if not image or " " in image else "deploy_id")


@pytest.mark.parametrize(
    ("timeout", "poll", "field"),
    [(0, 1, "timeout_seconds"), (3601, 1, "timeout_seconds"), (60, 0, "poll_seconds")],
)
def test_wait_refuses_an_out_of_range_timeout_or_poll(
    timeout: float, poll: float, field: str
) -> None:
    target = KubernetesTarget(namespace="ns", api_url="http://127.0.0.1:9")  # never contacted
    with pytest.raises(InputError) as caught:
        wait_for_rollout.fn(target, "app", timeout_seconds=timeout, poll_seconds=poll)
    assert caught.value.field == field
