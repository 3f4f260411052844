"""The one size formatter: binary units, sensible precision."""

from __future__ import annotations

import pytest

from opsflow.units import format_bytes, format_rate


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (2970, "2.9 KiB"),
        (1536 * 1024, "1.5 MiB"),
        (3 * 2**30 + 2**29, "3.5 GiB"),
        (2**50, "1.0 PiB"),
        (2**60, "1024.0 PiB"),
    ],
)
def test_format_bytes(size: int, shown: str) -> None:
    assert format_bytes(size) == shown


def test_format_rate() -> None:
    assert format_rate(10 * 2**20, 2.0) == "5.0 MiB/s"
    assert format_rate(2970, 1.0) == "2.9 KiB/s"
    assert format_rate(100, 0) == "-"
