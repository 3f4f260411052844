"""The ``opsflow`` command line (Typer + rich).

Exit codes: 0 ok, 1 the runbook finished unhealthy or failed, 2 bad input, 3 rejected or the
approval timed out. Secrets never reach the terminal: every message goes through ``redact``.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from opsflow.errors import ApprovalRejected, InputError
from opsflow.redaction import redact
from opsflow.settings import get_settings
from opsflow.units import format_bytes

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
out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

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
}


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    return table


def _status(status: str) -> str:
    """A status word in its colour (rich markup)."""
    return f"[{STATUS_STYLE.get(status, '')}]{status}[/]"


def fail(code: int, message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {redact(message)}", markup=True, soft_wrap=True)
    raise typer.Exit(code)


def use_server_if_running() -> str | None:
    """Point Prefect at PREFECT_API_URL, else at the embedded server of `opsflow up` if it runs.

    Must run before prefect is imported (its settings are read at import time).
    """
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    try:
        if httpx.get(f"{EMBEDDED_API}/health", timeout=1).status_code == 200:
            os.environ["PREFECT_API_URL"] = EMBEDDED_API
            return EMBEDDED_API
    except httpx.HTTPError:
        return None
    return None


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


@app.command()
def up(
    port: Annotated[int, typer.Option(help="port of the embedded Prefect server")] = 4200,
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
    _check_env(env)
    _check_ledger()
    api = use_server_if_running()
    from deployments.runbooks import get_runbook

    try:
        book = get_runbook(runbook)
    except InputError as exc:
        fail(EXIT_BAD_INPUT, str(exc))
    _check_params(book.flow, runbook, params)
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


def _check_params(flow: Any, runbook: str, params: dict[str, Any]) -> None:
    """Unknown names and values of the wrong type are bad input, refused before any run."""
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
    try:
        flow.validate_parameters(params)
    except Exception as exc:  # noqa: BLE001 - Prefect's validation error, shown to the operator
        fail(EXIT_BAD_INPUT, f"--param: {exc}")


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
    table = _table(title, "status", "check", "target", "summary", "ms")
    for r in rows:
        table.add_row(
            _status(r.status.value),
            r.check,
            escape(redact(r.target)),
            escape(redact(r.summary)),  # an app's text is not rich markup
            str(r.duration_ms),
        )
    out.print(table)


def _check_ledger() -> None:
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


def _check_env(env: str) -> None:
    from opsflow.inventory import load_inventory

    try:
        load_inventory().environment(env)
    except InputError as exc:
        fail(EXIT_BAD_INPUT, str(exc))


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


RunId = Annotated[str, typer.Argument(help="the paused flow run id")]
Approver = Annotated[str, typer.Option("--as", help="your name, as in the approvers list")]
Reason = Annotated[str, typer.Option("--reason", help="why (required)")]


def _answer(run_id: str, approved: bool, as_user: str, reason: str) -> None:
    from opsflow.ledger import Ledger

    if not reason.strip():
        fail(EXIT_BAD_INPUT, "--reason: a reason is required (fix: say why, e.g. a ticket number)")
    pending = Ledger().pending_approval(run_id)
    if pending is not None:
        from opsflow.approvals import Approval, policy_violation
        from opsflow.inventory import load_inventory

        try:
            policy = load_inventory().environment(pending.env).approvals
        except InputError as exc:
            fail(EXIT_BAD_INPUT, str(exc))
        if policy is not None:
            answer = Approval(approved=approved, approver=as_user, reason=reason)
            violation = policy_violation(answer, policy, pending.requested_by)
            if violation:
                fail(EXIT_BAD_INPUT, f"--as {as_user}: {violation}")
    else:
        err.print(
            "note: no pending approval for this run in the local ledger; "
            "the flow will check the answer against its policy"
        )
    use_server_if_running()
    from opsflow.approvals import resume_with_answer

    try:
        resume_with_answer(run_id, approved=approved, approver=as_user, reason=reason)
    except InputError as exc:
        fail(EXIT_BAD_INPUT, str(exc))
    verb = "approved" if approved else "rejected"
    out.print(f"{verb} run {run_id} as {as_user}: {redact(reason)}")


@app.command()
def approve(
    run_id: RunId,
    as_user: Approver,
    reason: Reason,
) -> None:
    """Approve a paused run (four-eyes: not the requester; must be a listed approver)."""
    _answer(run_id, True, as_user, reason)


@app.command()
def reject(
    run_id: RunId,
    as_user: Approver,
    reason: Reason,
) -> None:
    """Reject a paused run; nothing is changed."""
    _answer(run_id, False, as_user, reason)


@app.command()
def history(
    env: Annotated[str | None, typer.Option("--env", "-e")] = None,
    runbook: Annotated[str | None, typer.Option("--runbook", "-r")] = None,
    limit: Annotated[int, typer.Option(help="how many runs")] = 20,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Recent runs from the ledger."""
    from opsflow.ledger import Ledger

    rows = Ledger().runs(env=env, runbook=runbook, limit=limit)
    if as_json:
        out.print_json(
            json.dumps(
                [
                    {
                        "flow_run_id": r.flow_run_id,
                        "runbook": r.runbook,
                        "env": r.env,
                        "status": r.status,
                        "started_at": r.started_at.isoformat(),
                        "finished_at": r.finished_at.isoformat(),
                        "triggered_by": r.triggered_by,
                        "summary": r.summary,
                    }
                    for r in rows
                ]
            )
        )
        return
    table = _table("opsflow history", "finished (UTC)", "runbook", "env", "status", "by")
    for column in ("summary", "flow run"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            f"{r.finished_at:%Y-%m-%d %H:%M}",
            r.runbook,
            r.env,
            _status(r.status),
            r.triggered_by,
            escape(r.summary),
            r.flow_run_id,
        )
    out.print(table)


@inventory_app.command("check")
def inventory_check(
    path: Annotated[
        str | None, typer.Argument(help="inventory file (default OPSFLOW_INVENTORY)")
    ] = None,
) -> None:
    """Validate the inventory and summarise each environment."""
    from opsflow.inventory import inventory_path, load_inventory

    try:
        inventory = load_inventory(path)
    except InputError as exc:
        fail(EXIT_BAD_INPUT, str(exc))
    table = _table(
        f"inventory {path or inventory_path()}: OK",
        *("environment", "protected", "endpoints", "databases", "redis", "platform", "backups"),
    )
    for name, env in sorted(inventory.environments.items()):
        platform = ("kubernetes" if env.kubernetes else "") + (" docker" if env.docker else "")
        table.add_row(
            name,
            "yes" if env.protected else "no",
            str(len(env.endpoints)),
            str(len(env.databases)),
            str(len(env.redis)),
            platform.strip() or "-",
            env.backup_store.url if env.backup_store else "-",
        )
    out.print(table)


@backups_app.command("list")
def backups_list(
    env: Annotated[str, typer.Option("--env", "-e", help="environment from the inventory")],
    database: Annotated[
        str | None, typer.Option("--database", "-d", help="only backups of this name")
    ] = None,
    kind: Annotated[
        str | None, typer.Option("--kind", help="only this kind: postgres, sqlite, redis, config")
    ] = None,
    limit: Annotated[int, typer.Option(help="how many backups, newest first")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="print the catalog as JSON")] = False,
) -> None:
    """Catalogued backups of an environment that may be restored (complete or verified), newest
    first, with the kind and name each is a backup of. Backups that retention deleted (or is
    deleting) are never listed."""
    from opsflow import catalog
    from opsflow.ledger import Ledger

    rows = catalog.good(catalog.fold(Ledger().backups(env=env, database=database, limit=None)))
    rows = [r for r in rows if kind in (None, r.kind)][:limit]
    if as_json:
        out.print_json(
            redact(
                json.dumps(
                    [
                        {
                            "backup_id": r.backup_id,
                            "env": r.env,
                            "database": r.database,
                            "name": r.database,
                            "kind": r.kind,
                            "status": r.status,
                            "created_at": r.created_at.isoformat(),
                            "store_url": r.store_url,
                            "key": r.key,
                            "bytes": r.bytes,
                            "sha256": r.sha256,
                            "duration_ms": r.duration_ms,
                            "flow_run_id": r.flow_run_id,
                            "verified_at": r.verified_at,
                        }
                        for r in rows
                    ]
                )
            )
        )
        return
    if not rows:
        out.print(f"no backups catalogued for {env} (run: opsflow run backup --env {env})")
        return
    table = _table(f"backups of {env}", "created (UTC)", "kind", "name", "status", "size")
    table.add_column("sha256")
    table.add_column("key", overflow="fold")
    for r in rows:
        table.add_row(
            f"{r.created_at:%Y-%m-%d %H:%M}",
            r.kind,
            r.database,
            _status(r.status),
            format_bytes(r.bytes),
            r.sha256[:12],
            redact(r.key),
        )
    out.print(table)
    stores = sorted({r.store_url for r in rows})
    out.print(f"store: {redact(', '.join(stores))} (ids and full sha256: --json)")


@ledger_app.command("verify")
def ledger_verify(
    store: Annotated[
        list[str] | None,
        typer.Option("--store", help="also check the heads published in this backup store URL"),
    ] = None,
    inventory_stores: Annotated[
        bool,
        typer.Option("--inventory-stores", help="also check the heads in the inventory's stores"),
    ] = False,
    heads: Annotated[
        list[Path] | None,
        typer.Option("--heads", help="also check a heads file kept elsewhere (e.g. an artifact)"),
    ] = None,
) -> None:
    """Check the ledger: each row's HMAC and payload, each chain, and the chain heads published
    after each run (the copy in OPSFLOW_HOME, plus --store/--inventory-stores/--heads).
    Exit 1 when a row was changed, inserted or removed, or a chain was cut or emptied."""
    from connectors import ledger_heads
    from opsflow.ledger import Ledger, LedgerUnavailable

    try:
        ledger = Ledger()
        published = ledger_heads.gather(ledger, store or [], inventory_stores, heads or [])
        report = ledger.verify(published)
    except LedgerUnavailable as exc:
        fail(EXIT_FAILED, str(exc))
    except InputError as exc:
        fail(EXIT_BAD_INPUT, str(exc))
    problems = [str(p) for p in report.problems]
    if not published and report.rows:
        problems.append(
            "heads: no published chain heads found, so a cut tail or an emptied table would "
            "go unseen (fix: pass --store URL, --inventory-stores or --heads FILE; runs "
            "publish them when they finish)"
        )
    if not problems:
        against = ", ".join(report.heads_checked) or "no published heads (empty ledger)"
        out.print(
            f"ledger OK: {report.rows} rows, every chain intact; heads: {against}",
            markup=False,
            soft_wrap=True,
        )
        return
    for problem in problems:
        err.print(redact(problem), style="red", markup=False, soft_wrap=True)
    err.print(
        f"ledger {ledger.display_url} FAILED: {len(problems)} problem(s)",
        markup=False,
        soft_wrap=True,
    )
    raise typer.Exit(EXIT_FAILED)


def main() -> None:
    app()
