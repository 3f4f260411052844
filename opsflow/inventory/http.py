"""What is fetched or sent over HTTP(S), as the inventory says it: the base of endpoints,
smoke tests, metrics sources and the maintenance benchmark probe, and notify targets."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from opsflow.inventory.fields import Model, check_headers, check_no_credentials, check_url


class HttpTarget(Model):
    """What is fetched over HTTP(S): a URL (or a reference to one, when the URL is a secret)
    and request headers (a credential among them as a reference)."""

    name: str
    url: str
    headers: dict[str, str] = Field(
        default_factory=dict,
        description="request headers; a credential (Authorization, X-Api-Key…) as env:/secret:",
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        check_no_credentials(value, "the URL")
        return check_url(value, ("http", "https"), references=True)

    @field_validator("headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        return check_headers(value)


class Notify(Model):
    block: str | None = Field(None, description="name of a Prefect notification block")
    webhook: str | None = Field(None, description="webhook URL reference (env:/secret:) or URL")

    @field_validator("webhook")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        if value is None:
            return None
        check_no_credentials(value, "the webhook URL", userinfo="any")
        return check_url(value, ("http", "https"), references=True)

    @model_validator(mode="after")
    def _one(self) -> Notify:
        if (self.block is None) == (self.webhook is None):
            raise ValueError(
                "a notify target needs exactly one of `block` or `webhook` (fix: keep one of them)"
            )
        return self
