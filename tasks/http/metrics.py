"""Prometheus metrics.

``check_metrics`` scrapes a Prometheus text endpoint and grades three numbers. Understood
metric names (``<name>`` is a metric family; the first match wins):

* error rate % — a counter of requests labelled by status: ``MetricsSource.error_rate`` when
  given, else the first counter whose name contains ``request`` (``http_requests_total``,
  ``http_server_requests_total``, ``requests_total``...) with a label named ``status``,
  ``code``, ``status_code`` or ``http_status``. Rate = samples whose label starts with ``5``
  divided by all samples. Counters are cumulative, so this is the ratio since the process
  started, not over the last minutes.
* p95 latency ms — a histogram whose name ends with ``_duration_seconds`` (one containing
  ``request`` preferred, e.g. ``http_request_duration_seconds``); buckets of every label set are
  summed and the 95th percentile is interpolated linearly inside its bucket, like Prometheus'
  ``histogram_quantile``.
* memory % — the gauge ``memory_usage_percent`` when present; else
  ``process_resident_memory_bytes`` (or ``container_memory_working_set_bytes``) divided by
  ``container_spec_memory_limit_bytes`` or ``process_memory_limit_bytes`` (a limit of 0 means
  unlimited and is ignored).

Each number is degraded at its threshold (``error_rate_pct``, ``p95_latency_ms``,
``memory_pct``) and critical at twice it (percentages: at most halfway between the threshold
and 100 %, so memory 90 % -> critical at 95 %).

A metric that is absent is said so in the summary and does not change the status; when none of
the three is found the result is degraded (the scrape worked but checks nothing).

The same numbers over a *window* (the requests between two scrapes, as the verification window
of a deploy needs them) come from ``snapshot`` (the raw counter and histogram series of one
scrape) and ``window_error_rate`` / ``window_p95_ms`` (their deltas). A series that went down
between two scrapes was reset (the application restarted): it counts from zero, as
Prometheus' ``rate()`` does, so a restart never shows as a negative rate.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from opsflow.errors import PermanentError, TransientError
from opsflow.inventory import MetricsSource, Thresholds
from opsflow.redaction import redact
from opsflow.results import CheckResult, Status, grade, worst
from tasks.http.client import http_get, resolved
from tasks.policy import probe_task

METRICS_TIMEOUT = timedelta(seconds=10)
_STATUS_LABELS = ("status", "code", "status_code", "http_status")
_MEMORY_USED = ("process_resident_memory_bytes", "container_memory_working_set_bytes")
_MEMORY_LIMIT = ("container_spec_memory_limit_bytes", "process_memory_limit_bytes")

Series = dict[str, float]
"""Raw values of one metric family by series (``name{label=value,…}``)."""
Buckets = dict[str, dict[str, float]]
"""Cumulative histogram buckets by series (labels without ``le``), then by ``le``."""


def scrape_metrics(source: MetricsSource) -> list[Metric]:
    """GET ``source`` (its headers' references resolved) and parse it; a 5xx is transient,
    another non-200 answer permanent."""
    url, headers = resolved(source)
    response = http_get(url, METRICS_TIMEOUT, True, headers)
    if response.status_code >= 500:
        raise TransientError(
            redact(f"{source.name}: {source.url} answered HTTP {response.status_code}")
        )
    if response.status_code != 200:
        raise PermanentError(
            redact(
                f"{source.name}: {source.url} answered HTTP {response.status_code} "
                "(fix: point metrics[].url at the Prometheus /metrics endpoint)"
            )
        )
    return parse_metrics(response.text)


def parse_metrics(text: str) -> list[Metric]:
    """Parse Prometheus text; malformed text is a ``PermanentError``."""
    try:
        return list(text_string_to_metric_families(text))
    except (ValueError, TypeError, IndexError) as exc:
        raise PermanentError(f"not Prometheus text format: {exc}") from exc


def _key(name: str, labels: dict[str, str]) -> str:
    inner = ",".join(f"{k}={v}" for k, v in sorted(labels.items()) if k != "le")
    return f"{name}{{{inner}}}"


def request_counter(families: list[Metric], name: str | None = None) -> dict[str, Any] | None:
    """The request counter labelled by status (``name``, else the first counter whose name
    contains ``request``): ``{"metric", "series": {key: value}, "errors": [5xx keys]}``."""
    for family in families:
        if name is not None:
            if name not in (family.name, f"{family.name}_total"):
                continue
        elif family.type != "counter" or "request" not in family.name:
            continue
        samples = [s for s in family.samples if not s.name.endswith(("_created", "_bucket"))]
        label = next((lb for lb in _STATUS_LABELS if any(lb in s.labels for s in samples)), None)
        if label is None:
            continue
        series = {_key(s.name, s.labels): s.value for s in samples if label in s.labels}
        errors = sorted(
            _key(s.name, s.labels) for s in samples if s.labels.get(label, "").startswith("5")
        )
        return {"metric": family.name, "series": series, "errors": errors}
    return None


def request_histograms(families: list[Metric]) -> dict[str, Buckets]:
    """Every ``*_duration_seconds`` histogram's buckets, those with ``request`` in the name
    first (the order ``p95`` tries them in)."""
    candidates = [
        f for f in families if f.type == "histogram" and f.name.endswith("_duration_seconds")
    ]
    candidates.sort(key=lambda f: "request" not in f.name)
    found: dict[str, Buckets] = {}
    for family in candidates:
        buckets: Buckets = {}
        for sample in family.samples:
            if sample.name.endswith("_bucket") and "le" in sample.labels:
                series = buckets.setdefault(_key(sample.name, sample.labels), {})
                series[sample.labels["le"]] = sample.value
        found[family.name] = buckets
    return found


def snapshot(families: list[Metric], error_metric: str | None = None) -> dict[str, Any]:
    """The raw series of one scrape that window rates are computed from (JSON-safe)."""
    return {
        "counter": request_counter(families, error_metric),
        "histograms": request_histograms(families),
    }


def series_delta(previous: Series | None, current: Series) -> Series:
    """Increase of each series since ``previous``; a series that went down was reset and
    counts from zero (its current value); one absent from ``previous`` counts whole."""
    previous = previous or {}
    delta = {}
    for key, value in current.items():
        before = previous.get(key, 0.0)
        delta[key] = value - before if value >= before else value
    return delta


def buckets_delta(previous: Buckets | None, current: Buckets) -> Buckets:
    """``series_delta`` for histograms: a series with any bucket gone down was reset as a
    whole, so all its buckets count from zero."""
    previous = previous or {}
    delta: Buckets = {}
    for key, buckets in current.items():
        before = previous.get(key, {})
        reset = any(value < before.get(le, 0.0) for le, value in buckets.items())
        delta[key] = buckets if reset else series_delta(before, buckets)
    return delta


def window_error_rate(
    current: dict[str, Any] | None, previous: dict[str, Any] | None
) -> dict[str, Any] | None:
    """5xx share of the requests counted between two ``request_counter`` readings
    (``previous`` None: since the process started); None without a counter."""
    if current is None:
        return None
    same = previous is not None and previous.get("metric") == current["metric"]
    delta = series_delta(previous["series"] if previous and same else None, current["series"])
    total = sum(delta.values())
    errors = sum(delta.get(key, 0.0) for key in current["errors"])
    pct = 100.0 * errors / total if total else 0.0
    return {"metric": current["metric"], "requests": total, "errors_5xx": errors, "pct": pct}


def error_rate_pct(families: list[Metric], name: str | None = None) -> dict[str, Any] | None:
    """5xx share of a request counter labelled by status; None when no such counter exists."""
    return window_error_rate(request_counter(families, name), None)


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus-style quantile from cumulative ``(upper_bound, count)`` buckets."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for upper, count in buckets:
        if count >= rank:
            if upper == float("inf"):
                return lower_bound
            if count == lower_count:
                return upper
            return lower_bound + (upper - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = upper, count
    return lower_bound


def window_p95_ms(
    current: dict[str, Buckets], previous: dict[str, Buckets] | None
) -> dict[str, Any] | None:
    """95th percentile in ms of the observations between two ``request_histograms``
    readings (``previous`` None: since the process started): buckets of every series summed,
    the first histogram with observations used; None when there is none."""
    for name, buckets in current.items():
        delta = buckets_delta((previous or {}).get(name), buckets)
        summed: dict[float, float] = {}
        for series in delta.values():
            for le, count in series.items():
                summed[float(le)] = summed.get(float(le), 0.0) + count
        quantile = histogram_quantile(0.95, list(summed.items()))
        if quantile is not None:
            observed = summed.get(float("inf"), 0.0)
            return {"metric": name, "observations": observed, "ms": quantile * 1000}
    return None


def p95_latency_ms(families: list[Metric]) -> dict[str, Any] | None:
    """95th percentile of a ``*_duration_seconds`` histogram in milliseconds, or None."""
    return window_p95_ms(request_histograms(families), None)


def _gauge(families: list[Metric], names: tuple[str, ...]) -> tuple[str, float] | None:
    for wanted in names:
        for family in families:
            values = [s.value for s in family.samples if s.name == wanted]
            if values:
                return wanted, max(values)
    return None


def memory_pct(families: list[Metric]) -> dict[str, Any] | None:
    """Memory use in % of the limit, or None when the metrics are absent."""
    direct = _gauge(families, ("memory_usage_percent",))
    if direct is not None:
        return {"metric": direct[0], "pct": direct[1]}
    used = _gauge(families, _MEMORY_USED)
    limit = _gauge(families, _MEMORY_LIMIT)
    if used is None or limit is None or limit[1] <= 0:
        return None
    return {
        "metric": f"{used[0]} / {limit[0]}",
        "used_bytes": used[1],
        "limit_bytes": limit[1],
        "pct": 100.0 * used[1] / limit[1],
    }


@probe_task("check_metrics", timeout_seconds=60, task_run_name="check_metrics-{source.name}")
def check_metrics(source: MetricsSource, thresholds: Thresholds) -> CheckResult:
    """Scrape a Prometheus endpoint; grade error rate, p95 latency and memory (see module doc)."""
    started = time.monotonic()
    families = scrape_metrics(source)
    measured: list[tuple[str, dict[str, Any] | None, float, str]] = [
        ("error_rate", error_rate_pct(families, source.error_rate), thresholds.error_rate_pct, "%"),
        ("p95_latency", p95_latency_ms(families), thresholds.p95_latency_ms, " ms"),
        ("memory", memory_pct(families), thresholds.memory_pct, "%"),
    ]
    statuses: list[Status] = []
    parts: list[str] = []
    details: dict[str, Any] = {"url": redact(source.url)}
    for label, found, limit, unit in measured:
        if found is None:
            parts.append(f"{label.replace('_', ' ')}: not reported")
            details[label] = None
            continue
        value = float(found.get("pct", found.get("ms", 0.0)))
        status = grade(value, limit, _critical_at(limit, unit))
        statuses.append(status)
        details[label] = {**found, "status": status.value, "threshold": limit}
        flag = "" if status is Status.HEALTHY else f" ({status.value}, threshold {limit:g}{unit})"
        parts.append(f"{label.replace('_', ' ')} {value:.1f}{unit}{flag}")
    status = worst(statuses) if statuses else Status.DEGRADED
    summary = f"{source.name}: " + "; ".join(parts)
    if not statuses:
        summary += " (none of the understood metrics was found; see tasks/http/metrics.py)"
    return CheckResult.timed(started, "metrics", source.name, status, summary, details)


def _critical_at(limit: float, unit: str) -> float:
    """Critical level: twice the threshold; for percentages at most halfway to 100 %."""
    if unit == "%":
        return min(limit * 2, (limit + 100) / 2)
    return limit * 2
