"""What a backed-up thing may be called: backups are identified by (environment, kind, name)
and stored under ``<env>/<name>/…``, so within an environment every database and Redis target
needs its own name, and the series opsflow writes itself (the configuration export, the
archived log files) are reserved. ``opsflow.inventory`` refuses an environment that breaks this."""

from __future__ import annotations

from collections.abc import Iterable

CONFIG_BACKUP_NAME = "config"
"""The name of the configuration export's backup series (``<env>/config/…``)."""
LOG_ARCHIVE_NAME = "logs"
"""The name of the series of archived log files (``<env>/logs/…``, kind ``log``)."""
RESERVED: dict[str, str] = {
    CONFIG_BACKUP_NAME: "the configuration export's backups",
    LOG_ARCHIVE_NAME: "the archived log files",
}
"""Names no database or Redis target may take, and what they are reserved for."""


def name_clashes(places: Iterable[tuple[str, str]]) -> list[str]:
    """For ``(place, name)`` pairs (``("databases[1] (postgres)", "cache")``), each name that a
    place shares with an earlier one or that is reserved, naming both places."""
    problems: list[str] = []
    first: dict[str, str] = {}
    for place, name in places:
        if name in RESERVED:
            problems.append(f"{place} is named {name!r}, which is reserved for {RESERVED[name]}")
        elif name in first:
            problems.append(f"{first[name]} and {place} are both named {name!r}")
        else:
            first[name] = place
    return problems
