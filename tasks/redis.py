"""Redis: health check (PING, memory vs maxmemory, hit rate, clients, role) and RDB snapshots."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import redis

from connectors.redis import (
    RDB_TIMEOUT_S,
    _classify,
    _where,
    rdb_stream,
    redis_client,
)
from connectors.stores.objects import DumpResult, NewBackup
from opsflow.catalog import Codec
from opsflow.inventory import BackupStore, RedisTarget, Thresholds
from opsflow.results import CheckResult, Status, worst
from opsflow.secrets import resolve
from tasks.policy import probe_task, transfer_task

MIN_LOOKUPS = 100
NOEVICTION_CRITICAL_PCT = 98.0


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


def _connect(target: RedisTarget, field: str) -> tuple[str, str, redis.Redis]:
    """(resolved URL, where it is for messages, a client) of an inventory Redis target."""
    url = resolve(target.url, field=f"{field}.url")
    return url, f"redis {target.name!r} ({_where(url)})", redis_client(url, field)


@probe_task("check_redis", timeout_seconds=60)
def check_redis(target: RedisTarget, thresholds: Thresholds, field: str) -> CheckResult:
    """PING, INFO memory/stats/clients/replication graded against the thresholds."""
    started = time.monotonic()
    _url, where, client = _connect(target, field)
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
    return CheckResult.timed(started, "redis", target.name, status, summary, details)


def keyspace_counts(info: dict[str, Any]) -> dict[str, int]:
    """``{"db0": 12, ...}`` from ``INFO keyspace``."""
    return {
        name: int(value.get("keys", 0))
        for name, value in sorted(info.items())
        if name.startswith("db") and isinstance(value, dict)
    }


@transfer_task("dump_redis", timeout_seconds=RDB_TIMEOUT_S + 600)
def dump_redis(
    target: RedisTarget,
    store: BackupStore,
    env_name: str,
    when: datetime,
    codec: Codec = "zstd",
    field: str = "redis",
) -> DumpResult:
    """Stream an RDB snapshot (replication SYNC) -> compress -> store, with its manifest.

    Stored under ``backup_key(env_name, target.name, when, "rdb.zst")``; visible only when
    complete (a failed or cut snapshot leaves nothing). ``row_counts`` holds the keys per
    logical database (``INFO keyspace``) just before the snapshot started.
    """
    started = time.monotonic()
    url, where, client = _connect(target, field)
    try:
        with client:
            counts = keyspace_counts(client.info("keyspace"))
    except redis.RedisError as exc:
        raise _classify(exc, where, field) from None
    new = NewBackup(store, env_name, target.name, "redis", "direct", codec, when, started)
    return new.write(rdb_stream(url, where, field), counts)
