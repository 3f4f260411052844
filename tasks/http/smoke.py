"""Smoke tests: one request after a change and what its answer must hold.

``run_smoke_test`` sends the inventory's request (method, headers with their references
resolved, body) and checks the status code, a substring of the body and JSON fields named by
dotted paths (``data.version``; a number selects a list item: ``items.0.id``). Every failed
expectation is named in the summary; what the answer said is shown only as a short, redacted
excerpt (a body can carry a token).
"""

from __future__ import annotations

import time
from typing import Any

from opsflow.inventory import SmokeTest
from opsflow.redaction import redact
from opsflow.results import CheckResult, Status
from tasks.http.client import (
    TLSVerificationError,
    excerpt,
    http_request,
    json_body,
    resolved,
    tls_verify,
)
from tasks.policy import probe_task

_MISSING = object()


def json_field(document: Any, path: str) -> Any:
    """The value at a dotted ``path`` of ``document``, or ``_MISSING``."""
    value = document
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def json_mismatches(document: Any, expected: dict[str, Any]) -> list[str]:
    """What in ``document`` differs from ``expected`` (dotted path → value), one phrase each:
    ``data.version is "v1" expected "v3"``, ``data.version is missing``."""
    problems = []
    for path, want in expected.items():
        got = json_field(document, path)
        if got is _MISSING:
            problems.append(f"{path} is missing")
        elif got != want or isinstance(got, bool) != isinstance(want, bool):  # True is not 1
            shown, wanted = excerpt(got, 60, as_json=True), excerpt(want, 60, as_json=True)
            problems.append(f"{path} is {shown} expected {wanted}")
    return problems


@probe_task("run_smoke_test", timeout_seconds=60, task_run_name="run_smoke_test-{test.name}")
def run_smoke_test(test: SmokeTest) -> CheckResult:
    """Send the smoke test's request and check status, body substring and JSON fields.

    A failed expectation is a critical result naming it (``got 500 expected 200``, ``body
    lacks "v3"``, ``data.version is "v1" expected "v3"``); a connection failure raises
    ``TransientError`` (retried as a probe); an untrusted certificate is critical."""
    started = time.monotonic()
    verify = tls_verify(test.verify_tls, test.ca_file)
    url, headers = resolved(test)
    details: dict[str, Any] = {"url": redact(test.url), "method": test.method}
    try:
        response = http_request(test.method, url, test.timeout, verify, headers, test.body)
    except TLSVerificationError as exc:
        summary = f"{test.name}: TLS certificate not trusted: {exc}"
        return CheckResult.timed(started, "smoke", test.name, Status.CRITICAL, summary, details)
    latency_ms = response.elapsed.total_seconds() * 1000
    details.update(http_status=response.status_code, latency_ms=round(latency_ms, 1))
    problems: list[str] = []
    if response.status_code != test.expect_status:
        problems.append(f"got {response.status_code} expected {test.expect_status}")
    if test.expect_body is not None and test.expect_body not in response.text:
        problems.append(f"body lacks {excerpt(test.expect_body, 60)!r}")
    if test.expect_json:
        document = json_body(response)
        if document is None:
            problems.append("body is not JSON")
        else:
            problems.extend(json_mismatches(document, test.expect_json))
    if problems:
        if response.text:
            details["body_excerpt"] = excerpt(response.text)
        summary = f"{test.name}: {test.method} " + "; ".join(problems)
        return CheckResult.timed(
            started, "smoke", test.name, Status.CRITICAL, redact(summary), details
        )
    summary = f"{test.name}: {test.method} HTTP {response.status_code} in {latency_ms:.0f} ms"
    return CheckResult.timed(started, "smoke", test.name, Status.HEALTHY, redact(summary), details)
