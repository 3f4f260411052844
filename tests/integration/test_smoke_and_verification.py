"""Smoke tests and the verification window against real HTTP servers with live Prometheus
metrics (tests/support/metered_app.py) and real traffic; verify_window runs inside a flow on
the session's Prefect server, one sample_health task per sample."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from prefect import flow

from opsflow.errors import TransientError
from opsflow.inventory import Environment, SmokeTest, Verification
from opsflow.results import Status
from tasks.http import run_smoke_test
from tasks.verification import VerificationVerdict, sample_health, verify_window
from tests.support.metered_app import MeteredApp, Traffic, metered_app
from tests.support.net import free_port

pytestmark = pytest.mark.integration

API_KEY = "smoke-test-key-9c1e-throwaway"  # a throwaway test credential


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Iterator[MeteredApp]:
    monkeypatch.setenv("SMOKE_TEST_API_KEY", API_KEY)
    with metered_app(API_KEY) as running:
        yield running


def smoke(app: MeteredApp, path: str, **extra: Any) -> SmokeTest:
    return SmokeTest.model_validate({"name": "smoke", "url": f"{app.url}{path}", **extra})


KEY = {"X-Api-Key": "env:SMOKE_TEST_API_KEY"}


# --- smoke tests ----------------------------------------------------------------------------


def test_smoke_passes_on_status_body_and_json(app: MeteredApp) -> None:
    test = smoke(
        app,
        "/version",
        expect_body='"version": "v3"',
        expect_json={"data.version": "v3", "data.build": 42, "items.0.ok": True},
    )
    result = run_smoke_test.fn(test)
    assert result.status is Status.HEALTHY, result.summary
    assert result.check == "smoke" and result.details["http_status"] == 200
    assert result.summary.startswith("smoke: GET HTTP 200 in ")


def test_smoke_fails_on_status(app: MeteredApp) -> None:
    result = run_smoke_test.fn(smoke(app, "/nope"))
    assert result.status is Status.CRITICAL
    assert result.summary == "smoke: GET got 404 expected 200"


def test_smoke_fails_on_body_substring(app: MeteredApp) -> None:
    result = run_smoke_test.fn(smoke(app, "/version", expect_body="v9"))
    assert result.status is Status.CRITICAL
    assert result.summary == "smoke: GET body lacks 'v9'"


def test_smoke_fails_on_json_field(app: MeteredApp) -> None:
    test = smoke(
        app, "/version", expect_json={"data.version": "v4", "data.build": True, "data.sha": "x"}
    )
    result = run_smoke_test.fn(test)
    assert result.status is Status.CRITICAL
    assert result.summary == (
        'smoke: GET data.version is "v3" expected "v4"; data.build is 42 expected true; '
        "data.sha is missing"
    )


def test_smoke_post_with_body_and_header_reference(app: MeteredApp) -> None:
    test = smoke(
        app,
        "/echo",
        method="POST",
        headers={**KEY, "Content-Type": "application/json"},
        body='{"data": {"version": "v3"}}',
        expect_status=201,
        expect_json={"data.version": "v3"},
    )
    result = run_smoke_test.fn(test)
    assert result.status is Status.HEALTHY, result.summary
    assert result.details["method"] == "POST" and result.details["http_status"] == 201
    # without the header the same request is refused by the application
    unkeyed = run_smoke_test.fn(test.model_copy(update={"headers": {}}))
    assert unkeyed.summary.startswith("smoke: POST got 401 expected 201")


def test_smoke_get_with_header_reference(app: MeteredApp) -> None:
    assert run_smoke_test.fn(smoke(app, "/private", headers=KEY)).status is Status.HEALTHY
    assert run_smoke_test.fn(smoke(app, "/private")).status is Status.CRITICAL


def test_smoke_never_echoes_a_secret_from_the_body(app: MeteredApp) -> None:
    test = smoke(app, "/leak", headers=KEY, expect_json={"version": "v3"})
    result = run_smoke_test.fn(test)
    assert result.status is Status.CRITICAL
    assert result.summary == 'smoke: GET version is "v1" expected "v3"'
    assert "token=***" in result.details["body_excerpt"]
    assert API_KEY not in repr(result.model_dump())


def test_smoke_connection_refused_is_transient() -> None:
    test = SmokeTest.model_validate({"name": "s", "url": f"http://127.0.0.1:{free_port()}/"})
    with pytest.raises(TransientError, match="cannot connect"):
        run_smoke_test.fn(test)


# --- verification window --------------------------------------------------------------------


def environment(app: MeteredApp, **metrics: Any) -> Environment:
    return Environment.model_validate(
        {
            "endpoints": [{"name": "api", "url": f"{app.url}/health"}],
            "metrics": [{"name": "app", "url": f"{app.url}/metrics", **metrics}],
        }
    )


FAST = {"duration": "2s", "interval": "200ms"}


@flow(name="verification-window-test")
def window_flow(env: Environment, verification: Verification) -> VerificationVerdict:
    return verify_window(env, verification)


def test_healthy_app_passes(prefect_api: str, app: MeteredApp) -> None:
    verification = Verification.model_validate(FAST)
    with Traffic(app):
        verdict = window_flow(environment(app), verification)
    assert verdict.passed, verdict.reason
    assert len(verdict.samples) == 10
    assert verdict.reason == "10 samples within thresholds"
    assert all(s.endpoints_ok and not s.failures for s in verdict.samples)
    # a sample without requests (a slow machine) has no rate; the others measured 0 %
    rates = [s.error_rate_pct for s in verdict.samples if s.requests]
    assert rates and set(rates) == {0.0}
    assert sum(s.requests for s in verdict.samples) > 10  # the traffic was measured
    assert verdict.seconds >= 2.0


def test_error_rate_rising_mid_window_fails_after_failure_limit(
    prefect_api: str, app: MeteredApp
) -> None:
    verification = Verification.model_validate(FAST | {"failure_limit": 3})
    app.switch_after_scrapes = (2, "errors")  # the baseline and the first sample see 200s
    with Traffic(app):
        verdict = window_flow(environment(app), verification)
    assert not verdict.passed
    failed = [s for s in verdict.samples if s.failures]
    assert len(failed) == 3 and verdict.samples[-1] is failed[-1]  # stopped at the third
    assert len(verdict.samples) < 10
    assert verdict.samples[0].failures == []  # healthy before the change
    assert any(f.startswith("error rate ") and f.endswith("> 5%") for f in failed[-1].failures)
    assert verdict.reason.startswith("3 of ")
    assert "(limit 3, stopped after" in verdict.reason


def test_p95_over_threshold_fails(prefect_api: str, app: MeteredApp) -> None:
    app.mode = "slow"  # every request takes 80 ms
    verification = Verification.model_validate(FAST | {"max_p95_ms": 50, "failure_limit": 2})
    with Traffic(app):
        verdict = window_flow(environment(app), verification)
    assert not verdict.passed
    failed = [s for s in verdict.samples if s.failures]
    assert len(failed) == 2 and verdict.samples[-1] is failed[-1]
    for s in failed:
        assert s.p95_ms is not None and s.p95_ms > 50
        assert any(f.startswith("p95 ") and f.endswith("ms > 50 ms") for f in s.failures)


def test_failing_health_endpoint_fails_the_sample(prefect_api: str, app: MeteredApp) -> None:
    app.health_ok = False
    verification = Verification.model_validate(FAST | {"failure_limit": 1})
    verdict = window_flow(environment(app), verification)
    assert not verdict.passed and len(verdict.samples) == 1
    sample = verdict.samples[0]
    assert not sample.endpoints_ok
    assert sample.failures[0].startswith("endpoint api: ")
    assert "500" in sample.failures[0]


def test_restart_is_a_fresh_baseline_not_a_negative_rate(app: MeteredApp) -> None:
    env = environment(app)
    verification = Verification.model_validate(FAST)
    app.requests.labels("200").inc(1000)
    app.requests.labels("500").inc(40)
    _, baseline = sample_health.fn(env, verification, None)
    app.restart()
    app.requests.labels("200").inc(9)
    app.requests.labels("500").inc(1)
    sample, _ = sample_health.fn(env, verification, baseline)
    assert sample.requests == 10
    assert sample.error_rate_pct == pytest.approx(10.0)
    assert sample.failures == ["error rate 10.0% > 5%"]


def test_metrics_headers_carry_the_resolved_reference(app: MeteredApp) -> None:
    app.metrics_key_required = True
    verification = Verification.model_validate(FAST | {"endpoints": False})
    keyed = environment(app, headers=KEY)
    _, baseline = sample_health.fn(keyed, verification, None)
    assert "app" in baseline
    sample, _ = sample_health.fn(environment(app), verification, None)  # no header: refused
    assert len(sample.failures) == 1 and "HTTP 401" in sample.failures[0]
    assert API_KEY not in repr(sample.model_dump())
