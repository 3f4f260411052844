"""The backup flow beyond databases: a Redis RDB snapshot and the encrypted configuration
export (inventory + Docker container configs) are stored, confirmed and catalogued in the same
run; the export holds no plaintext secret; without an encryption key it is skipped, never
stored in the clear."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from connectors.stores import open_store
from connectors.streams import decompress
from flows.backup import BackupReport, backup, plan_backup
from opsflow.inventory import parse_inventory
from opsflow.ledger import Ledger
from tasks.config_export import read_config_export
from tests.fixtures.databases import RedisServer

pytestmark = pytest.mark.integration
CONTAINER_SECRET = "container-env-secret-value-9f2"


@pytest.fixture
def workspace(tmp_path: Path, prefect_api: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("OPSFLOW_LEDGER_URL", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("OPSFLOW_HOME", str(tmp_path / ".opsflow"))
    monkeypatch.setenv("BACKUP_TEST_KEY", base64.b64encode(os.urandom(32)).decode())
    return tmp_path


def test_redis_and_encrypted_config_are_backed_up(
    workspace: Path,
    monkeypatch: pytest.MonkeyPatch,
    redis_own_server: RedisServer,
    docker_engine: str,
    docker_test_containers: Callable[..., Any],
    docker_busybox_image: str,
) -> None:
    with redis_own_server.client() as client:
        client.set("opsflow:backup-test", "kept")
    container = docker_test_containers(
        docker_busybox_image, ["sleep", "300"], environment={"DB_PASSWORD": CONTAINER_SECRET}
    )
    inventory = workspace / "inventory.yaml"
    inventory.write_text(f"""
environments:
  comp:
    redis: [{{name: cache, url: "{redis_own_server.url}"}}]
    docker:
      host: "{docker_engine}"
      services: [{{name: web, container: {container.name}}}]
    backup_store: {{url: "file://{workspace}/backups", encryption_key: "env:BACKUP_TEST_KEY"}}
""")
    monkeypatch.setenv("OPSFLOW_INVENTORY", str(inventory))

    state = backup(env="comp", requested_by="tester", return_state=True)
    report = state.result(raise_on_failure=False)
    assert isinstance(report, BackupReport), report
    assert state.is_completed(), [b.error for b in report.backups]
    kinds = {b.kind: b for b in report.backups}
    assert set(kinds) == {"redis", "config"}

    rows = {r.kind: r for r in Ledger().backups(env="comp")}
    store_cfg = parse_inventory(inventory.read_text()).environment("comp").backup_store
    assert store_cfg is not None
    store = open_store(store_cfg)
    rdb = b"".join(decompress(store.get_stream(rows["redis"].key), "zstd"))
    assert rdb.startswith(b"REDIS") and b"opsflow:backup-test" in rdb

    raw = (workspace / "backups" / rows["config"].key).read_bytes()
    assert CONTAINER_SECRET.encode() not in raw
    assert base64.b64encode(CONTAINER_SECRET.encode()) not in raw
    config = read_config_export("comp", store_cfg, rows["config"].key, "env:BACKUP_TEST_KEY")
    assert CONTAINER_SECRET in str(config["parts"]["docker"])
    assert "backup_store" in str(config["parts"]["inventory"])


def test_config_export_is_skipped_without_a_key(tmp_path: Path) -> None:
    env = parse_inventory(f"""
environments:
  nokey:
    databases: [{{name: d, kind: sqlite, path: {tmp_path}/d.db}}]
    backup_store: {{url: "file://{tmp_path}/backups"}}
""").environment("nokey")
    plan = plan_backup("nokey", env)
    assert "store_config_export" not in [s.action for s in plan.steps]
    assert any("encryption_key" in note for note in plan.notes)
