"""The ``opsflow`` command line (Typer + rich).

Exit codes: 0 ok, 1 the runbook finished unhealthy or failed, 2 bad input, 3 rejected or the
approval timed out. Secrets never reach the terminal: every message goes through ``redact``.

Commands live by what they are for: ``cli.runs`` (up, run, recover, plan), ``cli.approvals``
(approve, reject), ``cli.records`` (history, inventory check, backups list, ledger verify);
``cli.app`` holds what they share. Importing them registers them on ``app``.
"""

from __future__ import annotations

import importlib

from cli.app import app
from opsflow.redaction import install_log_redaction

# registered in this order, which is the order of `opsflow --help`
COMMAND_MODULES = ("cli.runs", "cli.approvals", "cli.records")
for _module in COMMAND_MODULES:
    importlib.import_module(_module)

__all__ = ["app", "main"]


def main() -> None:
    install_log_redaction()  # Prefect's console handler and every other log line, from the start
    app()
