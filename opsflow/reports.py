"""Markdown and table rendering of results, and publishing them as Prefect artifacts."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from opsflow.redaction import redact, redact_data
from opsflow.results import CheckResult, RestoreReport, Status
from opsflow.units import format_bytes

_ICONS = {Status.HEALTHY: "OK", Status.DEGRADED: "WARN", Status.CRITICAL: "CRIT"}


def report_header(title: str, started: datetime, seconds: float, summary: str) -> list[str]:
    """The first lines of every runbook's report: the title (with its verdict), when it
    started and how long it took, and a one-line summary."""
    return [
        f"# {title}",
        "",
        f"Started {started:%Y-%m-%d %H:%M:%S} UTC, took {seconds:.1f}s. {summary}",
    ]


def artifact_key(runbook: str, env: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{runbook}-{env}".lower()).strip("-")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_health_report(
    env: str, overall: Status, results: Sequence[CheckResult], started: datetime, seconds: float
) -> str:
    counts = {s: sum(1 for r in results if r.status == s) for s in Status}
    lines = [
        *report_header(
            f"Health check: `{env}` is **{overall.value.upper()}**",
            started,
            seconds,
            f"{len(results)} checks: {counts[Status.HEALTHY]} healthy, "
            f"{counts[Status.DEGRADED]} degraded, {counts[Status.CRITICAL]} critical.",
        ),
        "",
    ]
    problems = [r for r in results if r.status != Status.HEALTHY]
    if problems:
        lines += ["## Needs attention", ""]
        for r in sorted(problems, key=lambda r: -r.status.rank):
            lines.append(f"- **{_ICONS[r.status]}** {r.check} `{r.target}`: {_cell(r.summary)}")
        lines.append("")
    lines += [
        "## All checks",
        "",
        "| status | check | target | summary | ms |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {_ICONS[r.status]} | {r.check} | {_cell(r.target)} | {_cell(r.summary)} "
            f"| {r.duration_ms} |"
        )
    return redact("\n".join(lines) + "\n")


def result_rows(results: Sequence[CheckResult]) -> list[dict[str, Any]]:
    rows = [
        {
            "status": r.status.value,
            "check": r.check,
            "target": r.target,
            "summary": r.summary,
            "duration_ms": r.duration_ms,
        }
        for r in results
    ]
    return list(redact_data(rows))


def publish_markdown(key: str, markdown: str, description: str) -> None:
    """Publish a markdown artifact (no-op outside a Prefect run context)."""
    from prefect.artifacts import create_markdown_artifact

    create_markdown_artifact(markdown=redact(markdown), key=key, description=redact(description))


def publish_table(key: str, rows: list[dict[str, Any]], description: str) -> None:
    from prefect.artifacts import create_table_artifact

    create_table_artifact(table=redact_data(rows), key=key, description=redact(description))


def chart_markdown(svg: str, description: str) -> str:
    """A markdown document showing ``svg`` as an embedded image (a base64 ``data:`` URL)."""
    encoded = base64.b64encode(redact(svg).encode()).decode()
    alt = _cell(redact(description)).replace("[", "(").replace("]", ")")
    return f"![{alt}](data:image/svg+xml;base64,{encoded})\n\n{_cell(redact(description))}\n"


def publish_chart(key: str, svg: str, description: str) -> None:
    """Publish an SVG chart as a markdown artifact that embeds it (no-op outside a run).

    Not ``create_image_artifact``: that one is meant for an image at a public URL, and the UI
    prints the URL (here the whole base64 document) under the image. The UI's markdown
    renderer draws a markdown image as a plain ``<img>`` whatever its URL, a ``data:`` URL
    included; an SVG shown through ``<img>`` runs no script. The SVG is redacted first."""
    publish_markdown(key, chart_markdown(svg, description), description)


def render_restore_report(report: RestoreReport, started: datetime) -> str:
    verdict = "FAILED" if report.failed else "OK"
    lines = [
        *report_header(
            f"Restore: `{report.env}` **{verdict}**",
            started,
            report.seconds,
            f"Mode `{report.mode}`"
            + (f", into `{report.target_db}`" if report.target_db else "")
            + ".",
        ),
        "",
        "| database | backup | key | sha256 | target | status | size | seconds | kept aside | "
        "health |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d in report.databases:
        lines.append(
            f"| {d.database} | {d.backup_id} | `{d.key}` | `{d.sha256[:16]}…` | {d.target} "
            f"| {d.status} | {format_bytes(d.bytes)} | {d.seconds:.2f} | {d.aside or '-'} "
            f"| {d.health or '-'} |"
        )
    lines += ["", "## Application", ""]
    lines.append(f"- scaled down: {report.scaled or 'nothing'}")
    lines.append(f"- scaled back: {report.scaled_back or 'nothing'}")
    if report.errors:
        lines += ["", "## Errors", ""]
        lines += [f"- {e}" for e in report.errors]
    return redact("\n".join(lines) + "\n")


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


FINISHED = " finished: "
"""What a runbook's closing log line holds (``finished_line``): the last line a run logs after
its ledger row is written, so a follower of the run's logs knows it has seen them all."""


def finished_line(runbook: str, env: str, status: str, summary: str) -> str:
    return f"{runbook} on {env}{FINISHED}{status} ({summary})"


def is_finished_line(message: str) -> bool:
    head, found, _ = message.partition(FINISHED)
    return bool(found) and " on " in head and "\n" not in head
