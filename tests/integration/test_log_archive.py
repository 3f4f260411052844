"""archive_logs against real stores (a local ``file://`` store and moto S3 over HTTP, with its
fault proxy) and a real SQLite ledger: log files over the size or age limit are stored
compressed with their checksum and manifest, read back to the same bytes, catalogued as kind
``log``, and only then truncated or removed; files under the limits, symbolic links, a store
that fails and a passed deadline leave files as they were."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.stores import open_store
from connectors.stores.base import manifest_key
from connectors.streams import decompress
from opsflow import catalog
from opsflow.inventory import BackupStore, Environment
from opsflow.inventory.maintenance import LogArchive
from opsflow.ledger import Ledger
from tasks.log_archive import archive_log_files, archive_logs
from tests.fixtures.s3_server import FaultProxy

pytestmark = pytest.mark.integration

OLD = time.time() - 10 * 86400


@pytest.fixture()
def ledger(tmp_path: Path, ledger_home: Path) -> Iterator[Ledger]:
    opened = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    yield opened
    opened.close()


def _env(store: BackupStore) -> Environment:
    return Environment.model_validate({"backup_store": store.model_dump(exclude_none=True)})


def _write(path: Path, data: bytes, mtime: float | None = None) -> bytes:
    path.write_bytes(data)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return data


def _logs(root: Path) -> dict[str, bytes]:
    """big.log over 1 KiB, old.log older than 7 days, small.log under both limits."""
    root.mkdir()
    return {
        "big": _write(root / "big.log", b"".join(b"INFO line %05d\n" % i for i in range(400))),
        "old": _write(root / "old.log", b"ERROR from last month\n", OLD),
        "small": _write(root / "small.log", b"INFO fresh and small\n"),
    }


def _policy(root: Path, then: str = "truncate") -> LogArchive:
    return LogArchive.model_validate(
        {"path": f"{root}/*.log", "max_size": "1KiB", "max_age": "7d", "then": then}
    )


def _plain(store: BackupStore, key: str, sha256: str) -> bytes:
    """The stored object read back through the store (its sha256 checked) and decompressed."""
    return b"".join(decompress(open_store(store).get_stream(key, expected_sha256=sha256), "zstd"))


def _log_rows(ledger: Ledger) -> list[Any]:
    return [r for r in ledger.backups(env="prod", limit=None) if r.kind == catalog.LOG_KIND]


def test_archives_files_over_a_limit_to_a_local_store_and_truncates_them(
    tmp_path: Path, ledger: Ledger
) -> None:
    root = tmp_path / "logs"
    data = _logs(root)
    outside = _write(tmp_path / "secret.txt", b"x" * 4096, OLD)  # big and old, but linked
    (root / "link.log").symlink_to(tmp_path / "secret.txt")
    small_mtime = (root / "small.log").stat().st_mtime_ns
    inodes = {name: (root / f"{name}.log").stat().st_ino for name in ("big", "old")}
    store = BackupStore(url=f"file://{tmp_path / 'store'}")

    step = archive_log_files(
        "prod", _env(store), _policy(root), ledger, flow_run_id="run-1", deadline=None
    )

    assert step.status == "complete", step.summary
    assert step.before == {"files": 2, "bytes": len(data["big"]) + len(data["old"])}
    assert step.after["files"] == 0 and step.after["bytes"] == 0
    assert step.after["archived_files"] == 2 and step.after["unarchived_bytes"] == 0
    objects = {Path(o["path"]).stem: o for o in step.details["objects"]}
    assert set(objects) == {"big", "old"}
    rows = {Path(r.details["path"]).stem: r for r in _log_rows(ledger)}
    assert set(rows) == {"big", "old"}
    for name, obj in objects.items():
        original = data[name]
        assert obj["then"] == "truncated"
        assert obj["key"].startswith("prod/logs/") and obj["key"].endswith(f".{name}.log.zst")
        plain = _plain(store, obj["key"], obj["sha256"])
        assert hashlib.sha256(plain).hexdigest() == hashlib.sha256(original).hexdigest()
        assert obj["raw_sha256"] == hashlib.sha256(original).hexdigest()
        stored = (tmp_path / "store" / obj["key"]).read_bytes()
        assert hashlib.sha256(stored).hexdigest() == obj["sha256"] and len(stored) == obj["bytes"]
        assert (tmp_path / "store" / manifest_key(obj["key"])).is_file()
        row = rows[name]
        assert (row.key, row.sha256, row.bytes) == (obj["key"], obj["sha256"], obj["bytes"])
        assert row.database == "logs" and row.status == "complete"
        assert row.flow_run_id == "run-1" and row.store_url == store.url
        # copy-truncate: the same file, emptied in place (a writer keeps its descriptor)
        assert (root / f"{name}.log").stat().st_size == 0
        assert (root / f"{name}.log").stat().st_ino == inodes[name]

    assert (root / "small.log").read_bytes() == data["small"]
    assert (root / "small.log").stat().st_mtime_ns == small_mtime
    assert (root / "link.log").is_symlink()
    assert (tmp_path / "secret.txt").read_bytes() == outside  # the link was not followed
    assert step.details["skipped"] == [
        {"path": str(root / "link.log"), "why": "symbolic link: not followed, left as it is"}
    ]
    assert "1 symbolic link(s) not followed" in step.summary

    # retention treats the archives like backups; nothing restores them
    entries = catalog.fold(ledger.backups(env="prod", limit=None), manifest_of=manifest_key)
    assert {e.kind for e in entries} == {"log"}
    assert catalog.restorable(entries) == {}
    later = datetime.now(UTC) + timedelta(days=40)
    decided = catalog.retention(entries, store.url, 30, later)
    assert len(decided.kept) == 1 and len(decided.expired) == 1  # the series keeps its newest


def test_a_second_run_finds_nothing_over_the_limits(tmp_path: Path, ledger: Ledger) -> None:
    root = tmp_path / "logs"
    _logs(root)
    env = _env(BackupStore(url=f"file://{tmp_path / 'store'}"))
    archive_log_files("prod", env, _policy(root), ledger, flow_run_id="run-1")
    again = archive_log_files("prod", env, _policy(root), ledger, flow_run_id="run-2")
    assert again.status == "complete"
    assert again.before == {"files": 0, "bytes": 0}
    assert again.details["objects"] == []
    assert "no file matching" in again.summary
    assert len(_log_rows(ledger)) == 2


def test_archives_to_s3_and_removes_the_files(
    tmp_path: Path,
    ledger: Ledger,
    moto_s3_endpoint: str,
    moto_s3_bucket: str,
    moto_s3_client: Any,
) -> None:
    root = tmp_path / "logs"
    data = _logs(root)
    store = BackupStore(url=f"s3://{moto_s3_bucket}/archive", endpoint_url=moto_s3_endpoint)

    step = archive_log_files(
        "prod", _env(store), _policy(root, then="remove"), ledger, flow_run_id="run-s3"
    )

    assert step.status == "complete", step.summary
    assert step.after["files"] == 0
    assert not (root / "big.log").exists() and not (root / "old.log").exists()
    assert (root / "small.log").read_bytes() == data["small"]
    rows = {r.key: r for r in _log_rows(ledger)}
    assert len(rows) == 2
    for obj in step.details["objects"]:
        assert obj["then"] == "removed"
        body = moto_s3_client.get_object(Bucket=moto_s3_bucket, Key=f"archive/{obj['key']}")
        stored = body["Body"].read()
        assert hashlib.sha256(stored).hexdigest() == obj["sha256"] == rows[obj["key"]].sha256
        plain = b"".join(decompress([stored], "zstd"))
        assert plain == data[Path(obj["path"]).stem]
        assert _plain(store, obj["key"], obj["sha256"]) == plain


def test_a_store_that_fails_leaves_every_file_untouched(tmp_path: Path, ledger: Ledger) -> None:
    root = tmp_path / "logs"
    data = _logs(root)
    stats = {p.name: p.stat() for p in root.iterdir()}
    (tmp_path / "not-a-dir").write_text("a file where the store's directory should be")
    store = BackupStore(url=f"file://{tmp_path / 'not-a-dir' / 'store'}")

    step = archive_log_files("prod", _env(store), _policy(root), ledger, flow_run_id="run-f")

    assert step.status == "failed"
    assert sorted(Path(f["path"]).name for f in step.details["failed"]) == ["big.log", "old.log"]
    assert "FAILED 2, left untouched" in step.summary
    assert step.details["objects"] == [] and _log_rows(ledger) == []
    assert step.after["files"] == 2
    for name, key in (("big.log", "big"), ("old.log", "old"), ("small.log", "small")):
        assert (root / name).read_bytes() == data[key]
        now = (root / name).stat()
        assert (now.st_size, now.st_mtime_ns, now.st_ino) == (
            stats[name].st_size,
            stats[name].st_mtime_ns,
            stats[name].st_ino,
        )


def test_an_s3_store_that_refuses_the_write_fails_the_step(
    tmp_path: Path, ledger: Ledger, moto_s3_endpoint: str
) -> None:
    root = tmp_path / "logs"
    data = _logs(root)
    store = BackupStore(url="s3://opsflow-no-such-bucket/archive", endpoint_url=moto_s3_endpoint)
    step = archive_log_files("prod", _env(store), _policy(root), ledger, flow_run_id="run-f")
    assert step.status == "failed"
    assert len(step.details["failed"]) == 2
    assert (root / "big.log").read_bytes() == data["big"]
    assert (root / "old.log").read_bytes() == data["old"]
    assert _log_rows(ledger) == []


def test_a_passed_deadline_starts_nothing(tmp_path: Path, ledger: Ledger) -> None:
    root = tmp_path / "logs"
    data = _logs(root)
    env = _env(BackupStore(url=f"file://{tmp_path / 'store'}"))
    passed = datetime.now(UTC) - timedelta(seconds=1)

    step = archive_log_files("prod", env, _policy(root), ledger, flow_run_id="r", deadline=passed)

    assert step.status == "degraded"
    assert step.details["not_started"] == [str(root / "big.log"), str(root / "old.log")]
    assert "deadline passed, 2 file(s) not started" in step.summary
    assert (root / "big.log").read_bytes() == data["big"]
    assert _log_rows(ledger) == []


def _append_during_upload(proxy: FaultProxy, path: Path, line: bytes) -> threading.Thread:
    """Uploads of log archives are held 1 s by the proxy; the line is appended meanwhile."""
    proxy.delay_puts(1.0, ".zst")

    def append() -> None:
        deadline = time.monotonic() + 10
        while not proxy.writing and time.monotonic() < deadline:
            time.sleep(0.01)
        with path.open("ab") as out:
            out.write(line)

    writer = threading.Thread(target=append)
    writer.start()
    return writer


@pytest.mark.parametrize("then", ["truncate", "remove"])
def test_a_file_written_to_during_the_upload(
    then: str,
    tmp_path: Path,
    ledger: Ledger,
    moto_s3_bucket: str,
    moto_s3_fault_proxy: FaultProxy,
) -> None:
    root = tmp_path / "logs"
    root.mkdir()
    data = _write(root / "live.log", b"x" * 2048)
    late = b"ERROR written while the archive was uploading\n"
    store = BackupStore(
        url=f"s3://{moto_s3_bucket}/live", endpoint_url=moto_s3_fault_proxy.endpoint_url
    )
    writer = _append_during_upload(moto_s3_fault_proxy, root / "live.log", late)
    try:
        step = archive_log_files(
            "prod", _env(store), _policy(root, then), ledger, flow_run_id="run-live"
        )
    finally:
        writer.join()
    assert moto_s3_fault_proxy.writes  # the upload really went through the delaying proxy
    (obj,) = step.details["objects"]
    assert _plain(store, obj["key"], obj["sha256"]) == data  # the copy ended before the append
    if then == "truncate":  # copy-truncate: the late line is lost, and reported
        assert step.status == "complete"
        assert obj["then"] == "truncated" and obj["unarchived_bytes"] == len(late)
        assert (root / "live.log").stat().st_size == 0
        assert f"{len(late)} byte(s) written during the copy were not archived" in step.summary
    else:  # remove: the file is kept whole, nothing lost
        assert step.status == "degraded"
        assert obj["then"] == "left" and "written to while it was archived" in obj["left_because"]
        assert (root / "live.log").read_bytes() == data + late
        assert len(_log_rows(ledger)) == 1  # the archive stays catalogued


def test_the_task_records_in_the_configured_ledger(
    tmp_path: Path, ledger_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'task-ledger.db'}"
    monkeypatch.setenv("OPSFLOW_LEDGER_URL", url)
    root = tmp_path / "logs"
    _logs(root)
    env = _env(BackupStore(url=f"file://{tmp_path / 'store'}"))
    step = archive_logs.fn("prod", env, _policy(root), flow_run_id="run-task")
    assert step.status == "complete" and step.after["archived_files"] == 2
    opened = Ledger(url)
    try:
        assert sorted(r.flow_run_id for r in _log_rows(opened)) == ["run-task", "run-task"]
    finally:
        opened.close()


def test_without_a_backup_store_the_step_fails_and_touches_nothing(
    tmp_path: Path, ledger: Ledger
) -> None:
    root = tmp_path / "logs"
    data = _logs(root)
    step = archive_log_files(
        "prod", Environment.model_validate({}), _policy(root), ledger, flow_run_id="r"
    )
    assert step.status == "failed" and "has no backup_store" in step.summary
    assert (root / "big.log").read_bytes() == data["big"]
