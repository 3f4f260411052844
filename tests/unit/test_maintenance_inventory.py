"""The maintenance.redis_cleanup rules: a rule that could delete the wrong keys is refused when
the inventory is read, naming the field and the fix."""

from __future__ import annotations

import pytest

from opsflow.inventory import InventoryError, parse_inventory

INVENTORY = """
environments:
  p:
    redis: [{name: cache, url: "env:PROD_REDIS_URL"}]
    maintenance:
      redis_cleanup:
        - %s
"""
RULE = "environments.p.maintenance.redis_cleanup[0]"

# (rule, field expected in the message, words of the fix expected in the message)
BAD: list[tuple[str, str, str]] = [
    ('{redis: cache, pattern: "*", flush: true}', RULE, "add confirm_flush_all: true"),
    ('{redis: cache, pattern: "**?", idle_over: 1h}', RULE, "narrow it, e.g. cache:*"),
    ('{redis: cache, pattern: "cache:*"}', RULE, "keep one of them"),
    ('{redis: cache, pattern: "cache:*", flush: true, idle_over: 1h}', RULE, "keep one of them"),
    ('{redis: cache, pattern: "", flush: true}', f"{RULE}.pattern", "at least 1 character"),
    ('{redis: cache, pattern: "c:*", idle_over: 0s}', f"{RULE}.idle_over", "e.g. 90s"),
    ('{redis: cache, pattern: "c:*", flush: true, scan_count: 5}', f"{RULE}.scan_count", "10"),
    (
        '{redis: sessions, pattern: "c:*", flush: true}',
        "maintenance.redis_cleanup[0].redis",
        "use one of: cache",
    ),
]


@pytest.mark.parametrize(("rule", "field", "fix"), BAD, ids=[b[0] for b in BAD])
def test_bad_cleanup_rule_is_refused_naming_the_field(rule: str, field: str, fix: str) -> None:
    with pytest.raises(InventoryError) as caught:
        parse_inventory(INVENTORY % rule)
    message = str(caught.value)
    assert f"{field}" in message
    assert fix in message


def test_star_with_confirm_flush_all_and_a_narrow_idle_rule_are_accepted() -> None:
    inventory = parse_inventory(
        INVENTORY % '{redis: cache, pattern: "*", flush: true, confirm_flush_all: true}'
        + '        - {redis: cache, pattern: "cache:*", idle_over: 7d, scan_count: 1000}\n'
    )
    everything, idle = inventory.environments["p"].maintenance.redis_cleanup
    assert everything.flush and everything.confirm_flush_all and everything.idle_over is None
    assert idle.idle_over is not None and idle.idle_over.days == 7
    assert idle.flush is False and idle.scan_count == 1000
