"""The incident's markdown (``flows/incident.py``): the report ``incident-<env>`` (steps with
start and end, response times, the diagnostics snapshot) and the **post-mortem draft** after
seed 001's "Incident Communication Template" and seed 003's post-incident review (Summary,
Timeline, Impact, Root Cause, Resolution, Action Items, Lessons Learned), its timeline filled
from what the flow saw and did (UTC, links to runs); what only people can say is TODO.

Pure: the models are ``opsflow.incidents``'; every text from a system is redacted again here.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from opsflow.durations import format_duration
from opsflow.incidents import ACTION_DAYS, IncidentReport, ResponseTimes, utc
from opsflow.redaction import redact

TAIL_SHOWN = 5
"""Error lines, rollouts shown per item in the report (the snapshot keeps them all)."""


def _cell(value: Any) -> str:
    text = "-" if value is None or value == "" else str(value)
    return redact(text.replace("|", "\\|").replace("\n", " "))


def _link(text: str, url: str | None) -> str:
    return f"[{text}]({url})" if url else text


def _since(times: ResponseTimes, moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return format_duration(max(moment - times.started_at, timedelta(0)))


def response_table(times: ResponseTimes) -> list[str]:
    lines = [
        "| | at (UTC) | after the start |",
        "|---|---|---|",
        f"| started ({times.started_from}) | {utc(times.started_at)} | - |",
    ]
    for label, moment in (
        (f"acknowledged (target {format_duration(times.target)})", times.acknowledged_at),
        ("mitigated", times.mitigated_at),
        (
            f"resolved{f' ({times.resolved_from})' if times.resolved_from else ''}",
            times.resolved_at,
        ),
    ):
        lines.append(f"| {label} | {utc(moment)} | {_since(times, moment)} |")
    lines += ["", *(f"- **BREACH**: {b}" for b in times.breaches)] if times.breaches else []
    return lines


def timeline(report: IncidentReport) -> list[tuple[datetime, str]]:
    """Every moment the flow saw or did, in time order: events and each step's start → end."""
    items: list[tuple[datetime, str]] = [(e.at, _link(e.what, e.link)) for e in report.events]
    for s in report.steps:
        end = f" → {s.ended_at:%H:%M:%S}" if s.ended_at else ""
        what = _link(f"`{s.step}` {s.target}", s.link)
        items.append(
            (
                s.started_at,
                f"{what} ({s.started_at:%H:%M:%S}{end}, {s.seconds:.1f}s): **{s.status}**"
                f"{' — ' + s.summary if s.summary else ''}",
            )
        )
    return sorted(items, key=lambda item: item[0])


def render_incident_report(report: IncidentReport) -> str:
    lines = [
        f"# Incident {report.incident_id}: `{report.env}` {report.severity} "
        f"**{report.outcome.upper()}**",
        "",
        report.line(),
        "",
        f"- requested by: {report.requested_by}",
        f"- run: {_link(report.flow_run_id or '-', report.flow_run_url)}",
        f"- notified: {', '.join(report.notified) or '-'}",
        f"- remediation: {report.remediation} {report.remediation_result}".rstrip(),
        f"- approved by: {', '.join(report.approved_by) or '-'}",
        "",
        "## Steps",
        "",
        "| step | target | status | started (UTC) | ended | seconds | summary |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in report.steps:
        ended = f"{s.ended_at:%H:%M:%S}" if s.ended_at else "-"
        lines.append(
            f"| {_cell(s.step)} | {_cell(s.target)} | {s.status} | {s.started_at:%H:%M:%S} "
            f"| {ended} | {s.seconds:.1f} | {_cell(s.summary)} |"
        )
    if report.response is not None:
        lines += ["", "## Response times", "", *response_table(report.response)]
    lines += diagnostics_section(report.snapshot)
    if report.error:
        lines += ["", f"**Error:** {report.error}"]
    return redact("\n".join(lines) + "\n")


def diagnostics_section(snapshot: dict[str, Any]) -> list[str]:
    """The snapshot in the report: each container / pod with its last error lines, the
    events, the rollout history, the last changes, the health check and the figures."""
    lines = ["", "## Diagnostics snapshot"]
    items = snapshot.get("containers", []) + snapshot.get("pods", [])
    if items:
        lines += ["", "| kind | name | state | restarts | exit code | error lines | image(s) |"]
        lines.append("|---|---|---|---|---|---|---|")
        for i in items:
            image = i.get("image") or ", ".join(i.get("images") or [])
            lines.append(
                f"| {i.get('kind')} | {_cell(i.get('name'))} | {_cell(i.get('state'))} | "
                f"{i.get('restart_count', 0)} | {_cell(i.get('exit_code'))} | "
                f"{len(i.get('error_lines') or [])} | {_cell(image)} |"
            )
        for i in items:
            if i.get("error"):
                lines += ["", f"**{i.get('name')}** could not be read: {_cell(i['error'])}"]
            errors = (i.get("error_lines") or [])[-TAIL_SHOWN:]
            if errors:
                lines += ["", f"Last error lines of **{i.get('name')}**:", "", "```"]
                lines += [*errors, "```"]
    events = snapshot.get("events", [])
    if events:
        lines += ["", "Events:", ""]
        lines += [
            f"- {e.get('last_seen') or '-'} {e.get('type')} {e.get('reason')} "
            f"{e.get('object')} x{e.get('count') or 1}: {_cell(e.get('message'))}"
            for e in events[: TAIL_SHOWN * 2]
        ]
    rollouts = snapshot.get("rollouts", [])
    if rollouts:
        lines += ["", "Rollout history:", ""]
        lines += [
            f"- revision {r['revision']} ({r.get('created') or '-'}): "
            f"{', '.join(r.get('images') or [])} {_cell(r.get('change_cause'))}"
            for r in rollouts[:TAIL_SHOWN]
        ]
    changes = snapshot.get("changes", {})
    if changes.get("runs"):
        lines += ["", "Last deploys and rollbacks:", ""]
        lines += [
            f"- {r['finished_at']} {r['runbook']} {r['status']} by {r['triggered_by']}: "
            f"{_cell(r['summary'])}"
            for r in changes["runs"]
        ]
        lines += [
            f"  - approval {a['event']} {a['actor'] or ''} at {a['at']} ({a['flow_run_id']})"
            for a in changes.get("approvals", [])
        ]
    health = snapshot.get("health")
    if health:
        lines += ["", f"Health check: {_link(str(health.get('state')), health.get('link'))}: "]
        lines[-1] += _cell(health.get("message"))
    metrics = snapshot.get("metrics", [])
    lines += [""] if metrics else []
    for figure in metrics:
        lines.append(f"- metric `{figure['name']}` ({figure['start']} → {figure['end']}): ")
        lines[-1] += _cell(figure.get("error") or _figure_values(figure.get("series") or []))
    return lines if len(lines) > 2 else []


def _figure_values(series: list[dict[str, Any]]) -> str:
    values = [float(v) for s in series for _, v in s.get("points") or [] if v == v]
    if not values:
        return f"{len(series)} series, no values"
    return f"{len(series)} series, min {min(values):.4g}, max {max(values):.4g}"


def _findings(report: IncidentReport) -> list[str]:
    """Leads for the root cause from the snapshot: what crashed, restarted, logged errors,
    changed last."""
    leads: list[str] = []
    for item in report.snapshot.get("containers", []) + report.snapshot.get("pods", []):
        restarts = item.get("restart_count") or 0
        errors = item.get("error_lines") or []
        if restarts or errors or item.get("state") not in ("running", "Running"):
            what = f"{item.get('kind', 'container')} `{item.get('name')}`: {item.get('state')}"
            if item.get("exit_code") not in (None, 0):
                what += f", last exit code {item.get('exit_code')}"
            what += f", {restarts} restart(s)"
            if item.get("reasons"):
                what += f" ({', '.join(item['reasons'])})"
            if errors:
                what += f"; last error line: `{_cell(errors[-1])}`"
            leads.append(what)
    for event in report.snapshot.get("events", [])[:5]:
        leads.append(
            f"event {event.get('type')} {event.get('reason')} on {event.get('object')}: "
            f"{_cell(event.get('message'))} (x{event.get('count') or 1})"
        )
    changes = report.snapshot.get("changes", {}).get("runs", [])
    if changes:
        last = changes[0]
        leads.append(
            f"last change: {last.get('runbook')} {last.get('status')} at "
            f"{last.get('finished_at')} by {last.get('triggered_by')}: {_cell(last.get('summary'))}"
        )
    return leads


def _services(report: IncidentReport) -> list[str]:
    names = [
        str(i.get("name"))
        for i in report.snapshot.get("containers", []) + report.snapshot.get("pods", [])
        if i.get("restart_count") or i.get("state") not in ("running", "Running")
    ]
    if report.alert is not None:
        for key in ("service", "job", "deployment", "pod", "container"):
            if report.alert.labels.get(key):
                names.append(f"{key}={report.alert.labels[key]}")
    return list(dict.fromkeys(names))


def render_post_mortem(report: IncidentReport, now: datetime) -> str:
    """The post-mortem draft: the seed's template, filled from what the flow saw and did;
    what only people can say is marked TODO."""
    times, alert = report.response, report.alert
    title = report.incident_id + (f" — {alert.name}" if alert is not None and alert.name else "")
    lines = [
        f"# Incident Report: {title}",
        "",
        f"_Post-mortem DRAFT written by opsflow at {utc(now)} from incident run "
        f"{_link(report.flow_run_id or '-', report.flow_run_url)}; complete the TODOs._",
        "",
        "## Summary",
        "",
        f"{report.severity} incident in `{report.env}`: {report.summary}.",
        "",
        f"- opened by: {report.requested_by}"
        + (f" from alert `{alert.name}` ({alert.status})" if alert is not None else ""),
    ]
    if alert is not None:
        labels = ", ".join(f"{k}={v}" for k, v in sorted(alert.labels.items()))
        lines.append(f"- alert labels: {labels or '-'}")
        for key in ("summary", "description"):
            if alert.annotations.get(key):
                lines.append(f"- alert {key}: {alert.annotations[key]}")
    lines += [f"- outcome of the run: **{report.outcome}** — {report.line()}", ""]
    lines += ["## Timeline", "", "All times UTC."]
    lines += [""] + [f"- **{at:%Y-%m-%d %H:%M:%S}** - {what}" for at, what in timeline(report)]
    if times is not None:
        lines += ["", "### Response times", "", *response_table(times)]
    end = times.resolved_at if times is not None else None
    start = times.started_at if times is not None else None
    duration = (
        format_duration(end - start)
        if end is not None and start is not None
        else f"ongoing when this draft was written ({utc(now)})"
    )
    services = _services(report)
    lines += [
        "",
        "## Impact",
        "",
        f"- **Duration**: {duration}",
        "- **Users Affected**: TODO (number/percentage)",
        f"- **Services Affected**: {', '.join(services) or 'TODO'}",
        "- **Revenue Impact**: TODO (if applicable)",
        "",
        "## Root Cause",
        "",
        "TODO: the underlying cause, confirmed. Leads from the diagnostics snapshot:",
        "",
    ]
    leads = _findings(report)
    lines += [f"- {lead}" for lead in leads] or ["- nothing abnormal was seen by the snapshot"]
    remediate = report.step_named("remediate")
    if remediate is not None:
        how = (
            f"opsflow applied **{report.remediation}** at {utc(remediate.ended_at)}: "
            f"{remediate.status} — {remediate.summary}"
        )
        if report.approved_by:
            how += f" (approved by {', '.join(report.approved_by)})"
    else:
        how = "No remediation was applied by opsflow (remediation=none). TODO: how it was fixed."
    lines += ["", "## Resolution", "", how]
    if times is not None and times.resolved_at is not None:
        lines.append(f"Resolved at {utc(times.resolved_at)} ({times.resolved_from}).")
    due = (now + timedelta(days=ACTION_DAYS[report.severity])).date().isoformat()
    actions = ["Confirm the root cause and write it above"]
    actions += [f"Follow up: {lead.split(':')[0]}" for lead in leads[:3]]
    if times is not None and times.breaches:
        actions.append("Review the response: " + "; ".join(times.breaches))
    failed = [s for s in report.steps if s.status == "failed"]
    if failed:
        actions.append("Fix what failed during the response: " + ", ".join(s.step for s in failed))
    lines += ["", "## Action Items", ""]
    lines += [f"{i}. [ ] {a} - Owner: TODO - Due: {due}" for i, a in enumerate(actions, 1)]
    response = (
        "the response met its target"
        if times is not None and not times.breaches
        else "the response target was BREACHED"
        if times is not None
        else "-"
    )
    lines += ["", "## Lessons Learned", "", f"- Response: {response}.", "- TODO: key takeaways"]
    return redact("\n".join(lines) + "\n")
