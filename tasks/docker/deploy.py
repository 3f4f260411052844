"""Docker deploy target: replace a service's container with a new image keeping its config,
wait for it to be healthy, roll back by renaming.

Names, for a service whose container is ``web``:

* ``web`` — the container that serves (the new one once ``replace_container`` ran);
* ``web.opsflow-previous`` — the one it replaced, kept *stopped* until the deploy is verified
  (``remove_previous_container``) or rolled back (``restore_previous_container`` renames it
  back and starts it);
* ``web.opsflow-failed`` — after a rollback, the container that failed, kept stopped for its
  logs until the next deploy of the service removes it.

Every container ``replace_container`` creates carries the label ``opsflow.deploy-id``: a rerun
of a crashed deploy recognises its own work and continues from where it stopped. The create
request is built by ``tasks.docker.recreate.create_request`` from ``docker inspect``.

Container env holds secrets: nothing here logs or returns env values, and the log lines and
healthcheck output quoted in errors have every env value the container sets masked (on top of
``opsflow.redaction.redact``). docs/runbooks/deploy-docker.md tells the whole story.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from contextlib import closing
from datetime import timedelta
from typing import Any

import docker
import docker.errors
from pydantic import BaseModel

from connectors.docker import docker_client, docker_errors, docker_host
from opsflow.errors import InputError, PermanentError, TransientError
from opsflow.inventory import DockerService, DockerTarget
from opsflow.redaction import MASK, redact
from opsflow.rotation import SecretValue
from tasks.docker.recreate import (
    DEPLOY_ID_LABEL,
    FAILED_SUFFIX,
    PREVIOUS_SUFFIX,
    create_request,
)
from tasks.http import http_get
from tasks.policy import api_task

CLIENT_TIMEOUT = 60.0
"""Socket timeout of one engine call (a stop adds the container's stop timeout to it)."""
MAX_HEALTH_WAIT = 600.0
"""The longest health wait a caller may ask for: the seed script's 10-minute rollout wait."""
POLL_SECONDS = 0.25
STABLE_SECONDS = 5.0
"""Without a healthcheck or health URL: running this long without a restart counts as up."""
LOG_TAIL = 20
_MIN_ENV_VALUE = 4


class ContainerImage(BaseModel):
    """What runs now for one service (no env, no secrets)."""

    service: str
    container: str
    container_id: str
    image: str
    image_id: str
    running: bool
    deploy_id: str | None
    switch_seconds: float | None = None
    """``replace_container`` only: from stopping the old container to the new one started
    (the port is closed at least that long; the application's own start-up comes on top)."""


def _inspect(client: docker.DockerClient, name: str) -> dict[str, Any] | None:
    """The container named exactly ``name`` (the engine also matches id prefixes), or None."""
    with docker_errors(f"container {name}"):
        try:
            attrs: dict[str, Any] = client.api.inspect_container(name)
        except docker.errors.NotFound:
            return None
    return attrs if str(attrs.get("Name", "")).lstrip("/") == name else None


def _image_config(client: docker.DockerClient, image: str) -> dict[str, Any]:
    with docker_errors(f"image {image}"):
        try:
            return dict(client.api.inspect_image(image).get("Config") or {})
        except docker.errors.ImageNotFound:
            return {}


def _info(
    service: DockerService, attrs: dict[str, Any], switch: float | None = None
) -> ContainerImage:
    config = attrs.get("Config") or {}
    return ContainerImage(
        service=service.name,
        container=str(attrs.get("Name", "")).lstrip("/"),
        container_id=str(attrs["Id"]),
        image=str(config.get("Image") or ""),
        image_id=str(attrs.get("Image") or ""),
        running=bool((attrs.get("State") or {}).get("Running")),
        deploy_id=(config.get("Labels") or {}).get(DEPLOY_ID_LABEL),
        switch_seconds=switch,
    )


def _host(target: DockerTarget) -> str:
    return redact(docker_host(target))


def _missing(target: DockerTarget, name: str) -> PermanentError:
    return PermanentError(
        f"container {name} does not exist on the Docker engine at {_host(target)}: nothing to "
        "replace (fix: create it once with docker run / docker compose; a deploy replaces an "
        "existing container and keeps its configuration)"
    )


@api_task("read_container_image", timeout_seconds=60)
def read_container_image(target: DockerTarget, service: DockerService) -> ContainerImage:
    """The container of ``service`` and the image it runs. After a deploy that stopped between
    the rename and the create, that is ``<container>.opsflow-previous``."""
    with closing(docker_client(target)) as client:
        name = service.container
        attrs = _inspect(client, name) or _inspect(client, name + PREVIOUS_SUFFIX)
        if attrs is None:
            raise _missing(target, name)
        return _info(service, attrs)


def _image_id(client: docker.DockerClient, target: DockerTarget, image: str) -> str:
    try:
        return str(client.api.inspect_image(image)["Id"])
    except docker.errors.ImageNotFound:
        raise InputError(
            "image",
            f"{image} is not on the Docker engine at {_host(target)}",
            "build or load it (docker load / docker build -t …) first; nothing was changed",
        ) from None
    except docker.errors.APIError as exc:
        if exc.status_code == 400:
            raise InputError(
                "image",
                f"{image!r} is not a valid image reference ({exc.explanation or exc})",
                "write repository[:tag] or repository@sha256:…; nothing was changed",
            ) from None
        with docker_errors(f"image {image}"):
            raise


@api_task("check_image_present", timeout_seconds=60)
def check_image_present(target: DockerTarget, image: str) -> str:
    """The image id of ``image`` on the engine; a missing image is an ``InputError`` (plan
    time: nothing was changed)."""
    with closing(docker_client(target)) as client:
        return _image_id(client, target, image)


def _stop(client: docker.DockerClient, attrs: dict[str, Any]) -> None:
    timeout = (attrs.get("Config") or {}).get("StopTimeout")
    name = str(attrs.get("Name", "")).lstrip("/")
    with docker_errors(f"stop container {name}"):
        client.api.stop(attrs["Id"], timeout=10 if timeout is None else int(timeout))


def _start(client: docker.DockerClient, container_id: str, name: str) -> None:
    with docker_errors(f"start container {name}"):
        client.api.start(container_id)


def _rename(client: docker.DockerClient, container_id: str, old: str, new: str) -> None:
    with docker_errors(f"rename container {old} to {new}"):
        client.api.rename(container_id, new)


def _remove(client: docker.DockerClient, container_id: str, name: str) -> None:
    # v=False: volumes stay (an anonymous volume is shared with the container that replaced it)
    with docker_errors(f"remove container {name}"):
        try:
            client.api.remove_container(container_id, v=False, force=True)
        except docker.errors.NotFound:
            return


def _put_back(
    client: docker.DockerClient, name: str, previous: dict[str, Any], new_id: str | None
) -> str:
    """After a failed create/connect/start: the old container back under its name, started.
    Returns '' or what went wrong doing so."""
    try:
        if new_id is not None:
            _remove(client, new_id, name)
        _rename(client, previous["Id"], name + PREVIOUS_SUFFIX, name)
        _start(client, previous["Id"], name)
    except (PermanentError, TransientError) as exc:
        return f"; putting the old container back failed too ({exc}): run the rollback"
    return "; the old container was put back and started"


def _create(client: docker.DockerClient, name: str, request: Any) -> str:
    with docker_errors(f"create container {name}"):
        new_id = str(client.api.create_container_from_config(request.body, name=name)["Id"])
    for network, settings in request.connect.items():
        ipam = settings.get("IPAMConfig") or {}
        with docker_errors(f"connect container {name} to network {network}"):
            client.api.connect_container_to_network(
                new_id,
                network,
                aliases=settings.get("Aliases"),
                links=settings.get("Links"),
                ipv4_address=ipam.get("IPv4Address"),
                ipv6_address=ipam.get("IPv6Address"),
                link_local_ips=ipam.get("LinkLocalIPs"),
                driver_opt=settings.get("DriverOpts"),
            )
    return new_id


@api_task("replace_container", timeout_seconds=300)
def replace_container(
    target: DockerTarget,
    service: DockerService,
    image: str,
    deploy_id: str,
    env: Mapping[str, SecretValue] | None = None,
) -> ContainerImage:
    """Replace the container of ``service`` by one of ``image`` with the same configuration.

    The old one is renamed ``<name>.opsflow-previous`` and the new one created under
    ``<name>`` while the old still serves; then the old is stopped and the new started (a
    published host port is bound by one running container at a time: that gap is the
    downtime, ``switch_seconds``). The old container is kept, stopped. A rerun with the same
    ``deploy_id`` finds its own container and finishes (or does nothing); a rerun after a
    stop between rename and create continues from the previous container. When the create,
    a network connect or the start fails, the old container is put back and started first.
    ``env`` sets environment variables on the new container (a secret rotation: the same
    image, the new value; ``SecretValue`` objects, so no value is a task parameter Prefect sees).
    """
    with closing(docker_client(target, timeout=CLIENT_TIMEOUT)) as client:
        override = {key: value.reveal() for key, value in (env or {}).items()}
        return _replace(client, target, service, image, deploy_id, override)


def _replace(
    client: docker.DockerClient,
    target: DockerTarget,
    service: DockerService,
    image: str,
    deploy_id: str,
    env: Mapping[str, str] | None = None,
) -> ContainerImage:
    name = service.container
    previous_name = name + PREVIOUS_SUFFIX
    image_id = _image_id(client, target, image)
    current = _inspect(client, name)
    previous = _inspect(client, previous_name)
    if (
        current is not None
        and ((current.get("Config") or {}).get("Labels") or {}).get(DEPLOY_ID_LABEL) == deploy_id
        and current.get("Image") == image_id
    ):
        if (current.get("State") or {}).get("Running"):
            return _info(service, current)  # done already
        started = time.monotonic()  # stopped between create and start: finish
        if previous is not None and (previous.get("State") or {}).get("Running"):
            _stop(client, previous)
        _start(client, current["Id"], name)
        return _info(service, _inspect(client, name) or current, time.monotonic() - started)
    if current is not None and previous is not None:
        raise PermanentError(
            f"{previous_name} exists on {_host(target)} from an earlier deploy (deploy id "
            f"{((previous.get('Config') or {}).get('Labels') or {}).get(DEPLOY_ID_LABEL)}): "
            "finish that deploy first (fix: remove it once the running container is verified, "
            f"or roll back to it); {name} was not changed"
        )
    if current is None and previous is None:
        raise _missing(target, name)
    if current is not None:
        failed = _inspect(client, name + FAILED_SUFFIX)
        if failed is not None:  # a new deploy: the last rollback's failed container goes
            _remove(client, failed["Id"], name + FAILED_SUFFIX)
        _rename(client, current["Id"], name, previous_name)
        previous = current
    assert previous is not None
    config = _image_config(client, previous["Image"])
    request = create_request(previous, config, image, deploy_id, env)
    new_id: str | None = None
    try:
        new_id = _create(client, name, request)
        started = time.monotonic()
        if (_inspect(client, previous_name) or {}).get("State", {}).get("Running"):
            _stop(client, previous)
        _start(client, new_id, name)
        switch = time.monotonic() - started
    except (PermanentError, TransientError) as exc:
        outcome = _put_back(client, name, previous, new_id)
        kind = TransientError if isinstance(exc, TransientError) else PermanentError
        raise kind(f"{exc}{outcome}") from None
    attrs = _inspect(client, name)
    if attrs is None:
        raise TransientError(f"container {name} vanished right after it was started")
    return _info(service, attrs, switch)


def _env_masker(attrs: dict[str, Any], image_config: dict[str, Any]) -> Callable[[str], str]:
    """Mask the values of the env the container sets (not its image's defaults) in text, then
    ``redact``: applications print their secrets in logs and health output."""
    inherited = set(image_config.get("Env") or [])
    values = {
        entry.split("=", 1)[1]
        for entry in (attrs.get("Config") or {}).get("Env") or []
        if "=" in entry and entry not in inherited
    }
    values = {v for v in values if len(v) >= _MIN_ENV_VALUE}
    if not values:
        return redact
    pattern = re.compile("|".join(map(re.escape, sorted(values, key=len, reverse=True))))
    return lambda text: redact(pattern.sub(MASK, text))


def _last_logs(
    client: docker.DockerClient, attrs: dict[str, Any], mask: Callable[[str], str]
) -> str:
    with docker_errors(f"logs of container {attrs.get('Name')}"):
        raw = client.api.logs(attrs["Id"], stdout=True, stderr=True, tail=LOG_TAIL)
    text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)
    lines = [mask(line.rstrip("\r")) for line in text.splitlines() if line.strip()]
    return "\n".join(lines) if lines else "(no output)"


def _health_output(state: dict[str, Any], mask: Callable[[str], str]) -> str:
    log = (state.get("Health") or {}).get("Log") or []
    if not log:
        return ""
    last = log[-1]
    output = mask(str(last.get("Output") or "").strip())[:500]
    return (
        f"exit code {last.get('ExitCode')}: {output}"
        if output
        else f"exit code {last.get('ExitCode')}"
    )


def _has_healthcheck(attrs: dict[str, Any]) -> bool:
    test = ((attrs.get("Config") or {}).get("Healthcheck") or {}).get("Test") or []
    return bool(test) and test[0] != "NONE"


def _url_ok(url: str, seconds: float) -> tuple[bool, str]:
    try:
        response = http_get(url, timedelta(seconds=max(0.2, min(2.0, seconds))), True)
    except (PermanentError, TransientError) as exc:
        return False, str(exc)
    return 200 <= response.status_code < 300, f"{url} answered {response.status_code}"


@api_task("wait_container_healthy", timeout_seconds=MAX_HEALTH_WAIT + 60)
def wait_container_healthy(
    target: DockerTarget,
    service: DockerService,
    timeout_seconds: float = 120.0,
    stable_seconds: float = STABLE_SECONDS,
) -> float:
    """Wait until the container of ``service`` is up; return the seconds it took.

    Up is: its Docker HEALTHCHECK says ``healthy`` when it has one, else ``service.health_url``
    answers 2xx, else it has been running ``stable_seconds`` without a restart. Fails at
    once (``PermanentError``: the flow rolls back, no retry) when the healthcheck says
    ``unhealthy`` (with the last check's output) or the container exits or restarts (with its
    exit code and last log lines), and after ``timeout_seconds`` (at most 600). Env values and
    credentials are masked in every quoted output.
    """
    if not 0 < timeout_seconds <= MAX_HEALTH_WAIT:
        raise InputError(
            "timeout_seconds",
            f"{timeout_seconds:g} s is out of range",
            f"wait between 1 and {MAX_HEALTH_WAIT:g} seconds",
        )
    with closing(docker_client(target)) as client:
        return _wait_healthy(client, target, service, timeout_seconds, stable_seconds)


def _wait_healthy(
    client: docker.DockerClient,
    target: DockerTarget,
    service: DockerService,
    timeout_seconds: float,
    stable_seconds: float,
) -> float:
    name = service.container
    started = time.monotonic()
    deadline = started + timeout_seconds
    attrs = _inspect(client, name)
    if attrs is None:
        raise _missing(target, name)
    mask = _env_masker(attrs, _image_config(client, str(attrs.get("Image"))))
    running_since: float | None = None
    last = "not checked yet"
    while True:
        state = attrs.get("State") or {}
        restarts = int(attrs.get("RestartCount") or 0)
        if state.get("Status") in ("exited", "dead") or state.get("Restarting") or restarts:
            oom = ", OOM-killed" if state.get("OOMKilled") else ""
            what = f"restarted {restarts} time(s)" if restarts else f"is {state.get('Status')}"
            raise PermanentError(
                f"container {name} {what}: exit code {state.get('ExitCode')}{oom}; "
                f"last log lines:\n{_last_logs(client, attrs, mask)}"
            )
        now = time.monotonic()
        if state.get("Running"):
            running_since = running_since or now
        if _has_healthcheck(attrs):
            health = (state.get("Health") or {}).get("Status")
            last = f"healthcheck {health}" + (
                f" ({out})" if (out := _health_output(state, mask)) else ""
            )
            if health == "healthy":
                return now - started
            if health == "unhealthy":
                raise PermanentError(f"container {name} is unhealthy: {last}")
        elif service.health_url and state.get("Running"):
            ok, last = _url_ok(service.health_url, deadline - now)
            if ok:
                return time.monotonic() - started
        elif running_since is not None:
            last = f"running for {now - running_since:.1f} s"
            if now - running_since >= stable_seconds:
                return now - started
        if time.monotonic() >= deadline:
            raise PermanentError(
                f"container {name} was not healthy within {timeout_seconds:g} s (last: {last})"
            )
        time.sleep(POLL_SECONDS)
        attrs = _inspect(client, name)
        if attrs is None:
            raise PermanentError(f"container {name} disappeared while waiting for it to be healthy")


@api_task("restore_previous_container", timeout_seconds=120)
def restore_previous_container(target: DockerTarget, service: DockerService) -> ContainerImage:
    """Roll back: stop the new ``<name>`` and keep it as ``<name>.opsflow-failed`` (for its
    logs; restart policy ``no``), rename ``<name>.opsflow-previous`` back to ``<name>`` and
    start it. Idempotent: a service already restored (no previous container, a failed one
    kept) is left as it is (started if it is not running). No previous container is a
    ``PermanentError``."""
    with closing(docker_client(target, timeout=CLIENT_TIMEOUT)) as client:
        name = service.container
        previous_name, failed_name = name + PREVIOUS_SUFFIX, name + FAILED_SUFFIX
        current, previous = _inspect(client, name), _inspect(client, previous_name)
        failed = _inspect(client, failed_name)
        if previous is None:
            if current is not None and failed is not None:  # restored already
                if not (current.get("State") or {}).get("Running"):
                    _start(client, current["Id"], name)
                return _info(service, _inspect(client, name) or current)
            raise PermanentError(
                f"no previous container {previous_name} on {_host(target)}: nothing to roll "
                f"back to (it is removed once a deploy is verified); {name} was not changed"
            )
        if current is not None:
            if (current.get("State") or {}).get("Running"):
                _stop(client, current)
            if failed is not None:
                _remove(client, failed["Id"], failed_name)
            with docker_errors(f"set restart policy 'no' on container {name}"):
                # kept for its logs only: a daemon restart must not start it next to the old one
                client.api.update_container(current["Id"], restart_policy={"Name": "no"})
            _rename(client, current["Id"], name, failed_name)
        _rename(client, previous["Id"], previous_name, name)
        _start(client, previous["Id"], name)
        return _info(service, _inspect(client, name) or previous)


@api_task("remove_previous_container", timeout_seconds=60)
def remove_previous_container(target: DockerTarget, service: DockerService) -> bool:
    """Remove ``<name>.opsflow-previous`` once the deploy is verified (its volumes stay);
    False when there was none."""
    with closing(docker_client(target)) as client:
        name = service.container + PREVIOUS_SUFFIX
        previous = _inspect(client, name)
        if previous is None:
            return False
        _remove(client, previous["Id"], name)
        return True
