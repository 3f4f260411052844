"""An application's API keys through its own endpoints (``ApiKeyEndpoints``): create a new
key (the old one stays valid), check a key, revoke a key by its id. The admin credential is
in ``api.headers`` (references, resolved here); a key travels as a ``SecretValue`` and in the
``api.header`` request header only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from opsflow.errors import PermanentError, TransientError
from opsflow.inventory import ApiKeyEndpoints
from opsflow.rotation import SecretValue
from opsflow.secrets import resolve
from tasks.http.client import excerpt, http_request, json_body
from tasks.policy import api_task, probe_task


@dataclass(frozen=True)
class NewKey:
    """A key ``create_api_key`` made: the key itself and its id (no secret)."""

    key: SecretValue
    key_id: str


def _headers(api: ApiKeyEndpoints) -> dict[str, str]:
    return {k: resolve(v, field=f"api.headers.{k}") for k, v in api.headers.items()}


def _call(
    api: ApiKeyEndpoints, method: str, url: str, headers: dict[str, str], what: str
) -> httpx.Response:
    response = http_request(method, url, api.timeout, True, headers=headers)
    if response.status_code >= 500 or response.status_code in (408, 429):
        raise TransientError(f"{what}: {url} answered {response.status_code}")
    return response


def _refused(what: str, url: str, response: httpx.Response) -> PermanentError:
    body = excerpt(response.text)
    return PermanentError(
        f"{what}: {url} answered {response.status_code}: {body or '(empty)'} (fix: check "
        "api.headers, the admin credential, and the endpoint)"
    )


@api_task("create_api_key", timeout_seconds=60)
def create_api_key(api: ApiKeyEndpoints) -> NewKey:
    """POST ``api.create``; the JSON answer's ``key_field`` is the new key (registered for
    redaction at once) and ``id_field`` its id. (An answer lost on the way, e.g. a timeout,
    may leave a key the application made and nobody holds: its key list shows it.)"""
    url = resolve(api.create, field="api.create")
    what = "create an API key"
    response = _call(api, "POST", url, _headers(api), what)
    if not 200 <= response.status_code < 300:
        raise _refused(what, url, response)
    document: Any = json_body(response)
    key = document.get(api.key_field) if isinstance(document, dict) else None
    key_id = document.get(api.id_field) if isinstance(document, dict) else None
    if not isinstance(key, str) or not key:
        raise PermanentError(
            f"{what}: {url} answered without a string {api.key_field!r} (fix: set api.key_field "
            "to the field holding the new key)"
        )
    secret = SecretValue(key)
    if key_id is None or str(key_id) == "" or ":" in str(key_id):
        raise PermanentError(
            f"{what}: {url} answered without a usable {api.id_field!r} (an id without ':'; "
            "fix: set api.id_field to the field holding the new key's id; the key it made "
            "is not used: revoke it in the application)"
        )
    return NewKey(secret, str(key_id))


@api_task("revoke_api_key", timeout_seconds=60)
def revoke_api_key(api: ApiKeyEndpoints, key_id: str) -> str:
    """``api.revoke_method`` ``api.revoke`` with ``{id}`` = ``key_id``; 2xx, or 404 (gone
    already: idempotent)."""
    template = resolve(api.revoke, field="api.revoke")
    url = template.replace("{id}", quote(key_id, safe=""))
    what = f"revoke API key {key_id}"
    response = _call(api, api.revoke_method, url, _headers(api), what)
    if response.status_code == 404:
        return f"API key {key_id}: gone already ({url} answered 404)"
    if not 200 <= response.status_code < 300:
        raise _refused(what, url, response)
    return f"API key {key_id} revoked"


@probe_task("check_api_key", timeout_seconds=30)
def check_api_key(api: ApiKeyEndpoints, key: SecretValue) -> str:
    """GET ``api.verify`` with ``key`` in ``api.header``: 2xx, else ``PermanentError``."""
    url = resolve(api.verify, field="api.verify")
    what = "check an API key"
    response = _call(api, "GET", url, {api.header: key.reveal()}, what)
    if not 200 <= response.status_code < 300:
        raise PermanentError(
            f"{what}: {url} answered {response.status_code} to the key (fix: check that the "
            "application accepts it)"
        )
    return f"{url} accepted the key"
