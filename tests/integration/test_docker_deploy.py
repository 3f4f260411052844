"""tasks.docker.deploy against a real Docker engine: replace, health wait, rollback, reruns.

The application is ``tests.support.images.deploy_app_image`` (v1 healthy, v2 unhealthy, v3
healthy), started with a rich configuration that every replacement must keep.
"""

from __future__ import annotations

import contextlib
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import docker.types
import httpx
import pytest

from opsflow.errors import InputError, PermanentError
from opsflow.inventory import DockerService, DockerTarget
from tasks.docker.deploy import (
    check_image_present,
    read_container_image,
    remove_previous_container,
    replace_container,
    restore_previous_container,
    wait_container_healthy,
)
from tasks.docker.recreate import DEPLOY_ID_LABEL, FAILED_SUFFIX, PREVIOUS_SUFFIX, own_names
from tests.fixtures.docker_engine import SESSION_ID, SESSION_LABEL
from tests.support.images import DEPLOY_APP_PORT, deploy_app_image
from tests.support.net import free_port

pytestmark = pytest.mark.integration
SECRET = "fake-api-token-6c1d9e2f47ab"  # a throwaway test value, never a real credential
MIB = 1024 * 1024


@dataclass
class App:
    client: docker.DockerClient
    target: DockerTarget
    service: DockerService
    port: int
    images: dict[str, str]
    nets: list[str]
    volume: str
    conf: Path
    outputs: list[str] = field(default_factory=list)

    def create(self, command: list[str] | None = None, **extra: Any) -> None:
        """The v1 container with a rich configuration (``extra`` overrides options), started."""
        name = self.name
        options: dict[str, Any] = {
            "name": name,
            "environment": {
                "APP_PORT": str(DEPLOY_APP_PORT),
                "API_TOKEN": SECRET,
                "LOG_LEVEL": "info",
            },
            "ports": {f"{DEPLOY_APP_PORT}/tcp": ("127.0.0.1", self.port)},
            "volumes": {
                str(self.conf): {"bind": "/srv/conf", "mode": "ro"},
                self.volume: {"bind": "/data", "mode": "rw"},
            },
            "network": self.nets[0],
            "networking_config": {
                self.nets[0]: self.client.api.create_endpoint_config(aliases=[f"{name}-a"])
            },
            "labels": {"team": "ops", "tier": "web", SESSION_LABEL: SESSION_ID},
            "restart_policy": {"Name": "on-failure", "MaximumRetryCount": 3},
            "healthcheck": {
                "test": ["CMD", "python3", "/app/healthcheck.py"],
                "interval": 1_000_000_000,
                "timeout": 3_000_000_000,
                "retries": 2,
            },
            "mem_limit": 256 * MIB,
            "nano_cpus": 500_000_000,
            "working_dir": "/srv",
            "user": "65534:65534",
            "extra_hosts": {"db.internal": "127.0.0.2"},
            "log_config": {"type": "json-file", "config": {"max-size": "1m"}},
        }
        container = self.client.containers.create(
            self.images["v1"], command or ["python3", "-u", "/app/app.py"], **(options | extra)
        )
        self.client.networks.get(self.nets[1]).connect(container, aliases=[f"{name}-b"])
        container.start()

    @property
    def name(self) -> str:
        return self.service.container

    def inspect(self, suffix: str = "") -> dict[str, Any] | None:
        try:
            attrs: dict[str, Any] = self.client.api.inspect_container(self.name + suffix)
        except docker.errors.NotFound:
            return None
        return attrs

    def record(self, value: Any) -> Any:
        """Keep every returned value and error text: none may hold the secret."""
        self.outputs.append(
            value.model_dump_json() if hasattr(value, "model_dump_json") else str(value)
        )
        return value

    def version(self) -> str:
        """The version that answers on the published port (after a short wait for it)."""
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{self.port}/", timeout=2)
                if response.status_code == 200:
                    return str(response.json()["version"])
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing answers on port {self.port}")
            time.sleep(0.1)


@pytest.fixture()
def app(
    docker_engine: str, docker_engine_client: docker.DockerClient, tmp_path: Path
) -> Iterator[App]:
    """A v1 container with a rich configuration, and everything removed afterwards."""
    client = docker_engine_client
    images = {v: deploy_app_image(client, v) for v in ("v1", "v2", "v3")}
    name = f"opsflow-web-{uuid.uuid4().hex[:8]}"
    nets = [
        client.networks.create(f"{name}-net{i}", labels={SESSION_LABEL: SESSION_ID}).name
        for i in (1, 2)
    ]
    volume = client.volumes.create(f"{name}-data").name
    (tmp_path / "app.conf").write_text("greeting = hello\n")
    port = free_port()
    target = DockerTarget(host=docker_engine, services=[DockerService(name="web", container=name)])
    made = App(client, target, target.services[0], port, images, nets, volume, tmp_path)
    try:
        yield made
    finally:
        for suffix in ("", PREVIOUS_SUFFIX, FAILED_SUFFIX):
            with contextlib.suppress(docker.errors.NotFound):
                client.api.remove_container(name + suffix, force=True)
        for net in nets:
            client.networks.get(net).remove()
        client.volumes.get(volume).remove(force=True)
        for text in made.outputs:
            assert SECRET not in text


def _comparable(attrs: dict[str, Any]) -> dict[str, Any]:
    """The configuration of a container, without what a replacement must change: the image,
    the id (and the hostname and network aliases derived from it), creation and state, and
    opsflow's own label."""
    config = dict(attrs["Config"])
    for key in ("Image", "Hostname"):
        config.pop(key)
    config["Labels"] = {k: v for k, v in config["Labels"].items() if k != DEPLOY_ID_LABEL}
    names = own_names(attrs)
    networks = {
        net: {
            "Aliases": sorted(set(ep.get("Aliases") or []) - names),
            "IPAMConfig": ep.get("IPAMConfig"),
            "DriverOpts": ep.get("DriverOpts"),
        }
        for net, ep in attrs["NetworkSettings"]["Networks"].items()
    }
    mounts = sorted(
        (m["Type"], m.get("Name", ""), m["Source"], m["Destination"], m["Mode"], m["RW"])
        for m in attrs["Mounts"]
    )
    return {
        "Config": config,
        "HostConfig": attrs["HostConfig"],
        "Networks": networks,
        "Mounts": mounts,
    }


def _assert_same_config(before: dict[str, Any], after: dict[str, Any]) -> None:
    old, new = _comparable(before), _comparable(after)
    for section in ("Config", "HostConfig"):
        keys = set(old[section]) | set(new[section])
        differ = {
            k: (old[section].get(k), new[section].get(k))
            for k in sorted(keys)
            if old[section].get(k) != new[section].get(k)
        }
        assert differ == {}, f"{section} fields differ: {differ}"
    assert new["Networks"] == old["Networks"]
    assert new["Mounts"] == old["Mounts"]


def _assert_rich(attrs: dict[str, Any], name: str, port: int) -> None:
    """The rich configuration is really there (so comparing it is not comparing nothing)."""
    config, host = attrs["Config"], attrs["HostConfig"]
    assert f"API_TOKEN={SECRET}" in config["Env"] and "LOG_LEVEL=info" in config["Env"]
    assert config["Cmd"] == ["python3", "-u", "/app/app.py"]
    assert config["WorkingDir"] == "/srv" and config["User"] == "65534:65534"
    assert config["Healthcheck"]["Test"] == ["CMD", "python3", "/app/healthcheck.py"]
    assert config["Labels"]["team"] == "ops"
    assert host["PortBindings"] == {
        f"{DEPLOY_APP_PORT}/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(port)}]
    }
    assert host["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert host["Memory"] == 256 * MIB and host["NanoCpus"] == 500_000_000
    assert host["ExtraHosts"] == ["db.internal:127.0.0.2"]
    assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": "1m"}}
    assert {m["Type"] for m in attrs["Mounts"]} == {"bind", "volume"}
    networks = attrs["NetworkSettings"]["Networks"]
    assert {net: sorted(set(ep["Aliases"]) - own_names(attrs)) for net, ep in networks.items()} == {
        f"{name}-net1": [f"{name}-a"],
        f"{name}-net2": [f"{name}-b"],
    }


def _wait_healthy(app: App) -> float:
    return float(app.record(wait_container_healthy.fn(app.target, app.service, timeout_seconds=60)))


def test_replace_keeps_every_config_field(app: App) -> None:
    app.create()
    _wait_healthy(app)
    assert app.version() == "v1"
    before = app.inspect()
    assert before is not None
    _assert_rich(before, app.name, app.port)
    current = app.record(read_container_image.fn(app.target, app.service))
    assert (current.image, current.container_id, current.deploy_id) == (
        app.images["v1"],
        before["Id"],
        None,
    )

    result = app.record(replace_container.fn(app.target, app.service, app.images["v3"], "deploy-1"))
    waited = _wait_healthy(app)

    after = app.inspect()
    assert after is not None
    assert after["Id"] == result.container_id != before["Id"]
    assert after["Config"]["Image"] == app.images["v3"] == result.image
    assert after["Image"] == result.image_id != before["Image"]
    assert after["Config"]["Labels"][DEPLOY_ID_LABEL] == "deploy-1" == result.deploy_id
    assert result.switch_seconds is not None and result.switch_seconds > 0 and waited > 0
    _assert_same_config(before, after)
    assert app.version() == "v3"
    previous = app.inspect(PREVIOUS_SUFFIX)
    assert previous is not None
    assert previous["Id"] == before["Id"] and previous["State"]["Running"] is False
    assert app.record(remove_previous_container.fn(app.target, app.service)) is True
    assert app.inspect(PREVIOUS_SUFFIX) is None
    assert app.record(remove_previous_container.fn(app.target, app.service)) is False


def test_unhealthy_image_fails_and_rollback_restores_the_old_container(app: App) -> None:
    app.create()
    _wait_healthy(app)
    before = app.inspect()
    assert before is not None
    app.record(replace_container.fn(app.target, app.service, app.images["v2"], "deploy-2"))
    with pytest.raises(PermanentError) as failed:
        wait_container_healthy.fn(app.target, app.service, timeout_seconds=60)
    message = app.record(failed.value)
    assert "is unhealthy" in str(message) and "HTTP Error 500" in str(message)

    restored = app.record(restore_previous_container.fn(app.target, app.service))
    assert restored.container_id == before["Id"] and restored.running
    assert app.version() == "v1"
    assert app.inspect(PREVIOUS_SUFFIX) is None
    kept = app.inspect(FAILED_SUFFIX)
    assert kept is not None and kept["Config"]["Image"] == app.images["v2"]
    assert kept["State"]["Running"] is False
    assert kept["HostConfig"]["RestartPolicy"]["Name"] == "no"  # a daemon restart leaves it
    after = app.inspect()
    assert after is not None and after["Id"] == before["Id"]
    _assert_same_config(before, after)
    # restored already: a rerun changes nothing
    again = app.record(restore_previous_container.fn(app.target, app.service))
    assert again.container_id == before["Id"] and again.running
    assert app.version() == "v1"


def test_missing_image_is_refused_and_nothing_changes(app: App) -> None:
    app.create()
    before = app.inspect()
    assert before is not None
    with pytest.raises(InputError) as refused:
        check_image_present.fn(app.target, "deploy-app-missing:v99")
    app.record(refused.value)
    assert refused.value.field == "image"
    assert "deploy-app-missing:v99 is not on the Docker engine" in refused.value.problem
    assert "docker load" in refused.value.fix and "nothing was changed" in refused.value.fix
    with pytest.raises(InputError):
        replace_container.fn(app.target, app.service, "deploy-app-missing:v99", "deploy-x")
    with pytest.raises(InputError, match="not a valid image reference") as malformed:
        check_image_present.fn(app.target, "Deploy-App:v1")  # upper case: no reference
    assert app.record(malformed.value).field == "image"
    after = app.inspect()
    assert after is not None and after["Id"] == before["Id"] and after["State"]["Running"]
    assert app.inspect(PREVIOUS_SUFFIX) is None
    assert app.record(check_image_present.fn(app.target, app.images["v3"])).startswith("sha256:")


def test_rerun_is_a_no_op_and_a_crash_after_the_rename_continues(app: App) -> None:
    app.create()
    original = app.inspect()
    assert original is not None
    first = app.record(replace_container.fn(app.target, app.service, app.images["v3"], "deploy-3"))
    second = app.record(replace_container.fn(app.target, app.service, app.images["v3"], "deploy-3"))
    assert second.container_id == first.container_id and second.running
    assert second.switch_seconds is None  # nothing was done
    _wait_healthy(app)
    assert app.version() == "v3"
    with pytest.raises(PermanentError, match="earlier deploy"):  # deploy-3 is not finished
        replace_container.fn(app.target, app.service, app.images["v1"], "deploy-4")
    app.record(remove_previous_container.fn(app.target, app.service))

    # a deploy that died between the rename and the create: the old container still runs
    current = app.inspect()
    assert current is not None
    app.client.api.rename(current["Id"], app.name + PREVIOUS_SUFFIX)
    assert app.inspect() is None
    seen = app.record(read_container_image.fn(app.target, app.service))
    assert seen.container == app.name + PREVIOUS_SUFFIX and seen.deploy_id == "deploy-3"
    resumed = app.record(
        replace_container.fn(app.target, app.service, app.images["v1"], "deploy-5")
    )
    _wait_healthy(app)
    assert app.version() == "v1"
    assert resumed.deploy_id == "deploy-5" and resumed.container == app.name
    previous = app.inspect(PREVIOUS_SUFFIX)
    assert previous is not None and previous["Id"] == current["Id"]
    assert previous["State"]["Running"] is False
    now = app.inspect()
    assert now is not None
    _assert_same_config(original, now)


def test_container_exiting_at_start_fails_at_once_with_exit_code(app: App) -> None:
    app.create(
        ["python3", "-c", "import os, sys; print('token', os.environ['API_TOKEN']); sys.exit(3)"],
        restart_policy={"Name": "no"},
    )
    replaced = app.record(
        replace_container.fn(app.target, app.service, app.images["v3"], "deploy-6")
    )
    assert replaced.image == app.images["v3"]
    with pytest.raises(PermanentError) as failed:
        wait_container_healthy.fn(app.target, app.service, timeout_seconds=120)
    message = str(app.record(failed.value))
    assert "exit code 3" in message and "was not healthy within" not in message
    assert "token ***" in message  # the log line, its secret masked
    assert SECRET not in message and SECRET not in json.dumps(failed.value.args)


def test_restore_without_previous_container_says_so(app: App) -> None:
    app.create()
    with pytest.raises(PermanentError, match="nothing to roll back to") as failed:
        restore_previous_container.fn(app.target, app.service)
    app.record(failed.value)
    assert app.inspect() is not None and app.inspect(FAILED_SUFFIX) is None


def test_a_failed_create_puts_the_old_container_back(app: App, tmp_path: Path) -> None:
    extra = tmp_path / "extra"
    extra.mkdir()
    app.create(mounts=[docker.types.Mount("/srv/extra", str(extra), type="bind")])
    before = app.inspect()
    assert before is not None
    extra.rmdir()  # a bind source that is gone: the engine refuses to create the new container
    with pytest.raises(PermanentError) as failed:
        replace_container.fn(app.target, app.service, app.images["v3"], "deploy-7")
    message = str(app.record(failed.value))
    assert "create container" in message and "the old container was put back" in message
    after = app.inspect()
    assert after is not None and after["Id"] == before["Id"] and after["State"]["Running"]
    assert app.inspect(PREVIOUS_SUFFIX) is None
    assert app.version() == "v1"
