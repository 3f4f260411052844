"""Machine-level checks: free disk space and TLS certificate expiry."""

from __future__ import annotations

import shutil
import socket
import ssl
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.x509.oid import NameOID

from opsflow.errors import PermanentError, TransientError
from opsflow.inventory import Endpoint, Thresholds
from opsflow.redaction import redact
from opsflow.results import CheckResult, Status, grade
from opsflow.units import format_bytes
from tasks.policy import probe_task

CERT_CRITICAL_DAYS = 3


def disk_thresholds(thresholds: Thresholds) -> tuple[float, float]:
    """(degraded_at, critical_at) in percent used: disk_pct and max(disk_pct + 10, 95)."""
    degraded = thresholds.disk_pct
    return degraded, min(max(degraded + 10, 95.0), 100.0)


@probe_task("check_disk", timeout_seconds=30, task_run_name="check_disk-{path}")
def check_disk(path: str, thresholds: Thresholds) -> CheckResult:
    """Percent used of the filesystem holding ``path`` (as ``df`` counts it) vs thresholds."""
    started = time.monotonic()
    try:
        usage = shutil.disk_usage(path)
    except FileNotFoundError:
        raise PermanentError(
            f"disk path {path} does not exist (fix: correct the environment's `disks` list)"
        ) from None
    except PermissionError as exc:
        raise PermanentError(f"cannot stat {path}: {exc} (fix: run as a user who can)") from None
    # like df: used / (used + available to unprivileged users)
    capacity = usage.used + usage.free
    pct = 100.0 * usage.used / capacity if capacity else 0.0
    degraded_at, critical_at = disk_thresholds(thresholds)
    status = grade(pct, degraded_at, critical_at)
    summary = (
        f"{path}: {pct:.1f}% used, {format_bytes(usage.free)} free of {format_bytes(usage.total)}"
    )
    if status is not Status.HEALTHY:
        summary += f" ({status.value}: threshold {degraded_at:g}%, critical {critical_at:g}%)"
    return CheckResult.timed(
        started,
        "disk",
        path,
        status,
        summary,
        {
            "path": path,
            "used_pct": round(pct, 2),
            "total_bytes": usage.total,
            "used_bytes": usage.used,
            "free_bytes": usage.free,
            "degraded_at_pct": degraded_at,
            "critical_at_pct": critical_at,
        },
    )


def fetch_certificate(
    host: str, port: int, timeout: float, context: ssl.SSLContext
) -> tuple[bytes, str | None]:
    """Handshake with ``context``; return (DER certificate, verification error or None).

    When verification fails the certificate is fetched again without verification, so its
    expiry can still be reported.
    """
    try:
        return _handshake(host, port, timeout, context), None
    except ssl.SSLCertVerificationError as exc:
        error = exc.verify_message or str(exc)
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    return _handshake(host, port, timeout, insecure), error


def _handshake(host: str, port: int, timeout: float, context: ssl.SSLContext) -> bytes:
    try:
        with (
            socket.create_connection((host, port), timeout=timeout) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except ssl.SSLCertVerificationError:
        raise
    except ssl.SSLError as exc:
        raise PermanentError(
            f"TLS handshake with {host}:{port} failed: {exc.reason or exc} "
            "(fix: check that the port speaks TLS)"
        ) from None
    except (TimeoutError, ConnectionError, OSError) as exc:
        raise TransientError(f"cannot connect to {host}:{port}: {exc}") from None
    if not der:
        raise PermanentError(f"{host}:{port} presented no certificate")
    return der


def describe_certificate(der: bytes, now: datetime | None = None) -> dict[str, Any]:
    """Subject, issuer, validity, SANs and days left of a DER certificate."""
    cert = x509.load_der_x509_certificate(der)
    now = now or datetime.now(UTC)
    not_after = cert.not_valid_after_utc
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
        names += [str(n) for n in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    return {
        "subject": _common_name(cert.subject),
        "issuer": _common_name(cert.issuer),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": not_after.isoformat(),
        "days_left": round((not_after - now).total_seconds() / 86400, 2),
        "names": names,
        "serial": format(cert.serial_number, "x"),
    }


def _common_name(name: x509.Name) -> str:
    cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(cns[0].value) if cns else name.rfc4514_string()


def grade_certificate(days_left: float, thresholds: Thresholds) -> Status:
    """Critical when expired or under 3 days left; degraded under ``cert_days``."""
    if days_left < CERT_CRITICAL_DAYS:
        return Status.CRITICAL
    if days_left < thresholds.cert_days:
        return Status.DEGRADED
    return Status.HEALTHY


@probe_task(
    "check_tls_certificate",
    timeout_seconds=60,
    task_run_name="check_tls_certificate-{endpoint.name}",
)
def check_tls_certificate(endpoint: Endpoint, thresholds: Thresholds) -> CheckResult:
    """Days until the https endpoint's certificate expires, and whether it is trusted."""
    started = time.monotonic()
    parts = urlsplit(endpoint.url)
    if parts.scheme != "https" or not parts.hostname:
        raise PermanentError(
            f"{endpoint.name}: {redact(endpoint.url)} is not an https URL "
            "(fix: only check certificates of https endpoints)"
        )
    host, port = parts.hostname, parts.port or 443
    try:
        context = ssl.create_default_context(cafile=endpoint.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise PermanentError(
            f"{endpoint.name}: cannot read CA file {endpoint.ca_file}: {exc} "
            "(fix: point ca_file at a PEM bundle)"
        ) from None
    if not endpoint.verify_tls:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    der, verify_error = fetch_certificate(host, port, endpoint.timeout.total_seconds(), context)
    details = describe_certificate(der)
    days_left = float(details["days_left"])
    status = grade_certificate(days_left, thresholds)
    details.update({"host": host, "port": port, "verified": endpoint.verify_tls})
    if days_left < 0:
        summary = f"{endpoint.name}: certificate EXPIRED {-days_left:.1f} days ago"
    else:
        summary = f"{endpoint.name}: certificate expires in {days_left:.1f} days"
    summary += f" ({details['not_after'][:10]})"
    if status is not Status.HEALTHY:
        summary += f", under {thresholds.cert_days} days" if days_left >= 0 else ""
    if verify_error is not None:
        status = Status.CRITICAL
        details["verified"] = False
        details["verify_error"] = verify_error
        summary += f"; NOT TRUSTED: {verify_error}"
    return CheckResult.timed(
        started, "tls_certificate", endpoint.name, status, redact(summary), details
    )
