"""Redis health check: PING, memory vs maxmemory, hit rate, clients, rejections, role."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import redis
from prefect import task
from prefect.cache_policies import NO_CACHE
from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationWrongNumberOfArgsError,
    AuthorizationError,
    NoPermissionError,
)
from redis.retry import Retry

from opsflow.errors import PermanentError, TransientError, retry_on_transient
from opsflow.inventory import RedisTarget, Thresholds
from opsflow.redaction import redact
from opsflow.results import CheckResult, Status, worst
from opsflow.secrets import resolve

SOCKET_TIMEOUT_S = 5.0
MIN_LOOKUPS = 100
NOEVICTION_CRITICAL_PCT = 98.0
AUTH_ERRORS = (
    redis.AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    AuthorizationError,
    NoPermissionError,
)


def grade_info(info: dict[str, Any], thresholds: Thresholds) -> tuple[Status, list[str]]:
    """Grade ``INFO`` output; returns the status and the notes that explain it."""
    statuses = [Status.HEALTHY]
    notes: list[str] = []
    used = int(info.get("used_memory", 0))
    maxmemory = int(info.get("maxmemory", 0))
    policy = str(info.get("maxmemory_policy", ""))
    if maxmemory > 0:
        pct = 100.0 * used / maxmemory
        if policy == "noeviction" and pct >= NOEVICTION_CRITICAL_PCT:
            statuses.append(Status.CRITICAL)
            notes.append(
                f"memory {pct:.0f}% of maxmemory with noeviction: writes will fail "
                "(fix: raise maxmemory, delete keys or choose an eviction policy)"
            )
        elif pct >= thresholds.redis_memory_pct:
            statuses.append(Status.DEGRADED)
            notes.append(
                f"memory {pct:.0f}% of maxmemory (threshold {thresholds.redis_memory_pct:.0f}%; "
                "fix: raise maxmemory or find large keys with `redis-cli --bigkeys`)"
            )
    hits = int(info.get("keyspace_hits", 0))
    misses = int(info.get("keyspace_misses", 0))
    lookups = hits + misses
    if lookups >= MIN_LOOKUPS:
        rate = 100.0 * hits / lookups
        if rate < thresholds.redis_hit_rate_pct:
            statuses.append(Status.DEGRADED)
            notes.append(
                f"hit rate {rate:.0f}% below {thresholds.redis_hit_rate_pct:.0f}% over "
                f"{lookups} lookups (fix: check key TTLs and eviction; a cold cache recovers)"
            )
    if info.get("role") == "slave" and info.get("master_link_status") != "up":
        statuses.append(Status.DEGRADED)
        notes.append("replica has lost its master link (fix: check the master and network)")
    return worst(statuses), notes


def summarize(info: dict[str, Any]) -> dict[str, Any]:
    """The figures reported for every check."""
    hits = int(info.get("keyspace_hits", 0))
    misses = int(info.get("keyspace_misses", 0))
    used = int(info.get("used_memory", 0))
    maxmemory = int(info.get("maxmemory", 0))
    return {
        "version": info.get("redis_version"),
        "role": info.get("role"),
        "used_memory": used,
        "maxmemory": maxmemory,
        "maxmemory_policy": info.get("maxmemory_policy"),
        "memory_pct": round(100.0 * used / maxmemory, 1) if maxmemory else None,
        "keyspace_hits": hits,
        "keyspace_misses": misses,
        "hit_rate_pct": round(100.0 * hits / (hits + misses), 1) if hits + misses else None,
        "connected_clients": int(info.get("connected_clients", 0)),
        "rejected_connections": int(info.get("rejected_connections", 0)),
    }


def _where(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def _classify(exc: redis.RedisError, where: str, field: str) -> Exception:
    text = redact(str(exc))
    if isinstance(exc, AUTH_ERRORS) or any(
        marker in text for marker in ("NOAUTH", "WRONGPASS", "NOPERM", "invalid password")
    ):
        return PermanentError(
            f"{where}: Redis refused the credentials: {text} (fix: check the password in the "
            f"secret referenced by {field}.url, redis://:PASSWORD@host:port/db)"
        )
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return TransientError(
            f"{where}: cannot reach Redis: {text} (fix: check that the server is running and "
            "reachable from this worker)"
        )
    if isinstance(exc, redis.ResponseError) and "LOADING" in text:
        return TransientError(f"{where}: Redis is loading its dataset: {text}")
    return PermanentError(f"{where}: {text}")


@task(
    name="check_redis",
    timeout_seconds=60,
    retries=2,
    retry_delay_seconds=[1, 4],
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_on_transient,
    cache_policy=NO_CACHE,  # a health check must look at the present, never reuse a result
)
def check_redis(target: RedisTarget, thresholds: Thresholds, field: str) -> CheckResult:
    """PING, INFO memory/stats/clients/replication graded against the thresholds."""
    started = time.monotonic()
    url = resolve(target.url, field=f"{field}.url")
    where = f"redis {target.name!r} ({_where(url)})"
    try:
        client = redis.Redis.from_url(
            url,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),  # Prefect retries transient failures, not the client
        )
    except ValueError:
        raise PermanentError(
            f"{field}.url: the Redis URL cannot be parsed "
            "(fix: use redis://[:password@]host:port/db, rediss:// or unix://)"
        ) from None
    try:
        with client:
            client.ping()
            info: dict[str, Any] = client.info()
    except redis.RedisError as exc:
        raise _classify(exc, where, field) from None
    details = summarize(info)
    status, notes = grade_info(info, thresholds)
    memory = (
        f"{details['memory_pct']:.0f}% of maxmemory"
        if details["maxmemory"]
        else f"{details['used_memory'] / 1048576:.1f} MiB (no maxmemory)"
    )
    hit_rate = "n/a" if details["hit_rate_pct"] is None else f"{details['hit_rate_pct']:.0f}%"
    summary = (
        f"Redis {details['version']} {details['role']}: memory {memory}, hit rate {hit_rate}, "
        f"{details['connected_clients']} client(s), "
        f"{details['rejected_connections']} rejected connection(s)"
    )
    if notes:
        summary += " - " + "; ".join(notes)
    return CheckResult(
        check="redis",
        target=target.name,
        status=status,
        summary=summary,
        details=details,
        duration_ms=int((time.monotonic() - started) * 1000),
    )
