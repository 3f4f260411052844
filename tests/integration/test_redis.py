"""check_redis against real redis-server processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from opsflow.errors import PermanentError, TransientError
from opsflow.inventory import RedisTarget, Thresholds
from opsflow.results import Status
from tasks.redis import check_redis
from tests.fixtures.databases import RedisServer
from tests.support.net import free_port

pytestmark = pytest.mark.integration
FIELD = "environments.test.redis[0]"


def _target(monkeypatch: pytest.MonkeyPatch, url: str) -> RedisTarget:
    monkeypatch.setenv("OPSFLOW_TEST_REDIS_URL", url)
    return RedisTarget(name="cache", url="env:OPSFLOW_TEST_REDIS_URL")


@pytest.fixture()
def redis_own_clean(redis_own_server: RedisServer) -> Iterator[RedisServer]:
    """Our own instance with stats reset; maxmemory settings restored after the test."""
    with redis_own_server.client() as client:
        client.flushall()
        client.config_resetstat()
        saved = client.config_get("maxmemory*")
    yield redis_own_server
    with redis_own_server.client() as client:
        client.config_set("maxmemory", saved["maxmemory"])
        client.config_set("maxmemory-policy", saved["maxmemory-policy"])
        client.flushall()


def test_healthy_server_reports_role_clients_and_memory(
    monkeypatch: pytest.MonkeyPatch, redis_database: RedisServer
) -> None:
    with redis_database.client() as client:
        client.set("opsflow:probe", "1")
        result = check_redis.fn(_target(monkeypatch, redis_database.url), Thresholds(), FIELD)
    assert result.check == "redis" and result.target == "cache"
    assert result.details["role"] == "master"
    assert result.details["connected_clients"] >= 2  # ours and the check's
    assert result.details["used_memory"] > 0
    assert result.details["rejected_connections"] >= 0
    assert result.details["version"].split(".")[0].isdigit()
    # the machine's shared server may have any hit rate: only our own instance is graded below
    if redis_database.own:
        assert result.status is Status.HEALTHY, result.summary


def test_memory_graded_against_real_maxmemory(
    monkeypatch: pytest.MonkeyPatch, redis_own_clean: RedisServer
) -> None:
    target = _target(monkeypatch, redis_own_clean.url)
    with redis_own_clean.client() as client:
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory-policy", "allkeys-lru")
        client.config_set("maxmemory", used * 4)
        roomy = check_redis.fn(target, Thresholds(), FIELD)
        assert roomy.status is Status.HEALTHY, roomy.summary
        assert roomy.details["maxmemory"] == used * 4
        assert 10 < roomy.details["memory_pct"] < 50

        tight = check_redis.fn(target, Thresholds(redis_memory_pct=10), FIELD)
        assert tight.status is Status.DEGRADED
        assert "of maxmemory (threshold 10%" in tight.summary

        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", used // 2)
        full = check_redis.fn(target, Thresholds(), FIELD)
    assert full.status is Status.CRITICAL
    assert "noeviction" in full.summary and full.details["memory_pct"] >= 98


def test_hit_rate_graded_after_enough_lookups(
    monkeypatch: pytest.MonkeyPatch, redis_own_clean: RedisServer
) -> None:
    target = _target(monkeypatch, redis_own_clean.url)
    with redis_own_clean.client() as client:
        client.set("hot", "1")
        for _ in range(50):
            client.get("cold")
        too_few = check_redis.fn(target, Thresholds(), FIELD)
        assert too_few.details["keyspace_misses"] == 50
        assert too_few.status is Status.HEALTHY  # 50 lookups: not enough to judge

        for _ in range(60):
            client.get("cold")
        for _ in range(10):
            client.get("hot")
        cold = check_redis.fn(target, Thresholds(), FIELD)
        assert cold.details["keyspace_hits"] == 10
        assert cold.status is Status.DEGRADED
        assert "hit rate 8% below 80%" in cold.summary

        for _ in range(1000):
            client.get("hot")
        warm = check_redis.fn(target, Thresholds(), FIELD)
    assert warm.status is Status.HEALTHY, warm.summary
    assert warm.details["hit_rate_pct"] > 80


def test_missing_and_wrong_password_are_permanent_without_the_password(
    monkeypatch: pytest.MonkeyPatch, redis_auth_server: RedisServer
) -> None:
    assert redis_auth_server.password
    good = check_redis.fn(_target(monkeypatch, redis_auth_server.url), Thresholds(), FIELD)
    assert good.details["role"] == "master"

    bare = f"redis://{redis_auth_server.host}:{redis_auth_server.port}/0"
    with pytest.raises(PermanentError) as missing:
        check_redis.fn(_target(monkeypatch, bare), Thresholds(), FIELD)
    assert f"{FIELD}.url" in str(missing.value)

    wrong = "wrong-" + redis_auth_server.password[::-1]
    bad = f"redis://:{wrong}@{redis_auth_server.host}:{redis_auth_server.port}/0"
    with pytest.raises(PermanentError) as caught:
        check_redis.fn(_target(monkeypatch, bad), Thresholds(), FIELD)
    message = str(caught.value)
    assert "refused the credentials" in message
    assert wrong not in message and redis_auth_server.password not in message


def test_refused_port_is_transient(monkeypatch: pytest.MonkeyPatch) -> None:
    target = _target(monkeypatch, f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(TransientError, match="cannot reach Redis"):
        check_redis.fn(target, Thresholds(), FIELD)
