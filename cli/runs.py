"""Running runbooks: ``up``, ``run``, ``recover`` and ``plan``, with the live transfer bars
and the report of a run's final state."""

from __future__ import annotations

import inspect
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.markup import escape

from cli.app import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REJECTED,
    app,
    check_env,
    check_ledger,
    err,
    fail,
    new_table,
    out,
    parse_params,
    status_word,
    use_server_if_running,
)
from opsflow.errors import ApprovalRejected, InputError
from opsflow.redaction import redact
from opsflow.settings import get_settings


@app.command()
def up(
    port: Annotated[
        int, typer.Option(help="port of the embedded Prefect server", min=1, max=65535)
    ] = 4200,
) -> None:
    """Start the embedded Prefect server (unless PREFECT_API_URL is set) and serve every
    deployment of prefect.yaml with its schedule. Ctrl-C stops everything."""
    from deployments.up import run_up

    sys.exit(run_up(port=port, console=out))


@app.command()
def run(
    runbook: Annotated[str, typer.Argument(help="runbook name, e.g. health-check")],
    env: Annotated[str, typer.Option("--env", "-e", help="environment from the inventory")],
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="key=value")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="publish the plan only")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    as_user: Annotated[
        str | None, typer.Option("--as", help="who is asking (default $USER)")
    ] = None,
) -> None:
    """Run a runbook now. With a server configured (or `opsflow up` running) the run shows in
    the Prefect UI like any other."""
    params: dict[str, Any] = parse_params(param or [])
    check_env(env)
    check_ledger()
    api = use_server_if_running()
    from deployments.runbooks import get_runbook

    try:
        book = get_runbook(runbook)
    except InputError as exc:
        fail(EXIT_BAD_INPUT, str(exc))
    _check_params(book, env, params)
    if not as_json:
        where = f"server {api}" if api else "a temporary local server (no server configured)"
        err.print(f"running {runbook} on {env} through {where}")
    requested_by = as_user or get_settings().user
    with transfer_progress(enabled=not as_json and err.is_terminal):
        state = book.flow(
            env=env, dry_run=dry_run, requested_by=requested_by, return_state=True, **params
        )
    sys.exit(_report_state(state, as_json))


@contextmanager
def transfer_progress(enabled: bool) -> Iterator[None]:
    """A live bar per transfer (dump, upload, restore) while an in-process run streams data."""
    if not enabled:
        yield
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TransferSpeedColumn

    from opsflow.progress import add_listener, remove_listener

    bars = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed:,.0f} bytes"),
        TransferSpeedColumn(),
        console=err,
        transient=True,
    )
    ids: dict[str, Any] = {}

    def update(label: str, done: int, _elapsed: float) -> None:
        if label not in ids:
            ids[label] = bars.add_task(label, total=None)
        bars.update(ids[label], completed=done)

    add_listener(update)
    try:
        with bars:
            yield
    finally:
        remove_listener(update)


def _check_params(book: Any, env: str, params: dict[str, Any]) -> None:
    """Bad parameters are refused before any run exists, without a server: unknown names,
    values of the wrong type or out of range (the flow's signature), and what the runbook's
    plan refuses (an unknown database or backup id, a ``target_db`` naming the live file…).
    The flow checks again where it runs, with what only that place knows (its secrets)."""
    flow, runbook = book.flow, book.name
    reserved = {"env", "dry_run", "requested_by"}
    accepted = sorted(set(flow.parameters.properties) - reserved)
    for name in params:
        if name not in accepted:
            hint = f"use one of: {', '.join(accepted)}" if accepted else "it takes none"
            fail(
                EXIT_BAD_INPUT,
                f"--param {name}: {runbook} has no parameter {name!r} "
                f"(fix: {hint}; --env, --dry-run and --as are options)",
            )
    prefect_flows = logging.getLogger("prefect.flows")  # it logs the failure a second time
    was, prefect_flows.disabled = prefect_flows.disabled, True
    try:
        values = flow.validate_parameters(params)
    except Exception as exc:  # noqa: BLE001 - Prefect's validation error, shown to the operator
        lines = [line.strip(" -") for line in str(exc).splitlines()[1:] if line.startswith(" - ")]
        fix = f"see the parameters in docs/runbooks/{runbook}.md"
        fail(EXIT_BAD_INPUT, f"--param {'; '.join(lines) or exc} (fix: {fix})")
    finally:
        prefect_flows.disabled = was
    plan = book.plan
    taken = inspect.signature(plan).parameters
    try:
        from opsflow.inventory import load_inventory

        plan(
            env,
            load_inventory().environment(env),
            **{k: v for k, v in values.items() if k in taken and k != "env"},
        )
    except InputError as exc:
        fail(EXIT_BAD_INPUT, str(exc))


def _report_state(state: Any, as_json: bool) -> int:
    result = state.result(raise_on_failure=False)
    if isinstance(result, InputError):
        fail(EXIT_BAD_INPUT, str(result))
    rejected = _rejection(state)
    if isinstance(result, ApprovalRejected) or rejected:
        fail(EXIT_REJECTED, str(result) if isinstance(result, ApprovalRejected) else str(rejected))
    if isinstance(result, BaseException):
        fail(EXIT_FAILED, f"{state.name}: {result}")
    if as_json:
        payload = result.model_dump(mode="json") if hasattr(result, "model_dump") else result
        out.print_json(redact(json.dumps(payload, default=str)))
    else:
        _print_result(result)
        out.print(f"[bold]{state.name}[/]: {redact(state.message or '')}")
    return EXIT_OK if state.is_completed() and state.name == "Completed" else EXIT_FAILED


def _rejection(state: Any) -> str | None:
    """Why the run was rejected or timed out, from the ledger (None when it was not)."""
    if state.is_completed() or state.state_details.flow_run_id is None:
        return None
    from opsflow.approvals import final_decision
    from opsflow.ledger import Ledger, LedgerUnavailable

    try:
        decision = final_decision(Ledger(), str(state.state_details.flow_run_id))
    except LedgerUnavailable:
        return None  # the run failed on the ledger itself; its state says how
    if decision is None:
        return None
    who = f" by {decision.actor}" if decision.actor else ""
    return (
        f"{decision.action} on {decision.env} {decision.event}{who}: {decision.reason}. "
        "Nothing was changed."
    )


def _print_result(result: Any) -> None:
    rows = getattr(result, "results", None)
    if not rows:
        return
    title = f"{getattr(result, 'env', '')}: {getattr(result, 'overall', '')}"
    table = new_table(title, "status", "check", "target", "summary", "ms")
    for r in rows:
        table.add_row(
            status_word(r.status.value),
            r.check,
            escape(redact(r.target)),
            escape(redact(r.summary)),  # an app's text is not rich markup
            str(r.duration_ms),
        )
    out.print(table)


@app.command()
def recover(
    env: Annotated[str, typer.Option("--env", "-e", help="environment from the inventory")],
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
    as_user: Annotated[
        str | None, typer.Option("--as", help="who is asking (default $USER)")
    ] = None,
) -> None:
    """Bring back the application an interrupted restore left stopped: what the restore
    recorded next to it (replica count annotation, container markers). Refused while another
    run holds the environment. Same as `opsflow run recover --env ENV`."""
    run(runbook="recover", env=env, param=None, dry_run=False, as_json=as_json, as_user=as_user)


@app.command()
def plan(
    runbook: Annotated[str, typer.Argument(help="runbook name")],
    env: Annotated[str, typer.Option("--env", "-e", help="environment from the inventory")],
) -> None:
    """Show what a runbook would do, without touching anything or contacting a server."""
    from deployments.runbooks import get_runbook
    from opsflow.inventory import load_inventory

    try:
        book = get_runbook(runbook)
        environment = load_inventory().environment(env)
        shown = book.plan(env, environment)  # a plan may read the catalog (restore)
    except InputError as exc:
        fail(EXIT_BAD_INPUT, str(exc))
    out.print(shown.to_markdown(), markup=False)
