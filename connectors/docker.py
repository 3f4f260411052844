"""Docker engine access: a connected client and error translation.

Built on the docker SDK against ``target.host`` or ``DOCKER_HOST``. Every API call carries a
socket timeout; an unreachable daemon, a 5xx or a 409 is a ``TransientError``, a missing
container or a refused request a ``PermanentError``. Commands in containers run through
``connectors.transports.DockerExec``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import docker
import docker.errors
import requests.exceptions

from opsflow.errors import PermanentError, TransientError
from opsflow.inventory import DockerTarget
from opsflow.redaction import redact

DEFAULT_DOCKER_HOST = "unix:///var/run/docker.sock"
API_TIMEOUT = 10.0


def docker_host(target: DockerTarget) -> str:
    """The daemon URL the target points at: ``docker.host``, else DOCKER_HOST, else the default."""
    return target.host or os.environ.get("DOCKER_HOST") or DEFAULT_DOCKER_HOST


def docker_client(target: DockerTarget, timeout: float = API_TIMEOUT) -> docker.DockerClient:
    """A connected client; an unreachable daemon is a TransientError naming the host."""
    host = docker_host(target)
    try:
        client = docker.DockerClient(base_url=host, timeout=timeout)
        client.ping()
    except docker.errors.DockerException as exc:
        raise TransientError(
            redact(
                f"Docker daemon at {host} is unreachable ({exc}); check that it runs and that "
                "docker.host in the inventory (or DOCKER_HOST) points at it"
            )
        ) from None
    except requests.exceptions.RequestException as exc:
        raise TransientError(
            redact(f"Docker daemon at {host} did not answer ({type(exc).__name__}: {exc})")
        ) from None
    return client


@contextmanager
def docker_errors(what: str) -> Iterator[None]:
    """Translate docker SDK / HTTP failures into Transient/PermanentError about ``what``."""
    try:
        yield
    except docker.errors.NotFound as exc:
        raise PermanentError(redact(f"{what}: not found ({exc.explanation or exc})")) from None
    except docker.errors.APIError as exc:
        code = exc.status_code or 0
        message = redact(f"{what}: Docker API error {code}: {exc.explanation or exc}")
        if code >= 500 or code in (408, 409, 429):
            raise TransientError(message) from None
        raise PermanentError(message) from None
    except (requests.exceptions.RequestException, OSError) as exc:
        raise TransientError(redact(f"{what}: {type(exc).__name__}: {exc}")) from None
