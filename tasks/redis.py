"""Redis: health check (PING, memory vs maxmemory, hit rate, clients, role), RDB snapshots and
the maintenance cleanup (``clean_redis``: the inventory's cleanup rules, SCAN MATCH + UNLINK)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
from redis.exceptions import NoPermissionError

from connectors.redis import (
    RDB_TIMEOUT_S,
    _classify,
    _where,
    rdb_stream,
    redis_client,
)
from connectors.stores.objects import DumpResult, NewBackup
from opsflow.catalog import Codec
from opsflow.deadlines import aware_deadline, deadline_passed, skipped_reason
from opsflow.inventory import BackupStore, RedisCleanup, RedisTarget, Thresholds
from opsflow.maintenance import Figure, MaintenanceStep, StepStatus
from opsflow.redaction import redact
from opsflow.results import CheckResult, Status, worst
from opsflow.secrets import resolve
from tasks.policy import api_task, probe_task, transfer_task

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
        "hit_rate_pct": hit_rate_pct(hits, misses),
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


# --- cleanup (maintenance) --------------------------------------------------------------------
#
# What the checks do to the keys: SCAN, TTL, TYPE and OBJECT IDLETIME look keys up without
# touching them (Redis's LOOKUP_NOTOUCH), so checking a key does not refresh its LRU idle time;
# TTL, TYPE and OBJECT do count as keyspace hits/misses, which the "after" hit rate leaves out.
# UNLINK counts nothing. Verified on Redis 7.0 (tests/integration/test_redis_cleanup.py).
# The idle check (one pipeline) and the UNLINK (the next) are two round trips apart: a key read
# or given a TTL in between can still go, which a cache survives; nothing outside the pattern
# can (SCAN MATCH chose it, and the local Redis-glob match checked it again).

CLEANUP_TIMEOUT_S = 3600
UNLINK_BATCH = 500


def hit_rate_pct(hits: int, misses: int) -> float | None:
    """keyspace_hits / (hits + misses) in percent, one decimal; None when nothing was looked up."""
    lookups = hits + misses
    return round(100.0 * hits / lookups, 1) if lookups > 0 else None


def redis_glob(pattern: str) -> re.Pattern[str]:
    """A Redis glob (``stringmatchlen``: ``*``, ``?``, ``[abc]``, ``[^a-z]``, ``\\`` escapes, an
    unclosed ``[`` running to the end) as a regex over keys decoded as latin-1 (a character per
    byte, as Redis compares bytes); use ``fullmatch``. Case-sensitive, like SCAN MATCH."""
    p = pattern.encode().decode("latin-1")
    n, i = len(p), 0
    out: list[str] = []
    while i < n:
        c = p[i]
        if c == "*":
            while i + 1 < n and p[i + 1] == "*":
                i += 1
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            i += 1
            negate = i < n and p[i] == "^"
            i += negate
            members: list[str] = []
            while i < n and p[i] != "]":
                if p[i] == "\\" and i + 1 < n:
                    i += 1
                    members.append(re.escape(p[i]))
                elif i + 2 < n and p[i + 1] == "-":
                    low, high = sorted((p[i], p[i + 2]))
                    members.append(f"{re.escape(low)}-{re.escape(high)}")
                    i += 2
                else:
                    members.append(re.escape(p[i]))
                i += 1
            if members:
                out.append(f"[{'^' if negate else ''}{''.join(members)}]")
            else:  # [] matches nothing, [^] any one byte
                out.append("." if negate else "(?!)")
        elif c == "\\" and i + 1 < n:
            i += 1
            out.append(re.escape(p[i]))
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


def glob_matches(pattern: re.Pattern[str], key: bytes) -> bool:
    return pattern.fullmatch(key.decode("latin-1")) is not None


class _Lookups:
    """The cleanup's own keyspace hits and misses (TTL, OBJECT), left out of the hit rate."""

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0


def redis_figures(client: redis.Redis, own: _Lookups | None = None) -> dict[str, Figure]:
    """used_memory, keys (DBSIZE of the URL's database) and hit_rate_pct (INFO stats, without
    the cleanup's own lookups)."""
    info: dict[str, Any] = client.info()
    hits = int(info.get("keyspace_hits", 0)) - (own.hits if own else 0)
    misses = int(info.get("keyspace_misses", 0)) - (own.misses if own else 0)
    return {
        "used_memory": int(info.get("used_memory", 0)),
        "keys": int(client.dbsize()),
        "hit_rate_pct": hit_rate_pct(max(hits, 0), max(misses, 0)),
    }


def _idle_keys(
    client: redis.Redis, keys: list[bytes], idle_over: float, own: _Lookups, counts: dict[str, Any]
) -> list[bytes]:
    """The keys without a TTL idle longer than ``idle_over`` seconds (TTL and OBJECT IDLETIME,
    pipelined; neither refreshes the idle time)."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.ttl(key)
        pipe.object("idletime", key)
    replies = pipe.execute(raise_on_error=False)
    idle: list[bytes] = []
    for key, ttl, seconds in zip(keys, replies[0::2], replies[1::2], strict=True):
        for reply in (ttl, seconds):
            if isinstance(reply, redis.ResponseError):
                raise reply
        own.hits += (ttl != -2) + (seconds is not None)
        own.misses += (ttl == -2) + (seconds is None)
        if ttl == -2 or seconds is None:
            continue  # gone meanwhile (expired or deleted)
        if ttl != -1:
            counts["kept_ttl"] += 1
        elif int(seconds) <= idle_over:
            counts["kept_fresh"] += 1
        else:
            idle.append(key)
    return idle


def _unlink(client: redis.Redis, keys: list[bytes]) -> int:
    pipe = client.pipeline(transaction=False)
    for start in range(0, len(keys), UNLINK_BATCH):
        pipe.unlink(*keys[start : start + UNLINK_BATCH])
    return sum(int(n) for n in pipe.execute())


def _lfu_fix(text: str, rule: RedisCleanup) -> str:
    return (
        f"OBJECT IDLETIME is refused: {text} (fix: idle time is not tracked under an LFU "
        "maxmemory-policy; switch to an LRU policy, e.g. CONFIG SET maxmemory-policy "
        f"allkeys-lru, or clean {rule.pattern!r} with `flush: true` instead of `idle_over`)"
    )


def rule_counts(rule: RedisCleanup, status: str) -> dict[str, Any]:
    """What one rule reports: its pattern and action, status and counts (all 0 to begin)."""
    return {
        "redis": rule.redis,
        "pattern": rule.pattern,
        "action": "flush" if rule.flush else f"idle_over {rule.idle_over}",
        "status": status,
        "scanned": 0,
        "deleted": 0,
        "kept_ttl": 0,
        "kept_fresh": 0,
        "not_matching": 0,
        "batches": 0,
    }


def clean_rule(
    client: redis.Redis, rule: RedisCleanup, stop: Callable[[], bool], own: _Lookups
) -> dict[str, Any]:
    """Apply one rule: SCAN MATCH in batches of ``scan_count``, each key checked again against
    the pattern here (defence in depth: a key SCAN returned that the local Redis-glob match
    refuses is kept and counted in ``not_matching``), the idle check for ``idle_over`` rules,
    then UNLINK. ``scanned`` counts what SCAN returned (a key can come twice while the table is
    rehashed); ``deleted`` counts what UNLINK removed. Stops before the next batch once
    ``stop()`` says so (status ``stopped``)."""
    started = time.monotonic()
    counts = rule_counts(rule, "complete")
    matcher = redis_glob(rule.pattern)
    idle_over = rule.idle_over.total_seconds() if rule.idle_over is not None else None
    cursor = 0
    try:
        while True:
            if stop():
                counts["status"] = "stopped"
                break
            cursor, keys = client.scan(cursor=cursor, match=rule.pattern, count=rule.scan_count)
            counts["batches"] += 1
            counts["scanned"] += len(keys)
            matching: list[bytes] = [
                key for key in keys if isinstance(key, bytes) and glob_matches(matcher, key)
            ]
            counts["not_matching"] += len(keys) - len(matching)
            if idle_over is not None and matching:
                matching = _idle_keys(client, matching, idle_over, own, counts)
            if matching:
                counts["deleted"] += _unlink(client, matching)
            if int(cursor) == 0:
                break
    except redis.ResponseError as exc:
        # a pipeline's error repeats the whole command, every key of the batch: keep the reason
        text = redact(str(exc).split(" of pipeline caused error: ", 1)[-1])
        counts["status"] = "failed"
        if "LFU" in text:
            counts["error"] = _lfu_fix(text, rule)
        elif isinstance(exc, NoPermissionError):
            counts["error"] = (
                f"Redis refused the cleanup: {text} (fix: allow the URL's user SCAN, TTL, OBJECT "
                "and UNLINK on these keys, e.g. ACL SETUSER <user> +scan +ttl +object +unlink)"
            )
        else:
            counts["error"] = f"Redis refused the cleanup: {text}"
    counts["seconds"] = round(time.monotonic() - started, 3)
    return counts


def _cleanup_summary(rules: list[dict[str, Any]], deleted: int) -> tuple[StepStatus, str]:
    failed = [r for r in rules if r["status"] == "failed"]
    stopped = [r for r in rules if r["status"] in ("stopped", "not started")]
    parts = [f"{deleted} key(s) deleted by {len(rules)} rule(s)"]
    parts += [f"{r['pattern']!r}: {r['deleted']} deleted of {r['scanned']} scanned" for r in rules]
    status: StepStatus = "complete"
    if stopped:
        status = "degraded"
        parts.append(
            "stopped at the deadline, partial: "
            + ", ".join(f"{r['pattern']!r} {r['status']}" for r in stopped)
            + " (fix: give the maintenance window more time; the next run goes on)"
        )
    if failed:
        status = "failed" if len(failed) == len(rules) else "degraded"
        parts += [f"{r['pattern']!r} failed: {r['error']}" for r in failed]
    return status, "; ".join(parts)


def clean_redis_keys(
    target: RedisTarget,
    rules: list[RedisCleanup],
    field: str,
    *,
    deadline: datetime | None = None,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> MaintenanceStep:
    """The cleanup rules naming ``target`` (rules for other targets are left out), one after
    the other; before/after used_memory, keys and hit_rate_pct. A passed deadline starts
    nothing (``skipped``); reached mid-way it stops before the next SCAN batch (``degraded``,
    the partial counts reported). Connection trouble is a TransientError, refused credentials a
    PermanentError (``connectors.redis._classify``), never with the URL's password."""
    started = time.monotonic()
    deadline = aware_deadline(deadline)
    step = MaintenanceStep(step="clean_redis", target=target.name)
    if deadline is not None and deadline_passed(deadline, now()):
        step.status, step.summary = "skipped", skipped_reason(deadline, now())
        return step
    mine = [rule for rule in rules if rule.redis == target.name]
    if not mine:
        step.summary = f"no cleanup rule names redis {target.name!r}: nothing to do"
        return step
    limit = started + CLEANUP_TIMEOUT_S

    def stop() -> bool:
        return deadline_passed(deadline, now()) or time.monotonic() > limit

    _url, where, client = _connect(target, field)
    own = _Lookups()
    results: list[dict[str, Any]] = []
    try:
        with client:
            step.before = redis_figures(client)
            for rule in mine:
                halted = any(r["status"] == "stopped" for r in results)
                results.append(
                    rule_counts(rule, "not started")
                    if halted
                    else clean_rule(client, rule, stop, own)
                )
            step.after = redis_figures(client, own)
    except redis.RedisError as exc:
        raise _classify(exc, where, field) from None
    deleted = sum(int(r["deleted"]) for r in results)
    step.status, step.summary = _cleanup_summary(results, deleted)
    step.details = {
        "where": where,
        "rules": results,
        "deleted": deleted,
        "own_lookups": {"hits": own.hits, "misses": own.misses},
    }
    step.seconds = round(time.monotonic() - started, 3)
    return step


@api_task("clean_redis", timeout_seconds=CLEANUP_TIMEOUT_S + 60)
def clean_redis(
    target: RedisTarget,
    rules: list[RedisCleanup],
    field: str,
    *,
    deadline: datetime | None = None,
) -> MaintenanceStep:
    """Delete the keys the cleanup rules name (SCAN MATCH, UNLINK); see ``clean_redis_keys``."""
    return clean_redis_keys(target, rules, field, deadline=deadline)
