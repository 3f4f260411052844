"""The run of a runbook: ``RunbookRun`` resolves the environment, logs through the redacting
handlers, publishes the plan, takes the environment's lock, records each step and the run in
the ledger, and classifies the ending.

Steps are recorded in one way: ``with run.step(name, target) as step: ...`` (a check result
goes through ``run.record_check``, which writes its row the same way, ``run.record``).

**The environment lock.** ``with run.exclusive(wait_seconds): ...`` holds the environment's
lock for the block: a strict Prefect global concurrency limit ``env-<name>`` with limit 1,
which opsflow creates (or sets back to limit 1, active) when it is missing. Backup, restore,
the DR drill and deploy / rollback take it around everything they change, so two of them never
change one environment at once; runs of different environments do not wait for each other.
Deploy and rollback also hold ``deploy-<name>`` (``opsflow.locks``) from their start. A run
that finds the lock held polls for it up to ``wait_seconds`` (the runbooks' ``wait_for_lock``
parameter: default ``LOCK_WAIT_SECONDS``, 0 = do not wait), logging who holds
it, then fails with ``PermanentError`` naming the run that holds it (its flow-run name and id:
the holder tags its flow run ``opsflow-holds:env-<name>`` while it holds the lock) and records
the failed run in the ledger. The slot is a lease (``OPSFLOW_LOCK_LEASE_SECONDS``, default
120 s) renewed in the background while the run lives: a killed run's lock frees itself once
its lease expires (then at most ~15 s later, when the server's repossessor runs). A subflow in
the same process whose parent holds the lock goes on under it (deploy's backup), and a renewal
that fails is logged, not fatal: a run is never cut off half-way through a restore because the
Prefect API blinked."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, TypeVar

import httpx
from prefect import get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
from prefect.concurrency.sync import concurrency
from prefect.context import get_run_context
from prefect.exceptions import ObjectNotFound
from pydantic import BaseModel, Field

from connectors import ledger_heads
from opsflow.approvals import request_approval, requester
from opsflow.errors import ApprovalRejected, PermanentError, TransientError
from opsflow.inventory import Environment, Inventory, load_inventory
from opsflow.inventory.references import check_references
from opsflow.ledger import Ledger, StepRow, utcnow
from opsflow.locks import (
    HOLDER_TAG,
    ensure_lock,
    flow_run_uuid,
    is_locked,
    lock_holders,
    lock_name,
)
from opsflow.log_filters import QUIET_LOCK, quiet_prefect_noise
from opsflow.plans import Plan
from opsflow.redaction import install_log_redaction, redact
from opsflow.reports import artifact_key, finished_line, publish_markdown, render_heads
from opsflow.results import CheckResult, Status
from opsflow.settings import get_settings

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
ApprovalWait = Annotated[int, Field(gt=0)] | None
"""``approval_timeout_seconds`` of an approval-gated runbook: None, the inventory's timeout."""
LOCK_POLL_SECONDS = 2.0
LOCK_LOG_EVERY_SECONDS = 60.0
WAIT_FIX = "pass wait_for_lock=<seconds> to wait longer"
_HELD: ContextVar[frozenset[str]] = ContextVar("opsflow_locks_held", default=frozenset())
"""The locks this flow run (and so its subflows, in the same thread) holds."""


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
    def exclusive(
        self, wait_seconds: float = LOCK_WAIT_SECONDS, name: str = "", fix: str = WAIT_FIX
    ) -> Iterator[None]:
        """Hold this environment's lock (or the lock ``name``) for the block (see the module
        docstring): wait up to ``wait_seconds`` for it (0: not at all), else record the run
        failed and raise ``PermanentError`` naming the run that holds it. A subflow whose
        parent already holds the lock in this process (deploy's backup) goes on under it."""
        name = name or lock_name(self.env_name)
        held = _HELD.get()
        if name in held:
            yield
            return
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
        me = flow_run_uuid(self.flow_run_id)
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
                    if not is_locked(exc):
                        raise TransientError(
                            f"cannot take the lock {name} of environment {self.env_name}: "
                            f"{redact(str(exc))} (fix: check that the Prefect server is "
                            "reachable)"
                        ) from None
                waited = time.monotonic() - started
                if waited >= wait_seconds:
                    self._busy(name, wait_seconds, fix)
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
            stack.callback(_HELD.reset, _HELD.set(held | {name}))
            yield

    def _busy(self, name: str, wait_seconds: float, fix: str) -> None:
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
            f"run this again, or {fix})"
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

    def approve(
        self, plan: Plan, timeout_seconds: int | None = None, details: dict[str, Any] | None = None
    ) -> list[str]:
        """Ask the environment's approvers (``opsflow.approvals.request_approval``) and return
        who approved; a rejection or timeout records the run ``rejected`` and raises."""
        assert self.env.approvals is not None
        try:
            answers = request_approval(
                flow_run_id=self.flow_run_id,
                action=self.runbook,
                env=self.env_name,
                policy=self.env.approvals,
                plan=plan,
                requested_by=self.requested_by,
                ledger=self.ledger,
                log=self.logger.info,
                notify=self.notifier(),
                timeout_seconds=timeout_seconds,
            )
        except ApprovalRejected as exc:
            self.finish("rejected", str(exc), details)
            raise
        return [a.approver.strip() for a in answers]

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
