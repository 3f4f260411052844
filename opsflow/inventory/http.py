"""What is fetched over HTTP(S), as the inventory says it: the base of endpoints, smoke
tests, metrics sources and the maintenance benchmark probe."""

from __future__ import annotations

from pydantic import Field, field_validator

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
