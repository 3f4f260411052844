"""Configuration export end to end: kmock API + real Docker engine -> encrypted object in a store.

The Kubernetes Secret and the container's env var hold known secret values; the stored object,
its checksum file, the manifest and the logs must not contain them, and decrypting with the
key gives them back.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from docker.models.containers import Container

from opsflow.errors import InputError, PermanentError, TransientError
from opsflow.inventory import BackupStore, DockerService, DockerTarget, KubernetesTarget
from tasks.config_export import export_inventory, read_config_export, store_config_export
from tasks.docker.config import export_docker_config
from tasks.kubernetes.config import export_kubernetes_config
from tests.fixtures.kube_api import KubeApiServer

pytestmark = pytest.mark.integration
KEY_VAR = "OPSFLOW_TEST_CONFIG_EXPORT_KEY"
WHEN = datetime(2026, 6, 7, 2, 0, tzinfo=UTC)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _secret_forms(value: str) -> list[bytes]:
    return [value.encode(), _b64(value).encode()]


@pytest.fixture()
def export_key(monkeypatch: pytest.MonkeyPatch) -> bytes:
    key = os.urandom(32)
    monkeypatch.setenv(KEY_VAR, base64.b64encode(key).decode())
    return key


@pytest.fixture()
def seeded_namespace(kube_api_server: KubeApiServer) -> tuple[str, str]:
    """A namespace with a ConfigMap and a Secret holding a known value; returns (ns, value)."""
    namespace = f"cfg-{uuid.uuid4().hex[:8]}"
    value = "kube-pw-" + os.urandom(8).hex()
    api = kube_api_server.client()
    api.create(
        f"/api/v1/namespaces/{namespace}/configmaps",
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "app-config", "namespace": namespace, "labels": {"app": "shop"}},
            "data": {"LOG_LEVEL": "debug", "FEATURES": "checkout,search"},
        },
    )
    api.create(
        f"/api/v1/namespaces/{namespace}/secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "db-credentials", "namespace": namespace},
            "type": "Opaque",
            "data": {"password": _b64(value), "username": _b64("shop")},
        },
    )
    return namespace, value


@pytest.fixture()
def app_container(
    docker_test_containers: Callable[..., Container],
    docker_busybox_image: str,
    tmp_path: Path,
) -> tuple[Container, str]:
    """A running container whose env holds a known secret; returns (container, value)."""
    value = "docker-pw-" + os.urandom(8).hex()
    data_dir = tmp_path / "appdata"
    data_dir.mkdir()
    container = docker_test_containers(
        docker_busybox_image,
        ["sleep", "300"],
        environment={"DB_PASSWORD": value, "MODE": "production"},
        labels={"com.example.tier": "api"},
        restart_policy={"Name": "on-failure", "MaximumRetryCount": 3},
        healthcheck={"test": ["CMD", "true"], "interval": 5_000_000_000},
        volumes={str(data_dir): {"bind": "/data", "mode": "ro"}},
    )
    return container, value


def _export(
    kube_api_server: KubeApiServer,
    namespace: str,
    docker_engine: str,
    container: Container,
    tmp_path: Path,
) -> dict[str, Any]:
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text("environments:\n  prod:\n    backup_store: {url: file:///x}\n")
    return {
        "kubernetes": export_kubernetes_config.fn(
            KubernetesTarget(namespace=namespace, api_url=kube_api_server.url)
        ),
        "docker": export_docker_config.fn(
            DockerTarget(
                host=docker_engine,
                services=[
                    DockerService(name="api", container=container.name),
                    DockerService(name="ghost", container=f"no-such-{uuid.uuid4().hex[:6]}"),
                ],
            )
        ),
        "inventory": export_inventory(inventory),
    }


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_export_is_encrypted_names_only_in_manifest_and_decrypts(
    tmp_path: Path,
    export_key: bytes,
    kube_api_server: KubeApiServer,
    seeded_namespace: tuple[str, str],
    docker_engine: str,
    app_container: tuple[Container, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    namespace, kube_secret = seeded_namespace
    container, docker_secret = app_container
    parts = _export(kube_api_server, namespace, docker_engine, container, tmp_path)
    store = BackupStore(url=(tmp_path / "store").as_uri(), encryption_key=f"env:{KEY_VAR}")

    result = store_config_export.fn("prod", parts, store, store.encryption_key, WHEN)

    assert re.fullmatch(r"prod/config/2026/06/20260607T020000Z-[0-9a-f]{8}\.json\.enc", result.key)
    assert result.row_counts == {
        "kubernetes.configmaps": 1,
        "kubernetes.secrets": 1,
        "docker.containers": 1,
        "docker.missing": 1,
        "inventory": 1,
    }
    files = _files(tmp_path / "store")
    assert sorted(files) == sorted(
        [result.key, result.key + ".sha256", result.manifest_key, result.manifest_key + ".sha256"]
    )
    everything = b"".join(files.values()) + result.model_dump_json().encode()
    for needle in [*_secret_forms(kube_secret), *_secret_forms(docker_secret)]:
        assert needle not in everything
        assert needle.decode() not in caplog.text
    for plaintext_neighbour in (b"DB_PASSWORD", b"LOG_LEVEL", b"debug", b"on-failure"):
        assert plaintext_neighbour not in files[result.key]  # the whole document is sealed
    assert export_key not in everything and base64.b64encode(export_key) not in everything
    assert files[result.key].startswith(b"OPSFLOWENC")

    manifest = json.loads(files[result.manifest_key])
    assert manifest["kind"] == "config" and manifest["sha256"] == result.sha256
    assert manifest["contents"]["kubernetes"] == {
        "namespace": namespace,
        "configmaps": ["app-config"],
        "secrets": {"db-credentials": ["password", "username"]},
    }
    assert manifest["contents"]["docker"] == {"containers": ["api"], "missing": ["ghost"]}

    document = read_config_export("prod", store, result.key, store.encryption_key)
    kube = document["parts"]["kubernetes"]
    secret = kube["secrets"][0]
    assert base64.b64decode(secret["data"]["password"]).decode() == kube_secret
    assert "uid" not in secret["metadata"] and "resourceVersion" not in secret["metadata"]
    assert kube["configmaps"][0]["data"] == {"LOG_LEVEL": "debug", "FEATURES": "checkout,search"}
    api = document["parts"]["docker"]["containers"]["api"]
    assert f"DB_PASSWORD={docker_secret}" in api["config"]["Env"]
    assert api["config"]["Labels"]["com.example.tier"] == "api"
    assert api["config"]["Healthcheck"]["Test"] == ["CMD", "true"]
    assert api["host_config"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
    assert api["mounts"][0]["Destination"] == "/data" and api["mounts"][0]["RW"] is False
    assert document["parts"]["inventory"]["text"].startswith("environments:")


def test_wrong_key_and_tampered_object_are_refused_in_s3(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    export_key: bytes,
    kube_api_server: KubeApiServer,
    seeded_namespace: tuple[str, str],
    docker_engine: str,
    app_container: tuple[Container, str],
    moto_s3_endpoint: str,
    moto_s3_bucket: str,
    moto_s3_client: Any,
) -> None:
    namespace, kube_secret = seeded_namespace
    container, docker_secret = app_container
    parts = _export(kube_api_server, namespace, docker_engine, container, tmp_path)
    store = BackupStore(
        url=f"s3://{moto_s3_bucket}/backups",
        endpoint_url=moto_s3_endpoint,
        encryption_key=f"env:{KEY_VAR}",
    )
    result = store_config_export.fn("prod", parts, store, store.encryption_key, WHEN)
    object_key = f"backups/{result.key}"
    raw = moto_s3_client.get_object(Bucket=moto_s3_bucket, Key=object_key)["Body"].read()
    for needle in [*_secret_forms(kube_secret), *_secret_forms(docker_secret)]:
        assert needle not in raw
    document = read_config_export("prod", store, result.key, store.encryption_key)
    password = document["parts"]["kubernetes"]["secrets"][0]["data"]["password"]
    assert base64.b64decode(password).decode() == kube_secret

    monkeypatch.setenv("OPSFLOW_TEST_WRONG_EXPORT_KEY", base64.b64encode(os.urandom(32)).decode())
    with pytest.raises(PermanentError, match="wrong key or tampered"):
        read_config_export("prod", store, result.key, "env:OPSFLOW_TEST_WRONG_EXPORT_KEY")

    tampered = bytearray(raw)
    tampered[-20] ^= 0x80
    moto_s3_client.put_object(Bucket=moto_s3_bucket, Key=object_key, Body=bytes(tampered))
    with pytest.raises(PermanentError):
        read_config_export("prod", store, result.key, store.encryption_key)


def test_missing_key_reference_stores_nothing(
    tmp_path: Path,
    kube_api_server: KubeApiServer,
    seeded_namespace: tuple[str, str],
) -> None:
    namespace, _ = seeded_namespace
    parts = {
        "kubernetes": export_kubernetes_config.fn(
            KubernetesTarget(namespace=namespace, api_url=kube_api_server.url)
        )
    }
    store = BackupStore(url=(tmp_path / "store").as_uri())
    with pytest.raises(InputError, match=r"environments\.prod\.backup_store\.encryption_key"):
        store_config_export.fn("prod", parts, store, store.encryption_key, WHEN)
    assert not (tmp_path / "store").exists() or _files(tmp_path / "store") == {}


def test_unreachable_docker_daemon_is_transient(tmp_path: Path) -> None:
    target = DockerTarget(
        host=f"unix://{tmp_path}/no-docker.sock", services=[DockerService(name="a", container="a")]
    )
    with pytest.raises(TransientError, match="unreachable"):
        export_docker_config.fn(target)
