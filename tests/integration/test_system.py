"""check_disk against the real filesystem; check_tls_certificate against real TLS servers."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from opsflow.errors import PermanentError, TransientError
from opsflow.inventory import Endpoint, Thresholds
from opsflow.results import Status
from tasks.system import check_disk, check_tls_certificate
from tests.fixtures.http_targets import HttpsTargets

pytestmark = pytest.mark.integration

DEFAULTS = Thresholds()  # type: ignore[call-arg]


def test_disk_usage_matches_the_filesystem(tmp_path: Path) -> None:
    usage = shutil.disk_usage(tmp_path)
    expected = 100 * usage.used / (usage.used + usage.free)
    result = check_disk.fn(str(tmp_path), Thresholds(disk_pct=100))  # type: ignore[call-arg]
    assert result.check == "disk" and result.target == str(tmp_path)
    assert result.details["used_pct"] == pytest.approx(expected, abs=0.5)
    assert result.details["total_bytes"] == usage.total
    assert result.status is (Status.CRITICAL if expected >= 100 else Status.HEALTHY)


def test_disk_thresholds_low_and_high(tmp_path: Path) -> None:
    used = check_disk.fn(str(tmp_path), DEFAULTS).details["used_pct"]
    assert 0.01 < used < 100, "the test filesystem should be neither empty nor full"
    low = Thresholds(disk_pct=max(used - 1, 0.001))  # type: ignore[call-arg]
    degraded = check_disk.fn(str(tmp_path), low)
    assert degraded.status is Status.DEGRADED
    assert "degraded" in degraded.summary
    assert degraded.details["critical_at_pct"] == min(max(used + 9, 95), 100)
    high = Thresholds(disk_pct=100)  # type: ignore[call-arg]
    assert check_disk.fn(str(tmp_path), high).status is Status.HEALTHY


def test_missing_disk_path_is_permanent(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir"
    with pytest.raises(PermanentError, match=str(missing)):
        check_disk.fn(str(missing), DEFAULTS)


def tls_endpoint(url: str, **extra: object) -> Endpoint:
    return Endpoint.model_validate({"name": "site", "url": url, **extra})


def test_valid_certificate_is_healthy(https_targets: HttpsTargets) -> None:
    url, ca_file = https_targets.valid
    result = check_tls_certificate.fn(tls_endpoint(url, ca_file=str(ca_file)), DEFAULTS)
    assert result.status is Status.HEALTHY, result.summary
    assert 89 < result.details["days_left"] <= 90
    assert result.details["subject"] == "localhost"
    assert "127.0.0.1" in result.details["names"]
    assert result.details["verified"] is True


def test_expiring_certificate_is_degraded_then_critical(https_targets: HttpsTargets) -> None:
    url, ca_file = https_targets.expiring
    ep = tls_endpoint(url, ca_file=str(ca_file))
    degraded = check_tls_certificate.fn(ep, DEFAULTS)
    assert degraded.status is Status.DEGRADED
    assert 4 < degraded.details["days_left"] <= 5
    assert "expires in 5.0 days" in degraded.summary or "expires in 4.9" in degraded.summary
    assert check_tls_certificate.fn(ep, Thresholds(cert_days=3)).status is Status.HEALTHY  # type: ignore[call-arg]


def test_expired_certificate_is_critical(https_targets: HttpsTargets) -> None:
    url, ca_file = https_targets.expired
    result = check_tls_certificate.fn(tls_endpoint(url, ca_file=str(ca_file)), DEFAULTS)
    assert result.status is Status.CRITICAL
    assert result.details["days_left"] < 0
    assert "EXPIRED" in result.summary
    # the chain is ours, but an expired certificate never verifies
    assert "expired" in result.details["verify_error"]


def test_untrusted_certificate_is_critical_but_reports_days(https_targets: HttpsTargets) -> None:
    url, _ = https_targets.valid
    result = check_tls_certificate.fn(tls_endpoint(url), DEFAULTS)
    assert result.status is Status.CRITICAL
    assert result.details["verified"] is False
    assert (
        "self-signed" in result.details["verify_error"]
        or "self signed" in (result.details["verify_error"])
    )
    assert 89 < result.details["days_left"] <= 90
    assert "NOT TRUSTED" in result.summary
    unverified = check_tls_certificate.fn(tls_endpoint(url, verify_tls=False), DEFAULTS)
    assert unverified.status is Status.HEALTHY
    assert unverified.details["verified"] is False


def test_tls_connection_refused_is_transient(refused_http_url: str) -> None:
    url = refused_http_url.replace("http://", "https://")
    with pytest.raises(TransientError, match="cannot connect"):
        check_tls_certificate.fn(tls_endpoint(url), DEFAULTS)


def test_plain_http_port_is_permanent(http_app_url: str) -> None:
    with pytest.raises(PermanentError, match="TLS handshake"):
        check_tls_certificate.fn(
            tls_endpoint(http_app_url.replace("http://", "https://"), timeout="3s"), DEFAULTS
        )
    with pytest.raises(PermanentError, match="not an https URL"):
        check_tls_certificate.fn(tls_endpoint(http_app_url), DEFAULTS)
