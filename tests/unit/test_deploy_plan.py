"""Deploy and rollback plans, image references, deploy ids and the inventory's ``deploy:``
section: pure functions of the inventory, what runs now (given here) and the parameters."""

from __future__ import annotations

from typing import Any

import pytest

from flows.deploy import changes_for, plan_deploy
from flows.rollback import plan_rollback, previous_images
from opsflow.errors import InputError
from opsflow.inventory import DeployService, Environment, InventoryError, parse_inventory
from opsflow.ledger import RunRow, utcnow
from opsflow.releases import deploy_id, deploy_id_base, parse_image
from tasks.release import Live

DIGEST = "sha256:" + "ab" * 32
INVENTORY = parse_inventory("""
environments:
  prod:
    protected: true
    approvals: {approvers: {alice: {totp: 'env:ALICE_TOTP'}, bob: {totp: 'env:BOB_TOTP'}}}
    docker:
      services: [{name: web, container: web-1}, {name: worker, container: worker-1}]
    smoke_tests: [{name: home, url: "http://127.0.0.1:8000/", expect_body: ok}]
    metrics: [{name: app, url: "http://127.0.0.1:8000/metrics"}]
    backup_store: {url: "file:///var/backups/opsflow"}
    deploy: {verify: {duration: 2m, interval: 10s, metrics: [app]}}
  staging:
    docker: {services: [{name: web, container: web-s}, {name: worker, container: worker-s}]}
    deploy: {backup: false}
  lab:
    kubernetes: {namespace: shop, deployment: api, api_url: "https://k8s.example:6443"}
    deploy: {backup: false, verify: null}
  bare:
    docker: {services: [{name: web, container: web-b}]}
  half:
    kubernetes: {namespace: shop, api_url: "https://k8s.example:6443"}
    deploy: {services: [{name: web}], backup: false}
""")
RUNS = {
    ("prod", "web"): "shop/web:1.0",
    ("prod", "worker"): "shop/worker:1.0",
    ("staging", "web"): "shop/web:2.0",
    ("staging", "worker"): "shop/worker:2.0",
    ("lab", "api"): "registry.example.com:5000/shop/api:7",
}


def read(env: Environment, service: DeployService) -> Live:
    name = next(n for n, e in INVENTORY.environments.items() if e is env)
    return Live(RUNS[(name, service.name)], None, None, 3, "4", f"container {service.name}")


def present(env: Environment, image: str) -> None:
    if image.endswith(":missing"):
        raise InputError("image", f"{image} is not on the Docker engine", "build it first")


def plan(env: str = "prod", **params: Any) -> Any:
    return plan_deploy(
        env, INVENTORY.environment(env), inventory=INVENTORY, read=read, present=present, **params
    )


# --- image references -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name", "tag", "digest"),
    [
        ("web", "web", None, None),
        ("web:1.4.2", "web", "1.4.2", None),
        ("shop/web_api:v1-rc.2", "shop/web_api", "v1-rc.2", None),
        ("registry.example.com:5000/shop/web:1", "registry.example.com:5000/shop/web", "1", None),
        (f"shop/web@{DIGEST}", "shop/web", None, DIGEST),
        (f"localhost/web:1@{DIGEST}", "localhost/web", "1", DIGEST),
        ("a__b/c-d--e.f:TAG_x", "a__b/c-d--e.f", "TAG_x", None),
    ],
)
def test_image_references_parse(text: str, name: str, tag: str | None, digest: str | None) -> None:
    ref = parse_image(text)
    assert (ref.name, ref.tag, ref.digest) == (name, tag, digest)
    assert str(ref) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "Web:1",  # upper case in the repository
        "web:",  # empty tag
        "web:-1",  # a tag cannot start with '-'
        "web:" + "x" * 129,  # tag too long
        "web@sha256:abc",  # short digest
        "web@md5:" + "a" * 32,
        "web::1",
        "http://registry/web:1",
        "web:1 2",
        "/web",
        "web/",
        "shop//web",
        "web;rm -rf /",
        "x" * 300,
    ],
)
def test_bad_image_references_are_refused_naming_the_field(text: str) -> None:
    with pytest.raises(InputError) as refused:
        parse_image(text, "image")
    assert refused.value.field == "image"
    assert "name[:tag][@sha256:" in refused.value.fix
    assert len(str(refused.value)) < 400


def test_with_tag_keeps_the_repository_and_drops_the_digest() -> None:
    ref = parse_image(f"registry.example.com:5000/shop/web:1@{DIGEST}")
    assert str(ref.with_tag("2.0")) == "registry.example.com:5000/shop/web:2.0"


def test_deploy_ids_are_stable_until_an_attempt_ends() -> None:
    targets = {"web": "shop/web:2", "worker": "shop/worker:2"}
    first = deploy_id("prod", targets, [])
    assert first == deploy_id("prod", dict(reversed(targets.items())), ["other-1"])  # a rerun
    assert first.startswith("prod-") and first.endswith("-1")
    assert deploy_id("prod", targets, [first]) == first[:-1] + "2"  # after it ended
    assert deploy_id_base("prod", {"web": "shop/web:3"}) != deploy_id_base("prod", targets)
    assert deploy_id("prod", targets, [], "rollback").startswith("rollback-prod-")


# --- deploy plans -----------------------------------------------------------------------------


def test_an_image_for_every_service_with_approval_backup_and_verification() -> None:
    made = plan(image="shop/app:2.0")
    actions = [s.action for s in made.steps]
    assert actions == [
        "check_change_window",
        "request_approval",
        "backup",
        "set_image",
        "set_image",
        "health_check",
        "run_smoke_test",
        "verify_window",
    ]
    sets = [s for s in made.steps if s.action == "set_image"]
    assert [s.target for s in sets] == ["container web", "container worker"]  # inventory order
    assert sets[0].why == "shop/web:1.0 -> shop/app:2.0, 3 replica(s)"
    assert made.parameters["images"] == "web=shop/app:2.0, worker=shop/app:2.0"
    assert "file:///var/backups/opsflow" in made.steps[2].why


def test_version_keeps_each_repository_and_promote_takes_what_staging_runs() -> None:
    made = plan(version="1.5")
    assert made.parameters["images"] == "web=shop/web:1.5, worker=shop/worker:1.5"
    promoted = plan(promote_from="staging")
    assert promoted.parameters["images"] == "web=shop/web:2.0, worker=shop/worker:2.0"


def test_the_image_already_running_is_a_no_op() -> None:
    made = plan(env="staging", image="shop/web:2.0")
    sets = [s for s in made.steps if s.action == "set_image"]
    assert [s.target for s in sets] == ["container worker"]
    assert "web already runs shop/web:2.0: unchanged" in made.notes
    nothing = plan(env="lab", image="registry.example.com:5000/shop/api:7")
    assert [s.action for s in nothing.steps] == ["check_change_window"]
    assert "every service already runs its target image: nothing to do" in nothing.notes


def test_a_rerun_of_the_same_deploy_id_resumes() -> None:
    env = INVENTORY.environment("lab")
    live = {"api": Live("shop/api:8", "lab-x-1", "shop/api:7", 2, "3", "deployment shop/api")}
    (change,) = changes_for(env, live, {"api": "shop/api:8"}, "lab-x-1")
    assert (change.action, change.from_image) == ("resume", "shop/api:7")
    (other,) = changes_for(env, live, {"api": "shop/api:8"}, "lab-x-2")
    assert other.action == "unchanged"


def test_kubernetes_defaults_to_the_connections_deployment() -> None:
    deploy = INVENTORY.environment("lab").deploy
    assert deploy is not None and deploy.target == "kubernetes"
    assert [(s.name, s.workload) for s in deploy.services] == [("api", "api")]
    made = plan(env="lab", image="shop/api:8")
    assert [s.action for s in made.steps] == ["check_change_window", "set_image", "health_check"]


def test_skip_backup_is_said() -> None:
    made = plan(image="shop/app:2.0", skip_backup=True)
    assert "backup" not in [s.action for s in made.steps]
    assert any("skip_backup=true" in n for n in made.notes)


@pytest.mark.parametrize(
    ("params", "field", "text"),
    [
        ({}, "image", "exactly one of image, version or promote_from"),
        ({"image": "shop/web:2", "version": "2"}, "version", "got image, version"),
        ({"image": "Shop/Web"}, "image", "is not an image reference"),
        ({"version": "-rc1"}, "version", "is not an image tag"),
        ({"image": "shop/web:missing"}, "image", "is not on the Docker engine"),
        ({"promote_from": "nope"}, "promote_from", "unknown environment 'nope'"),
        ({"promote_from": "bare"}, "promote_from", "has no deploy service web, worker"),
        ({"promote_from": "prod"}, "promote_from", "is 'prod' itself"),
        ({"image": "shop/web:2", "override_window_reason": " "}, "override_window_reason", "empty"),
        ({"image": "shop/web:2", "deploy_id": "a b;c"}, "deploy_id", "is not a deploy id"),
    ],
)
def test_bad_deploy_input_is_refused(params: dict[str, Any], field: str, text: str) -> None:
    with pytest.raises(InputError) as refused:
        plan(**params)
    assert refused.value.field == field
    assert text in str(refused.value)


def test_environments_without_a_target_or_approvers_or_store_are_refused() -> None:
    with pytest.raises(InputError) as no_target:
        plan(env="bare", image="shop/web:2")
    assert no_target.value.field == "environments.bare.deploy"
    with pytest.raises(InputError) as no_approvers:
        plan(env="lab", image="shop/api:9", override_window_reason="hotfix")
    assert no_approvers.value.field == "override_window_reason"
    inv = parse_inventory(
        "environments:\n  p:\n    docker: {services: [{name: web, container: w}]}\n    deploy: {}\n"
    )
    with pytest.raises(InputError) as no_store:
        plan_deploy("p", inv.environment("p"), image="shop/web:2", read=read_p, present=present)
    assert no_store.value.field == "environments.p.deploy.backup"
    assert "skip_backup=true" in no_store.value.fix


def read_p(env: Environment, service: DeployService) -> Live:
    return Live("shop/web:1", None, None, None, None, "container w")


# --- the inventory's deploy section -----------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (
            "docker: {services: [{name: web, container: w}]}\ndeploy: {services: [web, api]}",
            "['api'] are not docker.services",
        ),
        (
            "docker: {services: [{name: web, container: w}]}\ndeploy: {services: [web, web]}",
            "lists ['web'] twice",
        ),
        ("deploy: {target: kubernetes}", "no kubernetes: connection"),
        ("deploy: {}", "has neither a docker: and a kubernetes: connection"),
        (
            "docker: {services: [{name: web, container: w}]}\n"
            "kubernetes: {namespace: a, api_url: 'https://k:6443'}\ndeploy: {}",
            "has both",
        ),
        (
            "docker: {services: [{name: web, container: w}]}\n"
            "deploy: {verify: {max_error_rate_pct: 150}}",
            "max_error_rate_pct",
        ),
        (
            "docker: {services: [{name: web, container: w}]}\n"
            "deploy: {verify: {duration: 5s, interval: 10s}}",
            "interval is longer than duration",
        ),
        (
            "docker: {services: [{name: web, container: w}]}\ndeploy: {verify: {failure_limit: 0}}",
            "failure_limit",
        ),
        (
            "docker: {services: [{name: web, container: w}]}\ndeploy: {verify: {metrics: [nope]}}",
            "deploy.verify.metrics names ['nope']",
        ),
        ("docker: {services: [{name: web, container: w}]}\ndeploy: {on_busy: queue}", "on_busy"),
        (
            "docker: {services: [{name: web, container: w}]}\ndeploy: {rollout_timeout: 0s}",
            "rollout_timeout",
        ),
        (
            "kubernetes: {namespace: a, api_url: 'https://k:6443'}\n"
            "deploy: {services: [{name: Web_1}]}",
            "are not Deployment names",
        ),
        (
            "kubernetes: {namespace: a, api_url: 'https://k:6443'}\ndeploy: {}",
            "no services to deploy",
        ),
    ],
)
def test_bad_deploy_sections_are_refused(body: str, text: str) -> None:
    source = "environments:\n  p:\n" + "".join(f"    {line}\n" for line in body.splitlines())
    with pytest.raises(InventoryError) as refused:
        parse_inventory(source)
    assert text in str(refused.value)


# --- rollback plans ---------------------------------------------------------------------------


def _deploy_row(changes: list[dict[str, str]], outcome: str = "deployed") -> RunRow:
    now = utcnow()
    return RunRow(
        flow_run_id="r",
        runbook="deploy",
        env="prod",
        status="complete",
        started_at=now,
        finished_at=now,
        details={"outcome": outcome, "changes": changes},
    )


def test_rollback_takes_the_image_the_last_good_deploy_replaced() -> None:
    env = INVENTORY.environment("staging")
    live = {s.name: read(env, s) for s in env.deploy.services}  # type: ignore[union-attr]
    rows = [
        _deploy_row(
            [{"service": "web", "from_image": "shop/web:9", "to_image": "shop/web:2.0"}],
            outcome="rolled back",
        ),
        _deploy_row(
            [
                {"service": "web", "from_image": "shop/web:1.0", "to_image": "shop/web:2.0"},
                {
                    "service": "worker",
                    "from_image": "shop/worker:1.0",
                    "to_image": "shop/worker:2.0",
                },
            ]
        ),
    ]
    assert previous_images("staging", env, live, rows) == {
        "web": "shop/web:1.0",
        "worker": "shop/worker:1.0",
    }
    made = plan_rollback("staging", env, live=live, deploys=rows, present=present)
    assert [s.target for s in made.steps if s.action == "roll_back"] == [
        "container worker",
        "container web",
    ]  # reverse deploy order
    with pytest.raises(InputError) as none:
        previous_images("staging", env, live, rows[:1])
    assert none.value.field == "image" and "--param image=" in none.value.fix
