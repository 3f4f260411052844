from __future__ import annotations

import logging

import pytest

from opsflow.progress import TransferProgress, add_listener, remove_listener


def test_listeners_see_running_totals_and_log_lines_are_spaced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[tuple[str, int]] = []

    def listener(label: str, done: int, _elapsed: float) -> None:
        seen.append((label, done))

    add_listener(listener)
    try:
        progress = TransferProgress("dump main", log_every=1000)
        with caplog.at_level(logging.INFO, logger="opsflow.progress"):
            for _ in range(25):
                progress(100)
    finally:
        remove_listener(listener)
    assert seen[-1] == ("dump main", 2500)
    assert [done for _, done in seen] == list(range(100, 2600, 100))
    lines = [r.getMessage() for r in caplog.records if "dump main" in r.getMessage()]
    assert len(lines) == 2  # at 1000 and 2000 bytes
    assert lines[0].startswith("dump main: 1000 B in ") and lines[0].endswith("B/s)")
    assert lines[1].startswith("dump main: 2.0 KiB in ")


def test_removed_listener_hears_nothing() -> None:
    seen: list[int] = []

    def listener(_label: str, done: int, _elapsed: float) -> None:
        seen.append(done)

    add_listener(listener)
    remove_listener(listener)
    TransferProgress("x")(10)
    assert seen == []
