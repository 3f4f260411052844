"""Docker configuration export: what it takes to recreate each service's container."""

from __future__ import annotations

from typing import Any

from connectors.docker import docker_client, docker_errors, docker_host
from opsflow.errors import PermanentError
from opsflow.inventory import DockerTarget
from opsflow.redaction import redact
from tasks.policy import api_task

_CONFIG_FIELDS = ("Image", "Env", "Labels", "Healthcheck", "Cmd", "Entrypoint", "User")
_HOST_CONFIG_FIELDS = ("RestartPolicy", "PortBindings", "Binds", "NetworkMode", "Privileged")


def container_config(attrs: dict[str, Any]) -> dict[str, Any]:
    """What it takes to recreate a container, from its ``docker inspect``.

    Image, env, command, labels, healthcheck, mounts, ports, restart policy and networks.
    ``Env`` often holds secrets: the result is only ever stored encrypted.
    """
    config = attrs.get("Config") or {}
    host = attrs.get("HostConfig") or {}
    networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
    return {
        "id": attrs.get("Id"),
        "name": str(attrs.get("Name") or "").lstrip("/"),
        "image_id": attrs.get("Image"),
        "config": {field: config.get(field) for field in (*_CONFIG_FIELDS, "WorkingDir")},
        "exposed_ports": sorted(config.get("ExposedPorts") or {}),
        "host_config": {field: host.get(field) for field in _HOST_CONFIG_FIELDS},
        "mounts": [
            {
                key: mount.get(key)
                for key in ("Type", "Name", "Source", "Destination", "Mode", "RW")
                if key in mount
            }
            for mount in attrs.get("Mounts") or []
        ],
        "networks": sorted(networks),
    }


# persist_result=False: the result holds container env (secrets), never written to disk
@api_task("export_docker_config", timeout_seconds=120, persist_result=False)
def export_docker_config(target: DockerTarget) -> dict[str, Any]:
    """Each inventory service's container configuration (see ``container_config``).

    Returns ``{"host": ..., "containers": {service: config}, "missing": [service, ...]}``;
    a service whose container does not exist is listed in ``missing`` instead of failing the
    export. The values include secrets (env): pass the result only to ``store_config_export``.
    """
    client = docker_client(target)
    containers: dict[str, Any] = {}
    missing: list[str] = []
    try:
        for service in target.services:
            try:
                with docker_errors(f"container {service.container}"):
                    attrs = client.api.inspect_container(service.container)
            except PermanentError as exc:
                if "not found" not in str(exc):
                    raise
                missing.append(service.name)
                continue
            containers[service.name] = container_config(attrs)
    finally:
        client.close()
    return {"host": redact(docker_host(target)), "containers": containers, "missing": missing}
