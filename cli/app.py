"""What every ``opsflow`` command shares: the Typer apps, the two consoles, exit codes, status
colours, ``fail`` (one redacted line, then the exit code) and the checks run before a flow
run exists (inventory environment, writable ledger)."""

from __future__ import annotations

import difflib
import os
from typing import Any, NoReturn

import httpx
import typer
from rich.markup import escape
from rich.table import Table

from cli.console import RedactingConsole
from opsflow.errors import InputError
from opsflow.redaction import redact

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_REJECTED = 0, 1, 2, 3
EMBEDDED_API = "http://127.0.0.1:4200/api"

app = typer.Typer(
    help="Runbook automation on Prefect.", no_args_is_help=True, pretty_exceptions_enable=False
)
ledger_app = typer.Typer(help="The hash-chained ledger of runs, approvals and backups.")
inventory_app = typer.Typer(help="The inventory of environments.")
backups_app = typer.Typer(help="The backup catalog (from the ledger).")
app.add_typer(ledger_app, name="ledger")
app.add_typer(inventory_app, name="inventory")
app.add_typer(backups_app, name="backups")
out = RedactingConsole(highlight=False)  # every string redacted before it is rendered
err = RedactingConsole(stderr=True, highlight=False)

STATUS_STYLE = {
    "healthy": "green",
    "degraded": "yellow",
    "critical": "bold red",
    "approved": "green",
    "rejected": "red",
    "timed_out": "red",
    "refused": "yellow",
    "complete": "green",
    "verified": "bold green",
    "failed": "red",
    "high": "red",
    "medium": "yellow",
}


def new_table(title: str, *columns: str) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    return table


def status_word(status: str) -> str:
    """A status word in its colour (rich markup)."""
    return f"[{STATUS_STYLE.get(status, '')}]{status}[/]"


def fail(code: int, message: str) -> NoReturn:
    """Print ``error: <message>`` (redacted; the message is text, never rich markup, so a fix
    hint such as ``[name, ...]`` stays as written) and exit with ``code``."""
    err.print(f"[bold red]error:[/] {escape(redact(message))}", markup=True, soft_wrap=True)
    raise typer.Exit(code)


def use_server_if_running() -> str | None:
    """Point Prefect at PREFECT_API_URL, else at the embedded server of `opsflow up` if it runs,
    else at the home server `opsflow run` left running for this OPSFLOW_HOME (deployments.up).

    Must run before prefect is imported (its settings are read at import time).
    """
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    try:
        if httpx.get(f"{EMBEDDED_API}/health", timeout=1).status_code == 200:
            os.environ["PREFECT_API_URL"] = EMBEDDED_API
            return EMBEDDED_API
    except httpx.HTTPError:
        pass
    from deployments.up import running_home_server
    from opsflow.settings import get_settings

    api = running_home_server(get_settings().home)
    if api is not None:
        os.environ["PREFECT_API_URL"] = api
    return api


def parse_params(pairs: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(
                EXIT_BAD_INPUT, f"--param {pair!r}: expected key=value (e.g. --param notify=false)"
            )
        params[key.strip()] = value
    return params


def check_ledger() -> None:
    """A ledger that cannot be written (unreachable, locked, read-only, wrong key) fails here,
    in one line, before a flow run exists."""
    from opsflow.ledger import Ledger, LedgerUnavailable

    try:
        ledger = Ledger()
        ledger.check_writable()
        ledger.close()
    except LedgerUnavailable as exc:
        fail(EXIT_FAILED, str(exc))
    except InputError as exc:
        fail(EXIT_BAD_INPUT, str(exc))


def check_recorded(ledger: Any, env: str | None, runbook: str | None = None) -> None:
    """``--env`` / ``--runbook`` of a command that reads records: a name of the inventory (or
    of prefect.yaml), or one the ledger holds records of, so an environment removed from the
    inventory keeps its history readable. Anything else is bad input naming the known ones.
    A broken inventory does not stop records from being read: only the ledger is asked then."""
    from deployments.runbooks import runbooks
    from opsflow.inventory import load_inventory

    if env is not None:
        try:
            names = sorted(load_inventory().environments)
        except InputError:
            names = []
        if env not in names and not (
            ledger.runs(env=env, limit=1) or ledger.backups(env=env, limit=1)
        ):
            close = difflib.get_close_matches(env, names, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            fail(
                EXIT_BAD_INPUT,
                f"--env: unknown environment {env!r}: not in the inventory and the ledger has no "
                f"records of it (fix: {hint}choose one of: {', '.join(names) or '(none)'})",
            )
    if runbook is not None:
        known = sorted(runbooks())
        if runbook not in known and not ledger.runs(runbook=runbook, limit=1):
            fail(
                EXIT_BAD_INPUT,
                f"--runbook: unknown runbook {runbook!r} and the ledger has no runs of it "
                f"(fix: choose one of: {', '.join(known)})",
            )


def check_env(env: str) -> None:
    from opsflow.inventory import load_inventory

    try:
        load_inventory().environment(env)
    except InputError as exc:
        fail(EXIT_BAD_INPUT, str(exc))
