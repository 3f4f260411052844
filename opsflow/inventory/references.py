"""The secret references of an environment, and the check that each one resolves.

``references(env_name, env)`` finds every ``env:VAR`` / ``secret:NAME`` value in an
environment, with the inventory path of the field that holds it. ``check_references`` resolves
them all (which also registers each value for redaction) and raises one ``InventoryError``
listing every reference that does not resolve: a runbook calls it before its first side effect
and before its first ledger row, so a missing variable or Secret block is bad input (exit 2)
rather than a failed step half-way through a run.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel

from opsflow.errors import InputError
from opsflow.inventory.fields import InventoryError
from opsflow.inventory.models import Environment
from opsflow.secrets import is_reference, resolve


def references(env_name: str, env: Environment) -> list[tuple[str, str]]:
    """``(field path, reference)`` of every reference in ``env``, in the order of its fields."""
    return list(_walk(env, f"environments.{env_name}"))


def _walk(value: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        if is_reference(value):
            yield path, value
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            yield from _walk(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _walk(item, f"{path}.{key}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _walk(item, f"{path}[{index}]")


def check_references(env_name: str, env: Environment) -> None:
    """Resolve every reference of ``env``; ``InventoryError`` listing each that does not."""
    problems: list[tuple[str, str, str]] = []
    for field, reference in references(env_name, env):
        try:
            resolve(reference, field)
        except InputError as exc:
            problems.append((exc.field, exc.problem, exc.fix))
    if problems:
        raise InventoryError(
            f"(environment {env_name}: references that do not resolve here)", problems
        )
