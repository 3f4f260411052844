"""Reading package lists inside a running Docker container (on the environment's ``docker``
engine) or a pod (a pod or a deployment's Ready pod in the ``kubernetes`` namespace), through
the transports of ``connectors.transports`` (``DockerExec``, ``PodExec``).

``Inside.open`` raises ``PermanentError`` naming the container or pod when it is not there,
not running, or the environment has no Kubernetes target; connection trouble is a
``TransientError``. Each command has ``EXEC_TIMEOUT_S``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from connectors.docker import docker_client, docker_errors
from connectors.transports import Completed, DockerExec, PodExec, Transport
from opsflow.errors import PermanentError
from opsflow.inventory import DockerTarget, Environment

EXEC_TIMEOUT_S = 60.0
_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)?$")
NOT_FOUND_CODES = (126, 127)  # the runtime's "cannot execute" / "not found" exit codes

# What ``pip freeze`` reports, without needing pip (Debian's python3 has no pip module).
LIST_DISTRIBUTIONS = """
try:
    import importlib.metadata as m
    found = [(d.metadata["Name"], d.version) for d in m.distributions()]
except ImportError:
    import pkg_resources
    found = [(d.project_name, d.version) for d in pkg_resources.working_set]
for name, version in found:
    if name:
        print("%s==%s" % (name, version))
"""


@dataclass
class Inside:
    """A container or pod to run commands in; ``image_created``: its image's build time
    (Docker only), ``image``: the image reference."""

    kind: str  # container, pod
    name: str
    transport: Transport
    image: str = ""
    image_created: datetime | None = None
    _client: Any = None

    @property
    def label(self) -> str:
        return f"{self.kind} {self.name}"

    @classmethod
    def open(cls, env: Environment, container: str | None, pod: str | None) -> Inside:
        if container is not None:
            return cls._docker(env.docker or DockerTarget(), container)
        assert pod is not None
        if env.kubernetes is None:
            raise PermanentError(
                f"pod {pod} is in a Kubernetes namespace but the environment has no "
                "`kubernetes` (fix: add kubernetes: {namespace: NS, api_url: ...})"
            )
        return cls("pod", pod, PodExec(env.kubernetes, pod).pinned())

    @classmethod
    def _docker(cls, target: DockerTarget, name: str) -> Inside:
        client = docker_client(target)
        try:
            with docker_errors(f"container {name}"):
                attrs = client.api.inspect_container(name)
                image_attrs = client.api.inspect_image(attrs["Image"])
        except PermanentError:
            client.close()
            raise
        status = (attrs.get("State") or {}).get("Status")
        if status != "running":
            client.close()
            raise PermanentError(f"container {name} is not running (status {status})")
        return cls(
            "container",
            name,
            DockerExec(target, name, client=client),
            image=str((attrs.get("Config") or {}).get("Image") or attrs["Image"]),
            image_created=docker_time(image_attrs.get("Created")),
            _client=client,
        )

    def run(self, argv: list[str]) -> Completed:
        return self.transport.capture(argv, EXEC_TIMEOUT_S)

    def close(self) -> None:
        self.transport.close()
        if self._client is not None:
            self._client.close()

    def __enter__(self) -> Inside:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def docker_time(value: Any) -> datetime | None:
    """Docker's ``2024-01-02T03:04:05.123456789Z`` (RFC 3339, nanoseconds) as a datetime."""
    match = _RFC3339.match(value) if isinstance(value, str) else None
    if match is None:
        return None
    when, fraction, zone = match.groups()
    text = f"{when}.{(fraction or '0')[:6]}{'+00:00' if zone in (None, 'Z') else zone}"
    return datetime.fromisoformat(text).astimezone(UTC)


def python_packages(inside: Inside, python: str) -> str | None:
    """``name==version`` lines of the distributions ``python`` sees; None when there is no
    such interpreter. A PermanentError when it runs and fails."""
    done = inside.run([python, "-c", LIST_DISTRIBUTIONS])
    out = done.stdout.decode("utf-8", errors="replace")
    if done.code in NOT_FOUND_CODES or (done.code != 0 and "executable file not found" in out):
        return None
    if done.code != 0:
        raise PermanentError(
            f"listing the Python packages with {python} in {inside.label} exited with "
            f"{done.code}: {done.stderr_tail() or out[-300:]}"
        )
    return out
