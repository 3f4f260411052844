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
    approvals:
      approvers: {alice: {totp: 'env:ALICE_TOTP'}, bob: {totp: 'secret:bob-totp'}}
      timeout: 30m
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
    ("environments: {p: {approvals: {approvers: {}}}}", "approvals.approvers", "at least one"),
    (  # the old list form: a name proves nothing
        "environments: {p: {approvals: {approvers: [alice, bob]}}}",
        "approvals.approvers",
        "approvers: {alice: {totp: env:ALICE_TOTP}, bob: {totp: env:BOB_TOTP}}",
    ),
    (
        "environments: {p: {approvals: {approvers: {alice: {totp: JBSWY3DPEHPK3PXPJBSWY3DP}}}}}",
        "approvals.approvers.alice.totp",
        "env:VAR or secret:NAME",
    ),
    ("environments: {p: {approvals: {approvers: {alice: {}}}}}", "alice.totp", "add `totp`"),
    (
        "environments: {p: {approvals: {approvers: {alice: {totp: 'env:A'}}, required: 2}}}",
        "environments.p.approvals",
        "list more approvers or lower required",
    ),
    (
        "environments: {p: {approvals: {approvers: {alice: {totp: 'env:A'}}, required: 0}}}",
        "approvals.required",
        "correct the value",
    ),
    (
        "environments: {p: {approvals: {approvers: {'a b': {totp: 'env:A'}}}}}",
        "approvals.approvers",
        "login name",
    ),
    (
        "environments: {p: {approvals: {approvers: {alice: {totp: 'env:A'}}, timeout: 0}}}",
        "approvals.timeout",
        "30m",
    ),
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
    assert {n: a.totp for n, a in prod.approvals.approvers.items()} == {
        "alice": "env:ALICE_TOTP",
        "bob": "secret:bob-totp",
    }
    assert prod.approvals.required == 1
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
    approvals: {approvers: {alice: {totp: "env:ALICE_TOTP"}}}
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


# --- literal credentials ------------------------------------------------------------------------

SECRET = "hunter2s3cr3t"


def env_with(body: str) -> str:
    return "environments:\n  p:\n" + "".join(f"    {line}\n" for line in body.splitlines())


# (inventory body, field named, words of the message)
CREDENTIALS: list[tuple[str, str, str]] = [
    (
        f"databases: [{{name: m, kind: postgres, dsn: 'host=h password={SECRET} dbname=d'}}]",
        "databases[0].dsn",
        "password=",
    ),
    (
        f"databases: [{{name: m, kind: postgres, dsn: 'user=u PASSWORD = {SECRET}'}}]",
        "databases[0].dsn",
        "password=",
    ),
    (
        f"databases: [{{name: m, kind: postgres, dsn: 'postgresql://u@h/d?password={SECRET}'}}]",
        "databases[0].dsn",
        "password",
    ),
    (
        f"endpoints: [{{name: a, url: 'https://h/health?access_token={SECRET}'}}]",
        "endpoints[0].url",
        "access_token",
    ),
    (
        f"endpoints: [{{name: a, url: 'https://h/health?x=1&client_secret={SECRET}'}}]",
        "endpoints[0].url",
        "client_secret",
    ),
    (
        f"endpoints: [{{name: a, url: 'https://u:{SECRET}@h/health'}}]",
        "endpoints[0].url",
        "password",
    ),
    (
        f"smoke_tests: [{{name: a, url: 'https://h/?X-Amz-Signature={SECRET}'}}]",
        "smoke_tests[0].url",
        "X-Amz-Signature",
    ),
    (
        f"metrics: [{{name: a, url: 'http://h/metrics?apikey={SECRET}'}}]",
        "metrics[0].url",
        "apikey",
    ),
    (f"metrics: [{{name: a, url: 'http://h/metrics?key={SECRET}'}}]", "metrics[0].url", "key="),
    (
        f"notify: [{{webhook: 'https://hooks.slack.com/services/T0/B0/{SECRET}'}}]",
        "notify[0].webhook",
        "Slack",
    ),
    (
        f"notify: [{{webhook: 'https://api.telegram.org/bot1:{SECRET}/sendMessage'}}]",
        "notify[0].webhook",
        "Telegram",
    ),
    (
        f"notify: [{{webhook: 'https://discordapp.com/api/webhooks/1/{SECRET}'}}]",
        "notify[0].webhook",
        "Discord",
    ),
    (
        f"notify: [{{webhook: 'https://{SECRET}@example.com/hook'}}]",
        "notify[0].webhook",
        "credentials",
    ),
    (f"notify: [{{webhook: 'https://example.com/hook?sig={SECRET}'}}]", "notify[0].webhook", "sig"),
    (f"backup_store: {{url: 's3://AKIAX:{SECRET}@bucket/p'}}", "backup_store.url", "boto3"),
    (f"backup_store: {{url: 's3://{SECRET}@bucket/p'}}", "backup_store.url", "credentials"),
    (
        f"backup_store: {{url: 's3://b', endpoint_url: 'http://minio/?token={SECRET}'}}",
        "backup_store.endpoint_url",
        "token",
    ),
    (
        f"redis: [{{name: c, url: 'rediss://default:{SECRET}@h:6380/0'}}]",
        "redis[0].url",
        "password",
    ),
    (
        f"kubernetes: {{namespace: n, api_url: 'https://u:{SECRET}@k8s:6443'}}",
        "kubernetes.api_url",
        "password",
    ),
    (f"docker: {{host: 'tcp://{SECRET}@h:2376'}}", "docker.host", "credentials"),
    (
        f"docker: {{services: [{{name: w, container: w, health_url: 'http://h/?token={SECRET}'}}]}}",
        "docker.services[0].health_url",
        "token",
    ),
    (
        f"maintenance_mode: {{url: 'https://h/admin?api_key={SECRET}'}}",
        "maintenance_mode.url",
        "api_key",
    ),
    (
        f"endpoints: [{{name: a, url: 'http://h', headers: {{Authorization: 'Bearer {SECRET}'}}}}]",
        "endpoints[0].headers",
        "Authorization",
    ),
    (
        f"endpoints: [{{name: a, url: 'http://h', headers: {{X-Auth-Token: {SECRET}}}}}]",
        "endpoints[0].headers",
        "X-Auth-Token",
    ),
    (
        f"metrics: [{{name: a, url: 'http://h', headers: {{Cookie: 'session={SECRET}'}}}}]",
        "metrics[0].headers",
        "Cookie",
    ),
    (
        f"metrics: [{{name: a, url: 'http://h', headers: {{X-Anything: 'Basic {SECRET}'}}}}]",
        "metrics[0].headers",
        "X-Anything",
    ),
]


@pytest.mark.parametrize(("body", "field", "words"), CREDENTIALS, ids=[c[1] for c in CREDENTIALS])
def test_a_literal_credential_is_refused_with_the_fix_of_a_reference(
    body: str, field: str, words: str
) -> None:
    with pytest.raises(InventoryError) as info:
        parse_inventory(env_with(body), "creds.yaml")
    message = str(info.value)
    assert field in message, message
    assert words in message, message
    assert "(fix:" in message
    no_reference = field.startswith(("backup_store", "kubernetes.api_url", "docker", "maint"))
    fix = "remove the credential from the URL" if no_reference else "env:VAR_NAME or secret:"
    assert fix in message, message
    assert SECRET not in message


# Fields that may hold a secret take references, and values without credentials stay accepted.
ACCEPTED = [
    "endpoints: [{name: a, url: 'env:HEALTH_URL'}]",
    "endpoints: [{name: a, url: 'secret:health-url', headers: {Authorization: 'secret:api-auth'}}]",
    "smoke_tests: [{name: a, url: 'https://h/health?verbose=1&page=2'}]",
    "metrics: [{name: a, url: 'secret:metrics-url', headers: {X-Api-Key: 'env:METRICS_KEY'}}]",
    "metrics: [{name: a, url: 'http://h/metrics', headers: {Accept: text/plain}}]",
    "notify: [{webhook: 'env:SLACK_WEBHOOK_URL'}]",
    "notify: [{webhook: 'https://alerts.example.com/hook'}]",
    "databases: [{name: m, kind: postgres, dsn: 'host=h dbname=d user=u'}]",
    "databases: [{name: m, kind: postgres, dsn: 'postgresql://u@h:5432/d?sslmode=require'}]",
    "redis: [{name: c, url: 'secret:redis-url'}]",
    "backup_store: {url: 's3://bucket/prefix', endpoint_url: 'http://127.0.0.1:9000'}",
    "kubernetes: {namespace: n, api_url: 'https://k8s:6443', token: 'secret:k8s-token'}",
    "docker: {host: 'unix:///var/run/docker.sock'}",
]


@pytest.mark.parametrize("body", ACCEPTED)
def test_references_and_values_without_credentials_are_accepted(body: str) -> None:
    parse_inventory(env_with(body))


def test_credential_checks_name_secret_like_parameters() -> None:
    from opsflow.inventory.fields import credential_in, secret_like

    for name in ("password", "access_token", "X-Amz-Signature", "AWSAccessKeyId", "api-key", "sig"):
        assert secret_like(name), name
    for name in ("page", "verbose", "region", "sslmode", "signal", "keyboard"):
        assert not secret_like(name), name
    assert credential_in("https://h/x?page=1") is None
    assert credential_in("host=h password=x") == "holds a literal password (password=…)"


def test_references_lists_every_reference_with_its_path() -> None:
    from opsflow.inventory.references import references

    inventory = parse_inventory(
        env_with(
            "endpoints: [{name: a, url: 'env:A_URL', headers: {Authorization: 'secret:auth'}}]\n"
            "databases: [{name: m, kind: postgres, dsn: 'env:DSN'}]\n"
            "notify: [{webhook: 'secret:hook'}]"
        )
    )
    assert references("p", inventory.environment("p")) == [
        ("environments.p.endpoints[0].url", "env:A_URL"),
        ("environments.p.endpoints[0].headers.Authorization", "secret:auth"),
        ("environments.p.databases[0].dsn", "env:DSN"),
        ("environments.p.notify[0].webhook", "secret:hook"),
    ]


def test_check_references_lists_every_missing_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    from opsflow.inventory.references import check_references

    monkeypatch.delenv("BADIN_A", raising=False)
    monkeypatch.delenv("BADIN_B", raising=False)
    monkeypatch.setenv("BADIN_C", "postgresql://u@h/d")
    inventory = parse_inventory(
        env_with(
            "databases: [{name: m, kind: postgres, dsn: 'env:BADIN_C'}]\n"
            "redis: [{name: r, url: 'env:BADIN_A'}]\n"
            "endpoints: [{name: a, url: 'env:BADIN_B'}]"
        )
    )
    with pytest.raises(InventoryError) as info:
        check_references("p", inventory.environment("p"))
    assert [p[0] for p in info.value.problems] == [
        "environments.p.endpoints[0].url",
        "environments.p.redis[0].url",
    ]
    assert "BADIN_A" in str(info.value) and "BADIN_B" in str(info.value)


def test_a_report_of_many_problems_is_bounded() -> None:
    text = "environments:\n  p:\n    endpoints:\n" + "      - {name: a, url: ftp://x}\n" * 50
    with pytest.raises(InventoryError) as info:
        parse_inventory(text)
    lines = str(info.value).splitlines()
    assert len(info.value.problems) == 50
    assert len(lines) == 1 + 20 + 1
    assert lines[-1].strip() == "… and 30 more"


def test_deep_nesting_and_alias_bombs_are_refused_quickly() -> None:
    deep = "environments: " + "[" * 5000 + "]" * 5000
    with pytest.raises(InventoryError, match="nests deeper than 64"):
        parse_inventory(deep)
    bomb = 'a: &a ["x","x","x","x","x","x","x","x","x","x"]\n' + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 10) + "]\n"
        for i in range(6)
    )
    with pytest.raises(InventoryError, match="billion laughs"):
        parse_inventory(bomb + "environments: {p: {disks: *g}}\n")
    shared = 'environments: {p: &a {description: "x"}, q: *a}\n'
    assert set(parse_inventory(shared).environments) == {"p", "q"}
