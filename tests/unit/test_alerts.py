"""The pure parts of alert intake (opsflow/alerts.py): Alertmanager's version-4 webhook payload
read strictly, rule matching (environment rules, shared rules by the env label), the rules
checked against the runbooks, and the dedup and rate-limit decisions over a given history."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from opsflow.alerts import (
    MAX_BODY_BYTES,
    PayloadError,
    Seen,
    check_rules,
    decide,
    firing_run,
    match_alert,
    parse_payload,
)
from opsflow.inventory.incident import Alerting
from opsflow.inventory.load import parse_inventory

NOW = datetime(2026, 12, 1, 12, 0, 0)
GK = '{}/{severity="critical"}:{alertname="HighMemory"}'


def alert(**over: Any) -> dict[str, Any]:
    return {
        "status": "firing",
        "labels": {"alertname": "HighMemory", "env": "prod", "pod": "web-1"},
        "annotations": {"summary": "web-1 uses 95% of its limit"},
        "startsAt": "2026-12-01T11:58:45.828Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=mem",
        "fingerprint": "1a30ba71cca2921f",
        **over,
    }


def payload(**over: Any) -> dict[str, Any]:
    """Alertmanager's documented webhook body, version 4."""
    return {
        "version": "4",
        "groupKey": GK,
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "opsflow",
        "groupLabels": {"alertname": "HighMemory"},
        "commonLabels": {"alertname": "HighMemory", "env": "prod"},
        "commonAnnotations": {"summary": "web-1 uses 95% of its limit"},
        "externalURL": "http://alertmanager:9093",
        "alerts": [alert()],
        **over,
    }


def body(value: Any) -> bytes:
    return json.dumps(value).encode()


# ----- payloads ----------------------------------------------------------------------------


def test_a_version_4_payload_is_read() -> None:
    parsed = parse_payload(body(payload()))
    assert parsed.group_key == GK
    assert parsed.status == "firing" and parsed.truncated_alerts == 0
    [one] = parsed.alerts
    assert one.alertname == "HighMemory"
    assert one.fingerprint == "1a30ba71cca2921f"
    assert one.starts_at == datetime(2026, 12, 1, 11, 58, 45, 828000, tzinfo=UTC)
    assert one.ends_at.year == 1
    assert one.labels["pod"] == "web-1"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "is not JSON"),
        (body([1, 2]), "the payload"),
        (body(payload(version="3")), "version: must be '4'"),
        (body({k: v for k, v in payload().items() if k != "groupKey"}), "groupKey: Field required"),
        (body(payload(status="pending")), "status"),
        (body(payload(alerts=[])), "alerts: List should have at least 1 item"),
        (body(payload(alerts=[alert(fingerprint="../../x")])), "alerts[0].fingerprint"),
        (body(payload(alerts=[alert(labels={"pod": "x"})])), "has no alertname label"),
        (body(payload(alerts=[alert(startsAt="yesterday")])), "alerts[0].startsAt"),
        (body(payload(alerts=[alert(labels={"alertname": 5})])), "alerts[0].labels.alertname"),
        (body(payload(orgId=1)), "orgId: Extra inputs are not permitted"),
        (
            body(
                payload(
                    alerts=[alert(labels={f"l{i}": "v" for i in range(65)} | {"alertname": "A"})]
                )
            ),
            "at most 64",
        ),
        (body(payload(alerts=[alert()] * 1001)), "alerts: List should have at most 1000 items"),
        (
            body(payload(alerts=[alert(labels={"alertname": "A", "x": "v" * 5000})])),
            "has 5000 characters, at most 4096",
        ),
    ],
    ids=[
        "not-json",
        "not-an-object",
        "wrong-version",
        "no-group-key",
        "bad-status",
        "no-alerts",
        "bad-fingerprint",
        "no-alertname",
        "bad-time",
        "label-not-a-string",
        "unknown-field",
        "too-many-labels",
        "too-many-alerts",
        "label-too-long",
    ],
)
def test_malformed_payloads_are_refused_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(PayloadError) as refused:
        parse_payload(raw)
    assert reason in str(refused.value)
    assert len(str(refused.value)) < 1000


def test_an_oversized_payload_is_refused_before_it_is_parsed() -> None:
    big = body(payload(commonAnnotations={"a": "x" * MAX_BODY_BYTES}))
    with pytest.raises(PayloadError, match=f"at most {MAX_BODY_BYTES}"):
        parse_payload(big)


def test_the_module_is_pure() -> None:
    code = (
        "import sys, opsflow.alerts; "
        "sys.exit(int('prefect' in sys.modules or 'sqlalchemy' in sys.modules))"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# ----- rules -------------------------------------------------------------------------------

INVENTORY = """
environments:
  prod:
    alert_rules:
      - {match: {alertname: HighMemory, pod: web-1}, runbook: health-check, params: {notify: false}}
      - {match: {alertname: HighMemory}, runbook: backup}
  staging:
    alert_rules:
      - {match: {alertname: Down}, runbook: health-check}
alert_rules:
  - {match: {alertname: DiskFull}, runbook: health-check}
  - {match: {alertname: HighMemory, env: staging}, runbook: recover}
"""


def inventory(text: str = INVENTORY) -> Any:
    return parse_inventory(text, "inventory.yaml")


def test_environment_rules_match_first_every_label_equal() -> None:
    inv = inventory()
    found = match_alert(inv, {"alertname": "HighMemory", "env": "prod", "pod": "web-1"})
    assert (found.env, found.rule and found.rule.runbook, found.place) == (
        "prod",
        "health-check",
        "environments.prod.alert_rules[0]",
    )
    assert found.rule is not None and found.rule.params == {"notify": False}
    other_pod = match_alert(inv, {"alertname": "HighMemory", "env": "prod", "pod": "web-2"})
    assert other_pod.rule is not None and other_pod.rule.runbook == "backup"


def test_an_environment_rule_matches_an_alert_without_env_label_in_inventory_order() -> None:
    found = match_alert(inventory(), {"alertname": "Down"})
    assert found.env == "staging" and found.place == "environments.staging.alert_rules[0]"


def test_shared_rules_take_the_environment_from_the_env_label() -> None:
    inv = inventory()
    found = match_alert(inv, {"alertname": "DiskFull", "env": "staging"})
    assert (found.env, found.place) == ("staging", "alert_rules[0]")
    shared = match_alert(inv, {"alertname": "HighMemory", "env": "staging"})
    assert (shared.env, shared.place) == ("staging", "alert_rules[1]")
    no_label = match_alert(inv, {"alertname": "DiskFull"})
    assert no_label.rule is None and "no env label" in no_label.reason


def test_no_rule_and_an_unknown_environment_are_unmatched_with_a_reason() -> None:
    inv = inventory()
    none = match_alert(inv, {"alertname": "Nope", "env": "prod"})
    assert none.rule is None and none.env == "prod"
    assert none.reason == "no rule of environment 'prod' matches alert 'Nope'"
    unknown = match_alert(inv, {"alertname": "HighMemory", "env": "qa"})
    assert unknown.rule is None and "'qa' is not in the inventory" in unknown.reason


def test_check_rules_names_unknown_runbooks_and_environments() -> None:
    inv = inventory(INVENTORY + "  - {match: {alertname: X, env: qa}, runbook: high-memory}\n")
    problems = check_rules(inv, ["health-check", "backup", "recover"])
    assert problems == [
        "alert_rules[2].runbook: unknown runbook 'high-memory' (fix: choose one of "
        "prefect.yaml's runbooks: backup, health-check, recover)",
        "alert_rules[2].match.env: unknown environment 'qa' (fix: name one of the "
        "inventory's environments: prod, staging)",
    ]
    assert check_rules(inventory(), ["health-check", "backup", "recover"]) == []


# ----- dedup and rate limit ----------------------------------------------------------------

LIMITS = Alerting(dedup_window=timedelta(minutes=10), max_runs_per_hour=3)


def seen(
    minutes_ago: float, outcome: str, fp: str = "f1", run: str = "", env: str = "prod"
) -> Seen:
    return Seen(NOW - timedelta(minutes=minutes_ago), env, GK, fp, outcome, run)


def ask(history: list[Seen], fp: str = "f1", running: frozenset[str] = frozenset()) -> Any:
    return decide(
        env="prod",
        group_key=GK,
        fingerprint=fp,
        now=NOW.replace(tzinfo=UTC),
        alerting=LIMITS,
        history=history,
        running=running,
    )


def test_a_first_alert_starts_a_run() -> None:
    assert ask([]).start is True
    assert ask([]).outcome == "accepted"


def test_a_repeat_within_the_window_is_deduplicated_and_names_the_run() -> None:
    history = [seen(3, "accepted"), seen(2.9, "started", run="run-1")]
    decision = ask(history)
    assert (decision.start, decision.outcome, decision.flow_run_id) == (
        False,
        "deduplicated",
        "run-1",
    )
    assert "within the dedup window (10m)" in decision.reason


def test_a_repeat_while_its_run_is_still_being_created_is_deduplicated() -> None:
    decision = ask([seen(0.01, "accepted")])
    assert decision.outcome == "deduplicated" and "(being created)" in decision.reason


def test_a_repeat_after_the_window_starts_again_unless_its_run_still_runs() -> None:
    history = [seen(30, "accepted"), seen(29.9, "started", run="run-1")]
    assert ask(history).start is True
    still = ask(history, running=frozenset({"run-1"}))
    assert (still.outcome, still.reason) == ("deduplicated", "its run run-1 is still running")


def test_a_repeat_of_a_start_that_failed_starts_again() -> None:
    assert ask([seen(1, "accepted"), seen(0.9, "failed_to_start")]).start is True


def test_other_fingerprints_and_group_keys_are_not_repeats() -> None:
    history = [seen(1, "accepted", fp="f2"), Seen(NOW, "prod", "other", "f1", "accepted")]
    assert ask(history).start is True


def test_the_rate_limit_is_a_sliding_hour_per_environment() -> None:
    full = [seen(59, "accepted", fp="a"), seen(30, "accepted", fp="b"), seen(1, "accepted", fp="c")]
    limited = ask(full)
    assert (limited.start, limited.outcome) == (False, "rate_limited")
    assert "had 3 alert runs in the last hour" in limited.reason
    assert "max_runs_per_hour) is 3" in limited.reason
    slid = [seen(61, "accepted", fp="a"), *full[1:]]
    assert ask(slid).start is True
    elsewhere = [seen(1, "accepted", fp=f, env="staging") for f in "abc"]
    assert ask(elsewhere).start is True
    outcomes = ["unmatched", "deduplicated", "resolved"]
    not_runs = [seen(1, o, fp=f) for f, o in zip("abc", outcomes, strict=True)]
    assert ask(not_runs).start is True


def test_a_resolved_alert_names_the_run_its_firing_started() -> None:
    history = [
        seen(20, "started", run="old"),
        seen(5, "started", run="new"),
        seen(4, "started", fp="f2", run="other"),
    ]
    assert firing_run(history, GK, "f1") == "new"
    assert firing_run(history, GK, "f9") == ""
