"""The building blocks of the inventory's models: the strict base model, the error that lists
every problem, and the field checks shared by many models (URLs, and every field that can
carry a credential: ``check_no_credentials``, ``check_headers``)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from opsflow.durations import parse_duration
from opsflow.errors import InputError
from opsflow.secrets import is_reference

ENV_NAME = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
DEFAULT_INVENTORY = "inventory.yaml"
MAX_SHOWN_PROBLEMS = 20
"""An error report lists this many problems, then how many more there are."""

REFERENCE_FIX = "store it in a secret and write env:VAR_NAME or secret:prefect-block-name here"


class InventoryError(InputError):
    """One or more inventory problems; ``problems`` holds each as ``(field, problem, fix)``.

    The message lists the first ``MAX_SHOWN_PROBLEMS`` and then how many more there are, so a
    file with thousands of mistakes still gives a short answer."""

    def __init__(self, source: str, problems: list[tuple[str, str, str]]) -> None:
        self.source = source
        self.problems = problems
        shown = problems[:MAX_SHOWN_PROBLEMS]
        lines = [f"{field}: {problem} (fix: {fix})" for field, problem, fix in shown]
        if len(problems) > len(shown):
            lines.append(f"… and {len(problems) - len(shown)} more")
        first_field, first_problem, first_fix = problems[0]
        super().__init__(first_field, first_problem, first_fix)
        self.args = (f"invalid inventory {source}:\n  " + "\n  ".join(lines),)

    def __str__(self) -> str:
        return str(self.args[0])


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- credentials ------------------------------------------------------------------------------

_SECRET_WORDS = (
    "password",
    "passwd",
    "pwd",
    "pass",
    "secret",
    "token",
    "key",
    "apikey",
    "signature",
    "sig",
    "auth",
    "authorization",
    "credential",
    "credentials",
    "session",
    "cookie",
    "jwt",
    "bearer",
)
_WORD = re.compile(r"[a-z0-9]+")
_DSN_PASSWORD = re.compile(r"(?:^|\s)password\s*=", re.IGNORECASE)
_TOKEN_PATHS: tuple[tuple[str, re.Pattern[str], str], ...] = (
    ("hooks.slack.com", re.compile(r"^/(services|workflows|triggers)/."), "a Slack webhook"),
    ("api.telegram.org", re.compile(r"^/bot[^/]+"), "a Telegram bot token"),
    ("discord.com", re.compile(r"^/api/webhooks/."), "a Discord webhook"),
    ("discordapp.com", re.compile(r"^/api/webhooks/."), "a Discord webhook"),
    ("outlook.office.com", re.compile(r"^/webhook/."), "a Teams webhook"),
    ("chat.googleapis.com", re.compile(r"^/v1/spaces/."), "a Google Chat webhook"),
    ("events.pagerduty.com", re.compile(r"^/integration/."), "a PagerDuty integration key"),
)


def secret_like(name: str) -> bool:
    """A parameter or header name that says it carries a credential: ``password``,
    ``access_token``, ``X-Api-Key``, ``sig``, ``client_secret``, ``AWSAccessKeyId``…"""
    lowered = name.lower()
    words = _WORD.findall(lowered)
    if any(word in _SECRET_WORDS for word in words):
        return True
    squashed = "".join(words)
    return any(squashed.endswith(w) for w in ("password", "secret", "token", "apikey", "keyid"))


def credential_in(value: str, *, userinfo: Literal["password", "any"] = "password") -> str | None:
    """What in ``value`` is a literal credential (a sentence naming it), or None.

    Looks for a password (or, with ``userinfo="any"``, any user name) in a URL's userinfo, a
    query parameter named like a secret, the token part of a known webhook path (Slack,
    Telegram, Discord, Teams, Google Chat, PagerDuty) and ``password=`` in a ``key=value``
    DSN. The value itself is never part of the answer."""
    if "://" not in value:
        if _DSN_PASSWORD.search(value):
            return "holds a literal password (password=…)"
        return None
    try:
        parts = urlsplit(value)
        _port = parts.port  # a garbled port is a URL problem, found by check_url
    except ValueError:
        parts = urlsplit(value.replace("[", "%5B").replace("]", "%5D"))
    if parts.password:
        return "embeds a password in the URL (user:password@…)"
    if userinfo == "any" and parts.username:
        return "embeds credentials in the URL (…@host)"
    names = sorted({name for name, _ in parse_qsl(parts.query, keep_blank_values=True)})
    secret_names = [name for name in names if secret_like(name)]
    if secret_names:
        return f"carries a credential in its query ({', '.join(secret_names)}=…)"
    host = (parts.hostname or "").lower()
    for domain, path, what in _TOKEN_PATHS:
        if (host == domain or host.endswith("." + domain)) and path.search(unquote(parts.path)):
            return f"is {what} URL, whose path is itself the secret"
    return None


def check_no_credentials(
    value: str | None,
    what: str,
    *,
    references: bool = True,
    userinfo: Literal["password", "any"] = "password",
) -> str | None:
    """A field that can carry a credential: refuse a literal one (``credential_in``) with the
    fix of a reference; ``references=True`` lets the field be ``env:`` / ``secret:`` itself."""
    if value is None:
        return None
    if is_reference(value):
        if references:
            return value
        raise ValueError(
            f"{what} cannot be a reference (fix: write the value itself; credentials for it "
            "come from the environment, e.g. AWS_* variables or ~/.aws for S3)"
        )
    found = credential_in(value, userinfo=userinfo)
    if found:
        fix = REFERENCE_FIX if references else "remove the credential from the URL"
        if not references and what.startswith("the store"):
            fix += "; S3 credentials come from boto3's chain (AWS_* variables, ~/.aws, a role)"
        raise ValueError(f"{what} {found} (fix: {fix})")
    return value


def check_secret_field(value: str | None, what: str) -> str | None:
    """A field that may hold credentials (a DSN, a Redis URL): a reference, or a value with no
    literal credential in it."""
    return check_no_credentials(value, what)


def check_headers(headers: dict[str, str]) -> dict[str, str]:
    """HTTP headers: a header named like a credential (``Authorization``, ``Cookie``,
    ``X-Api-Key``, ``X-Auth-Token``…) must be a reference; any value may be one."""
    for name, value in headers.items():
        if not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", name):
            raise ValueError(f"header name {name!r} is not valid (fix: e.g. X-Request-Source)")
        if is_reference(value):
            continue
        if "\n" in value or "\r" in value:
            raise ValueError(f"header {name} has a line break (fix: write it on one line)")
        if secret_like(name) or value.lower().startswith(("bearer ", "basic ", "token ")):
            raise ValueError(f"header {name} holds a literal credential (fix: {REFERENCE_FIX})")
    return headers


def check_url(value: str, schemes: tuple[str, ...], *, references: bool = False) -> str:
    """A URL with one of ``schemes`` (or, with ``references``, an ``env:`` / ``secret:``
    reference to one, resolved when it is used)."""
    if references and is_reference(value):
        return value
    try:
        parts = urlsplit(value)
        _port = parts.port
    except ValueError as exc:
        raise ValueError(f"is not a valid URL: {exc} (fix: correct the URL)") from None
    if parts.scheme not in schemes or not (parts.netloc or parts.path):
        allowed = " or ".join(s + "://" for s in schemes)
        also = ", or a reference env:VAR / secret:NAME" if references else ""
        # the value itself is not shown: a pasted token is not a URL either
        found = f"a {parts.scheme}:// URL" if parts.scheme and "://" in value else "not a URL"
        raise ValueError(f"is {found} (fix: write a URL starting with {allowed}{also})")
    return value


Duration = Annotated[timedelta, Field(description="e.g. 90s, 15m, 1h, 2d")]


def positive_duration(value: Any) -> timedelta:
    """A duration that must be longer than zero (a timeout, a window)."""
    parsed = parse_duration(value)
    if parsed.total_seconds() <= 0:
        raise ValueError("must be longer than zero (fix: write e.g. 90s, 15m, 1h or 2d)")
    return parsed


PositiveDuration = Annotated[timedelta, BeforeValidator(positive_duration)]
"""A duration field that must be longer than zero (``positive_duration``)."""
