"""Health endpoints: ``check_endpoint`` GETs a health URL (``/health``, ``/health/detailed``,
``/ready``, ``/live``) and grades status code, latency and the JSON body's ``status`` field."""

from __future__ import annotations

import time
from typing import Any

from opsflow.errors import TransientError
from opsflow.inventory import Endpoint, Thresholds
from opsflow.redaction import redact
from opsflow.results import CheckResult, Status, grade, worst
from tasks.http.client import TLSVerificationError, http_get, json_body, resolved, tls_verify
from tasks.policy import probe_task

DEFAULT_ACCEPTED = ("healthy", "ok", "up", "pass")
DEGRADED_WORDS = ("degraded", "warn", "warning")


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
        body_status, body_notes, body_details = _grade_body(endpoint, json_body(response), accepted)
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
