"""Sizes for people: one formatter, binary units (1 KiB = 1024 bytes) everywhere opsflow prints a
size or a transfer rate (reports, logs, the CLI)."""

from __future__ import annotations

_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")


def format_bytes(size: float) -> str:
    """``512 B``, ``2.9 KiB``, ``1.5 MiB``, ``3.2 GiB``."""
    value = float(size)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_rate(size: float, seconds: float) -> str:
    """Bytes moved in ``seconds`` as a rate, e.g. ``6.7 MiB/s`` (``-`` when no time passed)."""
    if seconds <= 0:
        return "-"
    return f"{format_bytes(size / seconds)}/s"


def parse_bytes(shown: str) -> int:
    """The inverse of ``format_bytes`` (to its precision): ``"1.5 MiB"`` -> 1572864."""
    number, _, unit = shown.strip().partition(" ")
    return round(float(number) * 1024 ** _UNITS.index(unit))
