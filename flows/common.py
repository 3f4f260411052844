"""What every runbook flow does around its steps: resolve the environment, log through the
redacting handlers, publish the plan, take the environment's lock, record each step and the run
in the ledger, and classify the ending.

Steps are recorded in one way: ``with run.step(name, target) as step: ...`` (a check result
goes through ``run.record_check``, which writes its row the same way, ``run.record``).

**The environment lock.** ``with run.exclusive(wait_seconds): ...`` holds the environment's
lock for the block: a strict Prefect global concurrency limit ``env-<name>`` with limit 1,
which opsflow creates (or sets back to limit 1, active) when it is missing. Backup, restore and
the DR drill (and, later, deploy and maintenance) take it around everything they change, so two
of them never change one environment at once; runs of different environments do not wait for
each other. A run that finds the lock held polls for it up to ``wait_seconds`` (the runbooks'
``wait_for_lock`` parameter: default ``LOCK_WAIT_SECONDS``, 0 = do not wait), logging who holds
it, then fails with ``PermanentError`` naming the run that holds it (its flow-run name and id:
the holder tags its flow run ``opsflow-holds:env-<name>`` while it holds the lock) and records
the failed run in the ledger. The slot is a lease (``OPSFLOW_LOCK_LEASE_SECONDS``, default
120 s) renewed in the background while the run lives: a killed run's lock frees itself once
its lease expires (then at most ~15 s later, when the server's repossessor runs). The lock is
not re-entrant (a flow holding it must not start another locked runbook of the same
environment as a subflow), and a renewal that fails is logged, not fatal: a run is never cut
off half-way through a restore because the Prefect API blinked."""

from __future__ import annotations

import inspect
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, ParamSpec, TypeVar

import httpx
from prefect import Flow, flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import (
    GlobalConcurrencyLimitCreate,
    GlobalConcurrencyLimitUpdate,
)
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    FlowRunFilterTags,
)
from prefect.client.schemas.objects import ConcurrencyLeaseHolder, State, StateType
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency
from prefect.context import get_run_context
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.utilities.hashing import file_hash
from pydantic import BaseModel, Field

from connectors import ledger_heads
from opsflow.approvals import requester
from opsflow.errors import InputError, PermanentError, TransientError
from opsflow.inventory import BackupStore, Database, Environment, Inventory, load_inventory
from opsflow.inventory.references import check_references
from opsflow.ledger import Ledger, StepRow, utcnow
from opsflow.log_filters import QUIET_LOCK, quiet_prefect_noise
from opsflow.plans import Plan
from opsflow.redaction import install_log_redaction, redact, redacted_errors
from opsflow.reports import artifact_key, finished_line, publish_markdown
from opsflow.results import CheckResult, Status
from opsflow.settings import get_settings

P = ParamSpec("P")
R = TypeVar("R")
COMPLETE, FAILED = "complete", "failed"
SUMMARY_CHARS = 500
ERROR_CHARS = 2000
_LEVELS = {
    FAILED: logging.ERROR,
    Status.CRITICAL.value: logging.ERROR,
    Status.DEGRADED.value: logging.WARNING,
}
T = TypeVar("T")


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


CATALOG_SCAN = 10_000
"""How many ledger backup rows a runbook reads to build its catalog."""

LOCK_WAIT_SECONDS = 1800
"""How long a run waits for its environment's lock by default (``wait_for_lock``)."""
LockWait = Annotated[int, Field(ge=0)]
"""The type of every runbook's ``wait_for_lock`` parameter: seconds, 0 to fail at once."""
LOCK_POLL_SECONDS = 2.0
LOCK_LOG_EVERY_SECONDS = 60.0
HOLDER_TAG = "opsflow-holds:"


def lock_name(env_name: str) -> str:
    """The Prefect global concurrency limit that serialises the runs of one environment."""
    return f"env-{env_name}"


def ensure_lock(name: str) -> None:
    """Create the global concurrency limit ``name`` (limit 1, active, no decay) if it is
    missing, or set it back to that if someone changed it."""
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1, active=True)
                )
                return
            except ObjectAlreadyExists:  # another run created it at the same moment
                limit = client.read_global_concurrency_limit_by_name(name)
        if limit.limit != 1 or not limit.active or limit.slot_decay_per_second:
            client.update_global_concurrency_limit(
                name,
                GlobalConcurrencyLimitUpdate(limit=1, active=True, slot_decay_per_second=0.0),
            )


def lock_holders(name: str, exclude: str = "") -> list[str]:
    """``<runbook> run '<name>' (<id>)`` of each running flow run tagged as holding ``name``."""
    running = FlowRunFilterState(
        type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PAUSED])
    )
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[HOLDER_TAG + name]), state=running
            ),
            limit=10,
        )
        return [
            f"{client.read_flow(r.flow_id).name} run '{r.name}' ({r.id})"
            for r in runs
            if str(r.id) != exclude
        ]


def _locked(exc: ConcurrencySlotAcquisitionError) -> bool:
    """The limit exists and is full (HTTP 423), as opposed to a missing limit or an API error."""
    cause = exc.__cause__
    return isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 423


def _flow_run_uuid(flow_run_id: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(flow_run_id)
    except ValueError:  # "local": not a Prefect flow run
        return None


def require_store(env_name: str, env: Environment) -> BackupStore:
    if env.backup_store is None:
        raise InputError(
            f"environments.{env_name}.backup_store",
            "is missing: there is nowhere to put backups",
            'add backup_store: {url: "file:///var/backups/opsflow"} or an s3:// URL',
        )
    return env.backup_store


def runbook_flow(
    name: str, description: str, *, timeout_seconds: float = 12 * 3600, **options: Any
) -> Callable[[Callable[P, R]], Flow[P, R]]:
    """The Prefect flow of a runbook: its name, the description the UI shows, a run timeout,
    ``print`` going to the run's log, secrets masked in what its run leaves in Prefect (an
    exception it raises, the message of a state it returns: ``redacted_flow``), and its result
    (the report, already redacted) persisted as JSON, so `opsflow run` following a served run
    can print it (``--json``)."""

    def decorator(fn: Callable[P, R]) -> Flow[P, R]:
        made: Flow[P, R] = flow(
            name=name,
            description=description,
            timeout_seconds=timeout_seconds,
            log_prints=True,
            persist_result=True,
            result_serializer="json",
            version=file_hash(inspect.getsourcefile(fn) or ""),  # the runbook's file, as
            **options,  # Prefect's default would hash the wrapper's file
        )(redacted_flow(fn))
        return made

    return decorator


def redacted_flow(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` raising through ``redacted_errors``, with the message of a state it returns
    redacted (a runbook that ends ``Failed(message=...)`` itself)."""
    return redacted_errors(fn, on_result=_redact_state)


def _redact_state(result: R) -> R:
    if isinstance(result, State) and result.message:
        result.message = redact(result.message)
    return result


def pg_reach(run: RunbookRun, index: int, db: Database) -> dict[str, Any]:
    """The arguments every PostgreSQL task takes to reach database ``index`` of the run's
    environment: the database, its inventory path, and the environment's Docker engine and
    Kubernetes cluster (for ``docker_exec`` / ``kubectl_exec``)."""
    return {
        "db": db,
        "field": f"environments.{run.env_name}.databases[{index}]",
        "docker": run.env.docker,
        "kubernetes": run.env.kubernetes,
    }


def scales(env: Environment) -> bool:
    """The environment has an application a restore stops: a deployment or Docker services."""
    k8s = env.kubernetes is not None and bool(env.kubernetes.deployment)
    return k8s or (env.docker is not None and bool(env.docker.services))


def app_target(env: Environment) -> str:
    """The application a restore stops, as shown in plans and reports."""
    if env.kubernetes is not None and env.kubernetes.deployment:
        return f"deployment {env.kubernetes.namespace}/{env.kubernetes.deployment}"
    if env.docker is not None:
        return "containers " + ", ".join(s.container for s in env.docker.services)
    return "-"


def current_flow_run_id() -> str:
    context = get_run_context()
    flow_run = getattr(context, "flow_run", None)
    return str(flow_run.id) if flow_run is not None else "local"


def summarize(value: Any) -> str:
    """A task's return value as a step summary: redacted and short."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return redact(str(value))[:SUMMARY_CHARS]


@dataclass
class Step:
    """A step being recorded by ``RunbookRun.step``; the block fills in what happened.

    ``status`` stays None for "complete" (or "failed" when the block raises); ``fail`` marks a
    failure the block handled itself. The duration is the block's wall time."""

    name: str
    target: str
    summary: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    status: str | None = None

    def result(self, value: T) -> T:
        """Summarise a task's return value (redacted, shortened) and hand it back."""
        self.summary = summarize(value)
        return value

    def fail(self, error: str) -> None:
        """The step failed without raising (e.g. a task state that ended Failed)."""
        self.status, self.summary = FAILED, error


@dataclass
class RunbookRun:
    """One execution of a runbook against one environment."""

    runbook: str
    env_name: str
    env: Environment
    inventory: Inventory
    ledger: Ledger
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger]
    flow_run_id: str
    requested_by: str
    started_at: datetime = field(default_factory=utcnow)
    started_clock: float = field(default_factory=time.monotonic)

    @classmethod
    def start(cls, runbook: str, env_name: str, requested_by: str) -> RunbookRun:
        """Validate inventory, environment and requester (a protected environment's run must
        name who asks), and resolve every secret reference of the environment where the flow
        runs: InputError before any side effect or ledger row."""
        install_log_redaction()
        quiet_prefect_noise()
        inventory = load_inventory()
        env = inventory.environment(env_name)
        requested_by = requester(env_name, env, requested_by)
        check_references(env_name, env)
        logger = get_run_logger()
        run = cls(
            runbook=runbook,
            env_name=env_name,
            env=env,
            inventory=inventory,
            ledger=Ledger(),
            logger=logger,
            flow_run_id=current_flow_run_id(),
            requested_by=requested_by,
        )
        # Before any side effect: a locked, unreachable or read-only ledger, or the wrong
        # key, fails the run here, not after a backup was taken that cannot be catalogued.
        run.ledger.check_writable()
        logger.info("%s on %s requested by %s", runbook, env_name, run.requested_by)
        return run

    @property
    def key(self) -> str:
        return artifact_key(self.runbook, self.env_name)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started_clock

    def publish_plan(self, plan: Plan) -> None:
        publish_markdown(f"{self.key}-plan", plan.to_markdown(), f"Plan of {self.runbook}")
        self.logger.info("Plan: %d steps", len(plan.steps))

    @contextmanager
    def step(self, name: str, target: str) -> Iterator[Step]:
        """Record the block as one step: its status (complete, or failed with the redacted
        error, which is re-raised), duration and summary, in the ledger and the run's log."""
        step = Step(name, target)
        self.logger.info("%s %s: started", name, target)
        started = time.monotonic()
        try:
            yield step
        except Exception as exc:
            error = redact(str(exc) or type(exc).__name__)[:ERROR_CHARS]
            self.record(
                name, target, FAILED, error, duration_ms=_ms_since(started), details=step.details
            )
            raise
        self.record(
            name,
            target,
            step.status or COMPLETE,
            step.summary,
            duration_ms=_ms_since(started),
            details=step.details,
        )

    def record_check(self, result: CheckResult) -> StepRow:
        """A health check's result as a step (its status is the check's grade)."""
        return self.record(
            result.check,
            result.target,
            result.status.value,
            result.summary,
            duration_ms=result.duration_ms,
            details=result.details,
        )

    def record(
        self,
        name: str,
        target: str,
        status: str,
        summary: str = "",
        *,
        duration_ms: int = 0,
        details: dict[str, Any] | None = None,
    ) -> StepRow:
        """Write one step row (the ledger redacts it) and log it; the only writer of steps."""
        row = self.ledger.record_step(
            flow_run_id=self.flow_run_id,
            runbook=self.runbook,
            env=self.env_name,
            step=name,
            target=target,
            status=status,
            summary=summary,
            duration_ms=duration_ms,
            details=details or {},
        )
        level = _LEVELS.get(status, logging.INFO)
        self.logger.log(level, "%s %s: %s %s", name, target, status, redact(summary))
        return row

    @contextmanager
    def exclusive(self, wait_seconds: float = LOCK_WAIT_SECONDS) -> Iterator[None]:
        """Hold this environment's lock for the block (see the module docstring): wait up to
        ``wait_seconds`` for it (0: not at all), else record the run failed and raise
        ``PermanentError`` naming the run that holds it."""
        name = lock_name(self.env_name)
        concurrency_log = logging.getLogger("prefect._internal.concurrency")
        if QUIET_LOCK not in concurrency_log.filters:
            concurrency_log.addFilter(QUIET_LOCK)
        try:
            ensure_lock(name)
        except (httpx.HTTPError, RuntimeError) as exc:
            raise TransientError(
                f"cannot set up the lock {name} of environment {self.env_name}: "
                f"{redact(str(exc))} (fix: check that the Prefect server is reachable)"
            ) from None
        me = _flow_run_uuid(self.flow_run_id)
        holder = ConcurrencyLeaseHolder(type="flow_run", id=me) if me else None
        lease = get_settings().lock_lease_seconds
        started = time.monotonic()
        logged = -LOCK_LOG_EVERY_SECONDS
        with ExitStack() as stack:
            while True:
                slot = concurrency(
                    name,
                    occupy=1,
                    max_retries=0,  # one attempt: this loop waits, logs and gives up
                    lease_duration=lease,
                    strict=True,
                    holder=holder,
                    raise_on_lease_renewal_failure=False,
                )
                try:
                    stack.enter_context(slot)
                    break
                except ConcurrencySlotAcquisitionError as exc:
                    if not _locked(exc):
                        raise TransientError(
                            f"cannot take the lock {name} of environment {self.env_name}: "
                            f"{redact(str(exc))} (fix: check that the Prefect server is "
                            "reachable)"
                        ) from None
                waited = time.monotonic() - started
                if waited >= wait_seconds:
                    self._busy(name, wait_seconds)
                if waited - logged >= LOCK_LOG_EVERY_SECONDS:
                    holders = lock_holders(name, exclude=self.flow_run_id) or ["another run"]
                    self.logger.info(
                        "waiting for the lock %s of %s (held by %s), up to %ds",
                        name,
                        self.env_name,
                        ", ".join(holders),
                        wait_seconds,
                    )
                    logged = waited
                time.sleep(min(LOCK_POLL_SECONDS, max(wait_seconds - waited, 0.0)))
            self.logger.info(
                "%s holds the lock %s (after %.1fs)", self.runbook, name, time.monotonic() - started
            )
            if me is not None:
                stack.callback(self._tag, me, HOLDER_TAG + name, False)
                self._tag(me, HOLDER_TAG + name, True)
            yield

    def _busy(self, name: str, wait_seconds: float) -> None:
        try:
            holders = lock_holders(name, exclude=self.flow_run_id)
        except (httpx.HTTPError, RuntimeError):
            holders = []
        who = ", ".join(holders) or (
            "another run (not found: it may have just finished, or it was killed and its "
            "lease expires soon)"
        )
        waited = f"waited {wait_seconds:.0f}s" if wait_seconds > 0 else "did not wait"
        message = (
            f"environment {self.env_name} is busy: {who} holds its lock {name}; this "
            f"{self.runbook} run {waited} and changed nothing (fix: let that run finish, then "
            "run this again, or pass wait_for_lock=<seconds> to wait longer)"
        )
        self.finish(FAILED, message)
        raise PermanentError(message)

    def _tag(self, flow_run: uuid.UUID, tag: str, add: bool) -> None:
        """Add or remove ``tag`` on this flow run (best effort: it only names the holder)."""
        try:
            with get_client(sync_client=True) as client:
                tags = set(client.read_flow_run(flow_run).tags)
                client.update_flow_run(flow_run, tags=sorted(tags | {tag} if add else tags - {tag}))
        except (httpx.HTTPError, RuntimeError, ObjectNotFound) as exc:
            self.logger.warning("could not %s tag %s: %s", "set" if add else "clear", tag, exc)

    def notifier(self) -> Callable[[str, str], None] | None:
        """Send (subject, body) to the environment's notify targets; None when it has none.

        A failed notification is logged, never fatal: it must not block an approval."""
        if not self.env.notify:
            return None
        from tasks.notify import send_notification

        def send(subject: str, body: str) -> None:
            try:
                send_notification(self.env.notify, subject, body, env=self.env_name)
            except Exception as exc:  # noqa: BLE001 - logged; the runbook goes on
                self.logger.error("Notification failed: %s", exc)

        return send

    def finish(self, status: str, summary: str, details: dict[str, Any] | None = None) -> None:
        self.ledger.record_run(
            flow_run_id=self.flow_run_id,
            runbook=self.runbook,
            env=self.env_name,
            status=status,
            started_at=self.started_at,
            finished_at=utcnow(),
            triggered_by=self.requested_by,
            summary=summary,
            details=details or {},
        )
        self.logger.info(finished_line(self.runbook, self.env_name, status, summary))
        self.publish_ledger_heads()

    def publish_ledger_heads(self) -> None:
        """Publish the ledger's signed chain heads outside its database: an artifact of this
        run, ``$OPSFLOW_HOME`` and the environment's backup store (see docs/ledger.md).

        The heads replace the previous ones only if the ledger still holds what those said
        (else a cut tail would be laundered into the newest heads): otherwise the problem is
        logged as an error and the old heads stay. An unreadable or badly signed earlier copy
        is logged and replaced. Publishing never fails the run."""
        try:
            doc = self.ledger.heads(self.flow_run_id)
            earlier = [self.ledger.local_heads()]
            if self.env.backup_store is not None:
                earlier.append(ledger_heads.previous(self.env.backup_store, self.env_name))
            found = [p for e in earlier if e is not None for p in self.ledger.check_heads(e)]
        except Exception as exc:  # noqa: BLE001 - the run's work is done; say why, go on
            self.logger.error("Ledger heads not published: %s", redact(str(exc)))
            return
        # An earlier copy that cannot be read or is not validly signed is replaced (and said
        # so); rows that an earlier valid copy names and the ledger no longer holds are not.
        for problem in (p for p in found if p.table == "heads"):
            self.logger.error("Ledger heads: %s; replacing it", problem.problem)
        problems = [p for p in found if p.table != "heads"]
        publish_markdown(
            f"{self.key}-ledger-heads", render_heads(doc, problems), "Ledger chain heads"
        )
        if problems:
            self.logger.error(
                "Ledger does not extend its published heads, which were kept (run `opsflow "
                "ledger verify`): %s",
                "; ".join(str(p) for p in problems[:5]),
            )
            return
        self.ledger.save_local_heads(doc)
        if self.env.backup_store is not None:
            try:
                ledger_heads.publish(self.env.backup_store, self.env_name, doc)
            except Exception as exc:  # noqa: BLE001 - the local copy and the artifact exist
                self.logger.error(
                    "Ledger heads not published to %s: %s", self.env.backup_store.url, exc
                )


def render_heads(doc: dict[str, Any], problems: Sequence[object]) -> str:
    """The heads artifact: a table of heads and the signed document to keep."""
    lines = [
        f"# Ledger chain heads after this run ({doc['published_at']})",
        "",
        f"Ledger `{doc['ledger']}`, key id `{doc['key_id']}`.",
        "",
        "| table | seq | row hash |",
        "|---|---|---|",
    ]
    lines += [f"| {t} | {h['seq']} | `{h['row_hash']}` |" for t, h in sorted(doc["heads"].items())]
    if problems:
        lines += ["", "## Not published: the ledger does not extend its earlier heads", ""]
        lines += [f"- {p}" for p in problems]
    lines += [
        "",
        "Keep a copy: `opsflow ledger verify --heads FILE` checks the ledger against it.",
        "",
        "```json",
        json.dumps(doc, indent=2, sort_keys=True),
        "```",
    ]
    return "\n".join(lines) + "\n"
