"""Restarting a service's container and scaling a Compose-style service on a Docker engine.

**Restart**: ``docker restart`` of the service's container (``docker.services[].container``),
then a wait until it runs again: its ``State.StartedAt`` changed, it is running, its Docker
HEALTHCHECK says ``healthy`` when it has one, else it has stayed up ``stable_seconds`` without
its restart count growing. A container that exits or keeps restarting fails the wait.

**Compose-style scaling**: the replicas of a service are the containers whose labels
``com.docker.compose.service`` (and ``com.docker.compose.project``) equal those of the
service's inventory container — what ``docker compose up --scale web=N`` makes. The inventory
container must carry the ``com.docker.compose.service`` label. The count is the number of those
containers that **run**. Scaling

* **up** starts the group's stopped containers first (oldest first), then creates copies of the
  inventory container's configuration (the create request of ``tasks.docker.recreate``, with the
  same image), named ``<project>-<service>-<n>`` with ``n`` the next
  ``com.docker.compose.container-number`` (``<service>-<n>`` without a project); a copy gets
  no fixed hostname and no fixed host port (a published port gets an ephemeral one: two
  containers cannot bind the same host port), and is labelled ``opsflow.io/scaled-copy=1``;
  each new or started container is awaited up (as after a restart);
* **down** removes the newest running containers first (stop, then remove with anonymous
  volumes); the inventory container is never removed: scaled to 0, it is stopped.
"""

from __future__ import annotations

import time
from contextlib import closing
from typing import Any

import docker
import docker.errors

from connectors.docker import docker_client, docker_errors
from opsflow.errors import PermanentError
from opsflow.inventory import DockerService, DockerTarget
from tasks.docker.recreate import DEPLOY_ID_LABEL, create_request

SERVICE_LABEL = "com.docker.compose.service"
PROJECT_LABEL = "com.docker.compose.project"
NUMBER_LABEL = "com.docker.compose.container-number"
COPY_LABEL = "opsflow.io/scaled-copy"
CLIENT_TIMEOUT = 60.0
STOP_TIMEOUT_S = 30
POLL_S = 0.25


def _inspect(client: docker.DockerClient, name: str) -> dict[str, Any]:
    with docker_errors(f"container {name}"):
        attrs: dict[str, Any] = client.api.inspect_container(name)
    return attrs


def _name(attrs: dict[str, Any]) -> str:
    return str(attrs.get("Name", "")).lstrip("/")


def wait_up(
    client: docker.DockerClient,
    name: str,
    *,
    started_not: str | None,
    timeout_seconds: float,
    stable_seconds: float,
) -> float:
    """Wait until container ``name`` runs (a new ``StartedAt`` when ``started_not`` is given),
    healthy when it has a HEALTHCHECK, else stable for ``stable_seconds``; return the seconds."""
    began = time.monotonic()
    deadline = began + timeout_seconds
    restarts0: int | None = None
    since: float | None = None
    last = "not looked at yet"
    while True:
        attrs = _inspect(client, name)
        state = attrs.get("State") or {}
        restarts = int(attrs.get("RestartCount") or 0)
        restarts0 = restarts if restarts0 is None else restarts0
        now = time.monotonic()
        fresh = started_not is None or state.get("StartedAt") != started_not
        if state.get("Status") in ("exited", "dead") and fresh:
            oom = ", OOM-killed" if state.get("OOMKilled") else ""
            raise PermanentError(
                f"container {name} exited (exit code {state.get('ExitCode')}{oom}) instead of "
                "running (fix: look at its logs: docker logs " + name + ")"
            )
        if restarts > restarts0:
            raise PermanentError(
                f"container {name} restarted by itself {restarts - restarts0} time(s) while "
                f"being awaited (exit code {state.get('ExitCode')}; fix: look at its logs)"
            )
        if state.get("Running") and fresh:
            since = since or now
            test = ((attrs.get("Config") or {}).get("Healthcheck") or {}).get("Test") or []
            if test and test[0] != "NONE":
                health = (state.get("Health") or {}).get("Status")
                last = f"healthcheck {health}"
                if health == "healthy":
                    return now - began
                if health == "unhealthy":
                    raise PermanentError(f"container {name} is unhealthy after its start")
            else:
                last = f"running for {now - since:.1f} s"
                if now - since >= stable_seconds:
                    return now - began
        else:
            last = f"status {state.get('Status')}"
        if now >= deadline:
            raise PermanentError(
                f"container {name} was not up within {timeout_seconds:g} s (last: {last})"
            )
        time.sleep(POLL_S)


def restart_container(
    target: DockerTarget, service: DockerService, timeout_seconds: float, stable_seconds: float
) -> str:
    """``docker restart`` the service's container and wait until it is up again."""
    name = service.container
    with closing(docker_client(target, timeout=CLIENT_TIMEOUT)) as client:
        before = _inspect(client, name)
        started = (before.get("State") or {}).get("StartedAt")
        with docker_errors(f"restart container {name}"):
            client.api.restart(before["Id"], timeout=STOP_TIMEOUT_S)
        seconds = wait_up(
            client,
            name,
            started_not=started,
            timeout_seconds=timeout_seconds,
            stable_seconds=stable_seconds,
        )
    return f"container {name} of service {service.name} restarted, up after {seconds:.1f} s"


# --- Compose-style scaling --------------------------------------------------------------------


def _group_filters(reference: dict[str, Any], service: DockerService) -> dict[str, Any]:
    labels = (reference.get("Config") or {}).get("Labels") or {}
    if SERVICE_LABEL not in labels:
        raise PermanentError(
            f"container {service.container} of service {service.name} has no {SERVICE_LABEL} "
            "label: it is not a Compose-style service and its replicas cannot be told apart "
            "(fix: run it with docker compose, or scale it by hand)"
        )
    wanted = [f"{SERVICE_LABEL}={labels[SERVICE_LABEL]}"]
    if PROJECT_LABEL in labels:
        wanted.append(f"{PROJECT_LABEL}={labels[PROJECT_LABEL]}")
    return {"label": wanted}


def group(client: docker.DockerClient, service: DockerService) -> list[dict[str, Any]]:
    """The service's containers (inspects), oldest first; the inventory container first of all."""
    reference = _inspect(client, service.container)
    with docker_errors(f"list the containers of service {service.name}"):
        listed = client.api.containers(all=True, filters=_group_filters(reference, service))
    others = [_inspect(client, c["Id"]) for c in listed if c["Id"] != reference["Id"]]
    others.sort(key=lambda a: (str(a.get("Created", "")), _name(a)))
    return [reference, *others]


def _running(attrs: dict[str, Any]) -> bool:
    state = attrs.get("State") or {}
    return bool(state.get("Running")) or bool(state.get("Restarting"))


def running_count(target: DockerTarget, service: DockerService) -> int:
    """How many containers of the Compose-style service run now."""
    with closing(docker_client(target, timeout=CLIENT_TIMEOUT)) as client:
        return sum(1 for attrs in group(client, service) if _running(attrs))


def _number(attrs: dict[str, Any]) -> int:
    value = str(((attrs.get("Config") or {}).get("Labels") or {}).get(NUMBER_LABEL, ""))
    return int(value) if value.isdigit() else 1


def copy_request(
    reference: dict[str, Any], image_config: dict[str, Any], number: int
) -> tuple[str, Any]:
    """The name and create request of copy ``number`` of the inventory container."""
    labels = (reference.get("Config") or {}).get("Labels") or {}
    image = str((reference.get("Config") or {}).get("Image") or reference.get("Image"))
    request = create_request(reference, image_config, image, deploy_id="")
    body = request.body
    body["Labels"] = {k: v for k, v in body["Labels"].items() if k != DEPLOY_ID_LABEL}
    if DEPLOY_ID_LABEL in labels:
        body["Labels"][DEPLOY_ID_LABEL] = labels[DEPLOY_ID_LABEL]
    body["Labels"] |= {NUMBER_LABEL: str(number), COPY_LABEL: "1"}
    body.pop("Hostname", None)
    host = body["HostConfig"]
    for bindings in (host.get("PortBindings") or {}).values():
        for binding in bindings or []:
            binding["HostPort"] = ""
    project, service = labels.get(PROJECT_LABEL), labels[SERVICE_LABEL]
    name = f"{project}-{service}-{number}" if project else f"{service}-{number}"
    return name, request


def _create_copy(client: docker.DockerClient, name: str, request: Any) -> str:
    with docker_errors(f"create container {name}"):
        new_id = str(client.api.create_container_from_config(request.body, name=name)["Id"])
    for network, settings in request.connect.items():
        with docker_errors(f"connect container {name} to network {network}"):
            client.api.connect_container_to_network(
                new_id, network, aliases=settings.get("Aliases"), links=settings.get("Links")
            )
    return new_id


def _image_config(client: docker.DockerClient, image_id: str) -> dict[str, Any]:
    with docker_errors(f"image {image_id}"):
        try:
            return dict(client.api.inspect_image(image_id).get("Config") or {})
        except docker.errors.ImageNotFound:
            return {}


def scale_compose(
    target: DockerTarget,
    service: DockerService,
    replicas: int,
    timeout_seconds: float,
    stable_seconds: float,
) -> tuple[int, int, list[str]]:
    """Make ``replicas`` containers of the service run; ``(before, after, changed names)``."""
    changed: list[str] = []
    with closing(docker_client(target, timeout=CLIENT_TIMEOUT)) as client:
        members = group(client, service)
        running = [a for a in members if _running(a)]
        before = len(running)
        to_start: list[str] = []
        if replicas > before:
            stopped = [a for a in members if not _running(a)]
            for attrs in stopped[: replicas - before]:
                with docker_errors(f"start container {_name(attrs)}"):
                    client.api.start(attrs["Id"])
                to_start.append(_name(attrs))
            reference = members[0]
            next_number = max(_number(a) for a in members) + 1
            image_config = _image_config(client, str(reference.get("Image")))
            for _ in range(replicas - before - len(to_start)):
                name, request = copy_request(reference, image_config, next_number)
                next_number += 1
                new_id = _create_copy(client, name, request)
                with docker_errors(f"start container {name}"):
                    client.api.start(new_id)
                to_start.append(name)
            for name in to_start:
                wait_up(
                    client,
                    name,
                    started_not=None,
                    timeout_seconds=timeout_seconds,
                    stable_seconds=stable_seconds,
                )
            changed = to_start
        elif replicas < before:
            copies = [a for a in running if a["Id"] != members[0]["Id"]]
            newest_first = sorted(
                copies, key=lambda a: (str(a.get("Created", "")), _name(a)), reverse=True
            ) + [a for a in running if a["Id"] == members[0]["Id"]]  # the inventory's last
            for attrs in newest_first[: before - replicas]:
                name = _name(attrs)
                with docker_errors(f"stop container {name}"):
                    client.api.stop(attrs["Id"], timeout=STOP_TIMEOUT_S)
                if attrs["Id"] != members[0]["Id"]:  # the inventory's container stays
                    with docker_errors(f"remove container {name}"):
                        client.api.remove_container(attrs["Id"], v=True)
                changed.append(name)
        after = sum(1 for a in group(client, service) if _running(a))
    return before, after, changed
