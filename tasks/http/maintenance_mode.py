"""The application's maintenance mode (seed 002: ``POST /admin/maintenance`` on, ``DELETE``
off): the inventory's ``maintenance_mode`` call, its headers' references resolved.

``set_maintenance_mode`` is the plain call (the flow's cancellation and crash hooks use it
outside a task); ``switch_maintenance_mode`` is the task. Only a 2xx answer counts: a 429 or
5xx is transient (retried), any other answer is refused with the status and a redacted excerpt
of the body.
"""

from __future__ import annotations

from opsflow.errors import PermanentError, TransientError
from opsflow.inventory import MaintenanceMode
from opsflow.redaction import redact
from tasks.http.client import excerpt, http_request, resolved, tls_verify
from tasks.policy import api_task


def set_maintenance_mode(mode: MaintenanceMode, on: bool) -> str:
    """Turn maintenance mode on or off; returns ``POST https://… → 204``."""
    method = mode.on_method if on else mode.off_method
    url, headers = resolved(mode)
    verify = tls_verify(mode.verify_tls, mode.ca_file)
    response = http_request(method, url, mode.timeout, verify, headers)
    said = f"{method} {redact(mode.url)} → {response.status_code}"
    if 200 <= response.status_code < 300:
        return said
    body = excerpt(response.text)
    what = f"maintenance mode {'on' if on else 'off'}: {said}" + (f": {body}" if body else "")
    if response.status_code == 429 or response.status_code >= 500:
        raise TransientError(what)
    raise PermanentError(
        f"{what} (fix: check maintenance_mode.url, the {method} method and its headers)"
    )


@api_task("switch_maintenance_mode", timeout_seconds=120)
def switch_maintenance_mode(mode: MaintenanceMode, on: bool) -> str:
    """``set_maintenance_mode`` as a task (API_RETRIES: a 503 while the app restarts passes)."""
    return set_maintenance_mode(mode, on)
