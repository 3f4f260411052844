"""Calls to the Prefect server's REST API from tests, retried as Prefect's own client retries
them: a 429, 502 or 503 (the SQLite-backed server answers 503 while its database is busy on a
loaded machine) is tried again with backoff; any other answer is returned as it is."""

from __future__ import annotations

import time
from typing import Any

import httpx

RETRY_STATUSES = frozenset({429, 502, 503})
ATTEMPTS = 6


def api_request(method: str, url: str, **kwargs: Any) -> httpx.Response:
    kwargs.setdefault("timeout", 30)
    for attempt in range(ATTEMPTS):
        response = httpx.request(method, url, **kwargs)
        if response.status_code not in RETRY_STATUSES or attempt == ATTEMPTS - 1:
            return response
        time.sleep(min(0.5 * 2**attempt, 8))
    raise AssertionError("unreachable")


def api_get(url: str, **kwargs: Any) -> httpx.Response:
    return api_request("GET", url, **kwargs)


def api_post(url: str, **kwargs: Any) -> httpx.Response:
    return api_request("POST", url, **kwargs)


def wait_until_served(api: str, deployment: str, timeout: float = 180) -> dict[str, Any]:
    """The deployment ``flow/name`` once a runner serves it (status READY)."""
    deadline = time.monotonic() + timeout
    while True:
        found = api_get(f"{api}/deployments/name/{deployment}", timeout=10)
        if found.status_code == 200 and found.json().get("status") == "READY":
            return dict(found.json())
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {deployment} to be served")
        time.sleep(0.1)
