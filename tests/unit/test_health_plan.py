"""The health-check plan is a pure function of the inventory: every listed thing is checked."""

from __future__ import annotations

from flows.health_check import plan_health_check, planned_checks
from opsflow.inventory import parse_inventory

INVENTORY = parse_inventory("""
environments:
  prod:
    endpoints:
      - {name: api, url: "https://api.example.test/health"}
      - {name: ready, url: "http://10.0.0.1/ready", kind: ready}
    metrics: [{name: app, url: "http://10.0.0.1/metrics"}]
    kubernetes: {namespace: accelerapp, deployment: accelerapp}
    docker: {services: [{name: web, container: svg-ai}]}
    logs: {window: 30m, files: [{path: /var/log/app.log}]}
    databases:
      - {name: main, kind: postgres, dsn: "env:DSN"}
      - {name: local, kind: sqlite, path: app.db}
    redis: [{name: cache, url: "env:REDIS_URL"}]
    disks: ["/", "/var"]
  empty:
    disks: []
""")


def test_every_inventory_item_becomes_a_step() -> None:
    plan = plan_health_check("prod", INVENTORY.environment("prod"))
    actions = [(s.action, s.target) for s in plan.steps]
    assert actions == [
        ("check_endpoint", "api"),
        ("check_tls_certificate", "api"),  # https only
        ("check_endpoint", "ready"),
        ("check_metrics", "app"),
        ("check_pods", "accelerapp/accelerapp"),
        ("check_pod_resources", "accelerapp/accelerapp"),
        ("scan_pod_logs", "accelerapp/accelerapp"),
        ("check_containers", "svg-ai"),
        ("scan_container_logs", "svg-ai"),
        ("scan_log_file", "/var/log/app.log"),
        ("check_postgres", "main"),
        ("check_sqlite", "local"),
        ("check_redis", "cache"),
        ("check_disk", "/"),
        ("check_disk", "/var"),
        ("check_backup_freshness", "backup catalog"),
    ]
    assert not plan.changes_anything


def test_database_errors_will_name_the_inventory_field() -> None:
    calls = {c.target: c for c in planned_checks("prod", INVENTORY.environment("prod"))}
    assert calls["main"].kwargs["field"] == "environments.prod.databases[0]"
    assert calls["cache"].kwargs["field"] == "environments.prod.redis[0]"


def test_empty_environment_says_what_to_add() -> None:
    plan = plan_health_check("empty", INVENTORY.environment("empty"))
    assert plan.steps == []
    assert "add endpoints" in plan.notes[0]
    assert "nothing" in plan.to_markdown().lower()
