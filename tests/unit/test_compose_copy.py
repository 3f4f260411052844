"""The create request of a Compose-style replica (tasks.docker.replicas.copy_request)."""

from __future__ import annotations

from typing import Any

from tasks.docker.recreate import DEPLOY_ID_LABEL
from tasks.docker.replicas import (
    COPY_LABEL,
    NUMBER_LABEL,
    PROJECT_LABEL,
    SERVICE_LABEL,
    copy_request,
)


def _inspect(labels: dict[str, str]) -> dict[str, Any]:
    return {
        "Id": "0123456789abcdef",
        "Name": "/shop-web-1",
        "Image": "sha256:feed",
        "Config": {
            "Image": "shop/web:1.4",
            "Hostname": "web-fixed",
            "Env": ["ROLE=web", "PATH=/bin"],
            "Labels": labels,
            "Cmd": ["serve"],
        },
        "HostConfig": {
            "PortBindings": {"8000/tcp": [{"HostIp": "", "HostPort": "8080"}]},
            "Memory": 64 * 1024 * 1024,
            "NetworkMode": "shop_default",
        },
        "NetworkSettings": {
            "Networks": {"shop_default": {"Aliases": ["web", "shop-web-1", "0123456789ab"]}}
        },
    }


def test_a_copy_keeps_the_configuration_but_not_the_host_port_or_hostname() -> None:
    labels = {PROJECT_LABEL: "shop", SERVICE_LABEL: "web", NUMBER_LABEL: "1", DEPLOY_ID_LABEL: "d7"}
    image_config = {"Env": ["PATH=/bin"], "Cmd": ["serve"], "Labels": {}}
    name, request = copy_request(_inspect(labels), image_config, 3)
    body = request.body
    assert name == "shop-web-3"
    assert body["Image"] == "shop/web:1.4"
    assert body["Env"] == ["ROLE=web"]
    assert "Hostname" not in body
    assert body["HostConfig"]["PortBindings"] == {"8000/tcp": [{"HostIp": "", "HostPort": ""}]}
    assert body["HostConfig"]["Memory"] == 64 * 1024 * 1024
    assert body["Labels"][NUMBER_LABEL] == "3" and body["Labels"][COPY_LABEL] == "1"
    assert body["Labels"][DEPLOY_ID_LABEL] == "d7"  # the deploy that made the original
    aliases = body["NetworkingConfig"]["EndpointsConfig"]["shop_default"]["Aliases"]
    assert aliases == ["web"]  # the service's DNS name, not the original's own names


def test_without_a_project_the_copy_is_named_by_the_service() -> None:
    name, request = copy_request(_inspect({SERVICE_LABEL: "web"}), {}, 2)
    assert name == "web-2"
    assert DEPLOY_ID_LABEL not in request.body["Labels"]
