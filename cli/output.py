"""What `opsflow run` prints while a run goes on, the same for a run in this process and a
served run it follows: one line per step or check as it finishes, warnings and errors on one
line each (never a traceback), the approval a paused run waits for, and a live bar per
transfer. ``-v`` prints every log line of the run instead.

The lines come from the run's log records: in this process through a logging handler on
Prefect's run loggers, for a served run from the API (``cli.follow``). A line is a step's end
when it has the form the step recorder writes (``flows.common.RunbookRun.record``:
``<step> <target>: <status> <summary>``); transfer progress lines (``opsflow.progress``) feed
the bars.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rich.markup import escape

from cli.app import err
from opsflow.progress import parse_line
from opsflow.redaction import redact
from opsflow.units import format_bytes, format_rate

STEP_STATUSES = ("complete", "failed", "skipped", "healthy", "degraded", "critical")
"""The statuses the step recorder writes (``flows.common``: complete / failed, a deploy's
skipped backup, and the grades of ``opsflow.results.Status``)."""
_STEP_END = re.compile(rf"^\S+ .+: (?P<status>{'|'.join(STEP_STATUSES)})( |$)")
_STYLE = {"complete": "green", "healthy": "green", "degraded": "yellow", "skipped": "yellow"}
_ENGINE = re.compile(
    r"^(Beginning flow run|View at|Finished in state|Created task run|Executing|"
    r"Encountered exception|Received non-final state|Running hook|Downloading flow code|"
    r"Opening process|Process for flow run|Completed submission|Runner )"
)
APPROVAL_NEEDED = "Approval needed:"

QUIET_ENV = {
    # Prefect's console handler prints every run log line (and task tracebacks) to stderr;
    # the run's lines are printed here instead. The logs still reach the API (and the UI).
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "CRITICAL",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}


def quiet_prefect(verbose: bool) -> None:
    """Before prefect is imported: no console logging from Prefect (unless ``-v``) and no
    telemetry (it fails offline and says so)."""
    for key, value in QUIET_ENV.items():
        if verbose and key.startswith("PREFECT_LOGGING"):
            continue
        os.environ.setdefault(key, value)


def first_line(message: str) -> str:
    """A message without its traceback or continuation lines."""
    return message.strip().splitlines()[0] if message.strip() else ""


@dataclass
class RunPrinter:
    """Turns a run's log lines into the quiet output (or, ``verbose``, prints them all)."""

    verbose: bool = False
    approval_hint: Any = None  # Callable[[], str | None]: what to print when approval waits
    _bars: Any = None
    _ids: dict[str, Any] = field(default_factory=dict)
    _hinted: bool = False

    def line(self, message: str, level: int = logging.INFO) -> None:
        text = redact(message)
        progress = parse_line(first_line(text))
        if progress is not None:
            self.progress(*progress)
            if not self.verbose:
                return
        if self.verbose:
            err.print(escape(text), soft_wrap=True, highlight=False)
            return
        shown = first_line(text)
        if shown.startswith(APPROVAL_NEEDED):
            self.waiting_for_approval(shown)
            return
        step = _STEP_END.match(shown)
        if step is not None:
            style = _STYLE.get(step["status"], "red")
            err.print(f"[{style}]{escape(shown)}[/]", soft_wrap=True, highlight=False)
        elif level >= logging.WARNING and not _ENGINE.match(shown):
            style = "yellow" if level == logging.WARNING else "red"
            err.print(f"[{style}]{escape(shown)}[/]", soft_wrap=True, highlight=False)

    def waiting_for_approval(self, logged: str = "") -> None:
        """Once per run: who may approve and the command (the policy's line, or the run's)."""
        if self._hinted:
            return
        self._hinted = True
        hint = self.approval_hint() if self.approval_hint is not None else None
        err.print(f"[bold yellow]waiting for approval:[/] {escape(redact(hint or logged))}")

    def progress(self, label: str, done: int, elapsed: float) -> None:
        if self._bars is None:
            return
        if label not in self._ids:
            self._ids[label] = self._bars.add_task(label, total=None, size="", rate="")
        self._bars.update(
            self._ids[label], size=format_bytes(done), rate=format_rate(done, elapsed)
        )

    @contextmanager
    def bars(self, enabled: bool) -> Iterator[None]:
        """Live transfer bars (on a terminal), fed by ``progress``."""
        if not enabled:
            yield
            return
        from rich.progress import Progress, SpinnerColumn, TextColumn

        self._bars = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TextColumn("{task.fields[size]}"),
            TextColumn("{task.fields[rate]}"),
            console=err,
            transient=True,
        )
        try:
            with self._bars:
                yield
        finally:
            self._bars = None

    @contextmanager
    def in_process(self) -> Iterator[None]:
        """For a run in this process: its log records and transfer events come here."""
        from opsflow.progress import add_listener, remove_listener

        handler = _Handler(self)
        names = () if self.verbose else ("prefect.flow_runs", "prefect.task_runs")
        loggers = [logging.getLogger(name) for name in names]  # -v: Prefect's console prints
        for logger in loggers:
            logger.addHandler(handler)
        add_listener(self.progress)
        try:
            yield
        finally:
            remove_listener(self.progress)
            for logger in loggers:
                logger.removeHandler(handler)


class _Handler(logging.Handler):
    def __init__(self, printer: RunPrinter) -> None:
        super().__init__(logging.INFO)
        self.printer = printer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.printer.line(record.getMessage(), record.levelno)
        except Exception:  # noqa: BLE001 - printing must never break the run
            self.handleError(record)
