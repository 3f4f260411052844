"""Notifications: webhooks (JSON POST) and Prefect notification blocks.

An inventory ``notify`` entry is either ``{webhook: URL | env:VAR | secret:NAME}`` or
``{block: "<block-type-slug>/<block-name>"}`` (e.g. ``slack-webhook/ops``,
``custom-webhook/pager``): any Prefect notification block saved on the server.

Subject and body are redacted before they leave the process. Delivery goes to every target; a
target that fails makes the task raise after the others were tried (transient when every
failure is transient, so Prefect retries; note that a retry notifies the other targets again).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import httpx

from opsflow.errors import (
    OpsflowError,
    PermanentError,
    TransientError,
)
from opsflow.inventory import Notify
from opsflow.redaction import redact
from opsflow.secrets import is_reference, resolve
from tasks.policy import api_task

WEBHOOK_TIMEOUT = 10.0


def _field(index: int, key: str, env: str | None) -> str:
    prefix = f"environments.{env}.notify" if env else "notify"
    return f"{prefix}[{index}].{key}"


def describe_webhook(reference: str) -> str:
    """What may be shown of a webhook: the reference, or only scheme and host of a literal URL
    (the path of e.g. a Slack webhook is itself a secret)."""
    if is_reference(reference):
        return reference
    parts = urlsplit(reference)
    return f"{parts.scheme}://{parts.hostname}/***"


def post_webhook(url: str, payload: dict[str, Any], shown: str) -> None:
    """POST ``payload`` as JSON; 5xx/network -> ``TransientError``, 4xx -> ``PermanentError``."""
    try:
        response = httpx.post(url, json=payload, timeout=WEBHOOK_TIMEOUT)
    except httpx.TimeoutException:
        raise TransientError(
            f"webhook {shown} did not answer within {WEBHOOK_TIMEOUT:g}s"
        ) from None
    except httpx.HTTPError as exc:
        raise TransientError(redact(f"cannot reach webhook {shown}: {exc}")) from None
    code = response.status_code
    if code >= 500 or code in (408, 409, 429):
        raise TransientError(f"webhook {shown} answered HTTP {code}")
    if code >= 400:
        raise PermanentError(
            f"webhook {shown} refused the message with HTTP {code} "
            "(fix: check the webhook URL and that it accepts JSON POSTs)"
        )


def notify_block(reference: str, subject: str, body: str, field: str) -> None:
    """Load the Prefect block ``<type-slug>/<name>`` and call its ``notify``."""
    from prefect.blocks.abstract import NotificationError
    from prefect.blocks.core import Block

    if "/" not in reference:
        raise PermanentError(
            f"{field}: {reference!r} does not name the block type (fix: write "
            f"<block-type-slug>/<block-name>, e.g. slack-webhook/{reference})"
        )
    try:
        block = Block.load(reference, _sync=True)  # type: ignore[call-arg]
    except (ValueError, KeyError) as exc:
        raise PermanentError(
            f"{field}: Prefect block {reference!r} does not exist ({exc}) (fix: create it in "
            "the UI under Blocks, or in Python with e.g. "
            "`SlackWebhook(url=...).save('<name>')`, then use <block-type-slug>/<name>)"
        ) from None
    except httpx.HTTPError as exc:
        raise TransientError(f"cannot reach the Prefect API to load {reference!r}: {exc}") from None
    notify = getattr(block, "notify", None)
    if notify is None or not hasattr(block, "raise_on_failure"):
        raise PermanentError(
            f"{field}: block {reference!r} is a {type(block).__name__}, not a notification "
            "block (fix: point it at a Slack/Teams/email/custom-webhook block)"
        )
    try:
        with block.raise_on_failure():
            notify(body, subject, _sync=True)
    except httpx.HTTPStatusError as exc:
        code = exc.response.status_code
        error = TransientError if code >= 500 or code in (408, 409, 429) else PermanentError
        raise error(f"block {reference!r}: the service answered HTTP {code}") from None
    except httpx.HTTPError as exc:
        raise TransientError(redact(f"block {reference!r}: cannot deliver: {exc}")) from None
    except NotificationError as exc:
        raise TransientError(
            redact(f"block {reference!r}: delivery failed: {exc.log.strip()[-500:]}")
        ) from None


@api_task("send_notification", timeout_seconds=60)
def send_notification(
    targets: list[Notify], subject: str, body: str, env: str | None = None
) -> list[str]:
    """Send ``subject``/``body`` (redacted first) to every target; return what was delivered.

    ``env`` only names the inventory field in error messages.
    """
    subject, body = redact(subject), redact(body)
    delivered: list[str] = []
    failures: list[OpsflowError] = []
    for index, target in enumerate(targets):
        try:
            if target.webhook is not None:
                shown = describe_webhook(target.webhook)
                url = resolve(target.webhook, field=_field(index, "webhook", env))
                payload = {"subject": subject, "body": body, "text": f"{subject}\n\n{body}"}
                post_webhook(url, payload, shown)
                delivered.append(f"webhook {shown}")
            elif target.block is not None:
                notify_block(target.block, subject, body, _field(index, "block", env))
                delivered.append(f"block {target.block}")
        except OpsflowError as exc:
            failures.append(exc)
    if failures:
        done = ", ".join(delivered) or "nothing"
        text = redact("; ".join(str(f) for f in failures) + f" (delivered: {done})")
        if all(isinstance(f, TransientError) for f in failures):
            raise TransientError(text)
        raise PermanentError(text)
    return [redact(item) for item in delivered]
