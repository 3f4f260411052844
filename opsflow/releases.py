"""Releases (deploy and rollback), the pure parts: image references, what changes per
service, the deploy id, and the report both runbooks publish.

An image reference is ``name[:tag][@sha256:<64 hex>]`` with Docker's grammar (distribution's
``reference`` package): an optional registry host (``registry.example.com:5000/``), then
lowercase path components separated by ``/`` (``.``, ``_``, ``__`` or dashes inside one), a
tag of at most 128 word characters, dots and dashes, not starting with either.

**The deploy id** names one attempt to bring an environment to a set of images, stable across
reruns of a crashed attempt: ``<env>-<sha256 of the services' target images, 10 hex>-<n>``,
where ``n`` counts the attempts at the same images that already ended (the ledger holds a run
row for each ended deploy with its id). A crashed run wrote no run row, so its rerun gets the
same id and resumes: the target tasks skip what they already did for that id, and the
backup taken for it is reused."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from opsflow.errors import InputError
from opsflow.inventory import Deploy, DeployService, Environment, Inventory, load_inventory
from opsflow.reports import report_header

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_REFERENCE = re.compile(
    rf"^(?P<name>(?:{_DOMAIN}(?:\.{_DOMAIN})*(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?"
    r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
TAG = re.compile(r"^[\w][\w.-]{0,127}$")
DEPLOY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
IMAGE_FIX = (
    "write name[:tag][@sha256:<64 hex digits>], e.g. registry.example.com/shop/web:1.4.2 "
    "(lowercase name)"
)


@dataclass(frozen=True)
class ImageRef:
    name: str
    tag: str | None = None
    digest: str | None = None

    def __str__(self) -> str:
        text = self.name + (f":{self.tag}" if self.tag else "")
        return text + (f"@{self.digest}" if self.digest else "")

    def with_tag(self, tag: str) -> ImageRef:
        """The same repository at ``tag`` (any digest dropped: it named the old content)."""
        return ImageRef(self.name, tag)


def parse_image(text: str, field: str = "image") -> ImageRef:
    """Parse an image reference; anything else is an InputError naming ``field``."""
    value = text.strip() if isinstance(text, str) else ""
    match = _REFERENCE.match(value) if 0 < len(value) <= 512 else None
    if match is None or len(match["name"]) > 255:
        shown = value if len(value) <= 80 else value[:77] + "..."
        raise InputError(field, f"{shown!r} is not an image reference", IMAGE_FIX)
    return ImageRef(match["name"], match["tag"], match["digest"])


def check_tag(version: str) -> str:
    if not TAG.match(version.strip()):
        raise InputError(
            "version",
            f"{version!r} is not an image tag",
            "write a tag of letters, digits, '_', '.' or '-' (at most 128), e.g. 1.4.2",
        )
    return version.strip()


def require_deploy(env_name: str, env: Environment) -> Deploy:
    """The environment's ``deploy`` section; InputError when it has none."""
    if env.deploy is None or env.deploy.target is None:
        raise InputError(
            f"environments.{env_name}.deploy" if env_name else "deploy",
            "is missing: the environment has no deploy target",
            "add deploy: {target: docker, services: [web]} (or target: kubernetes) to it",
        )
    return env.deploy


def promotion_source(
    env_name: str, promote_from: str, inventory: Inventory, services: list[DeployService]
) -> tuple[Environment, dict[str, DeployService]]:
    """The environment to promote from and its deploy services by name (no I/O)."""
    if promote_from == env_name:
        raise InputError("promote_from", f"is {env_name!r} itself", "name another environment")
    try:
        source = inventory.environment(promote_from)
    except InputError as exc:
        raise InputError("promote_from", exc.problem, exc.fix) from None
    there = {s.name: s for s in (source.deploy.services if source.deploy else [])}
    missing = [s.name for s in services if s.name not in there]
    if missing:
        raise InputError(
            "promote_from",
            f"environment {promote_from!r} has no deploy service {', '.join(missing)}",
            f"promote from an environment whose deploy.services include {', '.join(missing)}",
        )
    return source, there


def check_request(
    env_name: str,
    env: Environment,
    *,
    image: str | None,
    version: str | None,
    promote_from: str | None,
    inventory: Inventory | None,
    deploy_id: str | None = None,
) -> Inventory:
    """What can be refused without I/O: exactly one of image / version / promote_from, their
    format, the environment to promote from. Returns the inventory to read it in."""
    given = [
        n for n, v in (("image", image), ("version", version), ("promote_from", promote_from)) if v
    ]
    if len(given) != 1:
        raise InputError(
            given[1] if given else "image",
            "give exactly one of image, version or promote_from"
            + (f" (got {', '.join(given)})" if given else ""),
            "e.g. --param image=registry.example.com/shop/web:1.4.2, --param version=1.4.2 or "
            "--param promote_from=staging",
        )
    services = require_deploy(env_name, env).services
    if image:
        parse_image(image, "image")
    if version:
        check_tag(version)
    if deploy_id is not None and not DEPLOY_ID.match(deploy_id):
        raise InputError(
            "deploy_id",
            f"{deploy_id[:80]!r} is not a deploy id",
            "use letters, digits, '.', '_' and '-' (at most 100), or leave it out",
        )
    inventory = inventory or load_inventory()
    if promote_from:
        promotion_source(env_name, promote_from, inventory, services)
    return inventory


def check_options(
    env_name: str, env: Environment, skip_backup: bool, override_window_reason: str | None
) -> Deploy:
    """The options that must fit the environment (no I/O)."""
    settings = require_deploy(env_name, env)
    if override_window_reason is not None and not override_window_reason.strip():
        raise InputError("override_window_reason", "is empty", "say why the window is overridden")
    if override_window_reason and env.approvals is None:
        raise InputError(
            "override_window_reason",
            f"environment {env_name} has no approvers, and overriding a window needs an approval",
            "add approvals to the environment, or deploy inside its window",
        )
    if settings.backup and not skip_backup and env.backup_store is None:
        raise InputError(
            f"environments.{env_name}.deploy.backup",
            "is true but the environment has no backup_store",
            "add a backup_store, set deploy.backup: false, or pass skip_backup=true",
        )
    return settings


Action = Literal["change", "resume", "unchanged"]


class ServiceChange(BaseModel):
    """One service of a release: from which image to which, and what happened to it."""

    service: str
    target: str = Field(description="what is changed: 'container web-1', 'deployment ns/web'")
    from_image: str
    to_image: str
    action: Action = "change"
    replicas: int | None = None
    revision: str | None = None
    outcome: str = "planned"
    seconds: float = 0.0
    error: str | None = None


def deploy_id_base(env: str, targets: dict[str, str], kind: str = "") -> str:
    """``[<kind>-]<env>-<hash of the target images>``: the id without its attempt number."""
    text = "\n".join(f"{service}={image}" for service, image in sorted(targets.items()))
    return f"{kind + '-' if kind else ''}{env}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def deploy_id(env: str, targets: dict[str, str], ended_ids: list[str], kind: str = "") -> str:
    """The id of this attempt: the base and the number of ended attempts with that base."""
    base = deploy_id_base(env, targets, kind)
    return f"{base}-{sum(1 for i in ended_ids if i.rsplit('-', 1)[0] == base) + 1}"


BUSY_FIX = "set deploy.on_busy: wait (and deploy.busy_wait) in the inventory to wait for it"


def busy_wait_seconds(deploy: Deploy) -> float:
    """How long a deploy or rollback waits for another one of its environment."""
    return deploy.busy_wait.total_seconds() if deploy.on_busy == "wait" else 0.0


Outcome = Literal[
    "deployed", "rolled back", "rollback failed", "unchanged", "rejected", "refused", "failed"
]


class ReleaseReport(BaseModel):
    """What a deploy or rollback did: the report artifact and the ledger run's details."""

    runbook: str
    env: str
    deploy_id: str
    requested_by: str
    outcome: Outcome = "failed"
    changes: list[ServiceChange] = Field(default_factory=list)
    approved_by: list[str] = Field(default_factory=list)
    window: str = ""
    override_reason: str | None = None
    backup: str = ""
    backup_ids: list[str] = Field(default_factory=list)
    checks: list[str] = Field(default_factory=list, description="verification, in order")
    failed_check: str | None = None
    rollback: list[ServiceChange] = Field(default_factory=list)
    rollback_checks: list[str] = Field(default_factory=list)
    rollback_error: str | None = None
    seconds: float = 0.0
    dry_run: bool = False

    @property
    def succeeded(self) -> bool:
        """A deploy that went live or had nothing to do; a rollback that rolled back."""
        done = "rolled back" if self.runbook == "rollback" else "deployed"
        return self.outcome in (done, "unchanged")

    def summary(self) -> str:
        moves = ", ".join(f"{c.service} {c.from_image} -> {c.to_image}" for c in self.changes)
        text = f"{self.outcome}: {moves or 'no service'}"
        if self.failed_check:
            text += f"; failed: {self.failed_check}"
        if self.rollback_error:
            text += f"; rollback error: {self.rollback_error}"
        return text


def _changes_table(changes: list[ServiceChange]) -> list[str]:
    lines = [
        "| service | target | from | to | replicas | outcome | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in changes:
        lines.append(
            f"| {c.service} | {c.target} | `{c.from_image}` | `{c.to_image}` "
            f"| {c.replicas if c.replicas is not None else '-'} | {c.outcome} | {c.seconds:.1f} |"
        )
    return lines


def render_release_report(report: ReleaseReport, started: datetime) -> str:
    title = f"{report.runbook.capitalize()}: `{report.env}` **{report.outcome.upper()}**"
    lines = [
        *report_header(title, started, report.seconds, report.summary()),
        "",
        f"- deploy id: `{report.deploy_id}`",
        f"- requested by: {report.requested_by}",
        f"- approved by: {', '.join(report.approved_by) or '-'}",
        f"- window: {report.window or '-'}",
    ]
    if report.override_reason:
        lines.append(f"- window overridden: {report.override_reason}")
    if report.backup:
        lines.append(f"- backup: {report.backup}")
    lines += ["", "## Changes", "", *_changes_table(report.changes)]
    errors = [c for c in report.changes + report.rollback if c.error]
    if report.checks:
        lines += ["", "## Verification", "", *[f"- {line}" for line in report.checks]]
    if report.failed_check:
        lines += ["", f"**Failed check:** {report.failed_check}"]
    if report.rollback or report.rollback_error:
        lines += ["", "## Automatic rollback", "", *_changes_table(report.rollback)]
        lines += [f"- {line}" for line in report.rollback_checks]
        if report.rollback_error:
            lines += ["", f"**Rollback failed:** {report.rollback_error}"]
    if errors:
        lines += ["", "## Errors", "", *[f"- **{c.service}**: {c.error}" for c in errors]]
    return "\n".join(lines) + "\n"
