"""The image check of the security review (check ``images``): what is installed in a running
container or pod (``security.images``) matched against the OSV advisories, and how old the
image is.

* Debian packages: ``/var/lib/dpkg/status`` (installed packages, by *source* package, as
  Debian's advisories name them), ecosystem ``Debian:<VERSION_ID>`` from ``/etc/os-release``.
* Python packages: the distributions ``python3`` sees (as ``pip freeze`` lists them), when the
  image has ``python3``; ecosystem PyPI.
* Age (Docker only: a pod's image build time is not in the Kubernetes API): an image built
  longer than ``max_age`` ago is a medium finding.

An image without dpkg, a non-Debian OS, or an advisory source without advisories of its
ecosystem leaves packages unmatched: a medium finding says so. A container or pod that is not
there (or not running) is ``CheckOutcome.unusable``; connection trouble raises
``TransientError`` (the task is retried).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from opsflow.durations import format_duration
from opsflow.errors import PermanentError
from opsflow.inventory import Environment
from opsflow.inventory.security import ImageScan
from opsflow.osv import AdvisoryIndex
from opsflow.packages import (
    Installed,
    Matched,
    match_packages,
    os_ecosystem,
    parse_dpkg_status,
    parse_os_release,
    parse_requirements,
    unchecked,
)
from opsflow.redaction import redact
from opsflow.security import CheckOutcome, SecurityFinding, Severity
from tasks.policy import probe_task
from tasks.security.inside import Inside, python_packages

CHECK = "images"
DPKG_STATUS = "/var/lib/dpkg/status"
OS_RELEASE = "/etc/os-release"


@dataclass
class Part:
    """One kind of package of the image: how many were matched, and the findings."""

    what: str
    matched: Matched = field(default_factory=Matched)
    findings: list[SecurityFinding] = field(default_factory=list)


def _text(inside: Inside, path: str) -> str | None:
    done = inside.run(["cat", path])
    return done.stdout.decode("utf-8", errors="replace") if done.code == 0 else None


def _match(
    part: Part,
    index: AdvisoryIndex,
    ecosystem: str,
    packages: list[Installed],
    where: str,
    env: str,
) -> Part:
    if not packages:
        return part
    if not index.covers(ecosystem):
        names = [f"{p.name} {p.version}" for p in packages]
        fix = f"add the {ecosystem} records of osv.dev to security.advisories"
        part.findings.append(
            unchecked(
                CHECK, where, f"{ecosystem} package(s), no {ecosystem} advisories", names, fix
            )
        )
        return part
    part.matched = match_packages(
        index, packages, ecosystem=ecosystem, check=CHECK, where=where, env=env
    )
    if part.matched.not_comparable:
        part.findings.append(
            unchecked(
                CHECK,
                where,
                "package version(s) not comparable",
                part.matched.not_comparable,
                "none: report the version to the advisory source",
            )
        )
    return part


def _debian(inside: Inside, index: AdvisoryIndex, env: str) -> Part:
    status = _text(inside, DPKG_STATUS)
    if status is None:
        part = Part("no dpkg status: OS packages not checked")
        part.findings.append(
            SecurityFinding(
                severity=Severity.MEDIUM,
                check=CHECK,
                target=inside.label,
                summary=f"OS packages not checked: {DPKG_STATUS} cannot be read in "
                f"{inside.label} (not Debian-based) (fix: none for an image without a package "
                "manager; else scan it with its distribution's tools)",
            )
        )
        return part
    release = parse_os_release(_text(inside, OS_RELEASE) or "")
    packages = parse_dpkg_status(status)
    ecosystem = os_ecosystem(release)
    if ecosystem is None:
        name = f"{release.get('ID', 'unknown')} {release.get('VERSION_ID', '')}".strip()
        part = Part(f"{len(packages)} dpkg package(s) of {name}")
        part.findings.append(
            unchecked(
                CHECK,
                inside.label,
                f"dpkg package(s) of {name}, which is not Debian",
                [f"{p.name} {p.version}" for p in packages],
                "scan it with its distribution's tools",
            )
        )
        return part
    part = Part(f"{len(packages)} {ecosystem} source package(s)")
    return _match(part, index, ecosystem, packages, inside.label, env)


def _python(inside: Inside, index: AdvisoryIndex, env: str) -> Part:
    text = python_packages(inside, "python3")
    if text is None:
        return Part("no python3")
    pinned = parse_requirements(text).pinned
    return _match(
        Part(f"{len(pinned)} Python package(s)"), index, "PyPI", pinned, inside.label, env
    )


def _age(inside: Inside, scan: ImageScan) -> tuple[str, list[SecurityFinding]]:
    if inside.image_created is None:
        return "image age not known" + (" (pods)" if inside.kind == "pod" else ""), []
    age = datetime.now(UTC) - inside.image_created
    shown = f"{age.days} days" if age.days else format_duration(age)
    note = f"image {inside.image} built {shown} ago"
    if age <= scan.max_age:
        return note, []
    finding = SecurityFinding(
        severity=Severity.MEDIUM,
        check=CHECK,
        target=f"{inside.label}: image {inside.image}",
        summary=f"{note}, over max_age {format_duration(scan.max_age)} (fix: rebuild it on a "
        "current base image and redeploy)",
        details={"created": inside.image_created.isoformat(), "age_days": age.days},
    )
    return note, [finding]


@probe_task("check_image", timeout_seconds=300)
def check_image(
    env_name: str, env: Environment, scan: ImageScan, index: AdvisoryIndex
) -> CheckOutcome:
    """The Debian and Python packages of the container or pod of ``scan`` matched against
    ``index``, and its image's age against ``scan.max_age``."""
    target = f"{'container' if scan.container else 'pod'} {scan.name}"
    try:
        with Inside.open(env, scan.container, scan.pod) as inside:
            parts = [_debian(inside, index, env_name), _python(inside, index, env_name)]
            age_note, age_findings = _age(inside, scan)
    except PermanentError as exc:
        fix = "correct security.images or start it"
        return CheckOutcome.unusable(CHECK, target, redact(str(exc)), fix)
    findings = [f for p in parts for f in (*p.matched.findings, *p.findings)] + age_findings
    vulnerable = sum(len(p.matched.findings) for p in parts)
    listed = ", ".join(p.what for p in parts)
    return CheckOutcome(
        check=CHECK,
        target=target,
        summary=redact(f"{listed}: {vulnerable} vulnerable; {age_note}"),
        findings=findings,
        details={
            "packages": {p.what: p.matched.checked for p in parts},
            "vulnerable": vulnerable,
            "advisories": index.describe(),
        },
    )
