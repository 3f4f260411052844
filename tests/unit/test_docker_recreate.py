"""tasks.docker.recreate.create_request: what a container's inspect becomes as a create request."""

from __future__ import annotations

from typing import Any

from tasks.docker.recreate import DEPLOY_ID_LABEL, create_request

ID = "0123456789abcdef" * 4
OLD_IMAGE = {
    "Env": ["PATH=/usr/bin", "APP_VERSION=1.4.1"],
    "Labels": {"org.opencontainers.image.version": "1.4.1", "maintainer": "ops"},
    "Cmd": ["serve"],
    "Entrypoint": ["/entry.sh"],
    "WorkingDir": "/app",
    "User": "app",
    "ExposedPorts": {"8000/tcp": {}},
    "Volumes": {"/cache": {}},
    "Healthcheck": {"Test": ["CMD", "check"]},
}


def _attrs(**config: Any) -> dict[str, Any]:
    base = {
        "Hostname": ID[:12],
        "Image": "app:1.4.1",
        "Env": ["PATH=/usr/bin", "APP_VERSION=1.4.1", "DB_URL=postgres://db/app"],
        "Labels": {
            "org.opencontainers.image.version": "1.4.1",
            "maintainer": "someone-else",
            "team": "ops",
        },
        "Cmd": ["serve"],
        "Entrypoint": ["/entry.sh"],
        "WorkingDir": "/app",
        "User": "app",
        "ExposedPorts": {"8000/tcp": {}, "9000/tcp": {}},
        "Volumes": {"/cache": {}},
        "Healthcheck": {"Test": ["CMD", "check"]},
        "Tty": False,
        "StopTimeout": 30,
    }
    return {
        "Id": ID,
        "Name": "/web",
        "Config": base | config,
        "HostConfig": {
            "NetworkMode": "appnet",
            "Binds": ["/srv/conf:/conf:ro", "data:/data"],
            "Links": ["/db:/web/database"],
            "Memory": 268435456,
            "RestartPolicy": {"Name": "always", "MaximumRetryCount": 0},
        },
        "Mounts": [
            {"Type": "bind", "Source": "/srv/conf", "Destination": "/conf", "RW": False},
            {"Type": "volume", "Name": "data", "Destination": "/data", "RW": True},
            {"Type": "volume", "Name": "f00dcafe", "Destination": "/cache", "RW": True},
        ],
        "NetworkSettings": {
            "Networks": {
                "appnet": {
                    "Aliases": ["web-alias", ID[:12]],
                    "IPAMConfig": None,
                    "IPAddress": "172.18.0.5",
                    "NetworkID": "n1",
                },
                "backnet": {"Aliases": ["web", "api"], "IPAMConfig": {"IPv4Address": "10.1.0.9"}},
            }
        },
    }


def test_image_defaults_are_left_to_the_new_image() -> None:
    request = create_request(_attrs(), OLD_IMAGE, "app:1.5.0", "d-1")
    body = request.body
    assert body["Image"] == "app:1.5.0"
    assert body["Env"] == ["DB_URL=postgres://db/app"]  # APP_VERSION and PATH come from the image
    assert body["Labels"] == {"maintainer": "someone-else", "team": "ops", DEPLOY_ID_LABEL: "d-1"}
    assert body["ExposedPorts"] == {"9000/tcp": {}}
    for key in ("Cmd", "Entrypoint", "WorkingDir", "User", "Healthcheck", "Volumes", "Hostname"):
        assert key not in body, key
    assert body["StopTimeout"] == 30 and body["Tty"] is False


def test_container_settings_are_kept() -> None:
    attrs = _attrs(
        Cmd=["serve", "--workers", "4"],
        WorkingDir="/srv",
        User="65534",
        Hostname="web-1",
        Healthcheck={"Test": ["CMD", "other"]},
    )
    body = create_request(attrs, OLD_IMAGE, "app:1.5.0", "d-1").body
    assert body["Cmd"] == ["serve", "--workers", "4"] and "Entrypoint" not in body
    assert (body["WorkingDir"], body["User"], body["Hostname"]) == ("/srv", "65534", "web-1")
    assert body["Healthcheck"] == {"Test": ["CMD", "other"]}


def test_an_entrypoint_set_on_the_container_keeps_its_command_as_is() -> None:
    body = create_request(_attrs(Entrypoint=["/bin/sh", "-c"], Cmd=None), OLD_IMAGE, "x", "d").body
    assert body["Entrypoint"] == ["/bin/sh", "-c"] and body["Cmd"] is None


def test_host_config_volumes_links_and_networks() -> None:
    request = create_request(_attrs(), OLD_IMAGE, "app:1.5.0", "d-1")
    host = request.body["HostConfig"]
    assert host["Memory"] == 268435456 and host["RestartPolicy"]["Name"] == "always"
    # the anonymous volume at /cache is carried over by name; binds stay as they were
    assert host["Binds"] == ["/srv/conf:/conf:ro", "data:/data", "f00dcafe:/cache"]
    assert host["Links"] == ["db:database"]
    assert request.body["NetworkingConfig"] == {
        "EndpointsConfig": {"appnet": {"Aliases": ["web-alias"]}}
    }
    assert request.connect == {
        "backnet": {"Aliases": ["api"], "IPAMConfig": {"IPv4Address": "10.1.0.9"}}
    }


def test_without_the_old_image_everything_is_kept() -> None:
    body = create_request(_attrs(), {}, "app:1.5.0", "d-1").body
    assert body["Env"][0] == "PATH=/usr/bin" and body["Cmd"] == ["serve"]
    assert body["Entrypoint"] == ["/entry.sh"]


def test_host_network_has_no_endpoints() -> None:
    attrs = _attrs()
    attrs["HostConfig"]["NetworkMode"] = "host"
    request = create_request(attrs, OLD_IMAGE, "app:1.5.0", "d-1")
    assert "NetworkingConfig" not in request.body and request.connect == {}


def test_an_env_override_replaces_adds_and_beats_the_image() -> None:
    override = {"DB_URL": "postgres://db/app2", "APP_VERSION": "pinned", "NEW_VAR": "x"}
    body = create_request(_attrs(), OLD_IMAGE, "app:1.4.1", "rot-1", override).body
    assert body["Env"] == [
        "DB_URL=postgres://db/app2",
        "APP_VERSION=pinned",  # inherited from the image, set on the container now
        "NEW_VAR=x",
    ]
    assert body["Image"] == "app:1.4.1" and body["Labels"][DEPLOY_ID_LABEL] == "rot-1"
    assert create_request(_attrs(), OLD_IMAGE, "app:1.4.1", "d").body["Env"] == [
        "DB_URL=postgres://db/app"
    ]
