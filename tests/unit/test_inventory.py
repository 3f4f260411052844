"""Inventory validation: every bad inventory fails with a message naming the field and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from opsflow.errors import InputError
from opsflow.inventory import InventoryError, load_inventory, parse_inventory

GOOD = """
environments:
  local:
    endpoints: [{name: api, url: "http://127.0.0.1:4200/api/health"}]
    databases: [{name: ledger, kind: sqlite, path: .opsflow/ledger.db}]
  production:
    protected: true
    approvals: {approvers: [alice, bob], timeout: 30m}
    kubernetes: {namespace: accelerapp, deployment: accelerapp}
    databases:
      - {name: main, kind: postgres, dsn: "secret:prod-db-dsn", via: {kubectl_exec: postgres}}
    redis: [{name: cache, url: "env:PROD_REDIS_URL"}]
    backup_store: {url: "s3://bucket/prod", encryption_key: "secret:backup-key"}
    maintenance_window: {cron: "0 2 * * SUN", duration: 2h}
    notify: [{block: "slack-webhook/ops"}]
"""

# (inventory text, field expected in the message, words of the fix expected in the message)
BAD: list[tuple[str, str, str]] = [
    ("environments: {}", "environments", "at least one"),
    ("- just a list", "inventory", "environments:"),
    ("environments: {local: {endpoinds: []}}", "environments.local.endpoinds", "`endpoints`"),
    ("environments: {Prod: {}}", "environments", "lowercase"),
    ("environments: {p: {protected: true}}", "environments.p", "approvals"),
    ("environments: {p: {approvals: {approvers: []}}}", "approvals.approvers", "at least one"),
    ("environments: {p: {endpoints: [{name: a, url: 'ftp://x'}]}}", "endpoints[0].url", "http://"),
    ("environments: {p: {endpoints: [{url: 'http://x'}]}}", "endpoints[0].name", "add `name`"),
    ("environments: {p: {databases: [{name: m, kind: postgres}]}}", "databases[0]", "dsn:"),
    ("environments: {p: {databases: [{name: m, kind: sqlite}]}}", "databases[0]", "path:"),
    (
        "environments: {p: {databases: [{name: m, kind: mysql, dsn: x}]}}",
        "databases[0].kind",
        "one of",
    ),
    (
        "environments: {p: {databases: [{name: m, kind: postgres, dsn: 'postgresql://u:pw123@h/d'}]}}",
        "databases[0].dsn",
        "env:VAR_NAME",
    ),
    (
        "environments: {p: {databases: [{name: m, kind: postgres, dsn: 'env:X',"
        " via: {kubectl_exec: pg, contaner: c}}]}}",
        "via.contaner",
        "`container`",
    ),
    ("environments: {p: {thresholds: {disk_pct: lots}}}", "thresholds.disk_pct", "expected type"),
    (
        "environments: {p: {thresholds: {disk_pct: 150}}}",
        "thresholds.disk_pct",
        "correct the value",
    ),
    (
        "environments: {p: {backup_store: {url: 's3://b', encryption_key: 'hunter2hunter2'}}}",
        "backup_store.encryption_key",
        "secret:NAME",
    ),
    (
        "environments: {p: {maintenance_window: {cron: 'sunday', duration: 2h}}}",
        "maintenance_window.cron",
        "5 fields",
    ),
    (
        "environments: {p: {maintenance_window: {cron: '0 2 * * SUN', duration: soon}}}",
        "maintenance_window.duration",
        "90s",
    ),
    ("environments: {p: {notify: [{block: a, webhook: b}]}}", "notify[0]", "exactly one"),
    (
        "environments: {p: {logs: {files: [{path: /x, pattern: '(['}]}}}",
        "logs.files[0].pattern",
        "ERROR|FATAL",
    ),
    (
        "environments: {p: {endpoints: [{name: a, url: 'http://x'}, {name: a, url: 'http://y'}]}}",
        "environments.p",
        "unique name",
    ),
    (
        "environments: {p: {redis: [{name: c, url: 'redis://:secretpw@h:6379'}]}}",
        "redis[0].url",
        "env:VAR_NAME",
    ),
    (
        "environments: {p: {kubernetes: {namespace: a, token: abcdefgh}}}",
        "kubernetes.token",
        "secret:NAME",
    ),
    ("environments:\n  p: {endpoints: [}\n", "inventory", "YAML"),
]


def test_good_inventory_loads() -> None:
    inventory = parse_inventory(GOOD)
    prod = inventory.environment("production")
    assert prod.protected and prod.approvals is not None
    assert prod.approvals.timeout.total_seconds() == 1800
    assert prod.databases[0].via.kubectl_exec == "postgres"  # type: ignore[union-attr]
    assert prod.thresholds.disk_pct == 85  # seed default
    assert prod.maintenance_window is not None
    assert prod.maintenance_window.duration.total_seconds() == 7200


@pytest.mark.parametrize(
    ("text", "field", "fix"), BAD, ids=[b[1] + "-" + str(i) for i, b in enumerate(BAD)]
)
def test_bad_inventory_names_field_and_fix(text: str, field: str, fix: str) -> None:
    with pytest.raises(InventoryError) as info:
        parse_inventory(text, "test.yaml")
    message = str(info.value)
    assert "test.yaml" in message
    assert field in message, message
    assert "(fix:" in message and fix in message, message


def test_error_never_echoes_an_inline_password() -> None:
    text = "environments: {p: {databases: [{name: m, kind: postgres, dsn: 'postgresql://u:pw123@h/d'}]}}"
    with pytest.raises(InventoryError) as info:
        parse_inventory(text)
    assert "pw123" not in str(info.value)


def test_every_problem_is_listed() -> None:
    text = "environments: {p: {endpoinds: [], disks: 5}}"
    with pytest.raises(InventoryError) as info:
        parse_inventory(text)
    assert len(info.value.problems) == 2


def test_unknown_environment_suggests_the_closest() -> None:
    inventory = parse_inventory(GOOD)
    with pytest.raises(InputError) as info:
        inventory.environment("prodution")
    assert info.value.field == "environment"
    assert "did you mean 'production'" in str(info.value)
    assert "local, production" in str(info.value)


def test_missing_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(InventoryError) as info:
        load_inventory(tmp_path / "nope.yaml")
    assert "OPSFLOW_INVENTORY" in str(info.value)


def test_shipped_inventory_is_valid() -> None:
    inventory = load_inventory(Path(__file__).parents[2] / "inventory.yaml")
    assert "local" in inventory.environments
