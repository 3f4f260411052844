"""The security review's ``secrets_age`` check: how long ago each secret last changed.

(a) every rotated secret of ``secrets``: its last rotation is the newest ledger step ``rotated``
    of runbook ``rotate-secret`` with the secret's name as target (a ``failed`` row does not
    count), else its store's own time (a Kubernetes Secret's annotation ``opsflow.io/rotated-at``,
    else its ``creationTimestamp``; a Prefect Secret block's ``updated``). Older than
    ``rotate_every``: high (overdue), with the command that rotates it; no time at all: medium.
(b) every other Kubernetes Secret of the environment's namespace (service-account tokens and
    Helm release secrets left out) older than ``security.secret_max_age``: medium.
(c) every other Prefect Secret block the environment references (``secret:NAME``) older than
    ``security.secret_max_age``: medium.

What cannot be read (the Kubernetes API, the Prefect API, a referenced block that does not
exist) makes the outcome unusable, with a high finding naming it. No secret value is read
into a finding: only names and times (the Secret list does carry the data, which is dropped).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import kubernetes.client
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound

from connectors.kubernetes import REQUEST_TIMEOUT, kube_api, kube_errors
from opsflow.durations import format_duration
from opsflow.errors import InputError, OpsflowError
from opsflow.inventory import Environment, KubernetesTarget, RotatedSecret
from opsflow.inventory.references import references
from opsflow.ledger import Ledger
from opsflow.redaction import redact
from opsflow.secrets import SECRET_PREFIX
from opsflow.security import CheckOutcome, SecurityFinding, Severity
from tasks.policy import probe_task

CHECK = "secrets_age"
RUNBOOK = "rotate-secret"
ROTATED_STEP = "rotated"
ROTATED_AT = "opsflow.io/rotated-at"
SKIPPED_TYPES = ("kubernetes.io/service-account-token", "helm.sh/release.v1")


@dataclass(frozen=True)
class KubeSecret:
    name: str
    type: str
    changed: datetime | None  # the rotated-at annotation, else creationTimestamp
    source: str


def _aware(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _kube_secrets(target: KubernetesTarget) -> dict[str, KubeSecret]:
    """The namespace's Secrets by name: type and when they last changed (values dropped)."""
    api = kube_api(target)
    try:
        core = kubernetes.client.CoreV1Api(api)
        with kube_errors(api, f"secrets in namespace {target.namespace}"):
            items: list[Any] = core.list_namespaced_secret(
                target.namespace, _request_timeout=REQUEST_TIMEOUT
            ).items
    finally:
        api.close()
    found: dict[str, KubeSecret] = {}
    for item in items:
        meta = item.metadata
        name = str(meta.name)
        stamp, source = meta.creation_timestamp, "creationTimestamp"
        annotated = (meta.annotations or {}).get(ROTATED_AT)
        if annotated:
            with contextlib.suppress(ValueError):  # unparsable: creationTimestamp stands
                stamp, source = datetime.fromisoformat(annotated), f"annotation {ROTATED_AT}"
        changed = _aware(stamp) if isinstance(stamp, datetime) else None
        found[name] = KubeSecret(name, item.type or "Opaque", changed, source)
    return found


def _block_times(names: list[str]) -> tuple[dict[str, datetime | None], list[str]]:
    """``updated`` of each Prefect Secret block (None: it does not exist), and the problems."""
    times: dict[str, datetime | None] = {}
    if not names:
        return times, []
    try:
        with get_client(sync_client=True) as client:
            for name in names:
                try:
                    doc = client.read_block_document_by_name(name, "secret", include_secrets=False)
                except ObjectNotFound:
                    times[name] = None
                    continue
                times[name] = _aware(doc.updated) if doc.updated is not None else None
    except (httpx.HTTPError, OSError) as exc:
        return times, [f"the Prefect API did not answer for Secret blocks: {type(exc).__name__}"]
    return times, []


def _last_rotations(ledger: Ledger, env_name: str) -> dict[str, datetime]:
    """Secret name -> its newest ``rotated`` ledger step (not failed), aware UTC."""
    newest: dict[str, datetime] = {}
    for row in ledger.step_history(env_name, ROTATED_STEP, runbook=RUNBOOK):  # newest first
        if row.status != "failed" and row.target not in newest:
            newest[row.target] = _aware(row.recorded_at)
    return newest


def _finding(
    severity: Severity, target: str, summary: str, *, masked: bool = True, **details: Any
) -> SecurityFinding:
    """A finding; ``masked=False`` for a summary made of inventory names and numbers only,
    whose ``--param secret_name=NAME`` redaction would mask as a key=value credential."""
    text = redact(summary) if masked else summary
    return SecurityFinding(
        severity=severity, check=CHECK, target=target, summary=text, details=details
    )


def _rotated_finding(
    env_name: str, secret: RotatedSecret, changed: datetime | None, source: str, now: datetime
) -> SecurityFinding | None:
    command = f"opsflow run rotate-secret --env {env_name} --param secret_name={secret.name}"
    every = format_duration(secret.rotate_every)
    if changed is None:
        return _finding(
            Severity.MEDIUM,
            f"secret {secret.name}",
            f"never rotated by opsflow, age unknown ({source}; fix: {command})",
            masked=False,
            store=secret.store.describe(),
        )
    age = now - changed
    if age <= secret.rotate_every:
        return None
    late = (age - secret.rotate_every).days
    return _finding(
        Severity.HIGH,
        f"secret {secret.name}",
        f"overdue by {late} days (rotate_every {every}): {command}",
        masked=False,
        last_changed=changed.isoformat(),
        source=source,
        age_days=age.days,
    )


def _rotated_findings(
    env_name: str,
    env: Environment,
    rotations: dict[str, datetime],
    kube: dict[str, KubeSecret],
    blocks: dict[str, datetime | None],
    now: datetime,
) -> list[SecurityFinding]:
    """(a): each rotated secret's last rotation (ledger, else its store) vs ``rotate_every``."""
    findings: list[SecurityFinding] = []
    for secret in env.secrets:
        changed: datetime | None = rotations.get(secret.name)
        source = f"ledger step {ROTATED_STEP} of {RUNBOOK}"
        store = secret.store
        if changed is None and store.kubernetes_secret is not None:
            found = kube.get(store.kubernetes_secret)
            changed, source = (found.changed, found.source) if found else (None, "no such Secret")
        elif changed is None and store.prefect_secret is not None:
            changed, source = blocks.get(store.prefect_secret), "the block's updated time"
        finding = _rotated_finding(env_name, secret, changed, f"{store.describe()}: {source}", now)
        if finding is not None:
            findings.append(finding)
    return findings


def _kube_findings(
    env: Environment, kube: dict[str, KubeSecret], max_age: timedelta, now: datetime
) -> list[SecurityFinding]:
    """(b): the namespace's other Secrets older than ``max_age``."""
    namespace = env.kubernetes.namespace if env.kubernetes is not None else ""
    covered = {s.store.kubernetes_secret for s in env.secrets}
    findings: list[SecurityFinding] = []
    for name, item in sorted(kube.items()):
        if item.type in SKIPPED_TYPES or name in covered or item.changed is None:
            continue
        if now - item.changed > max_age:
            findings.append(
                _finding(
                    Severity.MEDIUM,
                    f"Kubernetes Secret {namespace}/{name}",
                    f"last changed {(now - item.changed).days} days ago ({item.source}), over "
                    f"security.secret_max_age {format_duration(max_age)} (fix: rotate it and "
                    f"annotate it {ROTATED_AT}, or list it under `secrets` for opsflow to rotate)",
                    last_changed=item.changed.isoformat(),
                )
            )
    return findings


def _block_findings(
    used: dict[str, str],
    blocks: dict[str, datetime | None],
    max_age: timedelta,
    now: datetime,
    problems: list[str],
) -> list[SecurityFinding]:
    """(c): referenced Prefect Secret blocks (name -> field) older than ``max_age``; a block
    that does not exist is added to ``problems``."""
    findings: list[SecurityFinding] = []
    for name, field in used.items():
        if name not in blocks:
            continue  # the Prefect API did not answer: a problem already
        updated = blocks[name]
        if updated is None:
            problems.append(
                f"Prefect Secret block {name} (referenced by {field}) does not exist "
                "(fix: create it, or correct the reference)"
            )
        elif now - updated > max_age:
            findings.append(
                _finding(
                    Severity.MEDIUM,
                    f"Prefect Secret block {name}",
                    f"last changed {(now - updated).days} days ago, over security.secret_max_age "
                    f"{format_duration(max_age)} (fix: rotate it; it is used by {field})",
                    last_changed=updated.isoformat(),
                )
            )
    return findings


@probe_task("check_secrets_age", timeout_seconds=300)
def check_secrets_age(
    env_name: str, env: Environment, ledger: Ledger, now: datetime | None = None
) -> CheckOutcome:
    """The ``secrets_age`` check of ``env_name`` (module docstring)."""
    now = _aware(now or datetime.now(UTC))
    max_age = env.security.secret_max_age
    problems: list[str] = []
    kube: dict[str, KubeSecret] = {}
    if env.kubernetes is not None:
        try:
            kube = _kube_secrets(env.kubernetes)
        except InputError:
            raise
        except OpsflowError as exc:
            problems.append(str(exc))
    rotated_blocks = {s.store.prefect_secret for s in env.secrets if s.store.prefect_secret}
    used: dict[str, str] = {}
    for field, ref in references(env_name, env):
        name = ref[len(SECRET_PREFIX) :]
        if ref.startswith(SECRET_PREFIX) and name not in rotated_blocks:
            used.setdefault(name, field)
    blocks, block_problems = _block_times(sorted(rotated_blocks | set(used)))
    problems += block_problems
    findings = _rotated_findings(
        env_name, env, _last_rotations(ledger, env_name), kube, blocks, now
    )
    findings += _kube_findings(env, kube, max_age, now)
    findings += _block_findings(used, blocks, max_age, now, problems)
    findings += [_finding(Severity.HIGH, env_name, problem) for problem in problems]
    audited = [s for s in kube.values() if s.type not in SKIPPED_TYPES]
    summary = (
        f"{len(env.secrets)} rotated secret(s), {len(audited)} Kubernetes Secret(s), "
        f"{len(used)} other Prefect Secret block(s) checked; {len(findings)} finding(s)"
    )
    if problems:
        summary += f"; could not read: {'; '.join(problems)}"
    return CheckOutcome(
        check=CHECK,
        target=env_name,
        summary=redact(summary),
        findings=findings,
        usable=not problems,
        details={"secret_max_age_seconds": max_age.total_seconds(), "now": now.isoformat()},
    )
