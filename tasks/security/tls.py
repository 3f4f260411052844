"""The security review's ``tls`` check of one https URL: certificate expiry and trust, the
protocol negotiated and the lowest one the server still accepts, weak ciphers.

Handshakes, each with its own timeout (``security.tls.timeout``) and all of one URL's within
``TLS_BUDGET_S`` (under the task's declared timeout):

1. as a modern client (the system store or ``tls.ca_file``); a certificate that does not verify
   is read again without verification, so its expiry is still reported; a server that refuses a
   modern client is tried once more as a legacy one (TLS 1.0 up, every cipher), whose answer
   shows the old protocol or weak cipher it needs;
2. offering only protocols below ``tls.min_version`` (accepted: high);
3. offering only weak ciphers (RC4, 3DES, NULL, EXPORT, MD5, under 128 bits; accepted: high).

Steps 2 and 3 need the local OpenSSL to offer what it tests: what it will not offer is said in
the outcome's details ("could not be tested"), never a finding nor a pass.
"""

from __future__ import annotations

import re
import socket
import ssl
import time
import warnings
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from opsflow.inventory import Environment, TlsCheck
from opsflow.redaction import redact
from opsflow.secrets import is_reference
from opsflow.security import CheckOutcome, SecurityFinding, Severity
from tasks.policy import probe_task
from tasks.system import describe_certificate

CHECK = "tls"
TLS_BUDGET_S = 100.0  # every handshake of one URL, together
PROTOCOLS = {"SSLv3": 0, "TLSv1": 1, "TLSv1.1": 2, "TLSv1.2": 3, "TLSv1.3": 4}
_BELOW = {"TLSv1.2": "TLSv1_1", "TLSv1.3": "TLSv1_2"}  # the highest version under min_version
WEAK_CIPHERS = "RC4:3DES:eNULL:EXPORT:MD5:LOW:!aNULL"
_LEGACY_CIPHERS = "ALL:eNULL:!aNULL:@SECLEVEL=0"  # every cipher that comes with a certificate
_WEAK_NAME = re.compile(r"RC4|3DES|DES-CBC3|(?:^|-)DES-|NULL|EXP|MD5")
_LOCAL_REFUSALS = {"NO_PROTOCOLS_AVAILABLE", "NO_CIPHERS_AVAILABLE"}
_EXPIRED = 10  # X509_V_ERR_CERT_HAS_EXPIRED: reported as the expiry finding, not as trust


class Unreachable(Exception):
    """No TLS answer from the server (refused, timed out, reset, or not TLS)."""


@dataclass(frozen=True)
class Handshake:
    der: bytes
    version: str
    cipher: str
    bits: int


def weak_cipher(name: str, bits: int) -> bool:
    """RC4, 3DES/DES, NULL, EXPORT, MD5 or under 128 secret bits."""
    return bits < 128 or bool(_WEAK_NAME.search(name.upper()))


def _context(verify: bool, ca_file: str | None) -> ssl.SSLContext:
    if verify:
        return ssl.create_default_context(cafile=ca_file)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _legacy(maximum: str | None = None, ciphers: str = _LEGACY_CIPHERS) -> ssl.SSLContext:
    """An unverifying client from TLS 1.0 (up to ``maximum``) with ``ciphers``; raises
    ``ssl.SSLError`` when the local OpenSSL offers none of them."""
    context = _context(False, None)
    with warnings.catch_warnings():  # TLSv1 / TLSv1_1 members are deprecated: we test them
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        if maximum is not None:
            context.maximum_version = getattr(ssl.TLSVersion, maximum)
    context.set_ciphers(ciphers)
    return context


class _Client:
    """Handshakes with one host:port, each within ``timeout`` and all within the budget."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.deadline = time.monotonic() + TLS_BUDGET_S

    def handshake(self, context: ssl.SSLContext) -> Handshake:
        """One handshake; ``ssl.SSLError`` (incl. verification) as raised, else Unreachable."""
        wait = min(self.timeout, self.deadline - time.monotonic())
        if wait <= 0:
            raise Unreachable(f"the {TLS_BUDGET_S:g}s budget of this URL's handshakes is spent")
        try:
            with (
                socket.create_connection((self.host, self.port), timeout=wait) as raw,
                context.wrap_socket(raw, server_hostname=self.host) as tls,
            ):
                der = tls.getpeercert(binary_form=True)
                version = tls.version() or "unknown"
                name, _, bits = tls.cipher() or ("unknown", "", 0)
        except ssl.SSLError:
            raise
        except (TimeoutError, OSError) as exc:
            raise Unreachable(f"{type(exc).__name__}: {exc}") from None
        if not der:
            raise Unreachable("the server presented no certificate")
        return Handshake(der, version, name, int(bits or 0))


def _first_contact(
    client: _Client, verifying: ssl.SSLContext, details: dict[str, Any]
) -> tuple[Handshake, ssl.SSLCertVerificationError | None]:
    """The handshake of step 1 (module docstring) and the verification error, if any."""
    verify_error: ssl.SSLCertVerificationError | None = None
    try:
        return client.handshake(verifying), None
    except ssl.SSLCertVerificationError as exc:
        verify_error = exc
    except ssl.SSLError as exc:
        details["modern_client_refused"] = str(exc.reason or exc)
    if verify_error is not None:
        try:
            return client.handshake(_context(False, None)), verify_error
        except ssl.SSLError as exc:
            details["modern_client_refused"] = str(exc.reason or exc)
    try:
        return client.handshake(_legacy()), verify_error
    except ssl.SSLError as exc:
        raise Unreachable(f"TLS handshake failed: {exc.reason or exc}") from None


def _probe(client: _Client, maximum: str, ciphers: str) -> tuple[Handshake | None, str]:
    """A legacy handshake (``_legacy``): (the handshake, "accepted ...") when the server takes
    it, else (None, "refused: why" or "could not be tested: why")."""
    try:
        context = _legacy(maximum, ciphers)
    except (ssl.SSLError, ValueError) as exc:
        return None, f"could not be tested: the local OpenSSL cannot offer it ({exc})"
    try:
        shake = client.handshake(context)
    except ssl.SSLError as exc:
        reason = str(exc.reason or "")
        if reason in _LOCAL_REFUSALS:
            return None, f"could not be tested: the local OpenSSL will not offer it ({reason})"
        return None, f"refused ({reason or exc})"
    except Unreachable as exc:
        return None, f"could not be tested: {exc}"
    return shake, f"accepted ({shake.version} {shake.cipher})"


def _finding(target: str, severity: Severity, summary: str, **details: Any) -> SecurityFinding:
    return SecurityFinding(
        severity=severity, check=CHECK, target=target, summary=redact(summary), details=details
    )


def _grade(
    target: str,
    shake: Handshake,
    cert: dict[str, Any],
    verify_error: ssl.SSLCertVerificationError | None,
    tls: TlsCheck,
    cert_days: int,
) -> list[SecurityFinding]:
    """Findings of the first handshake: expiry, trust, protocol, cipher."""
    days, not_after = float(cert["days_left"]), str(cert["not_after"])
    found: list[SecurityFinding] = []
    if days < 0:
        found.append(
            _finding(
                target,
                Severity.CRITICAL,
                f"certificate EXPIRED {-days:.1f} days ago (notAfter {not_after}; fix: renew it)",
                not_after=not_after,
                days_left=days,
            )
        )
    elif days < cert_days:
        found.append(
            _finding(
                target,
                Severity.HIGH,
                f"certificate expires in {days:.1f} days (notAfter {not_after}), within "
                f"thresholds.cert_days {cert_days} (fix: renew it)",
                not_after=not_after,
                days_left=days,
            )
        )
    if verify_error is not None and verify_error.verify_code != _EXPIRED:
        why = verify_error.verify_message or str(verify_error)
        found.append(
            _finding(
                target,
                Severity.HIGH,
                f"certificate not trusted: {why} (fix: serve a certificate of a trusted CA, or "
                "set security.tls.ca_file to the CA that signs it)",
                verify_error=why,
            )
        )
    if PROTOCOLS.get(shake.version, -1) < PROTOCOLS[tls.min_version]:
        found.append(
            _finding(
                target,
                Severity.HIGH,
                f"negotiated {shake.version}, older than security.tls.min_version "
                f"{tls.min_version} (fix: enable {tls.min_version} or later on the server)",
                protocol=shake.version,
            )
        )
    if weak_cipher(shake.cipher, shake.bits):
        found.append(
            _finding(
                target,
                Severity.HIGH,
                f"negotiated weak cipher {shake.cipher} ({shake.bits} bits; fix: disable it)",
                cipher=shake.cipher,
                bits=shake.bits,
            )
        )
    return found


def _split(url: str) -> tuple[str, int] | None:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        return None
    try:
        return parts.hostname, parts.port or 443
    except ValueError:  # a port out of range
        return None


@probe_task("check_tls", timeout_seconds=TLS_BUDGET_S + 20, task_run_name="check_tls-{url}")
def check_tls(env_name: str, url: str, tls: TlsCheck, cert_days: int) -> CheckOutcome:
    """The ``tls`` check of one https URL of ``env_name`` (module docstring); an unreachable
    server is an unusable outcome naming the URL."""
    shown = redact(url)
    split = _split(url)
    if split is None:
        return CheckOutcome.unusable(CHECK, shown, f"{shown} is not an https URL", "use https://")
    host, port = split
    target = f"{host}:{port}"
    try:
        verifying = _context(True, tls.ca_file)
    except (OSError, ssl.SSLError) as exc:
        fix = "point security.tls.ca_file at a readable PEM bundle"
        return CheckOutcome.unusable(CHECK, target, f"cannot use CA file {tls.ca_file}: {exc}", fix)
    client = _Client(host, port, tls.timeout.total_seconds())
    details: dict[str, Any] = {"url": shown, "min_version": tls.min_version}
    try:
        shake, verify_error = _first_contact(client, verifying, details)
    except Unreachable as exc:
        return CheckOutcome.unusable(
            CHECK,
            target,
            redact(f"{shown} ({env_name}) gave no TLS answer: {exc}"),
            "check that the server runs, that the port speaks TLS and the network between",
        )
    cert = describe_certificate(shake.der)
    findings = _grade(target, shake, cert, verify_error, tls, cert_days)
    details.update(
        protocol=shake.version,
        cipher=shake.cipher,
        bits=shake.bits,
        not_after=cert["not_after"],
        days_left=cert["days_left"],
        subject=cert["subject"],
        issuer=cert["issuer"],
        verified=verify_error is None and "modern_client_refused" not in details,
    )
    if PROTOCOLS.get(shake.version, -1) >= PROTOCOLS[tls.min_version]:
        old, details["below_min_version"] = _probe(client, _BELOW[tls.min_version], _LEGACY_CIPHERS)
        if old is not None:
            findings.append(
                _finding(
                    target,
                    Severity.HIGH,
                    f"accepts {old.version}, below security.tls.min_version {tls.min_version} "
                    f"(fix: disable protocols older than {tls.min_version} on the server)",
                    protocol=old.version,
                )
            )
    if not weak_cipher(shake.cipher, shake.bits):
        weak, details["weak_ciphers"] = _probe(client, "TLSv1_2", WEAK_CIPHERS + ":@SECLEVEL=0")
        details["weak_ciphers_offered"] = _offered(WEAK_CIPHERS)
        if weak is not None:
            findings.append(
                _finding(
                    target,
                    Severity.HIGH,
                    f"accepts weak cipher {weak.cipher} ({weak.bits} bits; fix: disable RC4, "
                    "3DES, NULL, EXPORT and MD5 ciphers on the server)",
                    cipher=weak.cipher,
                    bits=weak.bits,
                )
            )
    days = float(cert["days_left"])
    summary = (
        f"{target}: {shake.version} {shake.cipher}, certificate "
        + (f"expired {-days:.1f} days ago" if days < 0 else f"valid {days:.1f} more days")
        + (f"; {len(findings)} finding(s)" if findings else "")
    )
    return CheckOutcome(
        check=CHECK, target=target, summary=redact(summary), findings=findings, details=details
    )


def _offered(ciphers: str) -> list[str]:
    """The TLS 1.2-and-older ciphers of ``ciphers`` the local OpenSSL can offer."""
    try:
        context = _legacy("TLSv1_2", ciphers + ":@SECLEVEL=0")
    except ssl.SSLError:
        return []
    return [c["name"] for c in context.get_ciphers() if c.get("protocol") != "TLSv1.3"]


def tls_urls(env: Environment) -> list[str]:
    """Every https URL of the environment's endpoints, smoke tests and ``security.tls.urls``,
    one per host:port (the first), references (env:/secret:) left out."""
    seen: dict[str, str] = {}
    candidates = [e.url for e in env.endpoints] + [s.url for s in env.smoke_tests]
    for url in candidates + list(env.security.tls.urls):
        if is_reference(url):
            continue
        split = _split(url)
        if split is not None:
            seen.setdefault(f"{split[0]}:{split[1]}", url)
    return list(seen.values())
