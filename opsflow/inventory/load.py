"""Reading the inventory: ``load_inventory`` reads ``OPSFLOW_INVENTORY`` (default
``./inventory.yaml``), validates it and turns every pydantic error into ``(field, problem,
fix)``."""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, TypeVar

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
from opsflow.strict_yaml import LimitError, load_yaml

DEFAULT_INVENTORY = "inventory.yaml"
MAX_BYTES = 4 * 1024 * 1024
"""An inventory larger than this is refused (a real one is a few kilobytes)."""


def inventory_path() -> Path:
    return Path(os.environ.get("OPSFLOW_INVENTORY", DEFAULT_INVENTORY))


def load_inventory(path: str | Path | None = None) -> Inventory:
    """Read and validate the inventory; raises ``InventoryError`` listing every problem."""
    source = Path(path) if path is not None else inventory_path()
    return parse_inventory(read_inventory_text(source), str(source))


def read_inventory_text(source: Path) -> str:
    """The inventory file as text; a path that is missing, a directory, unreadable, too big
    or not UTF-8 text is an ``InventoryError`` saying so."""
    where = "set OPSFLOW_INVENTORY to the inventory file's path"

    def refuse(problem: str, fix: str) -> InventoryError:
        return InventoryError(str(source), [("inventory", problem, fix)])

    try:
        if source.is_dir():
            raise refuse(f"{source} is a directory, not a file", f"{where} (see docs/inventory.md)")
        with source.open("rb") as handle:
            data = handle.read(MAX_BYTES + 1)
    except FileNotFoundError:
        raise refuse(
            f"file {source} not found", f"create it (see docs/inventory.md) or {where}"
        ) from None
    except OSError as exc:
        raise refuse(
            f"file {source} cannot be read: {exc.strerror or exc}",
            f"check its permissions, or {where}",
        ) from None
    if len(data) > MAX_BYTES:
        raise refuse(
            f"file {source} is larger than {MAX_BYTES // (1024 * 1024)} MiB",
            f"{where}; an inventory is a small YAML text file",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise refuse(
            f"is not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line})",
            "save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`), or point "
            "OPSFLOW_INVENTORY at the YAML file",
        ) from None
    if "\x00" in text:
        raise refuse("holds NUL bytes, so it is not a text file", where)
    return text


def parse_inventory(text: str, source: str = "<inventory>") -> Inventory:
    try:
        data, duplicates = load_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown place"
        problem = getattr(exc, "problem", None)
        what = f": {_shorten(problem)}" if problem else ""
        fix = (
            "write the values out: an inventory needs neither deep nesting nor many aliases"
            if isinstance(exc, LimitError)
            else "fix the YAML there"
        )
        raise InventoryError(
            source, [("inventory", f"is not valid YAML at {where}{what}", fix)]
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
    return validated(Inventory, data, source)


M = TypeVar("M", bound=BaseModel)


def validated(model: type[M], data: Any, source: str) -> M:
    """``model`` validated from ``data``; every problem as an ``InventoryError`` of ``source``
    (also for an inventory model built from a CLI option, e.g. ``--store URL``)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InventoryError(source, [_explain(err, model) for err in exc.errors()]) from None


def _shorten(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _allowed_fields(loc: tuple[Any, ...], root: Any = Inventory) -> list[str]:
    """Field names allowed where ``loc`` points (for 'did you mean' hints)."""
    model: Any = root
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


def _explain(err: Any, root: Any = Inventory) -> tuple[str, str, str]:
    loc = tuple(err["loc"])
    field = _shorten(_format_loc(loc), 200)
    kind = err["type"]
    message = _shorten(err["msg"].removeprefix("Value error, "), 500)
    if kind == "extra_forbidden":
        allowed = _allowed_fields(loc, root)
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
