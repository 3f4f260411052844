"""dump_redis against real redis-server processes: the stored RDB loads into a fresh server."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from connectors.stores import open_store
from connectors.streams import decompress
from opsflow.errors import PermanentError, TransientError
from opsflow.inventory import BackupStore, RedisTarget
from tasks.redis import dump_redis
from tests.fixtures.databases import RedisServer
from tests.support.net import free_port

pytestmark = pytest.mark.integration
FIELD = "environments.prod.redis[0]"
URL_VAR = "OPSFLOW_TEST_REDIS_BACKUP_URL"
WHEN = datetime(2026, 3, 4, 2, 0, tzinfo=UTC)


def _target(monkeypatch: pytest.MonkeyPatch, url: str) -> RedisTarget:
    monkeypatch.setenv(URL_VAR, url)
    return RedisTarget(name="cache", url=f"env:{URL_VAR}")


def _store(tmp_path: Path) -> BackupStore:
    return BackupStore(url=(tmp_path / "backups").as_uri())


def _files(root: Path) -> list[str]:
    """Every file under the store directory, hidden temp files included."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _restored_rdb(store: BackupStore, key: str) -> bytes:
    return b"".join(decompress(open_store(store).get_stream(key), "zstd"))


class FreshRedis:
    """A redis-server that loads ``dump.rdb`` from ``directory`` at start, on a free port."""

    def __init__(self, directory: Path) -> None:
        executable = shutil.which("redis-server")
        assert executable, "redis-server not found (fix: run scripts/install-system-deps.sh)"
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                executable,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(directory),
                "--dbfilename",
                "dump.rdb",
                "--save",
                "",
                "--appendonly",
                "no",
                "--databases",
                "16",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def client(self, db: int = 0) -> redis.Redis:
        deadline = time.monotonic() + 20
        while True:
            client = redis.Redis(port=self.port, db=db, socket_timeout=5)
            try:
                client.ping()
                return client
            except (redis.ConnectionError, redis.BusyLoadingError):
                client.close()
                assert self.proc.poll() is None, "the fresh redis-server exited (bad RDB?)"
                assert time.monotonic() < deadline, "the fresh redis-server did not answer"
                time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture()
def fresh_redis_loader(tmp_path: Path) -> Iterator[list[FreshRedis]]:
    started: list[FreshRedis] = []
    yield started
    for server in started:
        server.stop()


def test_snapshot_is_a_valid_rdb_that_loads_with_our_keys(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    redis_auth_server: RedisServer,
    fresh_redis_loader: list[FreshRedis],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    marker = os.urandom(6).hex()
    with redis_auth_server.client() as client:
        client.set(f"backup:{marker}:greeting", "hello")
        client.hset(f"backup:{marker}:user", mapping={"name": "ada", "id": "7"})
        client.rpush(f"backup:{marker}:queue", "a", "b", "c")
        db0_keys = client.dbsize()
    with redis.Redis(
        port=redis_auth_server.port, db=3, password=redis_auth_server.password
    ) as other:
        other.set(f"backup:{marker}:in-db3", "three")
    store = _store(tmp_path)

    result = dump_redis.fn(
        _target(monkeypatch, redis_auth_server.url), store, "prod", WHEN, field=FIELD
    )

    assert result.kind == "redis" and result.database == "cache" and result.codec == "zstd"
    assert re.fullmatch(r"prod/cache/2026/03/20260304T020000Z-[0-9a-f]{8}\.rdb\.zst", result.key)
    assert result.row_counts["db0"] == db0_keys and result.row_counts["db3"] >= 1
    assert _files(tmp_path / "backups") == sorted(
        [result.key, result.key + ".sha256", result.manifest_key, result.manifest_key + ".sha256"]
    )
    rdb = _restored_rdb(store, result.key)
    assert rdb.startswith(b"REDIS") and len(rdb) == result.raw_bytes
    assert rdb[-9] == 0xFF  # ends with the EOF opcode + CRC64: no transfer framing left over
    # the whole stored chain is consistent with what the result claims
    assert open_store(store).head(result.key).sha256 == result.sha256  # type: ignore[union-attr]

    restore_dir = tmp_path / "restore"
    restore_dir.mkdir()
    (restore_dir / "dump.rdb").write_bytes(rdb)
    check_rdb = shutil.which("redis-check-rdb")
    assert check_rdb, "redis-check-rdb not found (fix: run scripts/install-system-deps.sh)"
    checked = subprocess.run(
        [check_rdb, str(restore_dir / "dump.rdb")], capture_output=True, text=True, timeout=60
    )
    # the check read the file to its very end: no transfer framing (EOF mark) left over
    assert checked.returncode == 0, checked.stdout
    assert f"[offset {len(rdb)}] \\o/ RDB looks OK" in checked.stdout, checked.stdout

    fresh = FreshRedis(restore_dir)
    fresh_redis_loader.append(fresh)
    with fresh.client() as client:
        assert client.get(f"backup:{marker}:greeting") == b"hello"
        assert client.hgetall(f"backup:{marker}:user") == {b"name": b"ada", b"id": b"7"}
        assert client.lrange(f"backup:{marker}:queue", 0, -1) == [b"a", b"b", b"c"]
    with fresh.client(db=3) as client:
        assert client.get(f"backup:{marker}:in-db3") == b"three"

    manifest = open_store(store).get_json(result.manifest_key)
    assert manifest["kind"] == "redis" and manifest["sha256"] == result.sha256
    password = redis_auth_server.password
    assert password
    for text in (json.dumps(manifest), result.model_dump_json(), caplog.text):
        assert password not in text


def test_disk_based_transfer_is_stored_whole(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    redis_own_server: RedisServer,
    fresh_redis_loader: list[FreshRedis],
) -> None:
    """With repl-diskless-sync off the server sends ``$<length>`` framing instead of EOF marks."""
    marker = os.urandom(6).hex()
    with redis_own_server.client() as client:
        saved = client.config_get("repl-diskless-sync")["repl-diskless-sync"]
        client.config_set("repl-diskless-sync", "no")
        client.set(f"disk:{marker}", "x" * 5000)
    try:
        result = dump_redis.fn(
            _target(monkeypatch, redis_own_server.url), _store(tmp_path), "prod", WHEN, "gzip"
        )
    finally:
        with redis_own_server.client() as client:
            client.config_set("repl-diskless-sync", saved)
    assert result.key.endswith(".rdb.gz") and result.codec == "gzip"
    rdb = b"".join(decompress(open_store(_store(tmp_path)).get_stream(result.key), "gzip"))
    restore_dir = tmp_path / "restore"
    restore_dir.mkdir()
    (restore_dir / "dump.rdb").write_bytes(rdb)
    fresh = FreshRedis(restore_dir)
    fresh_redis_loader.append(fresh)
    with fresh.client() as client:
        assert client.get(f"disk:{marker}") == b"x" * 5000


def test_wrong_password_is_permanent_and_stores_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_auth_server: RedisServer
) -> None:
    wrong = redis_auth_server.url.replace(str(redis_auth_server.password), "not-the-password")
    with pytest.raises(PermanentError) as excinfo:
        dump_redis.fn(_target(monkeypatch, wrong), _store(tmp_path), "prod", WHEN, field=FIELD)
    assert FIELD in str(excinfo.value)
    assert "not-the-password" not in str(excinfo.value)
    assert _files(tmp_path / "backups") == []


def test_unreachable_server_is_transient_and_stores_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(TransientError, match="cannot reach Redis"):
        dump_redis.fn(_target(monkeypatch, url), _store(tmp_path), "prod", WHEN, field=FIELD)
    assert _files(tmp_path / "backups") == []


class CuttingProxy:
    """A TCP proxy to Redis that drops the connection after ``cut_after`` bytes from the server.

    Only the snapshot's connection is cut; the connections before it (INFO) pass untouched
    because they carry far fewer bytes.
    """

    def __init__(self, upstream_port: int, cut_after: int) -> None:
        self.upstream_port = upstream_port
        self.cut_after = cut_after
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.cuts = 0
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            self._sockets += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, None), daemon=True).start()
            threading.Thread(
                target=self._pump, args=(upstream, client, self.cut_after), daemon=True
            ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, limit: int | None) -> None:
        sent = 0
        with contextlib.suppress(OSError):  # the other side closed: this direction is done
            while data := source.recv(65536):
                if limit is not None and sent + len(data) > limit:
                    sink.sendall(data[: limit - sent])
                    self.cuts += 1
                    break
                sink.sendall(data)
                sent += len(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):  # already shut down by the other pump
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        self.listener.close()
        for sock in self._sockets:
            sock.close()


def test_snapshot_cut_mid_stream_leaves_nothing_and_keeps_earlier_backup(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_own_server: RedisServer
) -> None:
    with redis_own_server.client() as client:
        pipe = client.pipeline(transaction=False)
        for i in range(3000):  # ~3 MB of incompressible values
            pipe.set(f"bulk:{i}", os.urandom(1024))
        pipe.execute()
    store = _store(tmp_path)
    target = _target(monkeypatch, redis_own_server.url)
    first = dump_redis.fn(target, store, "prod", WHEN, field=FIELD)
    before = {p: (tmp_path / "backups" / p).read_bytes() for p in _files(tmp_path / "backups")}
    assert first.raw_bytes > 3_000_000

    proxy = CuttingProxy(redis_own_server.port, cut_after=1_000_000)
    try:
        cut_url = f"redis://127.0.0.1:{proxy.port}/0"
        with pytest.raises(TransientError, match="before the snapshot ended"):
            dump_redis.fn(_target(monkeypatch, cut_url), store, "prod", WHEN, field=FIELD)
        assert proxy.cuts == 1
    finally:
        proxy.close()
        with redis_own_server.client() as client:
            client.flushall()

    after = {p: (tmp_path / "backups" / p).read_bytes() for p in _files(tmp_path / "backups")}
    assert after == before  # no partial object, no temp file, the earlier backup untouched
    assert len(_restored_rdb(store, first.key)) == first.raw_bytes
