"""Maintenance (``flows/maintenance.py``), the pure parts: what one maintenance step reports
(before and after figures), the run's report and its markdown, and which steps a variant runs.

The plan (``plan_maintenance``: which steps a variant runs, and the requests refused) is
here too, pure, as ``flows/maintenance.py`` applies it.

Every maintenance task returns a ``MaintenanceStep``; the flow records it as a ledger step (its
``before`` / ``after`` figures in the step's details, where the capacity report and the next
run's window planning read them back).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from opsflow import catalog
from opsflow.errors import InputError
from opsflow.inventory import Environment
from opsflow.plans import Plan, PlanStep
from opsflow.reports import report_header

Variant = Literal["weekly", "monthly", "quarterly", "emergency"]
StepStatus = Literal["complete", "degraded", "failed", "skipped"]
Figure = float | int | str | None

RUNBOOK = "maintenance"
VARIANTS: tuple[Variant, ...] = ("weekly", "monthly", "quarterly", "emergency")
MODE_ON, MODE_OFF = "maintenance_mode_on", "maintenance_mode_off"


class MaintenanceStep(BaseModel):
    """What one maintenance step did, with the figures before and after it."""

    step: str
    target: str
    status: StepStatus = "complete"
    summary: str = ""
    before: dict[str, Figure] = Field(default_factory=dict)
    after: dict[str, Figure] = Field(default_factory=dict)
    details: dict[str, Any] = Field(default_factory=dict)
    seconds: float = 0.0

    def ledger_details(self) -> dict[str, Any]:
        return {"before": self.before, "after": self.after, **self.details}


class MaintenanceReport(BaseModel):
    """The report ``maintenance-<env>`` and the ledger run's details."""

    env: str
    variant: Variant
    requested_by: str
    window: str = ""
    reason: str | None = None
    approved_by: list[str] = Field(default_factory=list)
    backup: str = ""
    rollback: str = ""
    """Whether a rollback is possible: the newest backups verified / drill-passed, or why not."""
    maintenance_mode: str = "not configured"
    steps: list[MaintenanceStep] = Field(default_factory=list)
    outcome: str = "failed"
    error: str | None = None
    seconds: float = 0.0
    dry_run: bool = False

    @property
    def skipped(self) -> list[MaintenanceStep]:
        return [s for s in self.steps if s.status == "skipped"]

    @property
    def failed(self) -> list[MaintenanceStep]:
        return [s for s in self.steps if s.status == "failed"]

    @property
    def degraded(self) -> list[MaintenanceStep]:
        return [s for s in self.steps if s.status == "degraded"]

    def grade(self) -> str:
        """complete, degraded (a step degraded or was skipped) or failed."""
        if self.error or self.failed:
            return "failed"
        return "degraded" if self.degraded or self.skipped else "complete"

    def summary(self) -> str:
        done = sum(s.status in ("complete", "degraded") for s in self.steps)
        parts = [f"{self.variant}: {done}/{len(self.steps)} step(s) done"]
        for label, items in (
            ("failed", self.failed),
            ("degraded", self.degraded),
            ("skipped", self.skipped),
        ):
            if items:
                parts.append(f"{label}: " + ", ".join(f"{s.step} {s.target}" for s in items))
        if self.error:
            parts.append(self.error)
        return "; ".join(parts)


def _cell(value: Any) -> str:
    text = "-" if value is None or value == "" else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _figures(step: MaintenanceStep) -> list[str]:
    keys = list(dict.fromkeys([*step.before, *step.after]))
    return [f"{k}: {_cell(step.before.get(k))} → {_cell(step.after.get(k))}" for k in keys]


def render_maintenance_report(report: MaintenanceReport, started: datetime) -> str:
    title = f"Maintenance ({report.variant}): `{report.env}` **{report.outcome.upper()}**"
    lines = [
        *report_header(title, started, report.seconds, report.summary()),
        "",
        f"- requested by: {report.requested_by}",
        f"- approved by: {', '.join(report.approved_by) or '-'}",
        f"- window: {report.window or '-'}",
    ]
    if report.reason:
        lines.append(f"- reason: {report.reason}")
    lines += [
        f"- pre-maintenance backup: {report.backup or '-'}",
        f"- rollback possible: {report.rollback or '-'}",
        f"- maintenance mode: {report.maintenance_mode}",
        "",
        "## Steps",
        "",
        "| step | target | status | seconds | summary | before → after |",
        "|---|---|---|---|---|---|",
    ]
    for s in report.steps:
        lines.append(
            f"| {_cell(s.step)} | {_cell(s.target)} | {s.status} | {s.seconds:.1f} | "
            f"{_cell(s.summary)} | {_cell('; '.join(_figures(s)))} |"
        )
    if report.skipped:
        lines += ["", "## Skipped", ""]
        lines += [f"- **{s.step} {s.target}**: {s.summary}" for s in report.skipped]
    if report.error:
        lines += ["", f"**Error:** {report.error}"]
    return "\n".join(lines) + "\n"


def needs_approval(env: Environment, variant: str, override: str | None, full: bool) -> bool:
    return env.protected or variant == "emergency" or bool(override) or full


def check_request(
    env_name: str,
    env: Environment,
    variant: str,
    reason: str | None,
    override_window_reason: str | None,
    vacuum_full: bool,
) -> None:
    """Parameters that must fit the environment (no I/O): InputError naming the parameter."""
    if variant not in VARIANTS:
        raise InputError("variant", f"is {variant!r}", f"use one of: {', '.join(VARIANTS)}")
    for name, value in (("reason", reason), ("override_window_reason", override_window_reason)):
        if value is not None and not value.strip():
            raise InputError(name, "is empty", "say in a few words why")
    if variant == "emergency" and not reason:
        raise InputError(
            "reason", "is missing: emergency maintenance needs a reason", "pass reason=<why now>"
        )
    asks = [
        (variant == "emergency", "variant", "emergency maintenance runs outside the window"),
        (bool(override_window_reason), "override_window_reason", "overriding the window"),
        (vacuum_full, "vacuum_full", "VACUUM FULL locks every table it rewrites"),
    ]
    for asked, name, why in asks:
        if asked and env.approvals is None:
            raise InputError(
                name,
                f"needs an approval ({why}) and environment {env_name} has no approvers",
                f"add approvals to environments.{env_name}, or run without {name}",
            )
    if vacuum_full and not any(db.kind == "postgres" for db in env.databases):
        raise InputError(
            "vacuum_full", f"environment {env_name} has no PostgreSQL database", "leave it false"
        )


def work_steps(env: Environment, variant: str, vacuum_full: bool = False) -> list[PlanStep]:
    """The variant's maintenance steps, in order (between maintenance mode on and off)."""
    steps: list[PlanStep] = []
    m = env.maintenance
    pg = m.postgres
    vacuum = "VACUUM (FULL, ANALYZE)" if vacuum_full else "VACUUM (ANALYZE)"
    for db in env.databases:
        if db.kind == "postgres":
            steps += [
                PlanStep(action="measure_postgres", target=db.name, why="figures before"),
                PlanStep(
                    action="vacuum_postgres",
                    target=db.name,
                    changes=True,
                    why=f"{vacuum} per table; lock_timeout {pg.lock_timeout}, "
                    f"statement_timeout {pg.statement_timeout}",
                ),
                PlanStep(
                    action="reindex_postgres",
                    target=db.name,
                    changes=True,
                    why=f"REINDEX CONCURRENTLY of indexes over {pg.reindex_bloat_pct:g}% bloat",
                ),
                PlanStep(action="measure_postgres", target=db.name, why="figures after"),
            ]
        else:
            steps.append(
                PlanStep(
                    action="maintain_sqlite",
                    target=db.name,
                    changes=True,
                    why="optimize, wal_checkpoint(TRUNCATE), VACUUM over "
                    f"{m.sqlite.vacuum_free_pct:g}% free pages",
                )
            )
    for name in dict.fromkeys(rule.redis for rule in m.redis_cleanup):
        rules = [r for r in m.redis_cleanup if r.redis == name]
        what = ", ".join(
            r.pattern + (" (flush)" if r.flush else f" idle>{r.idle_over}") for r in rules
        )
        steps.append(PlanStep(action="clean_redis", target=name, changes=True, why=what))
    for policy in m.log_archive:
        steps.append(
            PlanStep(
                action="archive_logs",
                target=policy.path,
                changes=True,
                why=f"to the backup store, then {policy.then}",
            )
        )
    if m.container_log_lines and (env.docker is not None or env.kubernetes is not None):
        steps.append(
            PlanStep(
                action="summarize_app_logs",
                target="containers/pods",
                why=f"last {m.container_log_lines} lines each",
            )
        )
    days = 90 if variant == "quarterly" else 30
    steps.append(PlanStep(action="capacity_report", target=f"{days}d", why="from the ledger"))
    if variant in ("monthly", "quarterly"):
        if m.benchmark is not None:
            steps.append(
                PlanStep(
                    action="compare_performance",
                    target=m.benchmark.name,
                    why=f"{m.benchmark.requests} requests; p50/p95 against earlier months",
                )
            )
        steps.append(PlanStep(action="dr_drill", target="subflow", why="monthly DR drill"))
    if variant == "quarterly":
        steps.append(PlanStep(action="security_review", target="subflow", why="quarterly"))
    return steps


def plan_maintenance(
    env_name: str,
    env: Environment,
    variant: str = "weekly",
    reason: str | None = None,
    override_window_reason: str | None = None,
    vacuum_full: bool = False,
    skip_backup: bool = False,
) -> Plan:
    """The ordered steps of a maintenance run (pure; bad input raises InputError)."""
    check_request(env_name, env, variant, reason, override_window_reason, vacuum_full)
    window = env.maintenance_window
    guard = (
        f"inside the maintenance window ({window.cron}, {window.duration}, {window.timezone})"
        if window
        else "no maintenance_window: only change freezes refuse it"
    )
    if variant == "emergency" or override_window_reason:
        guard = "emergency / override: runs outside the window, with approval"
    steps = [PlanStep(action="check_window", target=env_name, why=guard)]
    notes: list[str] = []
    if needs_approval(env, variant, override_window_reason, vacuum_full):
        steps.append(PlanStep(action="request_approval", target=env_name, why="approval policy"))
    backed = bool(env.databases or env.redis)
    if skip_backup:
        notes.append("no pre-maintenance backup: skip_backup=true (recorded in the ledger)")
    elif env.backup_store is None or not backed:
        notes.append("no pre-maintenance backup: no backup_store or nothing to back up")
    else:
        steps.append(PlanStep(action="backup", target=env_name, changes=True, why="subflow"))
    steps.append(PlanStep(action="check_rollback", target=env_name, why="newest backups verified"))
    mode = env.maintenance_mode
    if mode is not None:
        steps.append(PlanStep(action=MODE_ON, target=mode.url, changes=True, why=mode.on_method))
    else:
        notes.append("no maintenance_mode: the application is not switched")
    steps += work_steps(env, variant, vacuum_full)
    if mode is not None:
        steps.append(
            PlanStep(
                action=MODE_OFF, target=mode.url, changes=True, why=f"{mode.off_method}, always"
            )
        )
    steps.append(PlanStep(action="health_check", target=env_name, why="post-maintenance"))
    notes.append("a step that would end after the window closes is skipped and reported")
    return Plan(
        runbook=RUNBOOK,
        env=env_name,
        steps=steps,
        parameters={"variant": variant, "vacuum_full": vacuum_full, "skip_backup": skip_backup},
        notes=notes,
    )


def rollback_possible(
    env_name: str, env: Environment, entries: list[catalog.CatalogEntry], passed: set[str]
) -> str:
    """Whether each database's newest backup is verified (``passed``: backup ids a DR drill
    restored and checked); one line for the report."""
    newest = catalog.newest_by_series(catalog.good(entries))
    parts = []
    for db in env.databases:
        entry = newest.get(catalog.series_key(env_name, db.kind, db.name))
        if entry is None:
            parts.append(f"{db.name}: NO backup")
        elif entry.verified or entry.backup_id in passed:
            parts.append(f"{db.name}: yes (backup {entry.backup_id} verified)")
        else:
            parts.append(f"{db.name}: backup {entry.backup_id} exists but was never drill-verified")
    return "; ".join(parts) or "no databases"
