"""Configuration export (tasks.config_export): key handling, names-only manifest, encryption."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connectors.stores.base import sidecar_text
from opsflow.errors import InputError, PermanentError
from opsflow.inventory import BackupStore
from tasks.config_export import (
    count_parts,
    describe_parts,
    export_inventory,
    read_config_export,
    store_config_export,
)

KEY_VAR = "OPSFLOW_TEST_UNIT_CONFIG_KEY"
WHEN = datetime(2026, 5, 6, 2, 0, tzinfo=UTC)
SECRET = "s3cr3t-" + os.urandom(8).hex()


def _parts() -> dict[str, Any]:
    return {
        "kubernetes": {
            "namespace": "shop",
            "configmaps": [{"metadata": {"name": "app-config"}, "data": {"MODE": "live"}}],
            "secrets": [
                {
                    "metadata": {"name": "db"},
                    "type": "Opaque",
                    "data": {"password": base64.b64encode(SECRET.encode()).decode()},
                }
            ],
        },
        "docker": {
            "containers": {"api": {"config": {"Env": [f"DB_PASSWORD={SECRET}"]}}},
            "missing": ["worker"],
        },
        "inventory": {"path": "/etc/opsflow/inventory.yaml", "sha256": "0" * 64, "text": "x"},
    }


@pytest.fixture()
def config_key(monkeypatch: pytest.MonkeyPatch) -> bytes:
    key = os.urandom(32)
    monkeypatch.setenv(KEY_VAR, base64.b64encode(key).decode())
    return key


def _store(tmp_path: Path) -> BackupStore:
    return BackupStore(url=(tmp_path / "store").as_uri(), encryption_key=f"env:{KEY_VAR}")


def _all_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file())


def test_description_and_counts_hold_names_but_no_values() -> None:
    described = describe_parts(_parts())
    assert described["kubernetes"] == {
        "namespace": "shop",
        "configmaps": ["app-config"],
        "secrets": {"db": ["password"]},
    }
    assert described["docker"] == {"containers": ["api"], "missing": ["worker"]}
    assert described["inventory"] == {"path": "/etc/opsflow/inventory.yaml", "sha256": "0" * 64}
    assert SECRET not in json.dumps(described) and "live" not in json.dumps(described)
    assert count_parts(_parts()) == {
        "kubernetes.configmaps": 1,
        "kubernetes.secrets": 1,
        "docker.containers": 1,
        "docker.missing": 1,
        "inventory": 1,
    }


def test_missing_key_reference_refuses_and_stores_nothing(tmp_path: Path) -> None:
    store = BackupStore(url=(tmp_path / "store").as_uri())
    with pytest.raises(InputError) as excinfo:
        store_config_export.fn("prod", _parts(), store, store.encryption_key, WHEN)
    assert excinfo.value.field == "environments.prod.backup_store.encryption_key"
    assert "secret:NAME" in excinfo.value.fix
    assert not (tmp_path / "store").exists() or _all_bytes(tmp_path / "store") == b""


def test_unset_key_variable_names_the_field(tmp_path: Path) -> None:
    store = BackupStore(url=(tmp_path / "store").as_uri(), encryption_key="env:OPSFLOW_NO_SUCH")
    with pytest.raises(InputError, match=r"environments\.prod\.backup_store\.encryption_key"):
        store_config_export.fn("prod", _parts(), store, store.encryption_key, WHEN)


def test_round_trip_encrypted_at_rest(tmp_path: Path, config_key: bytes) -> None:
    store = _store(tmp_path)
    result = store_config_export.fn("prod", _parts(), store, store.encryption_key, WHEN)
    assert re.fullmatch(r"prod/config/2026/05/20260506T020000Z-[0-9a-f]{8}\.json\.enc", result.key)
    assert result.kind == "config" and result.row_counts["kubernetes.secrets"] == 1
    raw = _all_bytes(tmp_path / "store")
    for needle in (SECRET, base64.b64encode(SECRET.encode()).decode(), "DB_PASSWORD", "live"):
        assert needle.encode() not in raw
    assert config_key not in raw and base64.b64encode(config_key) not in raw
    manifest = json.loads((tmp_path / "store" / result.manifest_key).read_text())
    assert manifest["encryption"]["key_reference"] == f"env:{KEY_VAR}"
    assert manifest["contents"]["kubernetes"]["secrets"] == {"db": ["password"]}

    document = read_config_export("prod", store, result.key, store.encryption_key)
    assert document["env"] == "prod" and document["parts"] == _parts()


def test_wrong_key_and_tampering_are_refused(
    tmp_path: Path, config_key: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _store(tmp_path)
    result = store_config_export.fn("prod", _parts(), store, store.encryption_key, WHEN)
    path = tmp_path / "store" / result.key

    monkeypatch.setenv("OPSFLOW_TEST_OTHER_KEY", base64.b64encode(os.urandom(32)).decode())
    with pytest.raises(PermanentError, match="wrong key or tampered"):
        read_config_export("prod", store, result.key, "env:OPSFLOW_TEST_OTHER_KEY")

    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    # an attacker able to rewrite the object can rewrite its sha256 file too: GCM still refuses
    sidecar = tmp_path / "store" / (result.key + ".sha256")
    sidecar.write_bytes(sidecar_text(hashlib.sha256(bytes(data)).hexdigest(), result.key))
    with pytest.raises(PermanentError, match="failed authentication"):
        read_config_export("prod", store, result.key, store.encryption_key)


def test_inventory_part_is_the_file(tmp_path: Path) -> None:
    path = tmp_path / "inventory.yaml"
    path.write_text("environments: {}\n")
    part = export_inventory(path)
    assert part["text"] == "environments: {}\n" and len(part["sha256"]) == 64
    with pytest.raises(PermanentError, match="OPSFLOW_INVENTORY"):
        export_inventory(tmp_path / "absent.yaml")
