"""The create request that recreates a container from its ``docker inspect`` with a new image.

``docker inspect`` shows a container's configuration *merged* with its image's defaults: the
image's ``ENV``, ``LABEL``, ``CMD``, ``ENTRYPOINT``, ``HEALTHCHECK``, ``WORKDIR``, ``USER``,
``EXPOSE`` and ``VOLUME`` appear as if they had been set on the container. Copied as they are,
the old image's defaults would be pinned on the new container (its ``APP_VERSION=1.4.1``, its
old ``CMD``). So every such field keeps only what differs from the old image's own value, and
the new image supplies its defaults — what ``docker run`` with the same options would give
(watchtower does the same). Everything else (``HostConfig``: ports, binds and mounts, restart
policy, resources, log config, extra hosts, capabilities, …) is passed back as the daemon
reported it, and the networks with their aliases, static addresses and driver options.

Pure functions: no I/O (``tasks.docker.deploy`` calls the engine).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEPLOY_ID_LABEL = "opsflow.deploy-id"
PREVIOUS_SUFFIX = ".opsflow-previous"
FAILED_SUFFIX = ".opsflow-failed"

# Config fields the create request takes as inspect shows them (no image default applies)
_KEPT = (
    "Domainname",
    "AttachStdin",
    "AttachStdout",
    "AttachStderr",
    "Tty",
    "OpenStdin",
    "StdinOnce",
    "NetworkDisabled",
    "MacAddress",
    "StopTimeout",
)
# Config fields an image may set: kept only when they differ from the old image's value
_IMAGE_SCALARS = ("User", "Healthcheck", "WorkingDir", "StopSignal", "Shell")
_ENDPOINT_FIELDS = ("IPAMConfig", "Links", "Aliases", "DriverOpts")


@dataclass
class Recreate:
    """``body`` for ``POST /containers/create``; ``connect``: the further networks (name →
    endpoint settings) to connect before the start (engines before API 1.44 take one network
    at create)."""

    body: dict[str, Any]
    connect: dict[str, dict[str, Any]] = field(default_factory=dict)


def _env_key(entry: str) -> str:
    return entry.split("=", 1)[0]


def _own_env(env: list[str], image_env: list[str]) -> list[str]:
    """Entries set on the container: those not inherited unchanged from the image."""
    inherited = set(image_env)
    return [entry for entry in env if entry not in inherited]


def _own_dict(values: dict[str, Any], image_values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in image_values or image_values[k] != v}


def _bind_target(bind: str) -> str:
    parts = bind.split(":")
    return parts[1] if len(parts) > 1 else parts[0]


def _binds(attrs: dict[str, Any], host: dict[str, Any]) -> list[str] | None:
    """The binds, plus every anonymous volume (an image ``VOLUME`` or ``-v /path``) by name:
    a new container would otherwise get a fresh, empty one (``docker compose`` keeps them
    the same way)."""
    binds = list(host.get("Binds") or [])
    taken = {_bind_target(b) for b in binds}
    taken |= {m.get("Target") for m in host.get("Mounts") or []}
    for mount in attrs.get("Mounts") or []:
        if mount.get("Type") != "volume" or mount.get("Destination") in taken:
            continue
        mode = "" if mount.get("RW", True) else ":ro"
        binds.append(f"{mount['Name']}:{mount['Destination']}{mode}")
    return binds or host.get("Binds")


def _links(links: list[str] | None) -> list[str] | None:
    """Inspect writes a legacy link as ``/db:/web/alias``; create wants ``db:alias``."""
    if not links:
        return links
    out = []
    for link in links:
        source, _, alias = link.partition(":")
        out.append(f"{source.lstrip('/')}:{alias.rsplit('/', 1)[-1] or source.lstrip('/')}")
    return out


def endpoint_settings(endpoint: dict[str, Any], own_names: set[str]) -> dict[str, Any]:
    """What a network endpoint was asked for (not what the daemon assigned: IP, MAC, ids);
    aliases the daemon adds itself (the container's short id and name) are left out."""
    settings = {k: endpoint[k] for k in _ENDPOINT_FIELDS if endpoint.get(k)}
    if "Aliases" in settings:
        aliases = [a for a in settings["Aliases"] if a not in own_names]
        if aliases:
            settings["Aliases"] = aliases
        else:
            del settings["Aliases"]
    return settings


def own_names(attrs: dict[str, Any]) -> set[str]:
    """Names the daemon gives a container on a network by itself."""
    return {str(attrs.get("Id", ""))[:12], str(attrs.get("Name", "")).lstrip("/")}


def create_request(
    attrs: dict[str, Any],
    image_config: dict[str, Any],
    image: str,
    deploy_id: str,
    env_override: Mapping[str, str] | None = None,
) -> Recreate:
    """The request that recreates the container ``attrs`` (its inspect) from ``image``.

    ``image_config`` is the ``Config`` of the image the container runs now (its inspect), so
    that its defaults are told apart from the container's own settings; ``{}`` when that
    image is gone (then every value is kept as shown). The label ``opsflow.deploy-id`` is set
    to ``deploy_id``. ``env_override`` sets environment variables (replacing the container's
    own or the image's value): a secret rotation recreates a container with the new value.
    """
    config = attrs.get("Config") or {}
    body: dict[str, Any] = {k: copy.deepcopy(config[k]) for k in _KEPT if k in config}
    body["Image"] = image
    hostname = config.get("Hostname")
    if hostname and hostname != str(attrs.get("Id", ""))[:12]:  # the default is the short id
        body["Hostname"] = hostname

    env = _own_env(config.get("Env") or [], image_config.get("Env") or [])
    if env_override:
        env = [e for e in env if _env_key(e) not in env_override]
        env += [f"{key}={value}" for key, value in env_override.items()]
    if env:
        body["Env"] = env
    labels = _own_dict(config.get("Labels") or {}, image_config.get("Labels") or {})
    body["Labels"] = {**labels, DEPLOY_ID_LABEL: deploy_id}
    for key in ("ExposedPorts", "Volumes"):
        own = _own_dict(config.get(key) or {}, image_config.get(key) or {})
        if own:
            body[key] = own
    for key in _IMAGE_SCALARS:
        value = config.get(key)
        if value and value != image_config.get(key):
            body[key] = copy.deepcopy(value)
    entrypoint, cmd = config.get("Entrypoint"), config.get("Cmd")
    if entrypoint != image_config.get("Entrypoint"):
        # set on the container: the daemon then ignores the image's CMD, so keep ours as is
        body["Entrypoint"], body["Cmd"] = entrypoint, cmd
    elif cmd != image_config.get("Cmd"):
        body["Cmd"] = cmd

    host = copy.deepcopy(attrs.get("HostConfig") or {})
    binds = _binds(attrs, host)
    if binds is not None:
        host["Binds"] = binds
    if host.get("Links"):
        host["Links"] = _links(host["Links"])
    body["HostConfig"] = host

    networks = (attrs.get("NetworkSettings") or {}).get("Networks") or {}
    mode = str(host.get("NetworkMode") or "default")
    primary = "bridge" if mode == "default" else mode
    names = own_names(attrs)
    result = Recreate(body)
    if mode in ("host", "none") or mode.startswith("container:"):
        return result  # no endpoints of its own
    endpoints = {}
    for network, endpoint in networks.items():
        settings = endpoint_settings(endpoint or {}, names)
        if network == primary:
            endpoints[network] = settings
        else:
            result.connect[network] = settings
    body["NetworkingConfig"] = {"EndpointsConfig": endpoints}
    return result
