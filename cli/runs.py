"""Running runbooks: ``up``, ``run``, ``recover``, ``plan`` and ``down``, and the report of a
run's final state. A served runbook runs through its deployment (``cli.follow``); otherwise,
or with ``--local``, in this process. What is printed meanwhile: ``cli.output``."""

from __future__ import annotations

import inspect
import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
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
from cli.follow import rejection_reason
from cli.output import RunPrinter, quiet_prefect
from opsflow.errors import ApprovalRejected, InputError
from opsflow.redaction import redact
from opsflow.settings import get_settings

Local = Annotated[
    bool,
    typer.Option("--local", help="run in this process, even when a runner serves the runbook"),
]
Verbose = Annotated[
    bool, typer.Option("--verbose", "-v", help="print Prefect's own log lines of the run")
]
AsJson = Annotated[bool, typer.Option("--json", help="print the result as JSON")]
AsUser = Annotated[
    str | None, typer.Option("--as", help="who is asking (default $OPSFLOW_USER, else $USER)")
]


@app.command()
def up(
    port: Annotated[
        int, typer.Option(help="port of the embedded Prefect server", min=1, max=65535)
    ] = 4200,
) -> None:
    """Start the embedded Prefect server (unless PREFECT_API_URL is set) and serve every
    deployment of prefect.yaml with its schedule, and the alert receiver when
    OPSFLOW_RECEIVER_TOKEN is set (docs/alerting.md). Ctrl-C stops everything."""
    from deployments.up import run_up

    sys.exit(run_up(port=port, console=out))


@app.command()
def down() -> None:
    """Stop the Prefect server `opsflow run` started for this OPSFLOW_HOME (when no server was
    configured, it keeps one running between commands)."""
    from deployments.up import stop_home_server

    home = get_settings().home
    api = stop_home_server(home)
    out.print(f"stopped the Prefect server of {home} ({api})" if api else f"no server of {home}")


@app.command()
def receiver(
    port: Annotated[
        int | None,
        typer.Option(
            help="port to listen on (default OPSFLOW_RECEIVER_PORT, 4280)", min=1, max=65535
        ),
    ] = None,
    host: Annotated[
        str | None,
        typer.Option(help="address to listen on (default OPSFLOW_RECEIVER_HOST, 127.0.0.1)"),
    ] = None,
) -> None:
    """Take Prometheus Alertmanager's webhook (POST /alertmanager, bearer token
    OPSFLOW_RECEIVER_TOKEN) and start the runbook of each alert's inventory rule as a flow run
    of its served deployment (`opsflow up` runs it too; docs/alerting.md)."""
    if use_server_if_running() is None:
        fail(
            EXIT_BAD_INPUT,
            "no Prefect server to start runs on (fix: run `opsflow up`, which runs the receiver "
            "too, or set PREFECT_API_URL to the server that serves the runbooks)",
        )
    from deployments.receiver import run_standalone

    sys.exit(run_standalone(host, port, out))


@app.command()
def run(
    runbook: Annotated[str, typer.Argument(help="runbook name, e.g. health-check")],
    env: Annotated[str, typer.Option("--env", "-e", help="environment from the inventory")],
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="key=value")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="publish the plan only")] = False,
    as_json: AsJson = False,
    as_user: AsUser = None,
    local: Local = False,
    verbose: Verbose = False,
) -> None:
    """Run a runbook now. When `opsflow up` (or a worker) serves it, this is a flow run of its
    deployment, which goes on if this terminal goes away (Ctrl-C detaches); otherwise, or with
    --local, it runs in this process. Either way it shows in the Prefect UI."""
    quiet_prefect(verbose)
    params: dict[str, Any] = parse_params(param or [])
    check_env(env)
    from deployments.runbooks import get_runbook

    try:
        book = get_runbook(runbook)
    except InputError as exc:
        fail(EXIT_BAD_INPUT, str(exc))
    requested_by = _requester(env, as_user or get_settings().user)
    api = use_server_if_running()
    printer = RunPrinter(verbose=verbose, approval_hint=lambda: approval_hint(env))
    say = _say(as_json)
    if api is not None and not local:
        from cli.follow import Api, coerce, follow_to_end, served_deployment, submit

        client = Api(api)
        dep = served_deployment(client, book.deployment_name)
        if dep is not None:
            # The terminal does not import the runbook (nor Prefect): the server checks the
            # parameters against the deployment's schema, and the flow's plan refuses the rest
            # (an unknown database or backup id…) where it runs, before any side effect or
            # ledger row; either way the exit code is 2 with the field named.
            schema = dep.get("parameter_openapi_schema") or {}
            _check_names(sorted(schema.get("properties") or {}), runbook, params)
            parameters = {"env": env, "dry_run": dry_run, "requested_by": requested_by}
            flow_run = submit(client, dep, parameters | coerce(schema, params))
            run_id = str(flow_run["id"])
            printer.approval_hint = lambda: approval_hint(env, run_id)
            say(
                f"{runbook} on {env}: run {run_id} of deployment {book.deployment_name} "
                f"({api.removesuffix('/api')}; Ctrl-C detaches)"
            )
            sys.exit(follow_to_end(client, run_id, printer, as_json))
        say(f"note: nothing serves {book.deployment_name} at {api}; running in this process")
    starting = None
    if api is None:  # this OPSFLOW_HOME's server comes up while the runbook is checked
        from deployments.up import HomeServerStart

        starting = HomeServerStart.begin(get_settings().home)
        os.environ["PREFECT_API_URL"] = starting.api  # before Prefect is imported
    try:
        check_ledger()  # this process writes it (a served run checks the runner's where it runs)
        _check_params(book, env, params, requested_by)  # before a run exists
    except BaseException:
        if starting is not None:  # bad input leaves nothing behind
            starting.abandon()
        raise
    if starting is not None:
        api = starting.ready(Console(stderr=True, quiet=as_json))
        if starting.launch is not None:
            home = get_settings().home
            say(
                f"note: no Prefect server configured: started one for {home} at {api}; it "
                "stays up for the next commands (`opsflow down` stops it)"
            )
    say(f"{runbook} on {env}, in this process")
    bars = printer.bars(enabled=not as_json and err.is_terminal)
    with no_heartbeat(), bars, printer.in_process():
        state = book.flow(
            env=env, dry_run=dry_run, requested_by=requested_by, return_state=True, **params
        )
    sys.exit(_report_state(state, as_json))


def _say(quiet: bool) -> Any:
    def say(text: str) -> None:
        if not quiet:
            err.print(text, soft_wrap=True, highlight=False)

    return say


@contextmanager
def no_heartbeat() -> Iterator[None]:
    """No flow-run heartbeat thread for a run in this process: joining it costs up to 1 s at
    the end of every run, and nothing watches the heartbeats of a run started in a terminal
    (served runs keep theirs: their runner's process is not this one)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield


def approval_hint(env: str, run_id: str = "RUN_ID") -> str | None:
    """Who may approve a run of ``env`` and the command, from the inventory's policy."""
    from opsflow.inventory import load_inventory

    policy = load_inventory().environment(env).approvals
    if policy is None:
        return None
    needed = f"{policy.required} of" if policy.required > 1 else "one of"
    return (
        f"{needed} {', '.join(policy.approvers)} (not the requester) answers with "
        f"`opsflow approve {run_id} --as NAME --reason TEXT` or `opsflow reject {run_id} "
        "--as NAME --reason TEXT`, which ask for the approver's one-time code (or the run's "
        "Resume button in the Prefect UI)"
    )


def _requester(env: str, requested_by: str) -> str:
    """Who asks (a protected environment's run must say: refused here, before a flow run
    exists, as the flow itself refuses it when started from the UI or the API)."""
    from opsflow.approvals import requester
    from opsflow.inventory import load_inventory

    try:
        return requester(env, load_inventory().environment(env), requested_by)
    except InputError as exc:
        fail(EXIT_BAD_INPUT, str(exc))


def _check_names(accepted: list[str], runbook: str, params: dict[str, Any]) -> None:
    """Unknown parameter names are bad input, refused before any run."""
    reserved = {"env", "dry_run", "requested_by"}
    accepted = [name for name in accepted if name not in reserved]
    for name in params:
        if name not in accepted:
            hint = f"use one of: {', '.join(accepted)}" if accepted else "it takes none"
            fail(
                EXIT_BAD_INPUT,
                f"--param {name}: {runbook} has no parameter {name!r} "
                f"(fix: {hint}; --env, --dry-run and --as are options)",
            )


def _check_params(book: Any, env: str, params: dict[str, Any], requested_by: str) -> Any:
    """Bad parameters are refused before any run exists, without a server: unknown names,
    values of the wrong type or out of range (the flow's signature), and what the runbook's
    plan refuses (an unknown database or backup id, a ``target_db`` naming the live file…).
    The flow checks again where it runs, with what only that place knows (its secrets).
    Returns the plan."""
    flow, runbook = book.flow, book.name
    _check_names(sorted(flow.parameters.properties), runbook, params)
    prefect_flows = logging.getLogger("prefect.flows")  # it logs the failure a second time
    was, prefect_flows.disabled = prefect_flows.disabled, True
    try:
        values = flow.validate_parameters({**params, "requested_by": requested_by})
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

        return plan(
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
    rejected = None
    if not state.is_completed() and state.state_details.flow_run_id is not None:
        rejected = rejection_reason(str(state.state_details.flow_run_id))
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


def _print_result(result: Any) -> None:
    from opsflow.security import SecurityReport

    if isinstance(result, SecurityReport):
        table = new_table(f"{result.env}: findings", "severity", "check", "target", "summary")
        for f in result.findings:
            table.add_row(
                status_word(f.severity.value),
                f.check,
                escape(redact(f.target)),
                escape(redact(f.summary)),
            )
        out.print(table)
        return
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
    as_json: AsJson = False,
    as_user: AsUser = None,
    local: Local = False,
    verbose: Verbose = False,
) -> None:
    """Bring back the application an interrupted restore left stopped: what the restore
    recorded next to it (replica count annotation, container markers). Refused while another
    run holds the environment. Same as `opsflow run recover --env ENV`."""
    run(
        runbook="recover",
        env=env,
        param=None,
        dry_run=False,
        as_json=as_json,
        as_user=as_user,
        local=local,
        verbose=verbose,
    )


@app.command()
def plan(
    runbook: Annotated[str, typer.Argument(help="runbook name")],
    env: Annotated[str, typer.Option("--env", "-e", help="environment from the inventory")],
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="key=value")] = None,
) -> None:
    """Show what a runbook would do, without touching anything or contacting a server (a plan
    may read the catalog or what a deploy target runs now)."""
    from deployments.runbooks import get_runbook

    try:
        book = get_runbook(runbook)
    except InputError as exc:
        fail(EXIT_BAD_INPUT, str(exc))
    shown = _check_params(book, env, parse_params(param or []), get_settings().user or "-")
    out.print(shown.to_markdown(), markup=False)
