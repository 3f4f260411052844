"""The alert receiver: Prometheus Alertmanager's webhook in, runbook runs out
(docs/alerting.md).

``POST /alertmanager`` (bearer token ``OPSFLOW_RECEIVER_TOKEN``, compared in constant time;
401 without it) reads at most 1 MiB (400 above, as for any payload it refuses), parses the
version-4 payload (``opsflow.alerts``; 400 with the reason when it is malformed) and, per
alert, matches the inventory's ``alert_rules``, takes the dedup and rate-limit decisions
over the ledger's ``alerts`` rows and records the alert there — all before it answers 200,
so an answered alert is never lost. A run is then started off the request path, by a small
thread pool, as a flow run of the runbook's served deployment (``started`` with its flow run
id, or ``failed_to_start`` with the reason, recorded when that is known). ``GET /healthz``
says the receiver is up. The token never appears in a log line or an answer.

The inventory is read once, when the receiver starts (like ``opsflow up``'s deployments): a
change to its rules is taken after a restart.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from deployments.runbooks import get_runbook, runbooks
from opsflow.alerts import (
    MAX_BODY_BYTES,
    ZERO_TIME,
    Alert,
    AlertmanagerPayload,
    History,
    PayloadError,
    Seen,
    alert_parameter,
    check_rules,
    decide,
    firing_run,
    last_run,
    match_alert,
    naive_utc,
    parse_payload,
)
from opsflow.errors import InputError
from opsflow.inventory import Inventory
from opsflow.ledger import AlertRow, Ledger, utcnow
from opsflow.ledger.models import domain_columns
from opsflow.redaction import redact

log = logging.getLogger("opsflow.receiver")
PATH = "/alertmanager"
START_WORKERS = 2
AUTO_REMEDIATE = "auto_remediate"
MAX_BATCH = 200
"""Payloads decided and written in one ledger transaction at most."""
SEED_ROWS = 10_000
"""Ledger rows the receiver's in-memory history starts from (the newest)."""
STATE_TIMEOUT = 5.0
_REASON_CHARS = 500


def check_inventory_rules(inventory: Inventory) -> None:
    """The alert rules against prefect.yaml's runbooks: ``InputError`` naming the first."""
    problems = check_rules(inventory, runbooks())
    if problems:
        field_name, _, rest = problems[0].partition(": ")
        problem, _, fix = rest.partition(" (fix: ")
        more = f"; and {len(problems) - 1} more problems" if len(problems) > 1 else ""
        raise InputError(field_name, problem, fix.rstrip(")") + more)


@dataclass
class Starter:
    """Starts runs as flow runs of served deployments, off the request path."""

    ledger: Ledger
    recorded: Callable[[AlertRow], None]
    """Called with every row the starter records (the receiver's history takes it)."""
    pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(START_WORKERS, thread_name_prefix="alert-start")
    )
    _deployments: dict[str, tuple[UUID, frozenset[str]]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _local: threading.local = field(default_factory=threading.local)
    pending: int = 0

    def submit(self, accepted: AlertRow, parameters: dict[str, Any], alert: dict[str, Any]) -> None:
        with self._lock:
            self.pending += 1
        self.pool.submit(self._start, accepted, parameters, alert)

    def _deployment(self, client: Any, runbook: str) -> tuple[UUID, frozenset[str]]:
        """(id, parameter names) of the runbook's deployment, asked once."""
        if runbook not in self._deployments:
            name = get_runbook(runbook).deployment_name
            found = client.read_deployment_by_name(name)
            schema = found.parameter_openapi_schema or {}
            params = frozenset((schema.get("properties") or {}).keys())
            self._deployments[runbook] = (found.id, params)
        return self._deployments[runbook]

    def _client(self) -> Any:
        """This starter thread's Prefect client (made once: a new one costs ~10 ms of CPU)."""
        client = getattr(self._local, "client", None)
        if client is None:
            from prefect import get_client

            client = self._local.client = get_client(sync_client=True).__enter__()
        return client

    def _start(self, accepted: AlertRow, parameters: dict[str, Any], alert: dict[str, Any]) -> None:
        try:
            client = self._client()
            deployment_id, accepts = self._deployment(client, accepted.runbook)
            params = {k: v for k, v in parameters.items() if k != "requested_by"}
            if "requested_by" in accepts:
                params["requested_by"] = "alertmanager"
            if "alert" in accepts:
                params["alert"] = alert
            if AUTO_REMEDIATE not in accepts:  # the rule's flag, for runbooks that take it
                params.pop(AUTO_REMEDIATE, None)
            run = client.create_flow_run_from_deployment(
                deployment_id,
                parameters=params,
                tags=["alertmanager"],
                idempotency_key=f"opsflow-alert-{accepted.row_hash}",
            )
            self._record(accepted, "started", f"run {run.name}", str(run.id))
            log.info(
                "alert %s (%s): started %s run %s",
                accepted.alertname,
                accepted.env,
                accepted.runbook,
                run.id,
            )
        except Exception as exc:  # noqa: BLE001 - any failure is recorded, never raised
            reason = redact(" ".join(f"{type(exc).__name__}: {exc}".split()))[:_REASON_CHARS]
            self._record(accepted, "failed_to_start", reason, "")
            log.warning(
                "alert %s (%s): the run did not start: %s", accepted.alertname, accepted.env, reason
            )
        finally:
            with self._lock:
                self.pending -= 1

    def _record(self, accepted: AlertRow, outcome: str, reason: str, run_id: str) -> None:
        try:
            row = self.ledger.record_alert(
                **_copied(accepted), outcome=outcome, reason=reason, flow_run_id=run_id
            )
            self.recorded(row)
        except Exception:
            log.exception("alert %s: recording %s failed", accepted.alertname, outcome)

    def running(self, flow_run_id: str) -> bool:
        """Is this run still going (not in a final state)? Unknown counts as not."""
        try:
            state = self._client().read_flow_run(UUID(flow_run_id)).state
        except Exception:  # noqa: BLE001 - unreachable or unknown: not known to be running
            return False
        return state is not None and not state.is_final()

    def close(self, wait: bool = True) -> None:
        self.pool.shutdown(wait=wait, cancel_futures=not wait)


_DECIDED = ("outcome", "reason", "flow_run_id", "recorded_at")
"""What a later row of an alert says anew (the ledger stamps ``recorded_at``); the rest it
copies from the accepted row."""


def _copied(row: AlertRow) -> dict[str, Any]:
    names = (n for n in domain_columns(AlertRow) if n not in _DECIDED)
    return {name: getattr(row, name) for name in names}


Taken = list[dict[str, str]]
"""What became of each alert of a payload (the 200's ``alerts``)."""


class Receiver:
    """Takes payloads: decides and records each alert, hands runs to the ``Starter``.

    One intake thread takes the payloads in arrival order: what arrived while it was writing is
    decided together (each decision sees the ones before it) and recorded in one ledger
    transaction (group commit: one commit for many requests, each answered once its rows are
    written)."""

    def __init__(self, inventory: Inventory, token: str, ledger: Ledger) -> None:
        self.inventory = inventory
        self._token = token.encode()
        self.ledger = ledger
        self.starter = Starter(ledger, self._recorded)
        self._lock = threading.Lock()  # the history: the intake thread and the starters
        self.history = History()
        for row in reversed(ledger.alerts(limit=SEED_ROWS)):
            self.history.add(_seen(row))
        self._queue: queue.SimpleQueue[tuple[AlertmanagerPayload, Future[Taken]] | None] = (
            queue.SimpleQueue()
        )
        self._intake = threading.Thread(target=self._loop, name="alert-intake", daemon=True)
        self._intake.start()

    def _recorded(self, row: AlertRow) -> None:
        with self._lock:
            self.history.add(_seen(row))

    def authorized(self, header: str | None) -> bool:
        scheme, _, given = (header or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), self._token
        )

    def submit(self, payload: AlertmanagerPayload) -> Future[Taken]:
        """Queue ``payload``; the future is done once its alerts are recorded."""
        future: Future[Taken] = Future()
        self._queue.put((payload, future))
        return future

    def take(self, payload: AlertmanagerPayload) -> Taken:
        return self.submit(payload).result()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < MAX_BATCH:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                batch.append(more)
            self._take_batch(batch)

    def _take_batch(self, batch: list[tuple[AlertmanagerPayload, Future[Taken]]]) -> None:
        planned: list[tuple[AlertRow, dict[str, Any] | None, dict[str, Any]]] = []
        with self._lock:
            pending: list[Seen] = []
            for payload, _ in batch:
                for alert in payload.alerts:
                    row, params = self._decide(alert, payload, pending)
                    planned.append((row, params, alert_parameter(alert, payload)))
                    pending.append(_seen(row, utcnow()))
            try:
                self.ledger.append_many([row for row, _, _ in planned])
            except Exception as exc:  # noqa: BLE001 - every request of the batch is told
                for _, future in batch:
                    future.set_exception(exc)
                return
            for row, _, _ in planned:
                self.history.add(_seen(row))
        for row, params, alert_param in planned:
            log.info(
                "alert %s (%s) %s: %s %s",
                row.alertname,
                row.env or "-",
                row.status,
                row.outcome,
                row.reason,
            )
            if params is not None:
                self.starter.submit(row, params, alert_param)
        rows = iter(planned)
        for payload, future in batch:
            future.set_result([_answer(next(rows)[0]) for _ in payload.alerts])

    def _decide(
        self, alert: Alert, payload: AlertmanagerPayload, pending: list[Seen]
    ) -> tuple[AlertRow, dict[str, Any] | None]:
        """The row of ``alert`` (not yet written) and the run's parameters when it starts
        one; ``pending``: the rows decided before it in this batch."""
        match = match_alert(self.inventory, alert.labels)
        env = match.env if match.env in self.inventory.environments else ""
        rule = match.rule
        values: dict[str, Any] = {
            "env": env,
            "alertname": alert.alertname,
            "status": alert.status,
            "fingerprint": alert.fingerprint,
            "group_key": payload.group_key,
            "labels": dict(alert.labels),
            "annotations": dict(alert.annotations),
            "starts_at": naive_utc(alert.starts_at),
            "ends_at": max(naive_utc(alert.ends_at), ZERO_TIME),
            "runbook": rule.runbook if rule else "",
            "details": {
                "rule": match.place,
                "receiver": payload.receiver,
                "generator_url": alert.generator_url,
                "external_url": payload.external_url,
            },
        }
        fingerprint = alert.fingerprint
        if alert.status == "resolved":
            mine = self.history.of(fingerprint) + [
                p for p in pending if p.fingerprint == fingerprint
            ]
            run = firing_run(mine, payload.group_key, fingerprint)
            reason = f"closes run {run}" if run else "no run was started for it"
            return AlertRow(**values, outcome="resolved", flow_run_id=run, reason=reason), None
        if rule is None:
            return AlertRow(**values, outcome="unmatched", reason=match.reason), None
        now = datetime.now(UTC)
        history = self.history.relevant(env, fingerprint, now) + [
            p
            for p in pending
            if p.fingerprint == fingerprint or (p.env == env and p.outcome == "accepted")
        ]
        asked: dict[str, Any] = {
            "env": env,
            "group_key": payload.group_key,
            "fingerprint": fingerprint,
            "now": now,
            "alerting": self.inventory.environments[env].alerting,
            "history": history,
        }
        decision = decide(**asked)
        earlier = last_run(history, payload.group_key, fingerprint)
        if decision.start and earlier and self.starter.running(earlier):
            decision = decide(**asked, running=frozenset({earlier}))
        row = AlertRow(
            **values,
            outcome=decision.outcome,
            reason=decision.reason or f"starting {rule.runbook} ({match.place})",
            flow_run_id=decision.flow_run_id,
        )
        params = {"env": env, **rule.params}
        if rule.auto_remediate:
            params[AUTO_REMEDIATE] = True
        return row, (params if decision.start else None)

    def close(self) -> None:
        self._queue.put(None)
        self._intake.join(10)
        self.starter.close()
        self.ledger.close()


def _answer(row: AlertRow) -> dict[str, str]:
    return {
        "fingerprint": row.fingerprint,
        "env": row.env,
        "runbook": row.runbook,
        "outcome": row.outcome,
        "reason": row.reason,
        "flow_run_id": row.flow_run_id,
    }


def _seen(row: AlertRow, at: datetime | None = None) -> Seen:
    """The row as the decisions read it (``at``: for a row not yet written)."""
    when = at or row.recorded_at
    return Seen(when, row.env, row.group_key, row.fingerprint, row.outcome, row.flow_run_id)


def _error(status: int, reason: str) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONResponse({"error": reason}, status_code=status, headers=headers)


def make_app(receiver: Receiver) -> Starlette:
    async def alertmanager(request: Request) -> JSONResponse:
        if not receiver.authorized(request.headers.get("authorization")):
            return _error(401, "missing or wrong bearer token (Authorization: Bearer <token>)")
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            return _error(400, f"the payload has {length} bytes, at most {MAX_BODY_BYTES}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return _error(400, f"the payload is over {MAX_BODY_BYTES} bytes")
        try:
            payload = parse_payload(bytes(body))
        except PayloadError as exc:
            return _error(400, redact(str(exc))[: _REASON_CHARS * 2])
        try:
            taken = await asyncio.wrap_future(receiver.submit(payload))
        except Exception as exc:  # noqa: BLE001 - not recorded: Alertmanager retries a 503
            reason = redact(" ".join(str(exc).split()))[:_REASON_CHARS]
            log.error("alerts not recorded: %s", reason)
            return _error(503, f"the alerts could not be recorded: {reason}")
        return JSONResponse({"alerts": taken})

    async def healthz(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "starting": receiver.starter.pending})

    return Starlette(
        routes=[
            Route(PATH, alertmanager, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


# ----- serving -----------------------------------------------------------------------------


def build_receiver() -> Receiver:
    """The receiver of this process's settings: the token resolved, the inventory's rules
    checked against prefect.yaml, the ledger open. ``InputError`` when one of them is bad."""
    from opsflow.inventory import load_inventory
    from opsflow.settings import get_settings

    token = get_settings().resolved_receiver_token()
    if token is None:
        raise InputError(
            "OPSFLOW_RECEIVER_TOKEN",
            "is not set: the receiver takes no alert without a token",
            "export OPSFLOW_RECEIVER_TOKEN=<a long random token> (or env:VAR / secret:NAME) "
            "and give Alertmanager the same token (docs/alerting.md)",
        )
    inventory = load_inventory()
    check_inventory_rules(inventory)
    return Receiver(inventory, token, Ledger())


def listen(host: str, port: int) -> socket.socket:
    """A listening socket; ``OSError`` when the port is taken (or the address is wrong)."""
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets that say so (without it
    # each answer waits ~40 ms for the client's delayed ACK)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


@dataclass
class RunningReceiver:
    """A receiver served by uvicorn in a thread of this process (``opsflow up``)."""

    receiver: Receiver
    server: Any
    thread: threading.Thread
    port: int

    def stop(self, timeout: float = 10) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
        self.receiver.close()


def _server(receiver: Receiver) -> Any:
    import uvicorn

    config = uvicorn.Config(
        make_app(receiver), log_level="warning", access_log=False, lifespan="off"
    )
    return uvicorn.Server(config)


def start_in_thread(receiver: Receiver, sock: socket.socket) -> RunningReceiver:
    """Serve ``receiver`` on ``sock`` from a daemon thread; return once it answers."""
    server = _server(receiver)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="opsflow-receiver", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.02)
    return RunningReceiver(receiver, server, thread, int(sock.getsockname()[1]))


def serve_forever(receiver: Receiver, sock: socket.socket) -> None:
    """Serve ``receiver`` on ``sock`` in this thread until Ctrl-C (``opsflow receiver``)."""
    try:
        _server(receiver).run(sockets=[sock])
    finally:
        receiver.close()


def _log_to_console() -> None:
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s receiver: %(message)s", "%H:%M:%S"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def start_for_up(console: Any) -> RunningReceiver | None:
    """The receiver `opsflow up` runs beside its runner, when a token is configured: None
    (one line says why) without a token or when its port is taken; ``InputError`` when the
    token reference or the inventory's rules are bad."""
    from opsflow.settings import get_settings

    settings = get_settings()
    if settings.receiver_token is None:
        console.print("alert receiver off: OPSFLOW_RECEIVER_TOKEN is not set (docs/alerting.md)")
        return None
    receiver = build_receiver()
    host, port = settings.receiver_host, settings.receiver_port
    try:
        sock = listen(host, port)
    except OSError as exc:
        receiver.close()
        console.print(
            f"[yellow]warning:[/] alert receiver off: {host}:{port} is not free "
            f"({exc.strerror}); set OPSFLOW_RECEIVER_PORT to a free port"
        )
        return None
    _log_to_console()
    running = start_in_thread(receiver, sock)
    console.print(f"alert receiver on http://{host}:{running.port}{PATH}")
    return running


def run_standalone(host: str | None, port: int | None, console: Any) -> int:
    """`opsflow receiver`: serve until Ctrl-C (2: bad input or a busy port)."""
    from opsflow.settings import get_settings

    settings = get_settings()
    host = host or settings.receiver_host
    port = port or settings.receiver_port
    receiver = build_receiver()
    try:
        sock = listen(host, port)
    except OSError as exc:
        receiver.close()
        raise InputError(
            "--port",
            f"{host}:{port} cannot be listened on ({exc.strerror})",
            "stop what uses it, or choose another port with --port / OPSFLOW_RECEIVER_PORT",
        ) from None
    _log_to_console()
    console.print(f"alert receiver on http://{host}:{port}{PATH} (Ctrl-C to stop)")
    serve_forever(receiver, sock)
    return 0
