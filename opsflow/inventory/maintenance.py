"""The ``maintenance_mode`` call and the ``maintenance:`` section of an environment: what the
maintenance runbook (``flows/maintenance.py``) does in a window and the limits it keeps.

Every check here runs when the inventory is read, so a policy that could delete the wrong keys
or lock a table for hours is refused before any maintenance starts (exit 2, the field named).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, field_validator, model_validator

from opsflow.inventory.fields import (
    Model,
    PositiveDuration,
    check_headers,
    check_no_credentials,
    check_url,
)
from opsflow.inventory.http import HttpTarget

HttpMethod = Literal["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB|KB|MB|GB|TB)?\s*$", re.IGNORECASE)
_FACTORS = {
    "b": 1,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
}


def parse_size(value: Any) -> int:
    """A size in bytes: an integer, or ``100MiB`` / ``1.5 GiB`` / ``500MB`` (binary units
    for ``*iB``, decimal for ``KB``/``MB``/…)."""
    if isinstance(value, bool):
        raise ValueError("is not a size (fix: write bytes or e.g. 100MiB, 1GiB)")
    if isinstance(value, int | float):
        size = int(value)
    else:
        match = _SIZE.match(str(value))
        if not match:
            raise ValueError(f"{value!r} is not a size (fix: write bytes or e.g. 100MiB, 1GiB)")
        size = int(float(match.group(1)) * _FACTORS[(match.group(2) or "b").lower()])
    if size <= 0:
        raise ValueError("must be larger than zero (fix: write e.g. 100MiB)")
    return size


Size = Annotated[int, BeforeValidator(parse_size)]


def _percent(value: float) -> float:
    if not 0 < value <= 100:
        raise ValueError(f"is {value:g}, must be above 0 and at most 100 (fix: write e.g. 30)")
    return value


Percent = Annotated[float, AfterValidator(_percent)]


class MaintenanceMode(Model):
    """The application's maintenance switch (seed 002: ``POST /admin/maintenance`` turns it
    on, ``DELETE`` turns it off). A credential goes in ``headers`` as a reference."""

    name: str = "maintenance-mode"
    url: str
    on_method: HttpMethod = "POST"
    off_method: HttpMethod = "DELETE"
    headers: dict[str, str] = Field(
        default_factory=dict, description="request headers; a credential as env:/secret:"
    )
    timeout: PositiveDuration = Field(default=timedelta(seconds=10))
    verify_tls: bool = True
    ca_file: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        check_no_credentials(value, "the URL", references=False)
        return check_url(value, ("http", "https"))

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        return check_headers(value)


class PostgresMaintenance(Model):
    """VACUUM / REINDEX limits. Every statement runs with ``statement_timeout`` and
    ``lock_timeout``: maintenance waits for a lock at most that long, then reports and moves on."""

    statement_timeout: PositiveDuration = Field(default=timedelta(minutes=30))
    lock_timeout: PositiveDuration = Field(default=timedelta(seconds=5))
    reindex_bloat_pct: Percent = Field(
        30.0, description="REINDEX CONCURRENTLY an index whose estimated bloat passes this"
    )
    reindex_min_size: Size = Field(
        1024 * 1024, description="indexes smaller than this are never rebuilt"
    )
    tables: list[str] = Field(
        default_factory=list, description="schema.table names to maintain; [] = every user table"
    )


class SqliteMaintenance(Model):
    vacuum_free_pct: Percent = Field(
        20.0, description="VACUUM when free pages are more than this share of the file"
    )


_ONLY_WILDCARDS = re.compile(r"^[*?]+$")


class RedisCleanup(Model):
    """One cleanup rule: keys matching ``pattern`` (SCAN MATCH, never KEYS) on the Redis target
    ``redis``; either keys without a TTL idle longer than ``idle_over`` are deleted, or, with
    ``flush: true``, every matching key. Keys outside the pattern are never touched."""

    redis: str = Field(description="name of one of the environment's `redis` targets")
    pattern: str = Field(min_length=1, description="a glob, e.g. cache:*")
    idle_over: PositiveDuration | None = None
    flush: bool = False
    confirm_flush_all: bool = False
    scan_count: int = Field(500, ge=10, le=100_000, description="SCAN COUNT hint per call")

    @model_validator(mode="after")
    def _one_action(self) -> RedisCleanup:
        if (self.idle_over is None) == (not self.flush):
            raise ValueError(
                "a cleanup rule needs exactly one of `idle_over` (delete idle keys without a "
                "TTL) or `flush: true` (delete every matching key) (fix: keep one of them)"
            )
        if _ONLY_WILDCARDS.match(self.pattern) and not self.confirm_flush_all:
            raise ValueError(
                f"pattern {self.pattern!r} matches every key of the database (fix: narrow it, "
                "e.g. cache:*, or add confirm_flush_all: true if every key may go)"
            )
        return self


class LogArchive(Model):
    """Files matching ``path`` (a glob) that are over ``max_size`` or older than ``max_age``
    go compressed to the backup store, then are truncated or removed (``then``)."""

    path: str = Field(description="an absolute glob, e.g. /var/log/app/*.log")
    max_size: Size | None = None
    max_age: PositiveDuration | None = None
    then: Literal["truncate", "remove"] = "truncate"

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or "\x00" in value:
            raise ValueError(
                f"{value!r} is not an absolute path (fix: write e.g. /var/log/app/*.log)"
            )
        return value

    @model_validator(mode="after")
    def _limit(self) -> LogArchive:
        if self.max_size is None and self.max_age is None:
            raise ValueError(
                "archives nothing without a limit (fix: add max_size: 100MiB and/or max_age: 7d)"
            )
        return self


class BenchmarkProbe(HttpTarget):
    """The monthly performance comparison: ``url`` requested ``requests`` times; p50/p95
    compared with earlier months' figures in the ledger."""

    name: str = "benchmark"
    method: HttpMethod = "GET"
    requests: int = Field(50, ge=5, le=10_000)
    timeout: PositiveDuration = Field(default=timedelta(seconds=10))
    regression_pct: Percent = Field(
        20.0, description="p50 or p95 slower than the earlier months' median by more degrades"
    )
    verify_tls: bool = True
    ca_file: str | None = None


class Maintenance(Model):
    """What the maintenance runbook does besides the backup and the health check."""

    postgres: PostgresMaintenance = Field(default_factory=PostgresMaintenance)
    sqlite: SqliteMaintenance = Field(default_factory=SqliteMaintenance)
    redis_cleanup: list[RedisCleanup] = []
    log_archive: list[LogArchive] = []
    container_log_lines: int = Field(
        1000, ge=0, le=100_000, description="lines per container/pod summarized; 0 = none"
    )
    benchmark: BenchmarkProbe | None = None
    step_budget: PositiveDuration = Field(
        default=timedelta(minutes=5),
        description="how long a step never run before is expected to take (window planning)",
    )


def check_cleanup_targets(maintenance: Maintenance, redis_names: list[str]) -> None:
    """Every cleanup rule names one of the environment's Redis targets."""
    for i, rule in enumerate(maintenance.redis_cleanup):
        if rule.redis not in redis_names:
            known = ", ".join(redis_names) or "none"
            raise ValueError(
                f"maintenance.redis_cleanup[{i}].redis is {rule.redis!r}, which is not a Redis "
                f"target of this environment (fix: use one of: {known})"
            )
