"""Installed packages, read from the files that list them, and matched against an OSV
``AdvisoryIndex`` into security findings (pure: no I/O).

* ``parse_requirements``: pinned requirements / lock files and ``pip freeze`` output
  (``name==version`` or ``name===version`` lines; extras, environment markers, ``--hash``
  options, comments and ``\\`` continuations allowed; markers are not evaluated). Lines
  that pin nothing (``name>=1``, ``name @ URL``, ``-e``) are listed as unpinned; ``-r`` and
  ``-c`` includes are listed and not followed.
* ``parse_npm_lock``: ``package-lock.json`` v2/v3 (``packages``: every ``node_modules/...``
  entry, aliases by their ``name``; workspace links left out) or v1 (``dependencies``, nested).
* ``parse_dpkg_status``: ``/var/lib/dpkg/status``, packages whose Status is ``install ok
  installed``, grouped by *source* package and source version (``Source: name (version)``,
  else the binary's own): Debian's OSV advisories name source packages.
* ``parse_os_release``: ``/etc/os-release`` into the OSV ecosystem of its packages.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement

from opsflow.osv import AdvisoryIndex, VersionError, normalize_name
from opsflow.security import SecurityFinding, Severity

_COMMENT = re.compile(r"(^|\s+)#.*$")
_OPTIONS = re.compile(r"\s+(?=--?[A-Za-z])")


@dataclass(frozen=True)
class Installed:
    """A package at a version; ``binaries``: the Debian packages built from this source."""

    name: str
    version: str
    binaries: tuple[str, ...] = ()


@dataclass
class Requirements:
    pinned: list[Installed] = field(default_factory=list)
    unpinned: list[str] = field(default_factory=list)  # lines that pin no version
    includes: list[str] = field(default_factory=list)  # -r / -c files, not followed
    invalid: list[str] = field(default_factory=list)  # lines that are no requirement


def _logical_lines(text: str) -> Iterable[str]:
    pending = ""
    for raw in text.splitlines():
        line = _COMMENT.sub("", raw).rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = (pending + line).strip(), ""
        if line:
            yield line
    if pending.strip():
        yield pending.strip()


def parse_requirements(text: str) -> Requirements:
    """The pinned packages of a requirements file or of ``pip freeze`` output."""
    found = Requirements()
    for line in _logical_lines(text):
        if line.startswith("-"):
            option, _, value = line.partition(" ")
            if option in ("-r", "--requirement", "-c", "--constraint"):
                found.includes.append(value.strip())
            elif option in ("-e", "--editable"):
                found.unpinned.append(line)
            continue  # --index-url, --hash on its own line, ...
        spec = _OPTIONS.split(line, maxsplit=1)[0]
        try:
            req = Requirement(spec)
        except InvalidRequirement:
            found.invalid.append(line)
            continue
        pins = [s for s in req.specifier if s.operator in ("==", "===")]
        if len(pins) == 1 and not pins[0].version.endswith(".*") and req.url is None:
            found.pinned.append(Installed(req.name, pins[0].version))
        else:
            found.unpinned.append(line)
    return found


def parse_npm_lock(lock: Any) -> list[Installed]:
    """The packages of a parsed ``package-lock.json``; ValueError when it is none."""
    if not isinstance(lock, dict):
        raise ValueError("is not a JSON object")
    found: dict[tuple[str, str], Installed] = {}

    def add(name: str, version: Any) -> None:
        if not isinstance(version, str) or not version:
            return
        if version.startswith("npm:"):  # an alias: "npm:real-name@1.2.3"
            name, _, version = version[4:].rpartition("@")
        found.setdefault((name, version), Installed(name, version))

    packages = lock.get("packages")
    if isinstance(packages, dict):
        for path, entry in packages.items():
            if "node_modules/" not in path or not isinstance(entry, dict) or entry.get("link"):
                continue
            add(str(entry.get("name") or path.rsplit("node_modules/", 1)[1]), entry.get("version"))
        return sorted(found.values(), key=lambda p: (p.name, p.version))
    dependencies = lock.get("dependencies")
    if not isinstance(dependencies, dict):
        raise ValueError("has neither `packages` (lockfileVersion 2, 3) nor `dependencies` (1)")
    stack = [dependencies]
    while stack:
        for name, entry in stack.pop().items():
            if isinstance(entry, dict):
                add(name, entry.get("version"))
                if isinstance(entry.get("dependencies"), dict):
                    stack.append(entry["dependencies"])
    return sorted(found.values(), key=lambda p: (p.name, p.version))


def _paragraphs(text: str) -> Iterable[dict[str, str]]:
    fields: dict[str, str] = {}
    last = None
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if fields:
                yield fields
            fields, last = {}, None
        elif line[0] in " \t":
            if last is not None:
                fields[last] += "\n" + line.strip()
        else:
            key, _, value = line.partition(":")
            last = key.strip()
            fields[last] = value.strip()


def parse_dpkg_status(text: str) -> list[Installed]:
    """Installed packages of a dpkg status file, one per source package and version."""
    sources: dict[tuple[str, str], list[str]] = {}
    for para in _paragraphs(text):
        if para.get("Status", "").split()[-1:] != ["installed"]:
            continue
        binary, version = para.get("Package"), para.get("Version")
        if not binary or not version:
            continue
        source, _, source_version = para.get("Source", binary).partition(" ")
        source_version = source_version.strip("() ") or version
        sources.setdefault((source, source_version), []).append(binary)
    return [
        Installed(name, version, tuple(sorted(binaries)))
        for (name, version), binaries in sorted(sources.items())
    ]


def parse_os_release(text: str) -> dict[str, str]:
    """``/etc/os-release`` as a dict (quotes removed)."""
    found = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.startswith("#"):
            try:
                words = shlex.split(value)
            except ValueError:
                words = [value]
            found[key.strip()] = " ".join(words)
    return found


def os_ecosystem(release: dict[str, str]) -> str | None:
    """``Debian:12`` for Debian 12 (``Debian`` when the release is not said); None when the
    OS is not Debian (Ubuntu and others have OSV ecosystems opsflow does not index)."""
    if release.get("ID") != "debian":
        return None
    version = release.get("VERSION_ID", "").split(".")[0]
    return f"Debian:{version}" if version else "Debian"


@dataclass
class Matched:
    """The findings of a list of packages, and the packages whose versions did not compare."""

    findings: list[SecurityFinding] = field(default_factory=list)
    checked: int = 0
    not_comparable: list[str] = field(default_factory=list)


def match_packages(
    index: AdvisoryIndex,
    packages: Iterable[Installed],
    *,
    ecosystem: str,
    check: str,
    where: str,
    env: str,
) -> Matched:
    """One finding per vulnerable package (target ``<where>: <package> <version>``, the
    advisories' worst severity, their ids and the version that fixes them all)."""
    result = Matched()
    seen: set[tuple[str, str]] = set()
    for package in packages:
        key = (normalize_name(ecosystem, package.name), package.version)
        if key in seen:
            continue
        seen.add(key)
        result.checked += 1
        try:
            vulnerable = index.check(ecosystem, package.name, package.version)
        except VersionError as exc:
            result.not_comparable.append(f"{package.name}: {exc}")
            continue
        if vulnerable is None:
            continue
        details: dict[str, Any] = {
            "env": env,
            "ecosystem": ecosystem,
            "package": package.name,
            "version": package.version,
            "advisories": [a.id for a in vulnerable.advisories],
            "aliases": sorted({x for a in vulnerable.advisories for x in a.aliases}),
            "fixed": vulnerable.fixed,
            "upgrade_to": vulnerable.upgrade_to,
            "severity_from": {a.id: a.severity_from for a in vulnerable.advisories},
        }
        if package.binaries:
            details["binaries"] = list(package.binaries)
        result.findings.append(
            SecurityFinding(
                severity=vulnerable.severity,
                check=check,
                target=f"{where}: {package.name} {package.version}",
                summary=vulnerable.summary(),
                details=details,
            )
        )
    return result


def unchecked(check: str, target: str, what: str, items: list[str], fix: str) -> SecurityFinding:
    """A medium finding for packages that could not be matched (never a silent pass)."""
    shown = "; ".join(items[:5]) + (f"; and {len(items) - 5} more" if len(items) > 5 else "")
    return SecurityFinding(
        severity=Severity.MEDIUM,
        check=check,
        target=target,
        summary=f"{len(items)} {what}, not matched against the advisories: {shown} (fix: {fix})",
        details={"items": items},
    )
