"""The status-page webhook of an incident (``incident.status_page``): one JSON request (POST by
default) through ``tasks.http.client``, its URL and headers' references resolved. Only a 2xx
answer counts: a 429 or 5xx is transient (retried), any other answer is refused with the status
and a redacted excerpt of the body."""

from __future__ import annotations

import json
from typing import Any

from opsflow.errors import PermanentError, TransientError
from opsflow.inventory.incident import StatusPage
from opsflow.redaction import redact, redact_data
from tasks.http.client import excerpt, http_request, resolved, tls_verify
from tasks.policy import api_task


def post_status(page: StatusPage, payload: dict[str, Any]) -> str:
    """Send ``payload`` (redacted) as JSON; returns ``POST https://… → 201``."""
    url, headers = resolved(page)
    body = json.dumps(redact_data(payload), default=str)
    response = http_request(
        page.method,
        url,
        page.timeout,
        tls_verify(True, None),
        {"Content-Type": "application/json", **headers},
        body,
    )
    said = f"{page.method} {redact(page.url)} → {response.status_code}"
    if 200 <= response.status_code < 300:
        return said
    what = f"status page: {said}: {excerpt(response.text)}"
    if response.status_code == 429 or response.status_code >= 500:
        raise TransientError(what)
    raise PermanentError(f"{what} (fix: check incident.status_page.url, method and headers)")


@api_task("post_status_page", timeout_seconds=60)
def post_status_page(page: StatusPage, payload: dict[str, Any]) -> str:
    """``post_status`` as a task (API_RETRIES)."""
    return post_status(page, payload)
