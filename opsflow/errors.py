"""The two kinds of failure every task raises, and the retry policy built on them.

``TransientError`` is worth retrying (network trouble, 5xx, 409 conflicts, lock timeouts);
``PermanentError`` is not (bad credentials, not found, validation). Prefect tasks pass
``retry_condition_fn=retry_on_transient`` so only transient failures burn retries.
"""

from __future__ import annotations

import errno
import os
import socket
from typing import Any


class OpsflowError(Exception):
    """Base class. Messages are operator-facing: say what failed and how to fix it."""


class TransientError(OpsflowError):
    """A failure that may go away by itself; retried with backoff and jitter."""


class PermanentError(OpsflowError):
    """A failure that retrying will not fix; never retried."""


class InputError(PermanentError):
    """Bad input (inventory, parameters, unknown environment, missing secret).

    Raised while planning, before any side effect. ``field`` names the offending input and
    ``fix`` says what to change.
    """

    def __init__(self, field: str, problem: str, fix: str) -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        super().__init__(f"{field}: {problem} (fix: {fix})")


class ApprovalRejected(OpsflowError):
    """The approval was rejected or timed out; nothing was changed."""


_TRANSIENT_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.EPIPE,
}


def is_transient(exc: BaseException) -> bool:
    """Classify an exception: True when a retry may succeed."""
    if isinstance(exc, PermanentError):
        return False
    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, socket.timeout | TimeoutError | ConnectionError):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
    if isinstance(status, int):
        return status >= 500 or status in (408, 409, 429)
    return False


def retry_on_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry only when the failure is transient."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - the state's exception is what we classify
        return is_transient(exc)
    return False


def retry_delay_scale() -> float:
    """``OPSFLOW_RETRY_DELAY_SCALE`` (``Settings.retry_delay_scale``, which refuses a bad value
    with exit 2 where the CLI starts): read here from the environment, as this module is
    imported before any settings; a value out of (0, 1] counts as 1."""
    try:
        scale = float(os.environ.get("OPSFLOW_RETRY_DELAY_SCALE", "1"))
    except ValueError:
        return 1.0
    return scale if 0 < scale <= 1 else 1.0


def _policy(retries: int, delays: list[float]) -> dict[str, Any]:
    scale = retry_delay_scale()
    return {
        "retries": retries,
        "retry_delay_seconds": [round(d * scale, 3) for d in delays],
        "retry_jitter_factor": 0.5,
        "retry_condition_fn": retry_on_transient,
    }


PROBE_RETRIES = _policy(2, [1, 4])
"""A quick probe (a health check of one target): two retries soon after, so a blip does not
page anyone, and the check still reports within seconds."""

API_RETRIES = _policy(3, [2, 8, 20])
"""An API call that changes or reads state (Docker/Kubernetes/S3 metadata, admin SQL, scaling,
notifications): three retries spread over half a minute, long enough for a 503 or a leader
election to pass."""

TRANSFER_RETRIES = _policy(2, [10, 60])
"""A long transfer (a dump, a restore, reading a backup end to end): a retry starts the transfer
over, so wait for the cause (a restarting server, a throttled store) to pass first."""
