"""The consoles the ``opsflow`` command prints through: rich ``Console`` objects that redact
every string before rich renders it (markup, table cells and titles, JSON), so no command can
print a secret, whatever it passes to ``print``."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.text import Text

from opsflow.redaction import redact, redact_data


class RedactingConsole(Console):
    """A ``Console`` whose strings pass through ``opsflow.redaction.redact`` first.

    Rich turns every ``str`` it is given (``print`` arguments, table cells, titles) into text
    through ``render_str``: redacting there, before markup and wrapping, masks a value before
    a line break can split it."""

    def render_str(self, text: str, **kwargs: Any) -> Text:
        return super().render_str(redact(text), **kwargs)

    def print_json(self, json: str | None = None, *, data: Any = None, **kwargs: Any) -> None:
        super().print_json(
            redact(json) if json is not None else None,
            data=redact_data(data) if data is not None else None,
            **kwargs,
        )
