"""The ``opsflow`` command line (Typer + rich).

Exit codes: 0 ok, 1 the runbook finished unhealthy or failed, 2 bad input, 3 rejected or the
approval timed out; 130 when Ctrl-C detaches from a served run (which goes on). Secrets never
reach the terminal: every message goes through ``redact``.

Commands live by what they are for: ``cli.runs`` (up, down, run, recover, plan),
``cli.follow`` (logs, cancel), ``cli.approvals`` (approve, reject), ``cli.records`` (history,
inventory check, backups list, ledger verify); ``cli.app`` holds what they share. Importing
them registers them on ``app``.

``main`` is the one error boundary: bad input anywhere (``InputError``, e.g. an ``OPSFLOW_*``
setting) is one line and exit 2; an opsflow failure (an unreachable ledger, say) one line and
exit 1; anything unexpected one line naming a log file under ``$OPSFLOW_HOME/logs`` that holds
the (redacted) traceback, and exit 1. No input makes the command print a traceback.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import os
import sys
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

import typer

from cli.app import EXIT_BAD_INPUT, EXIT_FAILED, app, fail
from opsflow.errors import InputError, OpsflowError
from opsflow.redaction import install_log_redaction, redact

# registered in this order, which is the order of `opsflow --help`
COMMAND_MODULES = ("cli.runs", "cli.follow", "cli.approvals", "cli.records")
for _module in COMMAND_MODULES:
    importlib.import_module(_module)

__all__ = ["app", "main"]


def main() -> None:
    """The console script: run the command, then leave without the interpreter's teardown."""
    try:
        run_command()
    except SystemExit as done:
        leave(done.code)
    leave(0)


def leave(code: object) -> NoReturn:
    """Exit with ``code`` once the exit handlers ran (Prefect sends the logs and events it still
    holds, logging flushes its handlers) and the output is flushed, skipping what the
    interpreter would do next: freeing every module and object one by one, ~0.4 s after a
    runbook ran in this process, of which a finished command needs nothing."""
    if isinstance(code, str):  # sys.exit("message"), as the interpreter would show it
        print(code, file=sys.stderr)
    status = code if isinstance(code, int) else (0 if code is None else 1)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing left to say
            stream.flush()
    os._exit(status)


def run_command() -> None:
    """The command line's one error boundary (see the module docstring)."""
    install_log_redaction()  # Prefect's console handler and every other log line, from the start
    try:
        app()
    except InputError as exc:
        _exit(EXIT_BAD_INPUT, str(exc))
    except OpsflowError as exc:
        _exit(EXIT_FAILED, str(exc))
    except KeyboardInterrupt:
        _exit(130, "interrupted")
    except Exception as exc:  # noqa: BLE001 - the boundary: one line, the traceback to a file
        log = write_crash_log(exc)
        where = f"details in {log}" if log else "no log file could be written"
        _exit(EXIT_FAILED, f"unexpected {type(exc).__name__}: {_first_line(exc)} ({where})")


def _exit(code: int, message: str) -> None:
    try:
        fail(code, message)
    except typer.Exit as done:
        raise SystemExit(done.exit_code) from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    return text if len(text) <= 300 else text[:300] + "…"


def write_crash_log(exc: BaseException) -> Path | None:
    """Write the redacted traceback to ``$OPSFLOW_HOME/logs/crash-<time>-<pid>.log``.

    OPSFLOW_HOME is read from the environment, not from the settings: a bad setting may be
    what failed."""
    home = Path(os.environ.get("OPSFLOW_HOME") or ".opsflow")
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = home / "logs" / f"crash-{stamp}-{os.getpid()}.log"
    text = "".join(traceback.format_exception(exc))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(redact(text), encoding="utf-8")
    except OSError:
        return None
    return path.resolve()
