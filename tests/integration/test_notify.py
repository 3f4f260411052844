"""send_notification to a real webhook receiver and through real Prefect blocks."""

from __future__ import annotations

import uuid

import pytest

from opsflow.errors import PermanentError, TransientError
from opsflow.inventory import Notify
from opsflow.redaction import register_secret
from tasks.notify import send_notification
from tests.fixtures.http_targets import WebhookReceiver

pytestmark = pytest.mark.integration


def test_webhook_receives_json(webhook_receiver: WebhookReceiver) -> None:
    delivered = send_notification.fn(
        [Notify(webhook=webhook_receiver.url)], "Deploy done", "web is on 1.4.2"
    )
    assert delivered == ["webhook http://127.0.0.1/***"]
    assert len(webhook_receiver.received) == 1
    got = webhook_receiver.received[0]
    assert got["path"] == "/hook"
    assert got["headers"]["Content-Type"] == "application/json"
    assert got["body"] == {
        "subject": "Deploy done",
        "body": "web is on 1.4.2",
        "text": "Deploy done\n\nweb is on 1.4.2",
    }


def test_webhook_from_env_reference_and_redacted_body(
    webhook_receiver: WebhookReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPS_TEST_WEBHOOK", webhook_receiver.url)
    register_secret("hunter2-prod-password")
    delivered = send_notification.fn(
        [Notify(webhook="env:OPS_TEST_WEBHOOK")],
        "db password=abc123 rotated",
        "connect with postgres://app:hunter2-prod-password@db/app",
    )
    assert delivered == ["webhook env:OPS_TEST_WEBHOOK"]
    body = webhook_receiver.received[0]["body"]
    assert body["subject"] == "db password=*** rotated"
    assert body["body"] == "connect with postgres://app:***@db/app"
    assert "hunter2" not in str(webhook_receiver.received)


def test_missing_env_reference_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPS_TEST_NO_SUCH_HOOK", raising=False)
    with pytest.raises(PermanentError, match=r"environments\.prod\.notify\[0\]\.webhook"):
        send_notification.fn([Notify(webhook="env:OPS_TEST_NO_SUCH_HOOK")], "s", "b", env="prod")


def test_webhook_5xx_is_transient_4xx_is_permanent(webhook_receiver: WebhookReceiver) -> None:
    webhook_receiver.status = 503
    with pytest.raises(TransientError, match="HTTP 503"):
        send_notification.fn([Notify(webhook=webhook_receiver.url)], "s", "b")
    webhook_receiver.status = 404
    with pytest.raises(PermanentError, match="HTTP 404"):
        send_notification.fn([Notify(webhook=webhook_receiver.url)], "s", "b")
    assert len(webhook_receiver.received) == 2


def test_unreachable_webhook_is_transient_and_others_still_get_it(
    webhook_receiver: WebhookReceiver, refused_http_url: str
) -> None:
    targets = [Notify(webhook=refused_http_url), Notify(webhook=webhook_receiver.url)]
    with pytest.raises(TransientError, match=r"delivered: webhook http://127\.0\.0\.1/\*\*\*"):
        send_notification.fn(targets, "s", "b")
    assert len(webhook_receiver.received) == 1


def test_block_without_type_slug_is_permanent() -> None:
    with pytest.raises(PermanentError, match="slack-webhook/slack-ops"):
        send_notification.fn([Notify(block="slack-ops")], "s", "b")


def test_prefect_block_delivers_and_missing_block_is_permanent(
    prefect_api: str, webhook_receiver: WebhookReceiver
) -> None:
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    name = f"ops-{uuid.uuid4().hex[:8]}"
    CustomWebhookNotificationBlock(
        name="opsflow-test",
        url=webhook_receiver.url,
        json_data={"title": "{{subject}}", "message": "{{body}}"},
    ).save(name, _sync=True)  # type: ignore[call-arg]
    delivered = send_notification.fn(
        [Notify(block=f"custom-webhook/{name}")], "Backup failed", "token=abcd1234 expired"
    )
    assert delivered == [f"block custom-webhook/{name}"]
    assert webhook_receiver.received[0]["body"] == {
        "title": "Backup failed",
        "message": "token=*** expired",
    }
    with pytest.raises(PermanentError, match=r"notify\[0\]\.block.*does not exist") as info:
        send_notification.fn([Notify(block="custom-webhook/no-such-block")], "s", "b")
    assert "create it in the UI under Blocks" in str(info.value)
