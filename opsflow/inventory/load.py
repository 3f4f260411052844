"""Reading the inventory: ``load_inventory`` reads ``OPSFLOW_INVENTORY`` (default
``./inventory.yaml``), validates it and turns every pydantic error into ``(field, problem,
fix)``."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from opsflow.inventory.fields import InventoryError
from opsflow.inventory.models import (
    DirectAccess,
    DockerExecAccess,
    Environment,
    Inventory,
    KubectlExecAccess,
)
from opsflow.strict_yaml import load_yaml

DEFAULT_INVENTORY = "inventory.yaml"


def inventory_path() -> Path:
    return Path(os.environ.get("OPSFLOW_INVENTORY", DEFAULT_INVENTORY))


def load_inventory(path: str | Path | None = None) -> Inventory:
    """Read and validate the inventory; raises ``InventoryError`` listing every problem."""
    source = Path(path) if path is not None else inventory_path()
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InventoryError(
            str(source),
            [
                (
                    "inventory",
                    f"file {source} not found",
                    "create it (see docs/inventory.md) or set OPSFLOW_INVENTORY to its path",
                )
            ],
        ) from None
    return parse_inventory(text, str(source))


def parse_inventory(text: str, source: str = "<inventory>") -> Inventory:
    try:
        data, duplicates = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown place"
        raise InventoryError(
            source, [("inventory", f"is not valid YAML at {where}", "fix the YAML syntax there")]
        ) from None
    if duplicates:
        raise InventoryError(source, duplicates)
    if not isinstance(data, dict):
        raise InventoryError(
            source,
            [
                (
                    "inventory",
                    "must be a mapping with an `environments` key",
                    "start the file with `environments:`",
                )
            ],
        )
    try:
        return Inventory.model_validate(data)
    except ValidationError as exc:
        raise InventoryError(source, [_explain(err) for err in exc.errors()]) from None


def _allowed_fields(loc: tuple[Any, ...]) -> list[str]:
    """Field names allowed where ``loc`` points (for 'did you mean' hints)."""
    model: Any = Inventory
    parts = [p for p in loc[:-1] if not isinstance(p, int)]
    i = 0
    while i < len(parts) and model is not None:
        part = parts[i]
        if model is Inventory and part == "environments":
            model, i = Environment, i + 2  # the next part is the environment's name
            continue
        if isinstance(part, str) and part.startswith("via:"):
            model = {
                "via:direct": DirectAccess,
                "via:docker_exec": DockerExecAccess,
                "via:kubectl_exec": KubectlExecAccess,
            }[part]
        else:
            field = model.model_fields.get(part)
            model = _model_in(field.annotation) if field else None
        i += 1
    return sorted(model.model_fields) if model is not None else []


def _model_in(annotation: Any) -> Any:
    args = getattr(annotation, "__args__", None)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in args or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _format_loc(loc: tuple[Any, ...]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        elif isinstance(part, str) and part.startswith("via:"):
            continue
        else:
            text += f".{part}" if text else str(part)
    return text or "inventory"


def _explain(err: Any) -> tuple[str, str, str]:
    loc = tuple(err["loc"])
    field = _format_loc(loc)
    kind = err["type"]
    message = err["msg"].removeprefix("Value error, ")
    if kind == "extra_forbidden":
        allowed = _allowed_fields(loc)
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        return field, "unknown field", f"{hint}remove it or use one of: {', '.join(allowed)}"
    if kind == "too_short":
        return field, "must not be empty", f"list at least one entry under `{loc[-1]}`"
    if kind == "missing":
        return field, "is required but missing", f"add `{loc[-1]}` here (see docs/inventory.md)"
    if "(fix:" in message:
        problem, fix = message.split("(fix:", 1)
        return field, problem.strip(), fix.rstrip(")").strip()
    if kind in {"literal_error", "enum"}:
        return field, message.lower(), "use one of the values listed"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        value = err.get("input")
        shown = type(value).__name__ if value is not None else "null"
        return field, f"{message.lower()} (got {shown})", "change the value to the expected type"
    return field, message, "correct the value (see docs/inventory.md)"
