"""Error lines in logs: a generic summarizer, a grade, and a log-file scanner.

``summarize_errors`` is the reusable part (the Docker and Kubernetes log scanners feed it the
lines they fetch). It understands a leading timestamp in these forms, optionally in square
brackets: ``2024-05-01T10:00:00Z``, ``2024-05-01T10:00:00.123456789+02:00`` (RFC 3339 / ISO 8601,
as ``docker logs -t`` and ``kubectl logs --timestamps`` print), ``2024-05-01 10:00:00`` and
``2024-05-01 10:00:00,123`` (Python logging). Timestamps without a zone are taken as UTC
(``naive_tz`` changes that). A line without a timestamp (a traceback line, say) inherits the
previous line's; lines before the first timestamp count as recent, since their age is unknown.

Repeated errors are grouped by a normalised message: timestamps, UUIDs, IP addresses, long hex
strings and numbers are replaced by placeholders, so ``timeout after 31 ms for id 7`` and
``timeout after 12 ms for id 9`` count as one message.
"""

from __future__ import annotations

import os
import re
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta, tzinfo
from typing import BinaryIO

from pydantic import BaseModel, Field

from opsflow.durations import format_duration
from opsflow.errors import PermanentError
from opsflow.inventory import LogFile, Thresholds
from opsflow.redaction import redact
from opsflow.results import CheckResult, Status
from tasks.policy import probe_task

TOP_N = 5
MAX_MESSAGE = 200
BLOCK = 64 * 1024
# lines out of order by up to this much (several writers) are still found by the backward scan
ORDER_SLACK = timedelta(minutes=1)

_LEADING_TS = re.compile(
    r"^\s*\[?(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?)\]?"
)
_NORMALISE = [
    (
        re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(?:[.,]\d+)?(?:Z|[+-]\d{2}:?\d{2})?"),
        "<ts>",
    ),
    (re.compile(r"\b[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\b"), "<uuid>"),
    (re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"), "<ip>"),
    (re.compile(r"\b(?:0x)?(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{8,}\b"), "<hex>"),
    (re.compile(r"\d+(?:\.\d+)?"), "<n>"),
    (re.compile(r"\s+"), " "),
]


class ErrorSummary(BaseModel):
    """Error lines matching a pattern, grouped by normalised message."""

    count: int = Field(0, description="matching lines inside the window")
    lines: int = Field(0, description="lines inside the window")
    top: list[tuple[str, int]] = Field(
        default_factory=list, description=f"the {TOP_N} most frequent messages with counts"
    )
    first_seen: datetime | None = None
    last_seen: datetime | None = None


def parse_timestamp(line: str, naive_tz: tzinfo = UTC) -> tuple[datetime | None, int]:
    """The line's leading timestamp (aware) and where the rest of the line starts."""
    match = _LEADING_TS.match(line)
    if match is None:
        return None, 0
    try:
        stamp = datetime.fromisoformat(match.group(1).replace(",", "."))
    except ValueError:
        return None, 0
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=naive_tz)
    return stamp, match.end()


def normalise_message(text: str) -> str:
    """Replace the parts that vary between repeats of one error by placeholders."""
    for pattern, placeholder in _NORMALISE:
        text = pattern.sub(placeholder, text)
    text = text.strip()
    return text if len(text) <= MAX_MESSAGE else text[: MAX_MESSAGE - 1] + "…"


def summarize_errors(
    lines: Iterable[str],
    pattern: str | re.Pattern[str],
    since: datetime | None,
    naive_tz: tzinfo = UTC,
) -> ErrorSummary:
    """Count lines matching ``pattern`` (a regex, searched anywhere) not older than ``since``.

    Streams: ``lines`` may be a file object or any iterator; memory stays bounded by the number
    of distinct normalised messages. Messages in ``top`` are redacted.
    """
    regex = re.compile(pattern) if isinstance(pattern, str) else pattern
    if since is not None and since.tzinfo is None:
        since = since.replace(tzinfo=naive_tz)
    current: datetime | None = None
    counts: Counter[str] = Counter()
    summary = ErrorSummary()
    for raw in lines:
        line = raw.rstrip("\r\n")
        stamp, start = parse_timestamp(line, naive_tz)
        if stamp is not None:
            current = stamp
        if since is not None and current is not None and current < since:
            continue
        summary.lines += 1
        if not regex.search(line):
            continue
        summary.count += 1
        counts[normalise_message(redact(line[start:]))] += 1  # redact before numbers go
        if current is not None:
            if summary.first_seen is None or current < summary.first_seen:
                summary.first_seen = current
            if summary.last_seen is None or current > summary.last_seen:
                summary.last_seen = current
    summary.top = counts.most_common(TOP_N)
    return summary


class LogTail(BaseModel):
    """The last lines of one container or pod, summarized (``summarize_tail``); ``error`` says
    why they could not be read."""

    source: str = Field(description="container or pod")
    name: str
    lines: int = 0
    errors: int = 0
    top: list[tuple[str, int]] = Field(default_factory=list)
    error: str | None = None


def summarize_tail(source: str, name: str, lines: Iterable[str], pattern: str) -> LogTail:
    """Error lines (``pattern``) among ``lines`` (a tail, every line counts), top messages
    redacted and normalised."""
    summary = summarize_errors(lines, pattern, None)
    return LogTail(
        source=source, name=name, lines=summary.lines, errors=summary.count, top=summary.top
    )


def grade_errors(summary: ErrorSummary, thresholds: Thresholds) -> Status:
    """Healthy with no errors, degraded with some, critical at ``thresholds.log_errors``."""
    if summary.count == 0:
        return Status.HEALTHY
    if summary.count >= thresholds.log_errors:
        return Status.CRITICAL
    return Status.DEGRADED


def window_start_offset(handle: BinaryIO, since: datetime, naive_tz: tzinfo = UTC) -> int:
    """Byte offset of the first line that may be newer than ``since``, read from the end.

    Reads blocks backwards and stops at the first line whose timestamp is older than
    ``since - ORDER_SLACK``; everything before it is older still (logs are appended in time
    order). Returns 0 when no such line exists.
    """
    cutoff = since - ORDER_SLACK
    handle.seek(0, os.SEEK_END)
    pos = handle.tell()
    carry = b""  # the (possibly partial) first line of the block read last
    while pos > 0:
        step = min(BLOCK, pos)
        pos -= step
        handle.seek(pos)
        chunk = handle.read(step) + carry
        pieces = chunk.split(b"\n")
        starts = [pos]
        for piece in pieces[:-1]:
            starts.append(starts[-1] + len(piece) + 1)
        first = 0 if pos == 0 else 1  # pieces[0] may continue in the previous block
        for index in range(len(pieces) - 1, first - 1, -1):
            stamp, _ = parse_timestamp(pieces[index][:64].decode("utf-8", "replace"), naive_tz)
            if stamp is not None and stamp < cutoff:
                return starts[index] + len(pieces[index]) + 1
        carry = pieces[0]
    return 0


def _lines_from(handle: BinaryIO, offset: int) -> Iterator[str]:
    handle.seek(offset)
    for raw in handle:
        yield raw.decode("utf-8", "replace")


@probe_task("scan_log_file", timeout_seconds=300, task_run_name="scan_log_file-{log.path}")
def scan_log_file(log: LogFile, window: timedelta, thresholds: Thresholds) -> CheckResult:
    """Error lines (``log.pattern``) in the last ``window`` of a log file, graded.

    Only the window's tail of the file is read (found by scanning backwards from the end), so a
    multi-GB log costs what its last ``window`` costs.
    """
    started = time.monotonic()
    since = datetime.now(UTC) - window
    try:
        handle = open(log.path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise PermanentError(
            f"log file {log.path} does not exist (fix: correct logs.files[].path in the inventory)"
        ) from None
    except (PermissionError, IsADirectoryError) as exc:
        raise PermanentError(f"cannot read log file {log.path}: {exc.strerror}") from None
    with handle:
        size = os.fstat(handle.fileno()).st_size
        offset = window_start_offset(handle, since)
        summary = summarize_errors(_lines_from(handle, offset), log.pattern, since)
    status = grade_errors(summary, thresholds)
    span = format_duration(window)
    text = f"{log.path}: {summary.count} error line(s) matching {log.pattern!r} in the last {span}"
    if summary.top:
        text += f"; most frequent: {summary.top[0][0]!r} x{summary.top[0][1]}"
    if status is Status.CRITICAL:
        text += f" (critical at {thresholds.log_errors})"
    return CheckResult.timed(
        started,
        "logs",
        log.path,
        status,
        redact(text),
        {
            **summary.model_dump(mode="json"),
            "pattern": log.pattern,
            "window_seconds": window.total_seconds(),
            "file_bytes": size,
            "bytes_scanned": size - offset,
        },
    )
