"""The building blocks of the inventory's models: the strict base model, the error that lists
every problem, and the field checks shared by many models (URLs, fields that may carry a
credential)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field

from opsflow.errors import InputError
from opsflow.secrets import is_reference

ENV_NAME = re.compile(r"^[a-z][a-z0-9-]{0,39}$")
DEFAULT_INVENTORY = "inventory.yaml"


class InventoryError(InputError):
    """One or more inventory problems; ``problems`` holds each as ``(field, problem, fix)``."""

    def __init__(self, source: str, problems: list[tuple[str, str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [f"{field}: {problem} (fix: {fix})" for field, problem, fix in problems]
        first_field, first_problem, first_fix = problems[0]
        super().__init__(first_field, first_problem, first_fix)
        self.args = (f"invalid inventory {source}:\n  " + "\n  ".join(lines),)

    def __str__(self) -> str:
        return str(self.args[0])


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def check_secret_field(value: str | None, what: str) -> str | None:
    """A field that may carry credentials must be a reference when it embeds a password."""
    if value is None or is_reference(value):
        return value
    parts = urlsplit(value)
    if parts.password:
        raise ValueError(
            f"{what} embeds a password (fix: write it as a reference, "
            "env:VAR_NAME or secret:prefect-block-name)"
        )
    return value


def check_url(value: str, schemes: tuple[str, ...]) -> str:
    parts = urlsplit(value)
    if parts.scheme not in schemes or not (parts.netloc or parts.path):
        allowed = " or ".join(s + "://" for s in schemes)
        raise ValueError(f"{value!r} is not a URL (fix: write a URL starting with {allowed})")
    return value


Duration = Annotated[timedelta, Field(description="e.g. 90s, 15m, 1h, 2d")]
