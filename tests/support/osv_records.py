"""OSV records for the security review's tests, in osv.dev's format
(https://ossf.github.io/osv-schema/), and the few real advisories several tests use."""

from __future__ import annotations

from typing import Any


def record(
    ident: str,
    ecosystem: str,
    name: str,
    *ranges: list[dict[str, str]],
    kind: str | None = None,
    versions: list[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One record: ``ranges`` are event lists (``[{"introduced": "0"}, {"fixed": "1.2"}]``),
    of ``kind`` (SEMVER for npm, else ECOSYSTEM), plus ``versions`` and any other fields."""
    range_kind = kind or ("SEMVER" if ecosystem == "npm" else "ECOSYSTEM")
    affected: dict[str, Any] = {
        "package": {"ecosystem": ecosystem, "name": name},
        "ranges": [{"type": range_kind, "events": events} for events in ranges],
    }
    if versions is not None:
        affected["versions"] = versions
    return {
        "schema_version": "1.6.0",
        "id": ident,
        "modified": "2024-01-01T00:00:00Z",
        "summary": f"{name}: {ident}",
        "affected": [affected],
        **extra,
    }


REQUESTS = record(
    "GHSA-j8r2-6x86-q33q",
    "PyPI",
    "requests",
    [{"introduced": "0"}, {"fixed": "2.31.0"}],
    aliases=["CVE-2023-32681"],
    database_specific={"severity": "MODERATE"},
)
URLLIB3 = record(  # a range that does not hold 1.26.18
    "GHSA-g4mx-q9vg-27p4", "PyPI", "urllib3", [{"introduced": "2.0.0"}, {"fixed": "2.0.7"}]
)
