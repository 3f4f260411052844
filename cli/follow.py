"""Runs that outlive the terminal: `opsflow run` through a served deployment, following its
state, logs and transfer progress; ``opsflow logs RUN_ID`` (follow again) and ``opsflow cancel
RUN_ID``.

A deployment is *served* when the server has it, it is not paused and a runner or worker
polled for its runs within ``POLLED_SECONDS`` (its status is READY: `opsflow up`, `serve` and
workers poll every few seconds; `serve` pauses its deployments when it stops). The CLI talks to
the Prefect REST API with plain httpx (retrying 503s of the SQLite-backed server), so following
a served run does not import Prefect: the run's process pays for that, not the terminal.
Ctrl-C detaches (exit 130); the run goes on where it is served.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import httpx
import typer

from cli.app import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_REJECTED,
    app,
    err,
    fail,
    new_table,
    out,
    status_word,
    use_server_if_running,
)
from cli.output import RunPrinter, quiet_prefect
from opsflow.redaction import redact
from opsflow.reports import is_finished_line

EXIT_DETACHED = 130
POLLED_SECONDS = 60
"""A deployment whose runner last polled longer ago than this is not served (Prefect marks it
NOT_READY after the same 60 s)."""
POLL_SECONDS = 0.25
SLOW_POLL_SECONDS = 1.0
QUICK_SECONDS = 30.0
LAST_LOGS_SECONDS = 3.0
FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
_RETRY_STATUS = {502, 503, 504}


class Api:
    """The few Prefect REST calls the CLI makes, retried when the server is busy."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=30)

    def call(self, method: str, path: str, retries: int = 5, **kwargs: Any) -> httpx.Response:
        """One request; a 5xx of a busy server or a dropped connection is retried with
        backoff, ``retries`` times, then the command fails in one line."""
        for attempt in range(retries + 1):
            try:
                response = self.http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if attempt == retries:
                    fail(EXIT_FAILED, f"the Prefect API at {self.url} does not answer: {exc}")
            else:
                if response.status_code not in _RETRY_STATUS or attempt == retries:
                    return response
            time.sleep(0.2 * 2**attempt)
        raise AssertionError("unreachable")

    def flow_run(self, run_id: str) -> dict[str, Any]:
        response = self.call("GET", f"/flow_runs/{run_id}")
        if response.status_code in (404, 422):
            fail(EXIT_BAD_INPUT, f"RUN_ID: no flow run {run_id!r} on {self.url}")
        response.raise_for_status()
        return dict(response.json())

    def logs_after(self, run_id: str, after: str | None) -> list[dict[str, Any]]:
        logs: dict[str, Any] = {"flow_run_id": {"any_": [run_id]}}
        if after is not None:
            logs["timestamp"] = {"after_": after}
        response = self.call(
            "POST", "/logs/filter", json={"logs": logs, "sort": "TIMESTAMP_ASC", "limit": 200}
        )
        response.raise_for_status()
        return list(response.json())


def served_deployment(api: Api, name: str) -> dict[str, Any] | None:
    """The deployment ``<flow>/<deployment>`` if something serves it now, else None (also when
    the server does not answer: the run then happens in this process, and says so)."""
    try:
        response = api.http.get(f"/deployments/name/{name}", timeout=5)
    except httpx.TransportError:
        return None
    if response.status_code != 200:
        return None
    dep = dict(response.json())
    polled = dep.get("last_polled")
    if dep.get("paused") or dep.get("status") != "READY" or not polled:
        return None
    age = datetime.now(UTC) - datetime.fromisoformat(polled.replace("Z", "+00:00"))
    return dep if age < timedelta(seconds=POLLED_SECONDS) else None


def coerce(schema: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """``--param`` values are text: turn them into the types the deployment's parameter schema
    asks for (the server validates them against it)."""
    props = schema.get("properties") or {}
    result: dict[str, Any] = {}
    for name, value in params.items():
        prop = props.get(name) or {}
        types = {prop.get("type")} | {t.get("type") for t in prop.get("anyOf") or []}
        if isinstance(value, str) and value == "" and "null" in types:
            result[name] = None
        elif isinstance(value, str) and types & {"integer", "number", "boolean"}:
            try:
                result[name] = json.loads(value.lower() if "boolean" in types else value)
            except json.JSONDecodeError:
                result[name] = value  # the server says what is wrong with it
        else:
            result[name] = value
    return result


def submit(api: Api, dep: dict[str, Any], parameters: dict[str, Any]) -> dict[str, Any]:
    """Create a flow run of the deployment (the server validates the parameters)."""
    response = api.call(
        "POST", f"/deployments/{dep['id']}/create_flow_run", json={"parameters": parameters}
    )
    if response.status_code in (409, 422):
        detail = response.json().get("detail", response.text)
        fail(EXIT_BAD_INPUT, f"--param: the deployment refused the parameters: {detail}")
    response.raise_for_status()
    return dict(response.json())


@dataclass
class Follower:
    api: Api
    run_id: str
    printer: RunPrinter

    def follow(self, until_final: bool = True) -> dict[str, Any]:
        """Print the run's log lines as they arrive until it ends; return the final run.

        A run's log lines reach the API in batches, some after its final state, so after the
        end this waits (up to ``LAST_LOGS_SECONDS``) for the runbook's closing line
        (``opsflow.reports.finished_line``, logged after its ledger row) or, for a run that
        ended without one, the engine's. State and logs are polled every ``POLL_SECONDS``
        for the first ``QUICK_SECONDS``, then every ``SLOW_POLL_SECONDS``."""
        self._seen: set[str] = set()
        self._after: str | None = None
        started = time.monotonic()
        while True:
            run = self.api.flow_run(self.run_id)
            state = (run.get("state") or {}).get("type")
            self._print_new()
            if state == "PAUSED":
                self.printer.waiting_for_approval()
            if state in FINAL:
                deadline = time.monotonic() + LAST_LOGS_SECONDS
                while not self._closed and time.monotonic() < deadline:
                    time.sleep(POLL_SECONDS / 2)
                    self._print_new()
                return run
            if not until_final:
                return run
            quick = time.monotonic() - started < QUICK_SECONDS
            time.sleep(POLL_SECONDS if quick else SLOW_POLL_SECONDS)

    _closed = False

    def _print_new(self) -> None:
        for log in self.api.logs_after(self.run_id, self._after):
            if log["id"] in self._seen:
                continue
            self._seen.add(log["id"])
            self._after = log["timestamp"]
            message = str(log["message"])
            if log.get("task_run_id") is None and (
                is_finished_line(message) or message.startswith("Finished in state")
            ):
                self._closed = True
            self.printer.line(message, int(log.get("level") or 20))


def detach_hint(run_id: str) -> None:
    err.print(
        f"\ndetached; run {run_id} goes on where it is served.\n"
        f"  follow it again: opsflow logs {run_id}\n"
        f"  cancel it:       opsflow cancel {run_id}"
    )


def follow_to_end(api: Api, run_id: str, printer: RunPrinter, as_json: bool) -> int:
    """Follow a served run until it ends (Ctrl-C detaches) and report it; the exit code."""
    try:
        with printer.bars(enabled=not as_json and err.is_terminal):
            run = Follower(api, run_id, printer).follow()
    except KeyboardInterrupt:
        detach_hint(run_id)
        return EXIT_DETACHED
    return report_run(run, as_json)


def report_run(run: dict[str, Any], as_json: bool) -> int:
    """The exit code of a finished flow run from its final state and the ledger, after the
    final table (from the run's persisted result, else from the ledger's step rows)."""
    state = run.get("state") or {}
    name, message = state.get("name", ""), redact(state.get("message") or "")
    run_id = str(run["id"])
    if state.get("type") != "COMPLETED":
        for kind in ("InputError: ", "InventoryError: "):  # InventoryError is an InputError
            if kind in message:
                fail(EXIT_BAD_INPUT, message.split(kind, 1)[1])
        rejected = rejection_reason(run_id)
        if rejected:
            fail(EXIT_REJECTED, rejected)
    if as_json:
        result = _result(run)
        payload = result if result is not None else _ledger_record(run_id)
        if hasattr(payload, "model_dump"):
            payload = payload.model_dump(mode="json")
        out.print_json(redact(json.dumps(payload, default=str)))
    else:
        _print_steps(run_id)
        out.print(f"[bold]{name}[/]: {message}")
    return EXIT_OK if state.get("type") == "COMPLETED" and name == "Completed" else EXIT_FAILED


def rejection_reason(flow_run_id: str) -> str | None:
    """Why the run was rejected or timed out, from the ledger (None when it was not)."""
    from opsflow.approvals import final_decision
    from opsflow.ledger import Ledger, LedgerUnavailable

    try:
        decision = final_decision(Ledger(), flow_run_id)
    except LedgerUnavailable:
        return None  # the run failed on the ledger itself; its state says how
    if decision is None:
        return None
    # the same words as the flow's own ApprovalRejected (opsflow.approvals), whichever path
    # reports it: the server may fail a never-resumed paused run before the flow does
    if decision.event == "timed_out":
        return f"{decision.action} on {decision.env}: {decision.reason}. Nothing was changed."
    return (
        f"{decision.action} on {decision.env} rejected by {decision.actor}: {decision.reason}. "
        "Nothing was changed."
    )


def _result(run: dict[str, Any]) -> Any:
    """The run's persisted result (runbook flows persist theirs as JSON), None if unreadable
    here (e.g. a worker on another machine keeps its result storage)."""
    data = (run.get("state") or {}).get("data")
    if not data:
        return None
    try:
        from prefect.client.schemas.objects import State

        value = State.model_validate(run["state"]).result(raise_on_failure=False)
    except Exception:  # noqa: BLE001 - fall back to the ledger's record of the run
        return None
    return None if isinstance(value, BaseException) else value


def _ledger_record(run_id: str) -> dict[str, Any]:
    from opsflow.ledger import Ledger

    ledger = Ledger()
    runs = [r for r in ledger.runs(limit=50) if r.flow_run_id == run_id]
    steps = ledger.steps(run_id)
    return {
        "flow_run_id": run_id,
        "status": runs[0].status if runs else None,
        "summary": runs[0].summary if runs else None,
        "steps": [
            {"step": s.step, "target": s.target, "status": s.status, "summary": s.summary}
            for s in steps
        ],
    }


def _print_steps(run_id: str) -> None:
    from opsflow.ledger import Ledger

    ledger = Ledger()
    steps = ledger.steps(run_id)
    if not steps:
        return
    runs = [r for r in ledger.runs(limit=50) if r.flow_run_id == run_id]
    title = f"{steps[0].env}: {runs[0].status}" if runs else steps[0].env
    table = new_table(title, "status", "step", "target", "summary", "ms")
    from rich.markup import escape

    for s in steps:
        table.add_row(
            status_word(s.status),
            s.step,
            escape(redact(s.target)),
            escape(redact(s.summary)),
            str(s.duration_ms),
        )
    out.print(table)


RunId = Annotated[str, typer.Argument(help="the flow run id (as `opsflow run` printed it)")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="every log line of the run")]


def _api() -> Api:
    api = use_server_if_running()
    if api is None:
        fail(EXIT_BAD_INPUT, "no Prefect server (fix: set PREFECT_API_URL or run `opsflow up`)")
    return Api(api)


@app.command()
def logs(
    run_id: RunId,
    verbose: Verbose = False,
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", help="follow until the run ends")
    ] = True,
) -> None:
    """Show a run's steps as they finish (and its transfers) until it ends, then its result:
    how to follow again a run `opsflow run` detached from. Exit code as `opsflow run`."""
    quiet_prefect(verbose)
    api = _api()
    printer = RunPrinter(verbose=verbose)
    if not follow:
        run = Follower(api, run_id, printer).follow(until_final=False)
        state = run.get("state") or {}
        out.print(f"[bold]{state.get('name', '')}[/]: {redact(state.get('message') or '')}")
        return
    sys.exit(follow_to_end(api, run_id, printer, as_json=False))


@app.command()
def cancel(run_id: RunId) -> None:
    """Cancel a run: its runner stops the run's process (a restore scales the application
    back up from what it recorded: see `opsflow recover`)."""
    api = _api()
    run = api.flow_run(run_id)
    state = (run.get("state") or {}).get("type")
    if run.get("deployment_id") is None:
        fail(
            EXIT_BAD_INPUT,
            f"RUN_ID: run {run_id} runs inside the terminal that started it (--local); stop it "
            "there with Ctrl-C",
        )
    if state in FINAL:
        fail(EXIT_BAD_INPUT, f"RUN_ID: run {run_id} has already ended ({state})")
    response = api.call(
        "POST",
        f"/flow_runs/{run_id}/set_state",
        json={"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": True},
    )
    response.raise_for_status()
    answer = response.json()
    if answer.get("status") not in ("ACCEPT", None):
        fail(EXIT_FAILED, f"the server did not cancel run {run_id}: {answer.get('details')}")
    out.print(f"cancelling run {run_id} ({(run.get('state') or {}).get('name')} before)")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        now = (api.flow_run(run_id).get("state") or {}).get("type")
        if now in FINAL:
            out.print(f"run {run_id}: {now.lower()}")
            return
        time.sleep(POLL_SECONDS)
    fail(
        EXIT_FAILED,
        f"run {run_id} is still cancelling after 60s (fix: check that its runner is up: "
        "`opsflow up` or the worker)",
    )
