"""Inventory validation of change freezes, maintenance windows, smoke tests and the
verification window: every bad value names the field and the fix."""

from __future__ import annotations

from datetime import timedelta

import pytest

from opsflow.inventory import InventoryError, Verification, parse_inventory
from opsflow.inventory.load import validated

MW = "environments: {p: {maintenance_window: {cron: '0 2 * * SUN', duration: 2h, %s}}}"
FREEZE = "environments: {p: {change_freezes: [{name: ye, %s}]}}"
SMOKE = "environments: {p: {smoke_tests: [{name: s, url: 'http://127.0.0.1:1/x', %s}]}}"

# (inventory text, field expected in the message, words of the fix expected in the message)
BAD: list[tuple[str, str, str]] = [
    (MW % "timezone: Berlin", "maintenance_window.timezone", "did you mean Europe/Berlin"),
    (MW % "timezone: Mars/Olympus", "maintenance_window.timezone", "IANA name"),
    (
        "environments: {p: {maintenance_window: {cron: '0 25 * * *', duration: 2h}}}",
        "maintenance_window.cron",
        "'0 2 * * SUN'",
    ),
    (
        "environments: {p: {maintenance_window: {cron: '0 2 * * FUNDAY', duration: 2h}}}",
        "maintenance_window.cron",
        "5 fields",
    ),
    (
        "environments: {p: {maintenance_window: {cron: '0 2 1-7 * SUN', duration: 4h}}}",
        "maintenance_window.cron",
        "'0 2 * * SUN#1'",
    ),
    (
        "environments: {p: {maintenance_window: {cron: '0 2 * * SUN', duration: 25h}}}",
        "maintenance_window.duration",
        "at most 24h",
    ),
    (
        "environments: {p: {maintenance_window: {cron: '0 2 * * SUN', duration: 0s}}}",
        "maintenance_window.duration",
        "90s",
    ),
    (
        FREEZE % "start: '2026-12-20T00:00:00', end: '2027-01-02T00:00:00Z'",
        "change_freezes[0].start",
        "2026-12-20T00:00:00Z",
    ),
    (
        FREEZE % "start: 2026-12-20T00:00:00Z, end: '2027-01-02 00:00'",
        "change_freezes[0].end",
        "2026-12-20T00:00:00Z",
    ),
    (
        FREEZE % "start: 2027-01-02T00:00:00Z, end: 2026-12-20T00:00:00Z",
        "change_freezes[0]",
        "make `end` later than `start`",
    ),
    (FREEZE % "start: next week, end: 2026-12-20T00:00:00Z", "change_freezes[0].start", "type"),
    ("environments: {p: {change_freezes: [{start: 2026-12-20T00:00:00Z}]}}", "name", "add `name`"),
    (SMOKE % "method: FETCH", "smoke_tests[0].method", "one of the values"),
    (SMOKE % "method: GET, body: '{}'", "smoke_tests[0]", "method: POST"),
    (SMOKE % "method: HEAD, expect_body: v3", "smoke_tests[0]", "method: GET"),
    (SMOKE % "expect_json: {'data..version': v3}", "smoke_tests[0].expect_json", "data.version"),
    (SMOKE % "expect_json: [v3]", "smoke_tests[0].expect_json", "expected type"),
    (
        "environments: {p: {smoke_tests: [{name: s, url: 'ftp://x'}]}}",
        "smoke_tests[0].url",
        "http://",
    ),
    (
        "environments: {p: {smoke_tests: [{name: s, url: 'http://x', "
        "headers: {Authorization: 'Bearer abc'}}]}}",
        "smoke_tests[0].headers",
        "env:VAR_NAME",
    ),
]

# Verification is validated where the deploy section puts it: (data, field, fix)
BAD_VERIFY: list[tuple[dict[str, object], str, str]] = [
    ({"failure_limit": 0}, "failure_limit", "failure_limit: 3"),
    ({"max_error_rate_pct": 0}, "max_error_rate_pct", "max_error_rate_pct: 5"),
    ({"max_error_rate_pct": 101}, "max_error_rate_pct", "percentage"),
    ({"max_p95_ms": 0}, "max_p95_ms", "max_p95_ms: 1000"),
    ({"max_p95_ms": -5}, "max_p95_ms", "milliseconds"),
    ({"duration": "0s"}, "duration", "90s"),
    ({"interval": "soon"}, "interval", "90s"),
    ({"duration": "10s", "interval": "1m"}, "inventory: interval", "interval at most duration"),
    ({"metrics": ["app", "app"]}, "inventory: metrics lists", "list each once"),
    ({"endpoint": True}, "endpoint: unknown field", "`endpoints`"),
]


@pytest.mark.parametrize(
    ("text", "field", "fix"), BAD, ids=[b[1] + "-" + str(i) for i, b in enumerate(BAD)]
)
def test_bad_value_names_field_and_fix(text: str, field: str, fix: str) -> None:
    with pytest.raises(InventoryError) as info:
        parse_inventory(text, "test.yaml")
    message = str(info.value)
    assert field in message, message
    assert "(fix:" in message and fix in message, message


@pytest.mark.parametrize(
    ("data", "field", "fix"),
    BAD_VERIFY,
    ids=[b[1] + "-" + str(i) for i, b in enumerate(BAD_VERIFY)],
)
def test_bad_verification_names_field_and_fix(
    data: dict[str, object], field: str, fix: str
) -> None:
    with pytest.raises(InventoryError) as info:
        validated(Verification, data, "verify")
    message = str(info.value).split(":\n", 1)[1]  # the problems, without the source line
    assert field in message, message
    assert "(fix:" in message and fix in message, message


def test_good_values_load() -> None:
    inventory = parse_inventory("""
environments:
  p:
    maintenance_window: {cron: "0 2 * * SUN#1", duration: 4h, timezone: Europe/Berlin}
    change_freezes:
      - {name: year-end, start: 2026-12-20T00:00:00Z, end: "2027-01-02T00:00:00+01:00",
         reason: closing}
    smoke_tests:
      - name: version
        url: http://127.0.0.1:1/api
        method: POST
        body: '{"ping": 1}'
        headers: {Authorization: "env:SMOKE_TOKEN"}
        expect_status: 201
        expect_body: pong
        expect_json: {data.version: v3, items.0.ok: true}
""")
    env = inventory.environment("p")
    assert env.maintenance_window is not None and env.maintenance_window.timezone == "Europe/Berlin"
    freeze = env.change_freezes[0]
    assert freeze.end - freeze.start == timedelta(days=12, hours=23)
    smoke = env.smoke_tests[0]
    assert (smoke.method, smoke.body, smoke.expect_body) == ("POST", '{"ping": 1}', "pong")
    assert smoke.expect_json == {"data.version": "v3", "items.0.ok": True}
    assert parse_inventory("environments: {p: {}}").environment("p").change_freezes == []


def test_verification_defaults_and_durations() -> None:
    default = Verification()
    assert (default.duration, default.interval) == (timedelta(minutes=2), timedelta(seconds=10))
    assert (default.failure_limit, default.max_error_rate_pct, default.max_p95_ms) == (3, 5.0, 1000)
    assert default.metrics == [] and default.endpoints is True and default.samples == 12
    custom = Verification.model_validate({"duration": "2s", "interval": "200ms"})
    assert custom.samples == 10
    assert custom.interval == timedelta(milliseconds=200)
