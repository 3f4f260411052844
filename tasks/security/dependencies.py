"""The dependency checks of the security review (check ``dependencies``): the packages of a
Python environment (``security.python``) and of an npm lock file (``security.npm``) matched
against the OSV advisories (``load_advisories``).

One finding per vulnerable package (``opsflow.packages.match_packages``: the advisories'
worst severity, their ids, the version that fixes them). Packages that cannot be matched
(unpinned or unparsable requirement lines, versions the ecosystem cannot compare) are one
medium finding; ``-r``/``-c`` includes are not followed (said in the summary). A check that
cannot run at all — a missing or unreadable file, a container or pod that is not there, an
advisory source without advisories of the ecosystem — is ``CheckOutcome.unusable`` (a high
finding with the fix). Connection trouble raises ``TransientError`` (the task is retried).
"""

from __future__ import annotations

import json
from pathlib import Path

from opsflow.errors import PermanentError
from opsflow.inventory import Environment
from opsflow.inventory.security import NpmLock, PythonEnvironment
from opsflow.osv import AdvisoryIndex
from opsflow.packages import (
    Installed,
    Matched,
    match_packages,
    parse_npm_lock,
    parse_requirements,
    unchecked,
)
from opsflow.redaction import redact
from opsflow.security import CheckOutcome, SecurityFinding
from tasks.policy import probe_task
from tasks.security.inside import Inside, python_packages

CHECK = "dependencies"
MAX_FILE_BYTES = 64 * 1024 * 1024


def _read(path: str) -> str:
    """A local file's text; PermanentError naming the path when it cannot be read."""
    file = Path(path)
    try:
        if file.stat().st_size > MAX_FILE_BYTES:
            raise PermanentError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
        return file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PermanentError(f"{path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PermanentError(f"{path} cannot be read ({exc})") from None


def outcome(
    target: str,
    index: AdvisoryIndex,
    matched: Matched,
    extra: list[SecurityFinding],
    notes: list[str],
    source: str,
) -> CheckOutcome:
    """The check's outcome: what was matched against what, and the findings."""
    vulnerable = len(matched.findings)
    summary = f"{matched.checked} package(s) from {source}: {vulnerable} vulnerable"
    summary += "".join(f"; {note}" for note in notes)
    if matched.not_comparable:
        extra = [
            *extra,
            unchecked(
                CHECK,
                target,
                "package version(s) not comparable",
                matched.not_comparable,
                "pin released versions",
            ),
        ]
    return CheckOutcome(
        check=CHECK,
        target=target,
        summary=redact(summary),
        findings=[*matched.findings, *extra],
        details={
            "source": source,
            "packages": matched.checked,
            "vulnerable": vulnerable,
            "advisories": index.describe(),
        },
    )


def _python_lines(env: Environment, python: PythonEnvironment) -> tuple[str, str]:
    """The ``name==version`` text of the environment, and where it was read."""
    if python.requirements is not None:
        return _read(python.requirements), python.requirements
    with Inside.open(env, python.container, python.pod) as inside:
        text = python_packages(inside, python.python)
        if text is None:
            raise PermanentError(
                f"{python.python} was not found in {inside.label} (fix: set "
                f"security.python {python.name} python: to the interpreter's path)"
            )
        return text, f"{inside.label} ({python.python})"


@probe_task("check_python_packages", timeout_seconds=120)
def check_python_packages(
    env_name: str, env: Environment, python: PythonEnvironment, index: AdvisoryIndex
) -> CheckOutcome:
    """The pinned packages of ``python`` (a requirements/lock file, or what the interpreter
    in its container or pod has installed) matched against ``index`` (ecosystem PyPI)."""
    target = f"python {python.name}"
    if not index.covers("PyPI"):
        return CheckOutcome.unusable(
            CHECK,
            target,
            f"the advisory source has no PyPI advisories ({index.describe()})",
            "add the PyPI records of osv.dev to security.advisories",
        )
    try:
        text, source = _python_lines(env, python)
    except PermanentError as exc:
        fix = (
            "correct the path in security.python or write the file (pip freeze > it)"
            if python.requirements is not None
            else "correct security.python's container/pod or start it"
        )
        return CheckOutcome.unusable(CHECK, target, redact(str(exc)), fix)
    parsed = parse_requirements(text)
    matched = match_packages(
        index, parsed.pinned, ecosystem="PyPI", check=CHECK, where=target, env=env_name
    )
    notes = []
    if parsed.includes:
        notes.append(f"-r/-c file(s) not followed: {', '.join(parsed.includes)}")
    extra = []
    if parsed.unpinned or parsed.invalid:
        extra.append(
            unchecked(
                CHECK,
                target,
                "requirement line(s) without a pinned version",
                parsed.unpinned + parsed.invalid,
                "pin exact versions (pip-compile, pip freeze) in the file checked",
            )
        )
    return outcome(target, index, matched, extra, notes, source)


def npm_packages(lock: NpmLock) -> list[Installed]:
    """The packages of ``lock``'s file; PermanentError naming the file when it is no lock."""
    text = _read(lock.lock)
    try:
        return parse_npm_lock(json.loads(text))
    except ValueError as exc:
        raise PermanentError(f"{lock.lock} is not a package-lock.json ({exc})") from None


@probe_task("check_npm_packages", timeout_seconds=60)
def check_npm_packages(env_name: str, lock: NpmLock, index: AdvisoryIndex) -> CheckOutcome:
    """The packages of an npm ``package-lock.json`` matched against ``index`` (npm)."""
    target = f"npm {lock.name}"
    if not index.covers("npm"):
        return CheckOutcome.unusable(
            CHECK,
            target,
            f"the advisory source has no npm advisories ({index.describe()})",
            "add the npm records of osv.dev to security.advisories",
        )
    try:
        packages = npm_packages(lock)
    except PermanentError as exc:
        fix = "correct security.npm's lock path, or run npm install --package-lock-only there"
        return CheckOutcome.unusable(CHECK, target, redact(str(exc)), fix)
    matched = match_packages(
        index, packages, ecosystem="npm", check=CHECK, where=target, env=env_name
    )
    return outcome(target, index, matched, [], [], lock.lock)
