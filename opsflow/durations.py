"""Human durations used in the inventory and on the CLI: ``90s``, ``15m``, ``1h``, ``2d``."""

from __future__ import annotations

import re
from datetime import timedelta

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str | int | float | timedelta) -> timedelta:
    """Parse ``1h30m``-style text (or seconds as a number) into a timedelta.

    Raises ValueError with the accepted forms when the text does not parse.
    """
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative (fix: use a positive number)")
        return timedelta(seconds=value)
    text = value.strip().lower().replace(" ", "")
    if not text:
        raise ValueError("empty duration (fix: write e.g. 90s, 15m, 1h or 2d)")
    pos = 0
    seconds = 0.0
    for match in _PART.finditer(text):
        if match.start() != pos:
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text):
        raise ValueError(f"cannot read duration {value!r} (fix: write e.g. 90s, 15m, 1h or 2d)")
    return timedelta(seconds=seconds)


def format_duration(delta: timedelta | float) -> str:
    """Short human form: ``2h 5m``, ``41s``, ``350ms``."""
    seconds = delta.total_seconds() if isinstance(delta, timedelta) else float(delta)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (sec, "s")]
    return " ".join(f"{n}{u}" for n, u in parts if n)[:12] or "0s"
