"""Secret references: ``secret:NAME`` (a Prefect Secret block) and ``env:VAR``.

The inventory stores references, never values. ``resolve`` turns a reference into its value
at the last moment and registers the value for redaction. A missing secret is an
``InputError`` naming the field and the fix; the value itself never appears in a message.
"""

from __future__ import annotations

import os

from opsflow.errors import InputError
from opsflow.redaction import register_secret

SECRET_PREFIX = "secret:"
ENV_PREFIX = "env:"


def is_reference(value: str) -> bool:
    return value.startswith((SECRET_PREFIX, ENV_PREFIX))


def describe(value: str) -> str:
    """What may be shown of a possibly-secret value: the reference itself, or a mask."""
    return value if is_reference(value) else "***"


def resolve(value: str, field: str) -> str:
    """Resolve a reference (or return a literal unchanged). ``field`` names it in errors."""
    if value.startswith(ENV_PREFIX):
        var = value[len(ENV_PREFIX) :]
        resolved = os.environ.get(var)
        if resolved is None or resolved == "":
            raise InputError(
                field,
                f"environment variable {var} is not set",
                f"export {var}=... in the environment of the process running the flow "
                "(the worker or `opsflow up`)",
            )
        register_secret(resolved)
        return resolved
    if value.startswith(SECRET_PREFIX):
        name = value[len(SECRET_PREFIX) :]
        resolved = _load_prefect_secret(name, field)
        register_secret(resolved)
        return resolved
    return value


def _load_prefect_secret(name: str, field: str) -> str:
    from prefect.blocks.system import Secret

    try:
        block = Secret.load(name, _sync=True)  # type: ignore[call-arg]
    except ValueError as exc:
        raise InputError(
            field,
            f"Prefect Secret block {name!r} does not exist",
            f"create it in the UI (Blocks > Secret) or run "
            f'`python -c "from prefect.blocks.system import Secret; '
            f"Secret(value='...').save('{name}')\"`",
        ) from exc
    value = block.get()  # type: ignore[union-attr]
    if not isinstance(value, str):
        value = str(value)
    return value
