"""The security review's ``logins`` check: failed logins per source IP and per user over
``security.logins.window``, in log files and (``containers: true``) the environment's Docker
container logs.

Files are read as ``tasks.logs.scan_log_file`` reads them: only the window's tail (found by
scanning backwards from the end), timestamps as ``tasks.logs.parse_timestamp`` understands
them (RFC 3339 / ISO 8601, as rsyslog on Debian 12 and ``journalctl -o short-iso`` write);
a line without one inherits the previous line's, and lines before the first timestamp count
as recent (their age is unknown; the summary says how many matched). Container logs come
from the daemon with ``since`` = the window's start and its own timestamps.

A count at or over ``threshold`` is a high finding (brute force), once per IP and once per
user; below it nothing, the summary gives the totals. A file that is missing or unreadable, or
container logs that cannot be fetched, make the outcome unusable (with the counts of what
could be read).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from connectors.docker import docker_client, docker_errors
from opsflow.durations import format_duration
from opsflow.errors import OpsflowError
from opsflow.inventory import Environment, FailedLogins
from opsflow.redaction import redact
from opsflow.security import CheckOutcome, SecurityFinding, Severity
from tasks.docker.checks import _log_lines
from tasks.logs import parse_timestamp, window_start_offset
from tasks.policy import probe_task

CHECK = "logins"
NAMES_KEPT = 20  # distinct users per IP (IPs per user) listed; counts are exact
SHOWN = 5  # of those, named in a finding's summary


@dataclass
class Tally:
    """Failed logins counted by source IP and by user."""

    by_ip: Counter[str] = field(default_factory=Counter)
    by_user: Counter[str] = field(default_factory=Counter)
    users_of: dict[str, set[str]] = field(default_factory=dict)
    ips_of: dict[str, set[str]] = field(default_factory=dict)
    undated: int = 0  # matching lines before any timestamp (counted: age unknown)

    def add(self, ip: str, user: str | None) -> None:
        self.by_ip[ip] += 1
        if user:
            self.by_user[user] += 1
            kept = self.users_of.setdefault(ip, set())
            if len(kept) < NAMES_KEPT:
                kept.add(user)
            seen = self.ips_of.setdefault(user, set())
            if len(seen) < NAMES_KEPT:
                seen.add(ip)


def count_failed_logins(
    lines: Iterable[str], pattern: re.Pattern[str], since: datetime, tally: Tally
) -> int:
    """Add the lines matching ``pattern`` (groups ``ip``, ``user``) not older than ``since`` to
    ``tally``; returns how many lines were inside the window."""
    current: datetime | None = None
    inside = 0
    for raw in lines:
        line = raw.rstrip("\r\n")
        stamp, start = parse_timestamp(line)
        if stamp is not None:
            current = stamp
        if current is not None and current < since:
            continue
        inside += 1
        match = pattern.search(line[start:])
        if match is None or not match.group("ip"):
            continue
        user = match.groupdict().get("user")
        tally.add(match.group("ip"), user)
        if current is None:
            tally.undated += 1
    return inside


def _read_file(path: str, pattern: re.Pattern[str], since: datetime, tally: Tally) -> str | None:
    """Count one file's window into ``tally``; the problem when it cannot be read."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return f"log file {path} does not exist (fix: correct security.logins.files)"
    except OSError as exc:
        return f"cannot read log file {path}: {exc.strerror} (fix: let the worker read it)"
    with handle:
        offset = window_start_offset(handle, since)
        handle.seek(offset)
        lines = (raw.decode("utf-8", "replace") for raw in handle)
        count_failed_logins(lines, pattern, since, tally)
    return None


def _read_containers(
    env: Environment, pattern: re.Pattern[str], since: datetime, tally: Tally
) -> list[str]:
    """Count every service container's logs since ``since``; the problems met."""
    if env.docker is None or not env.docker.services:
        return ["security.logins.containers is set but the environment has no docker.services"]
    problems: list[str] = []
    try:
        client = docker_client(env.docker)
    except OpsflowError as exc:
        return [str(exc)]
    try:
        for service in env.docker.services:
            name = service.container
            try:
                with docker_errors(f"logs of container {name}"):
                    chunks = client.api.logs(
                        name, stream=True, follow=False, since=since, timestamps=True
                    )
                    count_failed_logins(_log_lines(chunks), pattern, since, tally)
            except OpsflowError as exc:
                problems.append(str(exc))
    finally:
        client.close()
    return problems


def _names(names: set[str]) -> str:
    shown = sorted(names)[:SHOWN]
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def tally_findings(tally: Tally, threshold: int, window: timedelta) -> list[SecurityFinding]:
    """A high finding per IP and per user at or over ``threshold``."""
    span = format_duration(window)
    found: list[SecurityFinding] = []
    for ip, count in tally.by_ip.most_common():
        if count < threshold:
            break
        users = tally.users_of.get(ip, set())
        summary = f"brute force: {count} failed logins from {ip} in {span}"
        summary += f", users: {_names(users)}" if users else ""
        found.append(
            SecurityFinding(
                severity=Severity.HIGH,
                check=CHECK,
                target=f"ip {ip}",
                summary=redact(summary + " (fix: block the address, check the accounts)"),
                details={"count": count, "users": sorted(users)},
            )
        )
    for user, count in tally.by_user.most_common():
        if count < threshold:
            break
        ips = tally.ips_of.get(user, set())
        summary = f"brute force: {count} failed logins for user {user} in {span}"
        summary += f" from {_names(ips)}" if ips else ""
        found.append(
            SecurityFinding(
                severity=Severity.HIGH,
                check=CHECK,
                target=redact(f"user {user}"),
                summary=redact(summary + " (fix: check the account, lock it if it is attacked)"),
                details={"count": count, "ips": sorted(ips)},
            )
        )
    return found


@probe_task("check_failed_logins", timeout_seconds=300)
def check_failed_logins(env_name: str, env: Environment, logins: FailedLogins) -> CheckOutcome:
    """Failed logins of ``env_name`` over ``logins.window`` (module docstring)."""
    since = datetime.now(UTC) - logins.window
    pattern = re.compile(logins.pattern)
    tally = Tally()
    problems = [
        problem
        for path in logins.files
        if (problem := _read_file(os.path.expanduser(path), pattern, since, tally)) is not None
    ]
    sources = [*logins.files]
    if logins.containers:
        problems += _read_containers(env, pattern, since, tally)
        sources.append("container logs")
    findings = tally_findings(tally, logins.threshold, logins.window)
    findings += [
        SecurityFinding(
            severity=Severity.HIGH, check=CHECK, target=env_name, summary=redact(problem)
        )
        for problem in problems
    ]
    total = sum(tally.by_ip.values())
    summary = (
        f"{total} failed login(s) from {len(tally.by_ip)} IP(s) for {len(tally.by_user)} "
        f"user(s) in the last {format_duration(logins.window)} of {', '.join(sources) or 'nothing'}"
        f" (threshold {logins.threshold})"
    )
    if tally.undated:
        summary += f"; {tally.undated} of them on lines without a timestamp (age unknown)"
    if problems:
        summary += f"; could not read: {'; '.join(problems)}"
    return CheckOutcome(
        check=CHECK,
        target=env_name,
        summary=redact(summary),
        findings=findings,
        usable=not problems,
        details={
            "failed_logins": total,
            "top_ips": tally.by_ip.most_common(SHOWN),
            "top_users": tally.by_user.most_common(SHOWN),
            "window_seconds": logins.window.total_seconds(),
            "threshold": logins.threshold,
            "since": since.isoformat(),
        },
    )
