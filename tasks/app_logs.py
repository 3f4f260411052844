"""The application's logs at maintenance time: the last ``maintenance.container_log_lines``
lines of each container of ``docker.services`` and of each started pod of the environment's
Kubernetes target, with the error lines (``logs.pattern``) counted and the most frequent
messages, per container/pod.

Reading is done by ``tasks.docker.checks.tail_container_logs`` and
``tasks.kubernetes.checks.tail_pod_logs`` (imported only when the environment has the system);
counting by ``tasks.logs.summarize_tail`` (``summarize_errors``: messages normalised and
redacted, since application log lines can carry secrets). A container or pod that cannot be
read, or a system that cannot be reached, is reported with its (redacted) error and degrades
the step; when nothing could be read at all the step fails. Error lines found do not change the
status: this is a summary for the report, the health check grades errors.
"""

from __future__ import annotations

import time
from typing import Any

from opsflow.errors import OpsflowError
from opsflow.inventory import Environment
from opsflow.maintenance import MaintenanceStep
from opsflow.redaction import redact
from tasks.logs import LogTail
from tasks.policy import probe_task

STEP = "summarize_app_logs"


def _target(env: Environment) -> str:
    parts = []
    if env.docker is not None and env.docker.services:
        parts.append("docker: " + ", ".join(s.container for s in env.docker.services))
    if env.kubernetes is not None:
        k8s = env.kubernetes
        parts.append(f"kubernetes: {k8s.namespace}/{k8s.deployment or k8s.label_selector or '*'}")
    return "; ".join(parts) or "application"


def read_app_log_tails(env: Environment, lines: int) -> list[LogTail]:
    """One ``LogTail`` per container and started pod; a system that cannot be reached gives
    one ``LogTail`` with its error."""
    pattern = env.logs.pattern
    tails: list[LogTail] = []
    if env.docker is not None and env.docker.services:
        from tasks.docker.checks import tail_container_logs  # docker SDK only when needed

        try:
            tails += tail_container_logs(env.docker, lines, pattern)
        except OpsflowError as exc:
            tails.append(LogTail(source="docker", name="docker", error=redact(str(exc))))
    if env.kubernetes is not None:
        from tasks.kubernetes.checks import tail_pod_logs  # kubernetes client only when needed

        try:
            tails += tail_pod_logs(env.kubernetes, lines, pattern)
        except OpsflowError as exc:
            tails.append(LogTail(source="kubernetes", name="kubernetes", error=redact(str(exc))))
    return tails


def _summary(tails: list[LogTail], pattern: str) -> str:
    read = [t for t in tails if t.error is None]
    errors = sum(t.errors for t in read)
    text = (
        f"{len(read)} container(s)/pod(s): {errors} of {sum(t.lines for t in read)} line(s) "
        f"match {pattern!r}"
    )
    noisy = sorted((t for t in read if t.errors), key=lambda t: -t.errors)[:3]
    if noisy:
        text += "; most: " + "; ".join(
            f"{t.name} {t.errors}" + (f" ({t.top[0][1]}x {t.top[0][0]!r})" if t.top else "")
            for t in noisy
        )
    unread = [t for t in tails if t.error is not None]
    if unread:
        text += f"; {len(unread)} could not be read: " + "; ".join(
            f"{t.name}: {t.error}" for t in unread[:3]
        )
    return redact(text)


@probe_task(STEP, timeout_seconds=180)
def summarize_app_logs(env: Environment, lines: int) -> MaintenanceStep:
    """Error count and top messages (redacted) in the last ``lines`` lines of each container
    and pod of ``env``; skipped when ``lines`` is 0 or there is no container or pod."""
    started = time.monotonic()
    step = MaintenanceStep(step=STEP, target=_target(env))
    if lines <= 0:
        step.status = "skipped"
        step.summary = "maintenance.container_log_lines is 0: no container or pod log is read"
        return step
    has_docker = env.docker is not None and bool(env.docker.services)
    if not has_docker and env.kubernetes is None:
        step.status = "skipped"
        step.summary = "the environment lists no Docker services and no Kubernetes target"
        return step
    tails = read_app_log_tails(env, lines)
    step.seconds = round(time.monotonic() - started, 3)
    if not tails:
        step.status = "skipped"
        step.summary = "no container or started pod to read (every pod is Pending)"
        return step
    unread = [t for t in tails if t.error is not None]
    read = [t for t in tails if t.error is None]
    step.status = "failed" if not read else "degraded" if unread else "complete"
    step.summary = _summary(tails, env.logs.pattern)
    step.after = {
        "sources": len(read),
        "lines": sum(t.lines for t in read),
        "error_lines": sum(t.errors for t in read),
    }
    details: dict[str, Any] = {
        "pattern": env.logs.pattern,
        "lines": lines,
        "sources": [t.model_dump(mode="json") for t in tails],
    }
    step.details = details
    return step
