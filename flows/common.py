"""What every runbook flow does around its steps: resolve the environment, log through the
redacting handlers, publish the plan, record each step and the run in the ledger, and classify
the ending.

Steps are recorded in one way: ``with run.step(name, target) as step: ...`` (a check result
goes through ``run.record_check``, which writes its row the same way, ``run.record``)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ParamSpec, TypeVar

from prefect import Flow, flow, get_run_logger
from prefect.context import get_run_context
from pydantic import BaseModel

from connectors import ledger_heads
from opsflow.errors import InputError
from opsflow.inventory import BackupStore, Environment, Inventory, load_inventory
from opsflow.ledger import Ledger, StepRow, utcnow
from opsflow.plans import Plan
from opsflow.redaction import install_log_redaction, redact
from opsflow.reports import artifact_key, publish_markdown
from opsflow.results import CheckResult, Status

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


class _DropThreadTimeoutWarning(logging.Filter):
    """Prefect warns on every threaded task that has a timeout; our tasks enforce their own
    timeouts inside (socket, subprocess and HTTP deadlines), so the warning is only noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (message.startswith("Timeout of") and "worker thread" in message)


_QUIET = _DropThreadTimeoutWarning()


def quiet_thread_timeout_warning() -> None:
    for name in ("", "prefect", "prefect.task_runs"):
        for handler in logging.getLogger(name).handlers:
            if _QUIET not in handler.filters:
                handler.addFilter(_QUIET)


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


CATALOG_SCAN = 10_000
"""How many ledger backup rows a runbook reads to build its catalog."""


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
    and ``print`` going to the run's log."""
    decorator: Callable[[Callable[P, R]], Flow[P, R]] = flow(
        name=name,
        description=description,
        timeout_seconds=timeout_seconds,
        log_prints=True,
        **options,
    )
    return decorator


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
    def start(cls, runbook: str, env_name: str, requested_by: str = "") -> RunbookRun:
        """Validate inventory and environment (InputError before any side effect)."""
        install_log_redaction()
        quiet_thread_timeout_warning()
        inventory = load_inventory()
        env = inventory.environment(env_name)
        logger = get_run_logger()
        run = cls(
            runbook=runbook,
            env_name=env_name,
            env=env,
            inventory=inventory,
            ledger=Ledger(),
            logger=logger,
            flow_run_id=current_flow_run_id(),
            requested_by=requested_by or "unknown",
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
        self.logger.info("%s on %s finished: %s (%s)", self.runbook, self.env_name, status, summary)
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
