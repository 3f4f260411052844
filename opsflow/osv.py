"""OSV advisories (https://ossf.github.io/osv-schema/) and matching packages against them
(pure: no I/O).

``AdvisoryIndex.from_records`` parses OSV records into ``Advisory`` objects keyed by
(ecosystem, normalized package name) for the ecosystems opsflow checks: ``PyPI`` (names
normalized per PEP 503, versions compared by ``packaging.version``), ``npm`` (versions by the
``semver`` package) and ``Debian`` / ``Debian:<release>`` (source package names, versions by
``debian.debian_support.Version``). A ``SEMVER`` range is compared as SemVer whatever the
ecosystem; ``GIT`` ranges are ignored (they need the repository); records of other ecosystems
and withdrawn records are counted and left out.

A package version is affected when it is listed in ``affected[].versions`` or falls in one of
``affected[].ranges``, evaluated as the OSV spec says: events sorted by version
(``introduced: "0"`` first), ``introduced`` opens, ``fixed`` and ``limit`` close at that
version, ``last_affected`` closes after it; any range affected means affected.

Severity (``Advisory.severity``), first that applies:

1. ``database_specific.severity`` of the record (GHSA's ``CRITICAL``, ``HIGH``, ``MODERATE``,
   ``LOW``; ``MEDIUM`` too), else of an affected entry (``database_specific`` or
   ``ecosystem_specific``); ``MODERATE`` and ``MEDIUM`` are medium.
2. Otherwise high: a CVSS vector in ``severity[]`` is kept in ``Advisory.cvss`` but not scored
   (no CVSS library is a dependency of opsflow), and an advisory without any severity is
   treated as high rather than assumed harmless.

A record that is not valid OSV (no ``id``, ``affected`` not a list, an event that is not one of
introduced/fixed/last_affected/limit, a version the ecosystem cannot parse…) raises
``AdvisoryError`` naming where it came from and what is wrong; a source with no record at all,
or none for a checked ecosystem, raises too: an empty index never reads as "no
vulnerabilities".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import semver
from debian.debian_support import Version as DebianVersion
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion
from packaging.version import Version as Pep440Version

from opsflow.security import Severity

ECOSYSTEMS = ("PyPI", "npm", "Debian")
"""The ecosystems indexed (``Debian`` with or without ``:<release>``)."""

EVENTS = ("introduced", "fixed", "last_affected", "limit")
_SEVERITY_WORDS = {
    "CRITICAL": Severity.CRITICAL,
    "HIGH": Severity.HIGH,
    "MODERATE": Severity.MEDIUM,
    "MEDIUM": Severity.MEDIUM,
    "LOW": Severity.LOW,
}


class AdvisoryError(ValueError):
    """An OSV record (or a whole source) that cannot be used: ``where`` (the file and record,
    ``file.json[3] (GHSA-...)``) and the ``problem`` (naming the field)."""

    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


class VersionError(ValueError):
    """An installed version the ecosystem's ordering cannot parse."""


def _semver(version: str) -> Any:
    return semver.Version.parse(version.removeprefix("v"))


def _debian(version: str) -> Any:
    return DebianVersion(version)


def _pep440(version: str) -> Any:
    try:
        return Pep440Version(version)
    except InvalidVersion as exc:
        raise ValueError(str(exc)) from None


_SCHEMES: dict[str, Callable[[str], Any]] = {"PyPI": _pep440, "npm": _semver, "Debian": _debian}


def base_ecosystem(ecosystem: str) -> str:
    """``Debian:12`` → ``Debian``."""
    return ecosystem.split(":", 1)[0]


def normalize_name(ecosystem: str, name: str) -> str:
    """The index key of a package name: PEP 503 for PyPI, as written elsewhere."""
    return canonicalize_name(name) if base_ecosystem(ecosystem) == "PyPI" else name.strip()


def _scheme(ecosystem: str, range_type: str) -> str:
    return "npm" if range_type == "SEMVER" else base_ecosystem(ecosystem)


def parse_version(scheme: str, version: str) -> Any:
    """A comparable version of ``scheme`` (PyPI, npm, Debian); ValueError when invalid."""
    return _SCHEMES[scheme](version)


def _listed(scheme: str, version: str) -> Any:
    """A version as ``versions[]`` lists are compared: parsed (``1.0`` is ``1.0.0`` in PyPI),
    or as written when the scheme cannot parse it."""
    try:
        return parse_version(scheme, version)
    except ValueError:
        return version


@dataclass(frozen=True)
class Event:
    kind: str  # introduced, fixed, last_affected, limit
    version: str
    key: Any  # None for introduced "0" (before every version)


@dataclass(frozen=True)
class Range:
    """One ``ECOSYSTEM`` or ``SEMVER`` range, its events sorted as the spec says."""

    scheme: str  # PyPI, npm (SemVer) or Debian: how its versions compare
    events: tuple[Event, ...]

    def contains(self, key: Any) -> bool:
        affected = False
        for event in self.events:
            if event.kind == "introduced":
                if event.key is None or key >= event.key:
                    affected = True
            elif event.kind == "last_affected":
                if key > event.key:
                    affected = False
            elif key >= event.key:  # fixed, limit
                affected = False
        return affected

    def fixes_after(self, key: Any) -> list[Event]:
        return [e for e in self.events if e.kind == "fixed" and e.key > key]


@dataclass(frozen=True)
class Affected:
    """One ``affected[]`` entry: a package of an ecosystem, its ranges and listed versions."""

    ecosystem: str
    name: str  # normalized
    ranges: tuple[Range, ...]
    versions: frozenset[Any]  # parsed where possible (``_listed``)

    def affects(self, version: str, keys: Callable[[str], Any]) -> bool:
        scheme = base_ecosystem(self.ecosystem)
        if self.versions and _listed(scheme, version) in self.versions:
            return True
        return any(r.contains(keys(r.scheme)) for r in self.ranges)

    def fixes(self, keys: Callable[[str], Any]) -> list[Event]:
        return [e for r in self.ranges for e in r.fixes_after(keys(r.scheme))]


@dataclass(frozen=True)
class Advisory:
    """One OSV record, as far as matching and reporting need it."""

    id: str
    aliases: tuple[str, ...]
    summary: str
    severity: Severity
    severity_from: str  # what the severity was taken from (see the module docstring)
    affected: tuple[Affected, ...]
    origin: str  # the file (and record number) it was read from
    cvss: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """``GHSA-x (CVE-y)``: the id and its aliases."""
        return f"{self.id} ({', '.join(self.aliases)})" if self.aliases else self.id


@dataclass(frozen=True)
class Vulnerable:
    """A package version that advisories affect: what a finding says about it."""

    ecosystem: str
    name: str
    version: str
    advisories: tuple[Advisory, ...]
    fixed: dict[str, str | None] = field(default_factory=dict)  # advisory id → first fix
    upgrade_to: str | None = None  # the lowest version fixing every advisory (None: no fix)

    @property
    def severity(self) -> Severity:
        return max((a.severity for a in self.advisories), key=lambda s: s.rank)

    def summary(self) -> str:
        parts = []
        for a in self.advisories:
            fix = self.fixed.get(a.id)
            text = f"{a.label} {a.summary}".strip()
            parts.append(f"{text} (fixed in {fix})" if fix else f"{text} (no fix published)")
        head = f"{self.ecosystem} {self.name} {self.version}: " + "; ".join(parts)
        if self.upgrade_to:
            return f"{head} (fix: upgrade to {self.upgrade_to} or later)"
        return f"{head} (fix: none published yet; mitigate or replace the package)"


class AdvisoryIndex:
    """Advisories by (ecosystem, normalized name). A plain class on purpose: Prefect does not
    walk into it when it is passed from ``load_advisories`` to the check tasks."""

    def __init__(self, advisories: Iterable[Advisory], source: str = "", skipped: int = 0):
        self.source = source
        self.skipped = skipped  # withdrawn records and records of other ecosystems
        self._by_package: dict[tuple[str, str], list[Advisory]] = {}
        self.records = 0
        for advisory in advisories:
            self.records += 1
            for key in {(a.ecosystem, a.name) for a in advisory.affected}:
                self._by_package.setdefault(key, []).append(advisory)
        self.ecosystems = frozenset(ecosystem for ecosystem, _ in self._by_package)

    @classmethod
    def from_records(cls, records: Iterable[tuple[str, Any]], source: str) -> AdvisoryIndex:
        """Parse ``(where, record)`` pairs (``where`` names the file and record for errors)."""
        advisories: list[Advisory] = []
        skipped = seen = 0
        for where, record in records:
            seen += 1
            advisory = parse_record(record, where)
            if advisory is None:
                skipped += 1
            else:
                advisories.append(advisory)
        if not seen:
            raise AdvisoryError(source, "holds no OSV record")
        if not advisories:
            raise AdvisoryError(
                source,
                f"none of its {seen} record(s) is an advisory for "
                f"{', '.join(ECOSYSTEMS)} that is not withdrawn",
            )
        return cls(advisories, source, skipped)

    def __len__(self) -> int:
        return self.records

    def covers(self, ecosystem: str) -> bool:
        """Whether any advisory of ``ecosystem`` (``Debian:12``: of Debian 12 or of Debian
        without release) is indexed: matching against an index without any is no check."""
        return any(e in self.ecosystems for e in _lookup(ecosystem))

    def describe(self) -> str:
        counts: dict[str, int] = {}
        for (ecosystem, _), advisories in self._by_package.items():
            counts[ecosystem] = counts.get(ecosystem, 0) + len(advisories)
        listed = ", ".join(f"{e} {n}" for e, n in sorted(counts.items()))
        return f"{self.records} advisories ({listed}) from {self.source}"

    def matches(self, ecosystem: str, name: str, version: str) -> list[Advisory]:
        """The advisories affecting ``name`` at ``version``; ``VersionError`` when there are
        advisories for the package but ``version`` cannot be compared with them."""
        return [a for a, _ in self._matched(ecosystem, name, version)]

    def check(self, ecosystem: str, name: str, version: str) -> Vulnerable | None:
        """What the advisories say about ``name`` at ``version``, with the fixed versions."""
        matched = self._matched(ecosystem, name, version)
        if not matched:
            return None
        fixed: dict[str, str | None] = {}
        firsts: list[Event] = []
        for advisory, fixes in matched:
            first = _first(fixes)
            fixed[advisory.id] = first.version if first else None
            if first is not None:
                firsts.append(first)
        upgrade = None
        if all(v is not None for v in fixed.values()) and firsts:
            schemes = {type(e.key) for e in firsts}
            upgrade = max(firsts, key=lambda e: e.key).version if len(schemes) == 1 else None
        return Vulnerable(ecosystem, name, version, tuple(a for a, _ in matched), fixed, upgrade)

    def _matched(
        self, ecosystem: str, name: str, version: str
    ) -> list[tuple[Advisory, list[Event]]]:
        normal = normalize_name(ecosystem, name)
        candidates: dict[str, Advisory] = {}
        for eco in _lookup(ecosystem):
            for advisory in self._by_package.get((eco, normal), []):
                candidates.setdefault(advisory.id, advisory)
        if not candidates:
            return []
        keys = _version_keys(version)
        found = []
        for advisory in candidates.values():
            entries = [
                a
                for a in advisory.affected
                if a.ecosystem in _lookup(ecosystem) and a.name == normal
            ]
            hit = [a for a in entries if a.affects(version, keys)]
            if hit:
                found.append((advisory, [e for a in hit for e in a.fixes(keys)]))
        return found


def _first(fixes: list[Event]) -> Event | None:
    """The lowest fixed version (by string when a record mixes SemVer and ecosystem ranges)."""
    try:
        return min(fixes, key=lambda e: e.key, default=None)
    except TypeError:
        return min(fixes, key=lambda e: e.version)


def _lookup(ecosystem: str) -> tuple[str, ...]:
    """``Debian:12`` is matched with advisories of Debian 12 and of Debian without release."""
    base = base_ecosystem(ecosystem)
    return (ecosystem, base) if base != ecosystem else (ecosystem,)


def _version_keys(version: str) -> Callable[[str], Any]:
    cache: dict[str, Any] = {}

    def key(scheme: str) -> Any:
        if scheme not in cache:
            try:
                cache[scheme] = parse_version(scheme, version)
            except ValueError as exc:
                raise VersionError(f"{version!r} is not a {scheme} version ({exc})") from None
        return cache[scheme]

    return key


# --- parsing ---------------------------------------------------------------------------------


def parse_record(record: Any, where: str) -> Advisory | None:
    """One OSV record; None when it is withdrawn or has no package of ``ECOSYSTEMS``."""
    if not isinstance(record, dict) or not isinstance(record.get("id"), str):
        raise AdvisoryError(where, "not an OSV record (an object with a string `id`)")
    ident = record["id"]
    at = f"{where} ({ident})"
    if record.get("withdrawn"):
        return None
    affected_raw = record.get("affected", [])
    if not isinstance(affected_raw, list):
        raise AdvisoryError(at, "`affected` is not a list")
    affected = []
    for i, entry in enumerate(affected_raw):
        parsed = _affected(entry, f"{at}: affected[{i}]")
        if parsed is not None:
            affected.append(parsed)
    if not affected:
        return None
    severity, source = _severity(record)
    cvss = tuple(
        str(s.get("score"))
        for s in record.get("severity") or []
        if isinstance(s, dict) and str(s.get("type", "")).startswith("CVSS")
    )
    aliases = record.get("aliases") or []
    if not isinstance(aliases, list):
        raise AdvisoryError(at, "`aliases` is not a list")
    summary = record.get("summary") or record.get("details") or ""
    return Advisory(
        id=ident,
        aliases=tuple(str(a) for a in aliases),
        summary=" ".join(str(summary).split())[:200],
        severity=severity,
        severity_from=source,
        affected=tuple(affected),
        origin=where,
        cvss=cvss,
    )


def _affected(entry: Any, at: str) -> Affected | None:
    package = entry.get("package") if isinstance(entry, dict) else None
    if not isinstance(package, dict):
        raise AdvisoryError(at, "has no `package` object")
    ecosystem, name = package.get("ecosystem"), package.get("name")
    if not isinstance(ecosystem, str) or not isinstance(name, str) or not name.strip():
        raise AdvisoryError(at, "package needs a string `ecosystem` and `name`")
    if base_ecosystem(ecosystem) not in ECOSYSTEMS:
        return None
    ranges_raw, versions_raw = entry.get("ranges", []), entry.get("versions", [])
    if not isinstance(ranges_raw, list) or not isinstance(versions_raw, list):
        raise AdvisoryError(at, "`ranges` and `versions` must be lists")
    ranges = []
    for j, raw in enumerate(ranges_raw):
        parsed = _range(raw, ecosystem, f"{at}.ranges[{j}]")
        if parsed is not None:
            ranges.append(parsed)
    scheme = base_ecosystem(ecosystem)
    versions = frozenset(_listed(scheme, str(v)) for v in versions_raw)
    return Affected(ecosystem, normalize_name(ecosystem, name), tuple(ranges), versions)


def _range(raw: Any, ecosystem: str, at: str) -> Range | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("events"), list):
        raise AdvisoryError(at, "a range needs `type` and an `events` list")
    kind = raw.get("type")
    if kind == "GIT":
        return None
    if kind not in ("ECOSYSTEM", "SEMVER"):
        raise AdvisoryError(at, f"range type {kind!r} is not ECOSYSTEM, SEMVER or GIT")
    scheme = _scheme(ecosystem, kind)
    events = []
    for k, event in enumerate(raw["events"]):
        where = f"{at}.events[{k}]"
        if not isinstance(event, dict) or len(event) != 1 or next(iter(event)) not in EVENTS:
            raise AdvisoryError(where, f"an event is one of {', '.join(EVENTS)}")
        ((name, version),) = event.items()
        version = str(version)
        if name == "limit" and version == "*":  # no limit
            continue
        if name == "introduced" and version == "0":  # before every version
            events.append(Event(name, version, None))
            continue
        try:
            events.append(Event(name, version, parse_version(scheme, version)))
        except ValueError as exc:
            problem = f"{name} {version!r} is not a {scheme} version ({exc})"
            raise AdvisoryError(where, problem) from None
    if not any(e.kind == "introduced" for e in events):
        raise AdvisoryError(at, "has no `introduced` event")
    events.sort(key=lambda e: (e.key is not None, e.key))
    return Range(scheme, tuple(events))


def _severity(record: dict[str, Any]) -> tuple[Severity, str]:
    places = [("database_specific", record.get("database_specific"))]
    for i, entry in enumerate(record.get("affected") or []):
        if isinstance(entry, dict):
            for name in ("database_specific", "ecosystem_specific"):
                places.append((f"affected[{i}].{name}", entry.get(name)))
    for place, specific in places:
        word = specific.get("severity") if isinstance(specific, dict) else None
        if isinstance(word, str) and word.upper() in _SEVERITY_WORDS:
            return _SEVERITY_WORDS[word.upper()], f"{place}.severity {word}"
    if record.get("severity"):
        return Severity.HIGH, "a CVSS vector, not scored: high"
    return Severity.HIGH, "no severity given: high"
