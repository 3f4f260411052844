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
    ("environments: {p: {notify: [{block: a, webhook: 'env:HOOK'}]}}", "notify[0]", "exactly one"),
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


# --- duplicate keys -------------------------------------------------------------------------

DUPLICATE_PRODUCTION = """
environments:
  production:
    protected: true
    approvals: {approvers: [alice, bob]}
    databases: [{name: main, kind: postgres, dsn: "secret:prod-db"}]
  production:
    description: pasted again further down, without protected or approvals
"""


def test_a_second_block_of_the_same_name_is_refused_naming_both_lines() -> None:
    """The finding: YAML keeps the second `production:` silently, which dropped
    `protected: true` and the approvals, and `inventory check` said OK."""
    with pytest.raises(InventoryError) as info:
        parse_inventory(DUPLICATE_PRODUCTION, "dup.yaml")
    assert info.value.problems == [
        (
            "environments.production",
            "is defined twice (lines 3 and 7): YAML keeps only the second one and silently "
            "drops everything the first one sets",
            "merge the two `production:` entries into one, or rename one of them",
        )
    ]
    assert str(info.value).startswith("invalid inventory dup.yaml:\n  environments.production:")


def test_duplicate_keys_are_refused_at_any_depth_all_at_once() -> None:
    text = (
        "environments:\n"  # 1
        "  p:\n"  # 2
        "    thresholds: {disk_pct: 80, cpu_pct: 70, disk_pct: 95}\n"  # 3
        "    databases:\n"  # 4
        "      - name: main\n"  # 5
        "        kind: postgres\n"  # 6
        '        dsn: "env:A"\n'  # 7
        '        dsn: "env:B"\n'  # 8
        "    protected: false\n"  # 9
        "    protected: true\n"  # 10
        "environments: {}\n"  # 11
    )
    with pytest.raises(InventoryError) as info:
        parse_inventory(text)
    found = [(field, problem.split(":")[0]) for field, problem, _fix in info.value.problems]
    assert found == [
        ("environments.p.thresholds.disk_pct", "is defined twice (line 3, columns 18 and 45)"),
        ("environments.p.databases[0].dsn", "is defined twice (lines 7 and 8)"),
        ("environments.p.protected", "is defined twice (lines 9 and 10)"),
        ("environments", "is defined twice (lines 1 and 11)"),
    ]


def test_yaml_merge_keys_may_be_overridden_by_the_mapping_s_own_keys() -> None:
    text = """
environments:
  p:
    databases:
      - &pg {name: main, kind: postgres, dsn: "env:A"}
      - {<<: *pg, name: other, dsn: "env:B"}
"""
    main, other = parse_inventory(text).environment("p").databases
    assert (main.name, main.dsn) == ("main", "env:A")
    assert (other.name, other.kind, other.dsn) == ("other", "postgres", "env:B")


def test_inventory_check_refuses_duplicate_keys_with_exit_2_and_no_traceback(
    tmp_path: Path,
) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    path = tmp_path / "inventory.yaml"
    path.write_text(DUPLICATE_PRODUCTION)
    result = CliRunner().invoke(app, ["inventory", "check", str(path)])
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert "environments.production: is defined twice (lines 3 and 7)" in output
    assert "OK" not in output and "Traceback" not in output
    assert not isinstance(result.exception, InventoryError)  # handled, not raised


# --- backup names: unique across kinds, `config` reserved -----------------------------------


def test_a_database_and_a_redis_target_may_not_share_a_name() -> None:
    """The finding: a PostgreSQL database and a Redis target both named `cache` shared one
    backup series, so a restore of the database could take the Redis target's RDB file."""
    text = """
environments:
  p:
    databases:
      - {name: main, kind: postgres, dsn: "env:A"}
      - {name: cache, kind: postgres, dsn: "env:B"}
    redis: [{name: cache, url: "env:R"}]
"""
    with pytest.raises(InventoryError) as info:
        parse_inventory(text, "names.yaml")
    [(field, problem, fix)] = info.value.problems
    assert field == "environments.p"
    assert problem == "databases[1] (postgres) and redis[0] are both named 'cache'"
    assert "unique name other than `config`" in fix


def test_config_is_reserved_and_every_clash_is_listed() -> None:
    """A database named `config` would share the configuration export's series."""
    text = """
environments:
  p:
    databases:
      - {name: config, kind: sqlite, path: a.db}
      - {name: main, kind: sqlite, path: b.db}
      - {name: main, kind: postgres, dsn: "env:A"}
  q:
    redis: [{name: config, url: "env:R"}]
"""
    with pytest.raises(InventoryError) as info:
        parse_inventory(text)
    problems = {field: problem for field, problem, _fix in info.value.problems}
    assert problems == {
        "environments.p": "databases[0] (sqlite) is named 'config', which is reserved for the "
        "configuration export's backups; databases[1] (sqlite) and databases[2] (postgres) are "
        "both named 'main'",
        "environments.q": "redis[0] is named 'config', which is reserved for the configuration "
        "export's backups",
    }
    # the same names in different environments are different backups: allowed
    parse_inventory("""
environments:
  a: {databases: [{name: cache, kind: sqlite, path: a.db}]}
  b: {redis: [{name: cache, url: "env:R"}]}
""")
