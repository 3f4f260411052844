"""check_endpoint and check_metrics against real local HTTP(S) servers."""

from __future__ import annotations

import pytest

from opsflow.errors import InputError, PermanentError, TransientError, is_transient
from opsflow.inventory import Endpoint, MetricsSource, Thresholds
from opsflow.results import Status
from tasks.http import check_endpoint, check_metrics
from tests.fixtures.http_targets import AUTH_HEADER, HttpsTargets

pytestmark = pytest.mark.integration

DEFAULTS = Thresholds()  # type: ignore[call-arg]


def endpoint(url: str, **extra: object) -> Endpoint:
    return Endpoint.model_validate({"name": "app", "url": url, **extra})


def test_healthy_endpoint(http_app_url: str) -> None:
    result = check_endpoint.fn(endpoint(f"{http_app_url}/health"), DEFAULTS)
    assert result.status is Status.HEALTHY, result.summary
    assert result.check == "endpoint" and result.target == "app"
    assert result.details["http_status"] == 200
    assert result.details["reported_status"] == "healthy"
    assert 0 <= result.details["latency_ms"] < 1000


@pytest.mark.parametrize("path", ["/ready", "/live", "/health/detailed"])
def test_ready_live_and_detailed_are_healthy(http_app_url: str, path: str) -> None:
    kind = path.strip("/").split("/")[-1]
    result = check_endpoint.fn(endpoint(f"{http_app_url}{path}", kind=kind), DEFAULTS)
    assert result.status is Status.HEALTHY, result.summary
    assert "failing_components" not in result.details


def test_detailed_reports_failing_components(http_app_url: str) -> None:
    ep = endpoint(f"{http_app_url}/health/detailed-degraded", kind="detailed")
    result = check_endpoint.fn(ep, DEFAULTS)
    assert result.status is Status.DEGRADED
    assert result.details["failing_components"] == {"db": "down", "queue": "slow"}
    assert "db=down" in result.summary and "'degraded'" in result.summary


def test_wrong_json_status_is_critical(http_app_url: str) -> None:
    result = check_endpoint.fn(endpoint(f"{http_app_url}/health/broken"), DEFAULTS)
    assert result.status is Status.CRITICAL
    assert "'failing'" in result.summary


def test_expect_json_status_overrides_the_default(http_app_url: str) -> None:
    ep = endpoint(f"{http_app_url}/health/broken", expect_json_status=["failing"])
    assert check_endpoint.fn(ep, DEFAULTS).status is Status.HEALTHY
    ep = endpoint(f"{http_app_url}/health", expect_json_status=["ok"])
    assert check_endpoint.fn(ep, DEFAULTS).status is Status.CRITICAL


def test_slow_endpoint_is_degraded_then_critical(http_app_url: str) -> None:
    ep = endpoint(f"{http_app_url}/slow?ms=300")
    degraded = check_endpoint.fn(ep, Thresholds(response_ms=150))  # type: ignore[call-arg]
    assert degraded.status is Status.DEGRADED
    assert degraded.details["latency_ms"] >= 300
    assert "slow" in degraded.summary
    critical = check_endpoint.fn(ep, Thresholds(response_ms=50))  # type: ignore[call-arg]
    assert critical.status is Status.CRITICAL
    assert check_endpoint.fn(ep, DEFAULTS).status is Status.HEALTHY


def test_timeout_raises_transient(http_app_url: str) -> None:
    ep = endpoint(f"{http_app_url}/slow?ms=1500", timeout="300ms")
    with pytest.raises(TransientError, match=r"did not answer within 0\.3s"):
        check_endpoint.fn(ep, DEFAULTS)


def test_connection_refused_raises_transient(refused_http_url: str) -> None:
    with pytest.raises(TransientError, match="cannot connect") as info:
        check_endpoint.fn(endpoint(refused_http_url), DEFAULTS)
    assert is_transient(info.value)


def test_server_error_raises_transient(http_app_url: str) -> None:
    with pytest.raises(TransientError, match="HTTP 500"):
        check_endpoint.fn(endpoint(f"{http_app_url}/status/500"), DEFAULTS)


def test_expected_5xx_is_not_an_error(http_app_url: str) -> None:
    ep = endpoint(f"{http_app_url}/status/503", expect_status=503)
    assert check_endpoint.fn(ep, DEFAULTS).status is Status.HEALTHY


@pytest.mark.parametrize("code", [404, 401, 302])
def test_unexpected_4xx_or_3xx_is_critical(http_app_url: str, code: int) -> None:
    result = check_endpoint.fn(endpoint(f"{http_app_url}/status/{code}"), DEFAULTS)
    assert result.status is Status.CRITICAL
    assert f"HTTP {code}, expected 200" in result.summary


def test_https_with_ca_file_and_untrusted(https_targets: HttpsTargets) -> None:
    url, ca_file = https_targets.valid
    trusted = check_endpoint.fn(endpoint(f"{url}/health", ca_file=str(ca_file)), DEFAULTS)
    assert trusted.status is Status.HEALTHY, trusted.summary
    untrusted = check_endpoint.fn(endpoint(f"{url}/health"), DEFAULTS)
    assert untrusted.status is Status.CRITICAL
    assert "not trusted" in untrusted.summary
    unverified = check_endpoint.fn(endpoint(f"{url}/health", verify_tls=False), DEFAULTS)
    assert unverified.status is Status.HEALTHY


def metrics(url: str) -> MetricsSource:
    return MetricsSource(name="app-metrics", url=url)


def test_metrics_healthy(http_app_url: str) -> None:
    result = check_metrics.fn(metrics(f"{http_app_url}/metrics"), DEFAULTS)
    assert result.status is Status.HEALTHY, result.summary
    assert result.details["error_rate"]["pct"] == 0
    assert result.details["error_rate"]["requests"] == 1000
    assert result.details["p95_latency"]["ms"] == pytest.approx(75, abs=0.1)
    assert result.details["memory"]["pct"] == pytest.approx(20)


def test_metrics_with_errors_slow_and_full(http_app_url: str) -> None:
    result = check_metrics.fn(metrics(f"{http_app_url}/metrics/errors"), DEFAULTS)
    assert result.status is Status.CRITICAL
    assert result.details["error_rate"]["pct"] == pytest.approx(10)
    assert result.details["error_rate"]["status"] == "critical"
    # 80 % of requests in (0.05, 0.1], 20 % in (0.5, 1.0]: p95 = 0.5 + 0.5 * 150/200
    assert result.details["p95_latency"]["ms"] == pytest.approx(875, abs=0.1)
    assert result.details["p95_latency"]["status"] == "degraded"
    assert result.details["memory"]["pct"] == pytest.approx(95)
    assert result.details["memory"]["status"] == "critical"
    assert "error rate 10.0%" in result.summary


def test_metrics_error_rate_threshold_is_configurable(http_app_url: str) -> None:
    lenient = Thresholds(error_rate_pct=20, p95_latency_ms=2000, memory_pct=99)  # type: ignore[call-arg]
    result = check_metrics.fn(metrics(f"{http_app_url}/metrics/errors"), lenient)
    assert result.status is Status.HEALTHY, result.summary


def test_metrics_absent_are_said_so(http_app_url: str) -> None:
    result = check_metrics.fn(metrics(f"{http_app_url}/metrics/bare"), DEFAULTS)
    assert result.status is Status.DEGRADED
    assert "error rate: not reported" in result.summary
    assert "p95 latency: not reported" in result.summary
    assert "memory: not reported" in result.summary
    assert result.details["memory"] is None


def test_metrics_not_found_is_permanent_and_down_is_transient(
    http_app_url: str, refused_http_url: str
) -> None:
    with pytest.raises(PermanentError, match="HTTP 404"):
        check_metrics.fn(metrics(f"{http_app_url}/nope"), DEFAULTS)
    with pytest.raises(TransientError):
        check_metrics.fn(metrics(refused_http_url), DEFAULTS)


def test_url_and_headers_given_as_references_are_resolved_when_used(
    http_app_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A URL and an Authorization header that are secrets live in the environment, not the
    inventory: the check resolves them when it runs, and neither appears in its result."""
    monkeypatch.setenv("HTTP_TEST_PRIVATE_URL", f"{http_app_url}/private/health")
    monkeypatch.setenv("HTTP_TEST_AUTH", AUTH_HEADER)
    private = endpoint("env:HTTP_TEST_PRIVATE_URL", headers={"Authorization": "env:HTTP_TEST_AUTH"})
    result = check_endpoint.fn(private, DEFAULTS)
    assert result.status is Status.HEALTHY, result.summary
    assert result.details["http_status"] == 200
    assert AUTH_HEADER not in str(result.model_dump())
    without = check_endpoint.fn(endpoint("env:HTTP_TEST_PRIVATE_URL"), DEFAULTS)
    assert without.status is Status.CRITICAL
    assert without.details["http_status"] == 401


def test_a_reference_that_does_not_resolve_is_bad_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HTTP_TEST_NO_SUCH_URL", raising=False)
    with pytest.raises(InputError, match="HTTP_TEST_NO_SUCH_URL is not set"):
        check_endpoint.fn(endpoint("env:HTTP_TEST_NO_SUCH_URL"), DEFAULTS)
