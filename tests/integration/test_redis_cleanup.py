"""clean_redis against real redis-server processes: idle and flush rules delete exactly the keys
they name, before/after figures, the deadline, an LFU policy, a Redis that is down."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis

from opsflow.errors import PermanentError, TransientError
from opsflow.inventory import RedisCleanup, RedisTarget
from tasks.redis import clean_redis, clean_redis_keys, glob_matches, redis_glob
from tests.fixtures.databases import RedisServer
from tests.support.net import free_port

pytestmark = pytest.mark.integration
FIELD = "environments.test.redis[0]"
IDLE = "2s"
SLEEP_PAST_IDLE_S = 3.3  # OBJECT IDLETIME has a 1 s resolution: idle keys then read 3 or 4


def _target(monkeypatch: pytest.MonkeyPatch, url: str, name: str = "cache") -> RedisTarget:
    monkeypatch.setenv("OPSFLOW_TEST_REDIS_URL", url)
    return RedisTarget(name=name, url="env:OPSFLOW_TEST_REDIS_URL")


def _idle_rule(pattern: str) -> RedisCleanup:
    return RedisCleanup.model_validate({"redis": "cache", "pattern": pattern, "idle_over": IDLE})


def _flush_rule(pattern: str, **extra: object) -> RedisCleanup:
    return RedisCleanup.model_validate(
        {"redis": "cache", "pattern": pattern, "flush": True, **extra}
    )


def _all_keys(client: redis.Redis) -> set[bytes]:
    return set(client.scan_iter(count=1000))


@pytest.fixture()
def own_redis(redis_own_server: RedisServer) -> Iterator[tuple[RedisServer, redis.Redis]]:
    """Our own instance (nobody else's keys or lookups), emptied, stats reset; the eviction
    policy restored after the test."""
    client = redis_own_server.client()
    client.flushall()
    client.config_resetstat()
    saved = client.config_get("maxmemory-policy")["maxmemory-policy"]
    yield redis_own_server, client
    client.config_set("maxmemory-policy", saved)
    client.flushall()
    client.close()


def test_idle_rules_delete_only_idle_keys_without_ttl_inside_their_patterns(
    monkeypatch: pytest.MonkeyPatch, own_redis: tuple[RedisServer, redis.Redis]
) -> None:
    server, client = own_redis
    idle = {f"cache:idle:{i}".encode() for i in range(20)} | {b"cache:idle:hash"}
    fresh = {f"cache:fresh:{i}".encode() for i in range(10)}
    with_ttl = {f"cache:ttl:{i}".encode() for i in range(10)}
    old_sessions = {f"session:old:{i}".encode() for i in range(15)}
    outside = {f"session:live:{i}".encode() for i in range(8)} | {
        b"cachex:1",  # "cache:*" needs the colon
        b"Cache:idle:1",  # MATCH is case-sensitive
        b"cache",
        b"user:42",
        b"cache[1]",
    }
    for key in idle - {b"cache:idle:hash"} | fresh | old_sessions | outside:
        client.set(key, b"v" * 100)
    client.hset("cache:idle:hash", mapping={"a": "1", "b": "2"})
    for key in with_ttl:
        client.set(key, b"v", ex=3600)
    time.sleep(SLEEP_PAST_IDLE_S)
    for key in fresh:
        assert client.get(key) is not None  # touched: no longer idle
    before_outside = _all_keys(client) - idle - fresh - with_ttl - old_sessions
    assert before_outside == outside

    rules = [_idle_rule("cache:*"), _idle_rule("session:old:*")]
    step = clean_redis.fn(_target(monkeypatch, server.url), rules, FIELD)

    assert step.status == "complete", step.summary
    assert step.step == "clean_redis" and step.target == "cache"
    remaining = _all_keys(client)
    assert remaining == fresh | with_ttl | outside  # every other key untouched, by name
    cache_rule, session_rule = step.details["rules"]
    assert cache_rule["pattern"] == "cache:*" and cache_rule["action"] == "idle_over 0:00:02"
    assert cache_rule["scanned"] == len(idle | fresh | with_ttl)
    assert cache_rule["deleted"] == len(idle)
    assert cache_rule["kept_ttl"] == len(with_ttl)
    assert cache_rule["kept_fresh"] == len(fresh)
    assert cache_rule["not_matching"] == 0
    assert session_rule["scanned"] == session_rule["deleted"] == len(old_sessions)
    assert step.details["deleted"] == len(idle) + len(old_sessions)
    assert step.before["keys"] == len(idle | fresh | with_ttl | old_sessions | outside)
    assert step.after["keys"] == step.before["keys"] - step.details["deleted"]
    assert "36 key(s) deleted by 2 rule(s)" in step.summary
    # looking at the TTL keys (TTL, OBJECT IDLETIME) did not refresh their idle time
    idle_times = [client.object("idletime", key) for key in sorted(with_ttl)]
    assert min(idle_times) >= 3


def test_figures_before_and_after_and_the_hit_rate_leaves_out_the_cleanups_lookups(
    monkeypatch: pytest.MonkeyPatch, own_redis: tuple[RedisServer, redis.Redis]
) -> None:
    server, client = own_redis
    for i in range(400):
        client.set(f"tmp:{i}", b"x" * 2048)
    client.set("keep", "1")
    client.config_resetstat()
    for _ in range(30):
        client.get("keep")
    for _ in range(10):
        client.get("missing")
    rules = [_flush_rule("tmp:*"), _idle_rule("keep*")]  # the idle rule looks "keep" up
    step = clean_redis_keys(_target(monkeypatch, server.url), rules, FIELD)
    assert step.status == "complete", step.summary
    assert step.before["hit_rate_pct"] == 75.0
    assert step.after["hit_rate_pct"] == 75.0
    assert step.details["own_lookups"] == {"hits": 2, "misses": 0}  # TTL + OBJECT of "keep"
    assert client.info("stats")["keyspace_hits"] == 32
    assert step.before["keys"] == 401 and step.after["keys"] == 1
    used_before, used_after = step.before["used_memory"], step.after["used_memory"]
    assert isinstance(used_before, int) and isinstance(used_after, int)
    assert used_before - used_after > 400 * 2048 // 2  # the values' memory was given back
    assert client.exists("keep") == 1


def test_no_lookups_means_no_hit_rate(
    monkeypatch: pytest.MonkeyPatch, own_redis: tuple[RedisServer, redis.Redis]
) -> None:
    server, client = own_redis
    client.set("tmp:1", "1")
    step = clean_redis_keys(_target(monkeypatch, server.url), [_flush_rule("tmp:*")], FIELD)
    assert step.before["hit_rate_pct"] is None
    assert step.after["hit_rate_pct"] is None
    assert step.details["deleted"] == 1


def test_a_flush_rule_deletes_every_matching_key_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch, own_redis: tuple[RedisServer, redis.Redis]
) -> None:
    server, client = own_redis
    matching = {f"tmp:{i}".encode() for i in range(300)}
    for i, key in enumerate(sorted(matching)):
        client.set(key, "v", ex=3600 if i % 2 else None)  # TTL or not: a flush takes both
    others = {b"tmpx", b"tmp", b"app:tmp:1", b"TMP:1", b"other:tmp:*"}
    for key in others:
        client.set(key, "v")
    client.lpush("tmp:list", "a", "b")
    step = clean_redis_keys(
        _target(monkeypatch, server.url), [_flush_rule("tmp:*", scan_count=25)], FIELD
    )
    assert step.status == "complete", step.summary
    assert _all_keys(client) == others
    (rule,) = step.details["rules"]
    assert rule["deleted"] == len(matching) + 1
    assert rule["batches"] > 1  # SCAN in batches, not one call
    assert step.after["keys"] == step.before["keys"] - rule["deleted"] == len(others)


def test_star_with_confirm_flush_all_empties_only_the_urls_database(
    monkeypatch: pytest.MonkeyPatch, own_redis: tuple[RedisServer, redis.Redis]
) -> None:
    server, client = own_redis
    for i in range(50):
        client.set(f"any:{i}", "v")
    client.set("plain", "v")
    other_db = redis.Redis(host=server.host, port=server.port, db=1)
    try:
        other_db.set("db1:key", "v")
        rule = _flush_rule("*", confirm_flush_all=True)
        step = clean_redis_keys(_target(monkeypatch, server.url), [rule], FIELD)
        assert step.status == "complete", step.summary
        assert client.dbsize() == 0
        assert step.details["deleted"] == 51 == step.before["keys"]
        assert step.after["keys"] == 0
        assert other_db.get("db1:key") == b"v"  # db 1 is another database
    finally:
        other_db.close()


def _clock(deadline: datetime, calls_before: int) -> Callable[[], datetime]:
    """A clock before ``deadline`` for its first ``calls_before`` readings, after it then."""
    readings = iter(range(10_000))

    def now() -> datetime:
        late = next(readings) >= calls_before
        return deadline + timedelta(seconds=1 if late else -60)

    return now


def test_the_deadline_reached_mid_way_stops_and_reports_the_partial_work(
    monkeypatch: pytest.MonkeyPatch, own_redis: tuple[RedisServer, redis.Redis]
) -> None:
    server, client = own_redis
    for i in range(500):
        client.set(f"bulk:{i}", "v")
    client.set("other:1", "v")
    client.set("more:1", "v")
    deadline = datetime.now(UTC) + timedelta(hours=1)
    rules = [_flush_rule("bulk:*", scan_count=10), _flush_rule("other:*"), _flush_rule("more:*")]
    # one reading before starting, then one before each SCAN batch: two batches run
    step = clean_redis_keys(
        _target(monkeypatch, server.url), rules, FIELD, deadline=deadline, now=_clock(deadline, 3)
    )
    assert step.status == "degraded"
    bulk, other, more = step.details["rules"]
    assert bulk["status"] == "stopped" and bulk["batches"] == 2
    assert 0 < bulk["deleted"] < 500
    assert other["status"] == more["status"] == "not started"
    assert other["batches"] == more["batches"] == 0
    assert "stopped at the deadline, partial" in step.summary
    assert client.dbsize() == 502 - bulk["deleted"] == step.after["keys"]
    assert client.get("other:1") == b"v" and client.get("more:1") == b"v"


def test_a_passed_deadline_starts_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # a Redis that is not there: a skipped step does not even connect
    target = _target(monkeypatch, f"redis://127.0.0.1:{free_port()}/0")
    deadline = datetime.now(UTC) - timedelta(seconds=5)
    step = clean_redis.fn(target, [_flush_rule("tmp:*")], FIELD, deadline=deadline)
    assert step.status == "skipped"
    assert step.summary.startswith("not started: the deadline")
    assert step.before == {} and step.details == {}


def test_an_lfu_policy_fails_the_idle_rule_with_a_fix_and_the_flush_rule_still_runs(
    monkeypatch: pytest.MonkeyPatch, own_redis: tuple[RedisServer, redis.Redis]
) -> None:
    server, client = own_redis
    client.config_set("maxmemory-policy", "allkeys-lfu")
    for i in range(20):
        client.set(f"cache:{i}", "v")
        client.set(f"tmp:{i}", "v")
    step = clean_redis_keys(
        _target(monkeypatch, server.url), [_idle_rule("cache:*"), _flush_rule("tmp:*")], FIELD
    )
    assert step.status == "degraded"
    idle_rule, flush_rule = step.details["rules"]
    assert idle_rule["status"] == "failed" and idle_rule["deleted"] == 0
    assert "LFU" in idle_rule["error"]
    assert "CONFIG SET maxmemory-policy allkeys-lru" in idle_rule["error"]
    assert "'cache:*' failed: OBJECT IDLETIME is refused" in step.summary
    assert flush_rule["status"] == "complete" and flush_rule["deleted"] == 20
    assert _all_keys(client) == {f"cache:{i}".encode() for i in range(20)}

    only_idle = clean_redis_keys(_target(monkeypatch, server.url), [_idle_rule("cache:*")], FIELD)
    assert only_idle.status == "failed"
    assert client.dbsize() == 20


def test_rules_naming_another_target_are_left_out(
    monkeypatch: pytest.MonkeyPatch, own_redis: tuple[RedisServer, redis.Redis]
) -> None:
    server, client = own_redis
    client.set("tmp:1", "v")
    elsewhere = RedisCleanup(redis="sessions", pattern="tmp:*", flush=True)
    step = clean_redis_keys(_target(monkeypatch, server.url), [elsewhere], FIELD)
    assert step.status == "complete"
    assert "no cleanup rule names redis 'cache'" in step.summary
    assert client.get("tmp:1") == b"v"


def test_a_redis_that_is_down_is_transient_without_the_password(
    monkeypatch: pytest.MonkeyPatch, redis_auth_server: RedisServer
) -> None:
    password = redis_auth_server.password
    assert password
    down = f"redis://:{password}@127.0.0.1:{free_port()}/0"
    with pytest.raises(TransientError) as caught:
        clean_redis.fn(_target(monkeypatch, down), [_flush_rule("tmp:*")], FIELD)
    message = str(caught.value)
    assert "cannot reach Redis" in message
    assert password not in message


def test_a_password_protected_redis_is_cleaned_and_a_wrong_password_is_permanent(
    monkeypatch: pytest.MonkeyPatch, redis_auth_server: RedisServer
) -> None:
    password = redis_auth_server.password
    assert password
    with redis_auth_server.client() as client:
        client.set("tmp:auth", "v")
        client.set("keep:auth", "v")
        step = clean_redis.fn(
            _target(monkeypatch, redis_auth_server.url), [_flush_rule("tmp:*")], FIELD
        )
        assert step.status == "complete", step.summary
        assert client.exists("tmp:auth") == 0 and client.get("keep:auth") == b"v"
        client.delete("keep:auth")
    assert password not in step.model_dump_json()

    wrong = "wrong-" + password[::-1]
    bad = f"redis://:{wrong}@{redis_auth_server.host}:{redis_auth_server.port}/0"
    with pytest.raises(PermanentError) as caught:
        clean_redis.fn(_target(monkeypatch, bad), [_flush_rule("tmp:*")], FIELD)
    assert "refused the credentials" in str(caught.value)
    assert wrong not in str(caught.value) and password not in str(caught.value)


GLOB_KEYS = [
    b"cache:1",
    b"cache:12",
    b"cache:a",
    b"cache:",
    b"Cache:1",
    b"cachex",
    b"c*che",
    b"c?che",
    b"c[che",
    b"cache]",
    b"back\\slash",
    b"h-llo",
    b"hallo",
    b"hbllo",
    b"hello",
    b"hzllo",
    "caf\u00e9:1".encode(),
]
GLOB_PATTERNS = [
    "cache:*",
    "cache:?",
    "cache:[0-9]*",
    "cache:[^0-9]",
    "c\\*che",
    "c\\?che",
    "c\\[che",
    "cache\\]",
    "h[a-b]llo",
    "h[b-a]llo",
    "h[-a]llo",
    "h[a-]llo",
    "h[^e]llo",
    "h[\\-]llo",
    "back\\\\slash",
    "c[che",
    "caf\u00e9:*",
    "*",
    "**:1",
    "h[]llo",
]


def test_the_local_glob_agrees_with_redis_scan_match(
    own_redis: tuple[RedisServer, redis.Redis],
) -> None:
    _server, client = own_redis
    for key in GLOB_KEYS:
        client.set(key, "v")
    for pattern in GLOB_PATTERNS:
        by_redis = set(client.scan_iter(match=pattern, count=1000))
        regex = redis_glob(pattern)
        local = {key for key in GLOB_KEYS if glob_matches(regex, key)}
        assert local == by_redis, pattern


def test_a_user_without_unlink_fails_the_rule_with_a_fix_and_deletes_nothing(
    monkeypatch: pytest.MonkeyPatch, own_redis: tuple[RedisServer, redis.Redis]
) -> None:
    server, client = own_redis
    password = "cm-" + "p4ss" * 4
    client.acl_setuser(
        "cleaner",
        enabled=True,
        passwords=[f"+{password}"],
        keys=["*"],
        commands=["+@all", "-unlink"],
    )
    try:
        for i in range(5):
            client.set(f"tmp:{i}", "v")
        url = f"redis://cleaner:{password}@{server.host}:{server.port}/0"
        step = clean_redis.fn(_target(monkeypatch, url), [_flush_rule("tmp:*")], FIELD)
    finally:
        client.acl_deluser("cleaner")
    assert step.status == "failed"
    (rule,) = step.details["rules"]
    assert rule["status"] == "failed" and rule["scanned"] == 5 and rule["deleted"] == 0
    assert rule["error"] == (
        "Redis refused the cleanup: this user has no permissions to run the 'unlink' command "
        "(fix: allow the URL's user SCAN, TTL, OBJECT and UNLINK on these keys, e.g. ACL SETUSER "
        "<user> +scan +ttl +object +unlink)"
    )
    assert client.dbsize() == 5
    assert password not in step.model_dump_json()
