"""The pure parts of secret rotation (opsflow.rotation): values that do not show, generation,
the forms a value takes, which secrets a run rotates and why it refuses, the plan, the
report's status."""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
import string
from datetime import datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from flows.rotate_secret import plan_rotate_secret
from opsflow.errors import InputError
from opsflow.inventory import Environment
from opsflow.redaction import redact
from opsflow.rotation import (
    DUE,
    RotationReport,
    SecretRotation,
    SecretValue,
    build_plan,
    choose,
    generate_value,
    last_rotations,
    pack_api_key,
    redis_password_hash,
    scram_sha256_verifier,
    unpack_api_key,
)

NOW = datetime(2026, 3, 1, 3, 0, 0)


def env(**extra: Any) -> Environment:
    data: dict[str, Any] = {
        "databases": [{"name": "main", "kind": "postgres", "dsn": "postgresql://u@db:5432/app"}],
        "redis": [{"name": "cache", "url": "redis://cache:6379/0"}],
        "docker": {"services": [{"name": "api", "container": "api-1"}]},
        "kubernetes": {"namespace": "shop"},
        "secrets": [
            {
                "name": "app-db",
                "kind": "postgres_role",
                "role": "app",
                "admin": "main",
                "store": {"prefect_secret": "app-db"},
                "consumers": {"docker": [{"service": "api", "env": "DB_PASSWORD"}]},
            },
            {
                "name": "cache-user",
                "kind": "redis_acl",
                "role": "app",
                "admin": "cache",
                "store": {"kubernetes_secret": "cache", "key": "password"},
                "consumers": {"kubernetes": ["api"]},
                "rotate_every": "7d",
            },
        ],
    }
    return Environment.model_validate(data | extra)


def test_a_secret_value_never_shows() -> None:
    value = SecretValue("s3cret-value-" + "x" * 10)
    assert repr(value) == str(value) == f"{value}" == "SecretValue(***)"
    assert value.reveal() not in redact(f"the value is {value.reveal()}")  # registered
    with pytest.raises(TypeError):
        pickle.dumps(value)
    with pytest.raises(TypeError):
        json.dumps({"v": value})
    assert copy.deepcopy(value) is value
    assert value.same_as(SecretValue(value.reveal()))
    with pytest.raises(ValueError):
        SecretValue("")


def test_generated_values_are_long_random_and_plain() -> None:
    values = {generate_value(32).reveal() for _ in range(20)}
    assert len(values) == 20
    assert all(len(v) == 32 and set(v) <= set(string.ascii_letters + string.digits) for v in values)
    assert len(generate_value(64).reveal()) == 64


def test_scram_verifier_has_postgres_form_and_depends_on_salt() -> None:
    password = SecretValue("pencil-and-paper")
    verifier = scram_sha256_verifier(password, salt=b"0123456789abcdef").reveal()
    head, keys = verifier.split("$", 1)[1].split("$")
    assert verifier.startswith("SCRAM-SHA-256$4096:")
    assert head == "4096:MDEyMzQ1Njc4OWFiY2RlZg=="
    assert len(keys.split(":")) == 2
    assert scram_sha256_verifier(password, salt=b"0123456789abcdef").reveal() == verifier
    assert scram_sha256_verifier(password).reveal() != verifier  # a random salt by default
    assert password.reveal() not in verifier


def test_redis_hash_and_the_api_key_store_form() -> None:
    value = SecretValue("redis-password-1")
    assert redis_password_hash(value) == hashlib.sha256(b"redis-password-1").hexdigest()
    packed = pack_api_key("k7", SecretValue("key:with:colons"))
    assert packed.reveal() == "k7:key:with:colons"
    key_id, key = unpack_api_key(packed)
    assert (key_id, key.reveal()) == ("k7", "key:with:colons")
    assert unpack_api_key(SecretValue("bare-key-value"))[0] is None
    with pytest.raises(ValueError):
        pack_api_key("a:b", value)


def test_choose_a_named_secret_or_the_due_ones() -> None:
    e = env()
    assert [s.name for _i, s in choose("p", e, "app-db", {}, NOW)] == ["app-db"]
    assert [s.name for _i, s in choose("p", e, DUE, {}, NOW)] == ["app-db", "cache-user"]
    last = {"app-db": NOW - timedelta(days=29), "cache-user": NOW - timedelta(days=7)}
    assert [s.name for _i, s in choose("p", e, DUE, last, NOW)] == ["cache-user"]
    last["cache-user"] = NOW - timedelta(days=6)
    assert choose("p", e, DUE, last, NOW) == []


def test_unknown_secret_lists_the_known_ones() -> None:
    with pytest.raises(InputError) as caught:
        choose("p", env(), "app-bd", {}, NOW)
    assert caught.value.field == "secret_name"
    assert "['app-db', 'cache-user'], or due" in caught.value.fix
    with pytest.raises(InputError) as none:
        choose("p", env(secrets=[]), "app-db", {}, NOW)
    assert "secrets:" in none.value.fix


def _with_secret(**changes: Any) -> Environment:
    secret = {
        "name": "s",
        "kind": "postgres_role",
        "role": "app",
        "admin": "main",
        "store": {"prefect_secret": "s"},
        "consumers": {"docker": [{"service": "api", "env": "DB_PASSWORD"}]},
    }
    return env(secrets=[secret | changes])


@pytest.mark.parametrize(
    ("changes", "field", "problem"),
    [
        ({"consumers": {}}, "secrets[0].consumers", "nothing would use the new value"),
        ({"consumers": {"kubernetes": ["api"]}}, "secrets[0].store", "Kubernetes Secret"),
    ],
)
def test_refusals_before_any_change(changes: dict[str, Any], field: str, problem: str) -> None:
    with pytest.raises(InputError) as caught:
        plan_rotate_secret("p", _with_secret(**changes), secret_name="s", last={})
    assert caught.value.field == f"environments.p.{field}"
    assert problem in caught.value.problem


def test_a_postgres_admin_reached_through_a_container_is_refused() -> None:
    e = env(
        databases=[
            {
                "name": "main",
                "kind": "postgres",
                "dsn": "postgresql://u@db/app",
                "via": {"docker_exec": "db"},
            }
        ]
    )
    with pytest.raises(InputError) as caught:
        choose("p", e, "app-db", {}, NOW)
    assert caught.value.field == "environments.p.secrets[0].admin"
    assert "via: direct" in caught.value.fix


def test_the_plan_of_one_postgres_secret() -> None:
    plan = plan_rotate_secret("p", env(), secret_name="app-db", last={})
    assert [(s.action, s.target, s.changes) for s in plan.steps] == [
        ("read_secret_store", "Prefect Secret block app-db", False),
        ("check_current_credential", "app-db", False),
        ("create_credential", "app-db", True),
        ("write_secret_store", "Prefect Secret block app-db", True),
        ("roll_consumer", "docker api", True),
        ("verify_credential", "app-db", False),
        ("check_consumer", "docker api", False),
        ("revoke_credential", "app-db", False),
        ("rotated", "app-db", False),
        ("remove_previous_container", "docker api", True),
    ]
    assert "ALTER ROLE app" in plan.steps[2].why
    assert plan.parameters == {"secret_name": "app-db"}


def test_the_plan_of_due_secrets_on_a_protected_environment() -> None:
    protected = env(protected=True, approvals={"approvers": {"alice": {"totp": "env:A"}}})
    last = {"app-db": NOW - timedelta(days=1)}
    plan = build_plan("p", protected, choose("p", protected, DUE, last, NOW), DUE)
    actions = [s.action for s in plan.steps]
    assert actions[0] == "request_approval"
    assert ("roll_consumer", "deployment shop/api") in [(s.action, s.target) for s in plan.steps]
    assert "remove_previous_container" not in actions  # no Docker consumer
    assert plan.notes[0].startswith("secret_name=due: cache-user ")
    assert build_plan("p", protected, [], DUE).steps == []  # nothing due: no approval


def test_last_rotations_take_the_newest_complete_row() -> None:
    def row(target: str, status: str, days: int) -> Any:
        return SimpleNamespace(target=target, status=status, recorded_at=NOW - timedelta(days=days))

    rows = [row("a", "complete", 9), row("a", "complete", 2), row("a", "failed", 1)]
    rows.append(row("b", "failed", 1))
    assert last_rotations(rows) == {"a": NOW - timedelta(days=2)}


def test_report_status_is_the_worst_outcome() -> None:
    def report(*states: str) -> RotationReport:
        outcomes = [
            SecretRotation.model_validate({"name": f"s{i}", "kind": "api_key", "status": s})
            for i, s in enumerate(states)
        ]
        return RotationReport(env="p", secret_name=DUE, secrets=outcomes)

    assert report().status == "complete"
    assert report("rotated", "rotated").status == "complete"
    assert report("rotated", "rolled-back").status == "rolled-back"
    assert report("rolled-back", "failed").status == "failed"
