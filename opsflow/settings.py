"""Process settings, read from ``OPSFLOW_*`` environment variables (pydantic-settings).

A bad value is bad input: ``get_settings`` raises ``InputError`` naming the variable
(``OPSFLOW_LEDGER_TIMEOUT``), what is wrong with it and the fix, never pydantic's report."""

from __future__ import annotations

import getpass
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from opsflow.errors import InputError
from opsflow.secrets import is_reference

PREFIX = "OPSFLOW_"
MIN_TOKEN_CHARS = 16


def _default_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="OPSFLOW_", extra="ignore")

    home: Path = Field(Path(".opsflow"), description="state directory (ledger, backups, server)")
    inventory: Path = Field(Path("inventory.yaml"), description="inventory file")
    ledger_url: str | None = Field(None, description="SQLAlchemy URL; default SQLite in home")
    ledger_key: str | None = Field(
        None,
        description="the ledger's HMAC key as a secret reference (env:VAR or secret:NAME); "
        "unset: the key file (ledger_key_file)",
    )
    ledger_key_file: Path | None = Field(
        None, description="key file used when ledger_key is unset; default <home>/ledger.key"
    )
    ledger_timeout: float = Field(
        30.0,
        gt=0,
        description="seconds to wait for a locked or unreachable ledger before failing",
    )
    user: str = Field(
        default_factory=_default_user,
        description="who you are: the requester of the runs you start (default: login name)",
    )
    approver_secret: SecretStr | None = Field(
        None,
        description="your own TOTP secret (base32): `opsflow approve/reject` makes the "
        "one-time code from it instead of asking for one",
    )
    lock_lease_seconds: float = Field(
        120.0,
        ge=60.0,
        le=86400.0,
        description="lease of an environment lock, renewed while the run lives: how long a "
        "killed run keeps its environment locked (Prefect's minimum is 60 s)",
    )

    retry_delay_scale: float = Field(
        1.0,
        gt=0,
        le=1,
        description="multiplies every task retry delay (opsflow.errors): below 1 for test "
        "and drill environments whose faults are injected, 1 in production",
    )

    runner_poll_seconds: float = Field(
        0.5,
        ge=0.1,
        le=60.0,
        description="how often `opsflow up` asks the server for runs to start (on average a "
        "run starts half of this after it was created)",
    )

    receiver_token: SecretStr | None = Field(
        None,
        description="the bearer token Alertmanager sends to the receiver: the token itself "
        f"(at least {MIN_TOKEN_CHARS} characters) or a reference, env:VAR or secret:NAME; unset: "
        "`opsflow up` runs no receiver",
    )
    receiver_host: str = Field("127.0.0.1", description="address the receiver listens on")
    receiver_port: int = Field(4280, ge=1, le=65535, description="port of the receiver")

    @field_validator("receiver_token")
    @classmethod
    def _receiver_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None
        text = value.get_secret_value()
        if not is_reference(text) and len(text) < MIN_TOKEN_CHARS:
            raise ValueError(
                f"is shorter than {MIN_TOKEN_CHARS} characters (fix: use a long random token, "
                "e.g. `openssl rand -hex 32`, or a reference env:VAR / secret:NAME)"
            )
        return value

    def resolved_receiver_token(self) -> str | None:
        """The receiver's token (a reference resolved now), registered for redaction."""
        if self.receiver_token is None:
            return None
        from opsflow.redaction import register_secret
        from opsflow.secrets import resolve

        token = resolve(self.receiver_token.get_secret_value(), "OPSFLOW_RECEIVER_TOKEN")
        register_secret(token)
        return token

    @field_validator("home")
    @classmethod
    def _home(cls, value: Path) -> Path:
        if value.exists() and not value.is_dir():
            raise ValueError(
                f"{value} is a file, not a directory (fix: point it at a directory opsflow "
                "may create and write, e.g. ~/.opsflow)"
            )
        return value

    @field_validator("ledger_url")
    @classmethod
    def _ledger_url(cls, value: str | None) -> str | None:
        if not value:
            return None
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        fix = "write sqlite:////absolute/path/ledger.db or postgresql+psycopg://user@host/db"
        try:
            backend = make_url(value).get_backend_name()
        except (ArgumentError, ValueError):
            raise ValueError(f"is not a database URL (fix: {fix})") from None
        if backend not in ("sqlite", "postgresql"):
            raise ValueError(f"a {backend} ledger is not supported (fix: {fix})")
        return value

    @field_validator("ledger_key")
    @classmethod
    def _ledger_key(cls, value: str | None) -> str | None:
        if value and not is_reference(value):
            raise ValueError(
                "holds a literal key (fix: write a reference, env:VAR_NAME or "
                "secret:prefect-block-name, or leave it unset to use the key file)"
            )
        return value or None

    @field_validator("ledger_key_file")
    @classmethod
    def _key_file(cls, value: Path | None) -> Path | None:
        if value is not None and value.is_dir():
            raise ValueError(f"{value} is a directory (fix: name the key file itself)")
        return value

    def resolved_ledger_url(self) -> str:
        if self.ledger_url:
            return self.ledger_url
        return f"sqlite:///{(self.home / 'ledger.db').resolve()}"

    def resolved_ledger_key_file(self) -> Path:
        return (self.ledger_key_file or self.home / "ledger.key").resolve()


def get_settings() -> Settings:
    """The settings; a bad ``OPSFLOW_*`` value is an ``InputError`` naming the variable."""
    try:
        return Settings()
    except ValidationError as exc:
        raise _bad_setting(exc) from None


def _bad_setting(exc: ValidationError) -> InputError:
    problems = [_explain(err) for err in exc.errors()]
    names = ", ".join(name for name, _ in problems)
    detail = "; ".join(f"{name}: {problem}" for name, problem in problems[1:])
    first, problem = problems[0]
    if "(fix:" in problem:
        problem, fix = problem.split("(fix:", 1)
        fix = fix.rstrip(")").strip()
    else:
        fix = f"correct or unset {names} (see Configuration in README.md)"
    if detail:
        fix += f"; also {detail}"
    return InputError(first, problem.strip(), fix)


def _explain(err: Any) -> tuple[str, str]:
    name = PREFIX + "_".join(str(part) for part in err["loc"]).upper()
    message = str(err["msg"]).removeprefix("Value error, ")
    if not message.startswith(("is ", "a ", "holds ")) and "(fix:" not in message:
        value = str(err.get("input", ""))
        shown = value if len(value) <= 60 else value[:60] + "…"
        message = f"{message.lower()} (got {shown!r})"
    return name, message
