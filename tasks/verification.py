"""The verification window after a change: sample the environment's metrics and health
endpoints every ``interval`` for ``duration`` and judge the change by them.

Each sample measures the requests **since the previous sample** (counter and histogram
deltas, ``tasks.http.metrics``), not since the process started: a deploy that starts
answering 5xx shows at once, whatever its history. A counter that went down (the application
restarted) counts from zero, as Prometheus' ``rate()`` does. A sample fails when, for any
metrics source, the 5xx share is over ``max_error_rate_pct`` or the p95 over ``max_p95_ms``,
or (with ``endpoints``) a health endpoint is critical or unreachable, or a source cannot be
scraped or exposes none of the understood metrics (verification would be blind).

``failure_limit`` counts **failed samples in total**, consecutive or not (as Argo Rollouts'
``failureLimit`` counts failed measurements; Argo fails when the count *exceeds* the limit,
opsflow when it *reaches* it): the window stops at the ``failure_limit``-th failed sample and
the verdict fails; otherwise it runs its whole ``duration`` and passes.

The pure parts (``judge_sample``, ``judge_window``) take numbers and return text; ``sample_health``
does the I/O of one sample; ``verify_window`` is a plain function a flow calls, one
``sample_health`` task per sample and one log line each.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel

from opsflow.errors import PermanentError, TransientError
from opsflow.inventory import Environment, MetricsSource, Verification
from opsflow.redaction import redact
from opsflow.results import Status
from tasks.http import (
    check_endpoint,
    scrape_metrics,
    snapshot,
    window_error_rate,
    window_p95_ms,
)
from tasks.policy import probe_task

log = logging.getLogger(__name__)


class VerificationSample(BaseModel):
    at: datetime
    error_rate_pct: float | None
    """5xx share of the requests since the previous sample (worst source); None: no requests."""
    p95_ms: float | None
    """p95 latency of the requests since the previous sample (worst source); None: none."""
    requests: int
    endpoints_ok: bool
    failures: list[str]
    """What crossed a threshold: ``error rate 33.3% > 5%``, ``endpoint api: HTTP 500``."""

    @property
    def failed(self) -> bool:
        return bool(self.failures)

    def line(self) -> str:
        """One log line: ``sample 14:02:10: 120 requests, error rate 0.0%, p95 45 ms; ok``."""
        rate = "n/a" if self.error_rate_pct is None else f"{self.error_rate_pct:.1f}%"
        p95 = "n/a" if self.p95_ms is None else f"{self.p95_ms:.0f} ms"
        verdict = "FAILED: " + "; ".join(self.failures) if self.failures else "ok"
        return (
            f"verification sample {self.at.strftime('%H:%M:%S')}: {self.requests} requests, "
            f"error rate {rate}, p95 {p95}; {verdict}"
        )


class VerificationVerdict(BaseModel):
    passed: bool
    samples: list[VerificationSample]
    reason: str
    seconds: float


def judge_sample(
    verification: Verification,
    measured: dict[str, dict[str, Any]],
    problems: list[str],
) -> list[str]:
    """The failures of one sample: ``measured`` is, per metrics source, ``error_rate_pct``
    (None without requests) and ``p95_ms`` (None without observations); ``problems`` are
    failures found on the way (endpoints, scrapes), kept as they are."""
    failures: list[str] = []
    named = len(measured) > 1
    for source, values in measured.items():
        suffix = f" ({source})" if named else ""
        rate = values.get("error_rate_pct")
        if rate is not None and rate > verification.max_error_rate_pct:
            failures.append(
                f"error rate {rate:.1f}% > {verification.max_error_rate_pct:g}%{suffix}"
            )
        p95 = values.get("p95_ms")
        if p95 is not None and p95 > verification.max_p95_ms:
            failures.append(f"p95 {p95:.0f} ms > {verification.max_p95_ms:g} ms{suffix}")
    return failures + problems


def judge_window(
    verification: Verification, samples: list[VerificationSample], seconds: float
) -> VerificationVerdict:
    """The verdict over the samples taken: failed once ``failure_limit`` samples failed."""
    failed = [s for s in samples if s.failed]
    passed = len(failed) < verification.failure_limit
    planned = verification.samples
    if not failed:
        reason = f"{len(samples)} samples within thresholds"
    else:
        shown = "; ".join(
            f"{', '.join(s.failures)} at {s.at.strftime('%H:%M:%S')}" for s in failed[:3]
        )
        more = f"; … {len(failed) - 3} more" if len(failed) > 3 else ""
        stopped = f", stopped after {len(samples)} of {planned}" if len(samples) < planned else ""
        reason = (
            f"{len(failed)} of {len(samples)} samples failed "
            f"(limit {verification.failure_limit}{stopped}): {shown}{more}"
        )
    return VerificationVerdict(
        passed=passed, samples=samples, reason=redact(reason), seconds=round(seconds, 3)
    )


def selected_sources(env: Environment, verification: Verification) -> list[MetricsSource]:
    """The metrics sources a verification samples: those named, or all of them.

    An unknown name is a ``ValueError`` naming the known ones (a plan refuses it first)."""
    if not verification.metrics:
        return list(env.metrics)
    known = {source.name: source for source in env.metrics}
    unknown = [name for name in verification.metrics if name not in known]
    if unknown:
        raise ValueError(
            f"verify.metrics names {unknown}, which the environment does not have "
            f"(fix: choose from {sorted(known)} or leave metrics empty for all)"
        )
    return [known[name] for name in verification.metrics]


def _endpoint_problems(env: Environment) -> list[str]:
    problems = []
    for endpoint in env.endpoints:
        try:
            result = check_endpoint.fn(endpoint, env.thresholds)
        except (TransientError, PermanentError) as exc:
            problems.append(f"endpoint {endpoint.name}: {exc}")
            continue
        if result.status is Status.CRITICAL:
            problems.append(f"endpoint {result.summary}")
    return problems


@probe_task("sample_health", timeout_seconds=60)
def sample_health(
    env: Environment, verification: Verification, baseline: dict[str, Any] | None
) -> tuple[VerificationSample, dict[str, Any]]:
    """One sample: scrape every selected metrics source, compare with ``baseline`` (the raw
    series of the previous sample; None: this scrape *is* the baseline and judges only the
    endpoints), check the health endpoints. Returns the sample and the new baseline."""
    at = datetime.now(UTC)
    measured: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    raw: dict[str, Any] = {}
    requests = 0.0
    for source in selected_sources(env, verification):
        try:
            current = snapshot(scrape_metrics(source), source.error_rate)
        except (TransientError, PermanentError) as exc:
            problems.append(f"metrics {source.name}: {exc}")
            continue
        raw[source.name] = current
        if current["counter"] is None and not any(current["histograms"].values()):
            problems.append(
                f"metrics {source.name}: none of the understood metrics (a request counter "
                "labelled by status, a *_duration_seconds histogram) found"
            )
            continue
        previous = (baseline or {}).get(source.name)
        if previous is None:
            continue  # no baseline for this source yet: this scrape becomes it
        rate = window_error_rate(current["counter"], previous["counter"])
        p95 = window_p95_ms(current["histograms"], previous["histograms"])
        count = rate["requests"] if rate else 0.0
        requests += count
        measured[source.name] = {
            "error_rate_pct": rate["pct"] if rate and count else None,
            "p95_ms": p95["ms"] if p95 else None,
        }
    endpoint_problems = _endpoint_problems(env) if verification.endpoints else []
    rates = [v["error_rate_pct"] for v in measured.values() if v["error_rate_pct"] is not None]
    p95s = [v["p95_ms"] for v in measured.values() if v["p95_ms"] is not None]
    sample = VerificationSample(
        at=at,
        error_rate_pct=max(rates, default=None),
        p95_ms=max(p95s, default=None),
        requests=int(requests),
        endpoints_ok=not endpoint_problems,
        failures=[
            redact(f) for f in judge_sample(verification, measured, problems + endpoint_problems)
        ],
    )
    return sample, raw


def _run_logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        from prefect.logging import get_run_logger

        return get_run_logger()
    except Exception:  # noqa: BLE001 - outside a run context: the module's logger
        return log


def verify_window(
    env: Environment,
    verification: Verification,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> VerificationVerdict:
    """Run the verification window inside a flow: a baseline scrape, then a ``sample_health``
    task every ``interval`` until ``duration`` is over, stopping at the ``failure_limit``-th
    failed sample. Samples are scheduled from the start (a slow sample does not shift the
    next ones); one log line per sample."""
    logger = _run_logger()
    interval = verification.interval.total_seconds()
    started = clock()
    _, baseline = sample_health(env, verification, None)
    logger.info(
        "verification window: %d samples, every %gs, failure limit %d",
        verification.samples,
        interval,
        verification.failure_limit,
    )
    samples: list[VerificationSample] = []
    for number in range(1, verification.samples + 1):
        wait = started + number * interval - clock()
        if wait > 0:
            sleep(wait)
        sample, baseline = sample_health(env, verification, baseline)
        samples.append(sample)
        logger.info(sample.line())
        if sum(s.failed for s in samples) >= verification.failure_limit:
            break
    verdict = judge_window(verification, samples, clock() - started)
    logger.info("verification %s: %s", "passed" if verdict.passed else "FAILED", verdict.reason)
    return verdict
