"""Pure parts of tasks.redis: grading INFO output."""

from __future__ import annotations

from typing import Any

import pytest

from opsflow.inventory import Thresholds
from opsflow.results import Status
from tasks.redis import grade_info, summarize


def _info(**values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "redis_version": "7.0.15",
        "role": "master",
        "used_memory": 1000,
        "maxmemory": 0,
        "maxmemory_policy": "allkeys-lru",
        "keyspace_hits": 0,
        "keyspace_misses": 0,
        "connected_clients": 3,
        "rejected_connections": 0,
    }
    return base | values


@pytest.mark.parametrize(
    ("used", "policy", "expected"),
    [
        (500, "allkeys-lru", Status.HEALTHY),
        (900, "allkeys-lru", Status.DEGRADED),
        (1000, "allkeys-lru", Status.DEGRADED),  # an LRU cache at its limit is working
        (970, "noeviction", Status.DEGRADED),
        (990, "noeviction", Status.CRITICAL),  # writes are about to fail
    ],
)
def test_memory_graded_only_when_maxmemory_is_set(used: int, policy: str, expected: Status) -> None:
    info = _info(used_memory=used, maxmemory=1000, maxmemory_policy=policy)
    assert grade_info(info, Thresholds(redis_memory_pct=90))[0] is expected
    assert grade_info(_info(used_memory=10**12), Thresholds())[0] is Status.HEALTHY


@pytest.mark.parametrize(
    ("hits", "misses", "expected"),
    [(10, 89, Status.HEALTHY), (10, 90, Status.DEGRADED), (80, 20, Status.HEALTHY)],
)
def test_hit_rate_needs_100_lookups(hits: int, misses: int, expected: Status) -> None:
    info = _info(keyspace_hits=hits, keyspace_misses=misses)
    status, notes = grade_info(info, Thresholds(redis_hit_rate_pct=80))
    assert status is expected
    assert bool(notes) is (expected is Status.DEGRADED)


def test_replica_without_master_link_is_degraded() -> None:
    info = _info(role="slave", master_link_status="down")
    assert grade_info(info, Thresholds())[0] is Status.DEGRADED
    assert (
        grade_info(_info(role="slave", master_link_status="up"), Thresholds())[0] is Status.HEALTHY
    )


def test_summary_figures() -> None:
    details = summarize(_info(used_memory=250, maxmemory=1000, keyspace_hits=3, keyspace_misses=1))
    assert details["memory_pct"] == 25.0
    assert details["hit_rate_pct"] == 75.0
    assert summarize(_info())["hit_rate_pct"] is None
