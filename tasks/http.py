"""HTTP health checks: health endpoints and Prometheus metrics.

``check_endpoint`` GETs a health URL (``/health``, ``/health/detailed``, ``/ready``, ``/live``)
and grades status code, latency and the JSON body's ``status`` field.

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
"""

from __future__ import annotations

import functools
import json
import ssl
import time
from datetime import timedelta
from typing import Any

import httpx
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from opsflow.errors import PermanentError, TransientError
from opsflow.inventory import Endpoint, HttpTarget, MetricsSource, Thresholds
from opsflow.redaction import redact
from opsflow.results import CheckResult, Status, grade, worst
from opsflow.secrets import resolve
from tasks.policy import probe_task

DEFAULT_ACCEPTED = ("healthy", "ok", "up", "pass")
DEGRADED_WORDS = ("degraded", "warn", "warning")
METRICS_TIMEOUT = timedelta(seconds=10)
_STATUS_LABELS = ("status", "code", "status_code", "http_status")
_MEMORY_USED = ("process_resident_memory_bytes", "container_memory_working_set_bytes")
_MEMORY_LIMIT = ("container_spec_memory_limit_bytes", "process_memory_limit_bytes")


def tls_verify(verify_tls: bool, ca_file: str | None) -> ssl.SSLContext | bool:
    """The ``verify`` argument for httpx: False, or a shared context with the system CAs or
    ``ca_file``. Contexts are built once per CA file: building one costs ~35 ms of CPU, which
    would serialise a fan-out of checks behind the GIL."""
    if not verify_tls:
        return False
    try:
        return _ssl_context(ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise PermanentError(
            f"cannot read CA file {ca_file}: {exc} (fix: point ca_file at a PEM bundle)"
        ) from exc


@functools.lru_cache(maxsize=32)
def _ssl_context(ca_file: str | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=ca_file)


def resolved(target: HttpTarget) -> tuple[str, dict[str, str]]:
    """The URL and headers of ``target`` with their ``env:`` / ``secret:`` references resolved
    (each value registered for redaction)."""
    field = f"{type(target).__name__.lower()} {target.name}"
    url = resolve(target.url, field=f"{field}: url")
    headers = {k: resolve(v, field=f"{field}: headers.{k}") for k, v in target.headers.items()}
    return url, headers


def http_get(
    url: str,
    timeout: timedelta,
    verify: ssl.SSLContext | bool,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """GET ``url``; network trouble becomes ``TransientError``, with secrets redacted."""
    seconds = timeout.total_seconds()
    try:
        with httpx.Client(verify=verify, timeout=seconds, follow_redirects=False) as client:
            return client.get(url, headers=headers)
    except httpx.ConnectError as exc:
        if _is_cert_error(exc):
            raise TLSVerificationError(redact(str(exc.__context__ or exc))) from None
        raise TransientError(redact(f"cannot connect to {url}: {exc}")) from None
    except httpx.TimeoutException:
        raise TransientError(redact(f"{url} did not answer within {seconds:g}s")) from None
    except httpx.TransportError as exc:
        raise TransientError(redact(f"network error talking to {url}: {exc}")) from None


class TLSVerificationError(PermanentError):
    """The server's certificate is not trusted (retrying will not fix it)."""


def _is_cert_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


def _json_body(response: httpx.Response) -> Any:
    text = response.text.strip()
    if not text.startswith(("{", "[")):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def _component_status(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("status"), str):
        return str(value["status"])
    if isinstance(value, bool):
        return "up" if value else "down"
    return None


def _failing_components(body: dict[str, Any], accepted: set[str]) -> dict[str, str]:
    checks = body.get("checks") or body.get("components") or {}
    if not isinstance(checks, dict):
        return {}
    failing = {}
    for name, value in checks.items():
        state = _component_status(value)
        if state is not None and state.lower() not in accepted:
            failing[str(name)] = state
    return failing


def _grade_body(
    endpoint: Endpoint, body: Any, accepted: set[str]
) -> tuple[Status, list[str], dict[str, Any]]:
    """Grade the JSON body: its ``status`` field and failing sub-components."""
    notes: list[str] = []
    details: dict[str, Any] = {}
    if not isinstance(body, dict):
        if endpoint.kind == "detailed":
            return Status.DEGRADED, ["detailed health endpoint returned no JSON object"], details
        return Status.HEALTHY, notes, details
    statuses = [Status.HEALTHY]
    reported = body.get("status")
    if isinstance(reported, str):
        details["reported_status"] = reported
        if reported.lower() not in accepted:
            bad = Status.DEGRADED if reported.lower() in DEGRADED_WORDS else Status.CRITICAL
            statuses.append(bad)
            notes.append(f"reports status {reported!r} (accepted: {', '.join(sorted(accepted))})")
    failing = _failing_components(body, accepted)
    if failing:
        details["failing_components"] = failing
        statuses.append(Status.DEGRADED)
        parts = ", ".join(f"{name}={state}" for name, state in sorted(failing.items()))
        notes.append(f"failing components: {parts}")
    return worst(statuses), notes, details


@probe_task("check_endpoint", timeout_seconds=120, task_run_name="check_endpoint-{endpoint.name}")
def check_endpoint(endpoint: Endpoint, thresholds: Thresholds) -> CheckResult:
    """GET a health endpoint; grade status code, latency and the JSON ``status`` field.

    Connection refused, timeouts and unexpected 5xx raise ``TransientError`` (retried); an
    unexpected 4xx/3xx, a bad JSON status or an untrusted certificate is a critical result.
    """
    started = time.monotonic()
    verify = tls_verify(endpoint.verify_tls, endpoint.ca_file)
    url, headers = resolved(endpoint)
    try:
        response = http_get(url, endpoint.timeout, verify, headers)
    except TLSVerificationError as exc:
        return CheckResult.timed(
            started,
            "endpoint",
            endpoint.name,
            Status.CRITICAL,
            f"{endpoint.name}: TLS certificate not trusted: {exc}",
            {"url": redact(endpoint.url), "kind": endpoint.kind},
        )
    latency_ms = response.elapsed.total_seconds() * 1000
    code = response.status_code
    if code != endpoint.expect_status and code >= 500:
        raise TransientError(
            redact(
                f"{endpoint.name}: {endpoint.url} answered HTTP {code} "
                f"(expected {endpoint.expect_status})"
            )
        )
    details: dict[str, Any] = {
        "url": redact(endpoint.url),
        "kind": endpoint.kind,
        "http_status": code,
        "latency_ms": round(latency_ms, 1),
    }
    notes: list[str] = []
    statuses: list[Status] = []
    if code != endpoint.expect_status:
        statuses.append(Status.CRITICAL)
        notes.append(f"HTTP {code}, expected {endpoint.expect_status}")
        if response.headers.get("location"):
            details["location"] = redact(response.headers["location"])
    else:
        accepted = {s.lower() for s in (endpoint.expect_json_status or DEFAULT_ACCEPTED)}
        body_status, body_notes, body_details = _grade_body(
            endpoint, _json_body(response), accepted
        )
        statuses.append(body_status)
        notes.extend(body_notes)
        details.update(body_details)
    latency_status = grade(latency_ms, thresholds.response_ms, 3 * thresholds.response_ms)
    statuses.append(latency_status)
    if latency_status is not Status.HEALTHY:
        notes.append(f"slow: {latency_ms:.0f} ms (threshold {thresholds.response_ms:g} ms)")
    status = worst(statuses)
    summary = f"{endpoint.name}: HTTP {code} in {latency_ms:.0f} ms"
    if notes:
        summary += "; " + "; ".join(notes)
    return CheckResult.timed(started, "endpoint", endpoint.name, status, redact(summary), details)


# --- metrics ----------------------------------------------------------------------------------


def parse_metrics(text: str) -> list[Metric]:
    """Parse Prometheus text; malformed text is a ``PermanentError``."""
    try:
        return list(text_string_to_metric_families(text))
    except (ValueError, TypeError, IndexError) as exc:
        raise PermanentError(f"not Prometheus text format: {exc}") from exc


def error_rate_pct(families: list[Metric], name: str | None = None) -> dict[str, Any] | None:
    """5xx share of a request counter labelled by status; None when no such counter exists."""
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
        total = sum(s.value for s in samples if label in s.labels)
        errors = sum(s.value for s in samples if s.labels.get(label, "").startswith("5"))
        pct = 100.0 * errors / total if total else 0.0
        return {"metric": family.name, "requests": total, "errors_5xx": errors, "pct": pct}
    return None


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


def p95_latency_ms(families: list[Metric]) -> dict[str, Any] | None:
    """95th percentile of a ``*_duration_seconds`` histogram in milliseconds, or None."""
    candidates = [
        f for f in families if f.type == "histogram" and f.name.endswith("_duration_seconds")
    ]
    candidates.sort(key=lambda f: "request" not in f.name)
    for family in candidates:
        summed: dict[float, float] = {}
        for sample in family.samples:
            if sample.name.endswith("_bucket") and "le" in sample.labels:
                bound = float(sample.labels["le"])
                summed[bound] = summed.get(bound, 0.0) + sample.value
        value = histogram_quantile(0.95, list(summed.items()))
        if value is not None:
            count = summed.get(float("inf"), 0.0)
            return {"metric": family.name, "observations": count, "ms": value * 1000}
    return None


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
    families = parse_metrics(response.text)
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
        summary += " (none of the understood metrics was found; see tasks/http.py)"
    return CheckResult.timed(started, "metrics", source.name, status, summary, details)


def _critical_at(limit: float, unit: str) -> float:
    """Critical level: twice the threshold; for percentages at most halfway to 100 %."""
    if unit == "%":
        return min(limit * 2, (limit + 100) / 2)
    return limit * 2
