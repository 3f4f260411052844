"""The one way opsflow's HTTP tasks talk HTTP: resolved targets, TLS contexts, a request with
network trouble turned into ``TransientError`` and secrets redacted, and body excerpts safe
to show."""

from __future__ import annotations

import functools
import json
import ssl
from datetime import timedelta
from typing import Any, Protocol

import httpx

from opsflow.errors import PermanentError, TransientError
from opsflow.redaction import redact, redact_data
from opsflow.secrets import resolve

EXCERPT_CHARS = 120
"""At most this many characters of a response body (or a value in it) reach a summary."""


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


class Requested(Protocol):
    """What a request is made of in the inventory: a name, a URL and headers, any of them
    possibly ``env:`` / ``secret:`` references (an ``HttpTarget``, the maintenance-mode call)."""

    @property
    def name(self) -> str: ...
    @property
    def url(self) -> str: ...
    @property
    def headers(self) -> dict[str, str]: ...


def resolved(target: Requested) -> tuple[str, dict[str, str]]:
    """The URL and headers of ``target`` with their ``env:`` / ``secret:`` references resolved
    (each value registered for redaction)."""
    field = f"{type(target).__name__.lower()} {target.name}"
    url = resolve(target.url, field=f"{field}: url")
    headers = {k: resolve(v, field=f"{field}: headers.{k}") for k, v in target.headers.items()}
    return url, headers


def http_request(
    method: str,
    url: str,
    timeout: timedelta,
    verify: ssl.SSLContext | bool,
    headers: dict[str, str] | None = None,
    content: str | None = None,
) -> httpx.Response:
    """Send one request (redirects not followed); network trouble becomes
    ``TransientError``, an untrusted certificate ``TLSVerificationError``, secrets redacted."""
    seconds = timeout.total_seconds()
    try:
        with httpx.Client(verify=verify, timeout=seconds, follow_redirects=False) as client:
            return client.request(method, url, headers=headers, content=content)
    except httpx.ConnectError as exc:
        if _is_cert_error(exc):
            raise TLSVerificationError(redact(str(exc.__context__ or exc))) from None
        raise TransientError(redact(f"cannot connect to {url}: {exc}")) from None
    except httpx.TimeoutException:
        raise TransientError(redact(f"{url} did not answer within {seconds:g}s")) from None
    except httpx.TransportError as exc:
        raise TransientError(redact(f"network error talking to {url}: {exc}")) from None


def http_get(
    url: str,
    timeout: timedelta,
    verify: ssl.SSLContext | bool,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """GET ``url`` (``http_request``)."""
    return http_request("GET", url, timeout, verify, headers)


class TLSVerificationError(PermanentError):
    """The server's certificate is not trusted (retrying will not fix it)."""


def _is_cert_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return "CERTIFICATE_VERIFY_FAILED" in str(exc)


def json_body(response: httpx.Response) -> Any:
    """The response's JSON document, or None when the body is not a JSON object or array."""
    text = response.text.strip()
    if not text.startswith(("{", "[")):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def excerpt(value: Any, limit: int = EXCERPT_CHARS, *, as_json: bool = False) -> str:
    """A short, redacted rendering of a body or value for a summary: registered secrets
    masked, then cut to ``limit`` characters (a body can carry a token). A string is shown
    as it is unless ``as_json`` (then ``"v3"``, quoted, as a JSON value)."""
    if isinstance(value, str) and not as_json:
        text = value
    else:
        text = json.dumps(redact_data(value), default=str)
    text = redact(" ".join(text.split()))
    return text if len(text) <= limit else text[:limit] + "…"
