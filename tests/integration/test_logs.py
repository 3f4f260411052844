"""scan_log_file against real files on disk, including one too big to read whole."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from opsflow.errors import PermanentError
from opsflow.inventory import LogFile, Thresholds
from opsflow.results import Status
from tasks.logs import scan_log_file, window_start_offset

pytestmark = pytest.mark.integration

DEFAULTS = Thresholds()  # type: ignore[call-arg]


def stamp(ago: timedelta) -> str:
    return (datetime.now(UTC) - ago).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_window_counts_only_recent_errors(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    lines = [f"{stamp(timedelta(hours=3))} ERROR ancient failure {i}" for i in range(50)]
    lines += [f"{stamp(timedelta(minutes=30))} INFO request ok" for _ in range(10)]
    lines += [f"{stamp(timedelta(minutes=20))} ERROR db timeout after {i} ms" for i in range(3)]
    lines += ["Traceback (most recent call last): ERROR inside", "  more traceback"]
    log.write_text("\n".join(lines) + "\n")
    result = scan_log_file.fn(LogFile(path=str(log)), timedelta(hours=1), DEFAULTS)
    assert result.check == "logs" and result.target == str(log)
    assert result.details["count"] == 4
    assert result.status is Status.DEGRADED
    assert result.details["top"][0] == ["ERROR db timeout after <n> ms", 3]
    assert "4 error line(s)" in result.summary and "1h" in result.summary
    assert result.details["bytes_scanned"] < result.details["file_bytes"]


def test_many_errors_are_critical_and_pattern_is_used(tmp_path: Path) -> None:
    log = tmp_path / "app.log"
    log.write_text(
        "".join(f"{stamp(timedelta(minutes=5))} FATAL out of memory\n" for _ in range(12))
    )
    fatal = LogFile(path=str(log), pattern="FATAL|CRITICAL")
    result = scan_log_file.fn(fatal, timedelta(minutes=15), DEFAULTS)
    assert result.status is Status.CRITICAL
    assert result.details["count"] == 12
    quiet = scan_log_file.fn(LogFile(path=str(log)), timedelta(minutes=15), DEFAULTS)
    assert quiet.status is Status.HEALTHY and quiet.details["count"] == 0


def test_big_file_reads_only_its_tail(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    old = stamp(timedelta(days=2))
    filler = f"{old} ERROR old noise with some padding to make the line longer {'x' * 60}\n"
    with log.open("w") as handle:
        for _ in range(200_000):  # ~30 MB of old lines
            handle.write(filler)
        for i in range(5):
            handle.write(f"{stamp(timedelta(minutes=1))} ERROR fresh failure {i}\n")
    size = log.stat().st_size
    assert size > 25_000_000
    result = scan_log_file.fn(LogFile(path=str(log)), timedelta(minutes=10), DEFAULTS)
    assert result.details["count"] == 5
    assert result.details["bytes_scanned"] < 1000


def test_window_start_offset_across_blocks(tmp_path: Path) -> None:
    log = tmp_path / "blocks.log"
    old = [f"{stamp(timedelta(hours=5))} line {i} {'y' * 100}\n" for i in range(2000)]
    new = [f"{stamp(timedelta(minutes=1))} line {i} {'z' * 100}\n" for i in range(2000)]
    log.write_text("".join(old + new))
    with log.open("rb") as handle:
        offset = window_start_offset(handle, datetime.now(UTC) - timedelta(hours=1))
    assert offset == len("".join(old).encode())
    with log.open("rb") as handle:
        assert window_start_offset(handle, datetime.now(UTC) - timedelta(hours=9)) == 0


def test_missing_log_file_is_permanent(tmp_path: Path) -> None:
    with pytest.raises(PermanentError, match="does not exist"):
        scan_log_file.fn(LogFile(path=str(tmp_path / "nope.log")), timedelta(hours=1), DEFAULTS)
