"""Process settings, read from ``OPSFLOW_*`` environment variables (pydantic-settings)."""

from __future__ import annotations

import getpass
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


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

    def resolved_ledger_url(self) -> str:
        if self.ledger_url:
            return self.ledger_url
        return f"sqlite:///{(self.home / 'ledger.db').resolve()}"

    def resolved_ledger_key_file(self) -> Path:
        return (self.ledger_key_file or self.home / "ledger.key").resolve()


def get_settings() -> Settings:
    return Settings()
