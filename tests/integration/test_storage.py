"""Backup stores against real components: a local directory and moto's S3 server over HTTP."""

from __future__ import annotations

import hashlib
import os
import random
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.stores import open_store
from connectors.stores.base import (
    Store,
    StoredObject,
    backup_key,
    backup_series,
    backup_time,
    manifest_key,
)
from connectors.stores.local import LocalStore
from connectors.stores.objects import choose_key, store_dump
from connectors.stores.s3 import S3Store
from opsflow.catalog import CatalogEntry
from opsflow.errors import PermanentError, TransientError
from opsflow.inventory import BackupStore
from tasks.backups import apply_retention, check_backup_present, verify_backup
from tests.fixtures.s3_server import FaultProxy
from tests.fixtures.tmpfs import PAGE, fill_to

pytestmark = pytest.mark.integration

MiB = 1 << 20
PART = 5 * MiB  # smallest S3 part: tens of MB make several parts
NOW = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)


def chunks_of(total: int, seed: int, chunk: int = MiB) -> Iterator[bytes]:
    """Deterministic pseudo-random data in chunks."""
    rng = random.Random(seed)
    left = total
    while left > 0:
        size = min(chunk, left)
        yield rng.randbytes(size)
        left -= size


def sha_of(total: int, seed: int) -> str:
    digest = hashlib.sha256()
    for piece in chunks_of(total, seed):
        digest.update(piece)
    return digest.hexdigest()


@pytest.fixture(params=["local", "s3"])
def store_config(request: pytest.FixtureRequest, tmp_path: Path) -> BackupStore:
    if request.param == "local":
        return BackupStore(url=(tmp_path / "backups").as_uri())
    bucket = request.getfixturevalue("moto_s3_bucket")
    endpoint = request.getfixturevalue("moto_s3_endpoint")
    return BackupStore(url=f"s3://{bucket}/prod-backups", endpoint_url=endpoint)


@pytest.fixture
def store(store_config: BackupStore) -> Store:
    return open_store(store_config, part_size=PART)


def raw_names(store: Store, client: Any) -> list[str]:
    """Everything physically present in the store, including hidden/incomplete things."""
    if isinstance(store, LocalStore):
        return sorted(
            str(Path(d, n).relative_to(store.root))
            for d, _, files in os.walk(store.root)
            for n in files
        )
    assert isinstance(store, S3Store)
    answer = client.list_objects_v2(Bucket=store.bucket)
    return sorted(item["Key"] for item in answer.get("Contents", []))


def open_uploads(store: Store, client: Any) -> list[str]:
    if isinstance(store, LocalStore):
        return [n for n in raw_names(store, client) if n.rsplit("/", 1)[-1].startswith(".")]
    assert isinstance(store, S3Store)
    return [u["Key"] for u in client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])]


@pytest.fixture
def s3_client_or_none(store: Store, request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("moto_s3_client") if isinstance(store, S3Store) else None


def test_round_trip_of_tens_of_mb_with_sha256(store: Store) -> None:
    size = 24 * MiB + 12_345  # not a multiple of the part or chunk size
    key = backup_key("prod", "main", NOW, "sql.zst")
    progressed: list[int] = []

    stored = store.put_stream(key, chunks_of(size, 1), progress=progressed.append)

    expected = sha_of(size, 1)
    assert (stored.key, stored.size, stored.sha256) == (key, size, expected)
    assert sum(progressed) == size
    assert stored.url.endswith("/prod/main/2026/03/20260301T020000Z.sql.zst")
    head = store.head(key)
    assert head is not None and (head.size, head.sha256) == (size, expected)
    assert [o.key for o in store.list("prod/main/")] == [key]
    read = hashlib.sha256()
    count = 0
    for piece in store.get_stream(key, expected_sha256=expected, chunk_size=MiB):
        assert len(piece) <= MiB
        read.update(piece)
        count += len(piece)
    assert (count, read.hexdigest()) == (size, expected)


def test_object_is_invisible_until_complete(store: Store, s3_client_or_none: Any) -> None:
    key = backup_key("prod", "main", NOW, "sql.zst")
    seen: dict[str, Any] = {}

    def producer() -> Iterator[bytes]:
        yield from chunks_of(12 * MiB, 2)  # two S3 parts already sent
        time.sleep(0.2)  # let the part uploads finish
        seen["head"] = store.head(key)
        seen["listed"] = [o.key for o in store.list("prod/")]
        seen["in_progress"] = open_uploads(store, s3_client_or_none)
        yield from chunks_of(3 * MiB, 3)

    stored = store.put_stream(key, producer())

    assert seen["head"] is None
    assert seen["listed"] == []
    assert len(seen["in_progress"]) == 1  # the write was under way, just not visible
    assert stored.size == 15 * MiB
    assert [o.key for o in store.list("prod/")] == [key]
    assert open_uploads(store, s3_client_or_none) == []


def test_failing_producer_leaves_nothing_and_keeps_earlier_backup(
    store: Store, s3_client_or_none: Any
) -> None:
    earlier_key = backup_key("prod", "main", NOW - timedelta(days=1), "sql.zst")
    earlier = store.put_stream(earlier_key, chunks_of(6 * MiB, 4))
    before = raw_names(store, s3_client_or_none)
    key = backup_key("prod", "main", NOW, "sql.zst")

    def dying_dump() -> Iterator[bytes]:
        yield from chunks_of(11 * MiB, 5)
        raise RuntimeError("pg_dump exited with status 1")

    with pytest.raises(RuntimeError, match="pg_dump exited"):
        store.put_stream(key, dying_dump())

    assert store.head(key) is None
    assert [o.key for o in store.list("prod/")] == [earlier_key]
    assert open_uploads(store, s3_client_or_none) == []
    assert raw_names(store, s3_client_or_none) == before  # no temp file, no checksum file
    assert b"".join(store.get_stream(earlier_key)) == b"".join(chunks_of(6 * MiB, 4))
    head = store.head(earlier_key)
    assert head is not None and head.sha256 == earlier.sha256


def test_corrupted_object_is_refused_at_read(store: Store, s3_client_or_none: Any) -> None:
    key = backup_key("prod", "main", NOW, "sql.zst")
    original = b"".join(chunks_of(7 * MiB, 6))
    stored = store.put_stream(key, [original])
    damaged = bytearray(original)
    damaged[3 * MiB] ^= 0x01  # one flipped bit, same size
    if isinstance(store, LocalStore):
        (store.root / key).write_bytes(damaged)
    else:
        assert isinstance(store, S3Store)
        s3_client_or_none.put_object(Bucket=store.bucket, Key=f"{store.prefix}/{key}", Body=damaged)

    for expected in (stored.sha256, None):  # the caller's digest, or the stored one
        received = 0
        with pytest.raises(PermanentError, match="corrupt"):
            for piece in store.get_stream(key, expected_sha256=expected):
                received += len(piece)
        assert received == len(original)  # all data came first: a scratch restore can be dropped

    with pytest.raises(PermanentError, match="not the expected backup"):
        store.get_stream(key, expected_sha256="0" * 64)


def test_missing_object_head_get_delete(store: Store) -> None:
    key = backup_key("prod", "main", NOW, "sql.zst")
    assert store.head(key) is None
    with pytest.raises(PermanentError, match="does not exist"):
        list(store.get_stream(key))
    store.delete(key)  # idempotent
    assert store.list("") == []


def test_manifest_json_and_delete(store: Store, s3_client_or_none: Any) -> None:
    key = backup_key("prod", "main", NOW, "sql.zst")
    store.put_stream(key, [b"dump"])
    manifest = {"key": key, "sha256": hashlib.sha256(b"dump").hexdigest(), "tables": {"a": 3}}
    written = store.put_json(manifest_key(key), manifest)

    assert written.key == "prod/main/2026/03/20260301T020000Z.manifest.json"
    assert store.get_json(manifest_key(key)) == manifest
    assert [o.key for o in store.list("prod/main/2026/")] == sorted([key, written.key])
    store.delete(key)
    store.delete(written.key)
    assert store.list("") == []
    assert raw_names(store, s3_client_or_none) == []  # checksum files went too


def test_bad_key_is_refused(store: Store) -> None:
    for key in ("../escape", "/abs", "a//b", "a/.hidden", "x.sha256", ""):
        with pytest.raises(PermanentError):
            store.put_stream(key, [b"x"])


def test_cleanup_incomplete_removes_only_stale_leftovers(
    store: Store, s3_client_or_none: Any
) -> None:
    key = backup_key("prod", "main", NOW, "sql.zst")
    store.put_stream(key, [b"kept"])
    if isinstance(store, LocalStore):
        directory = (store.root / key).parent
        stale, fresh = directory / ".old.dump.1.tmp", directory / ".new.dump.2.tmp"
        other = store.root / "stage" / ".old.dump.3.tmp"
        other.parent.mkdir()
        two_days_ago = time.time() - 2 * 86400
        for temp in (stale, fresh, other):
            temp.write_bytes(b"partial")
            if temp is not fresh:
                os.utime(temp, (two_days_ago, two_days_ago))
        assert store.cleanup_incomplete(timedelta(days=1), prefix="prod/") == [str(stale)]
        assert not stale.exists() and fresh.exists() and other.exists()
    else:
        assert isinstance(store, S3Store)
        # moto reports every upload as started in 2010: only the prefix filter can be shown
        client = s3_client_or_none
        client.create_multipart_upload(Bucket=store.bucket, Key=f"{store.prefix}/prod/x")
        client.create_multipart_upload(Bucket=store.bucket, Key=f"{store.prefix}/stage/y")
        assert store.cleanup_incomplete(timedelta(days=1), prefix="prod/") == [
            f"{store.prefix}/prod/x"
        ]
        assert open_uploads(store, client) == [f"{store.prefix}/stage/y"]
    assert [o.key for o in store.list("")] == [key]


def test_apply_retention_deletes_what_the_catalog_expired_and_nothing_else(
    store_config: BackupStore,
) -> None:
    store = open_store(store_config)

    def backup(db: str, age_days: int) -> str:
        key = backup_key("prod", db, NOW - timedelta(days=age_days), "sql.zst")
        store.put_stream(key, [f"{db}-{age_days}".encode()])
        store.put_json(manifest_key(key), {"key": key})
        return key

    main = {age: backup("main", age) for age in (40, 35, 2)}
    stray = backup("stray", 90)  # in no catalog: left in place, reported
    other_env = backup_key("stage", "main", NOW - timedelta(days=90), "sql.zst")
    store.put_stream(other_env, [b"stage"])
    catalogued = sorted(main.values())

    result = apply_retention.fn(
        store_config, "prod/", expired_keys=[main[40]], catalogued_keys=catalogued, now=NOW
    )

    assert result.deleted == [main[40], manifest_key(main[40])]
    assert result.uncatalogued == [stray]
    remaining = {o.key for o in store.list("")}
    kept = [main[35], main[2], stray]  # old but not expired by the catalog; recent; stray
    assert remaining == {k for key in kept for k in (key, manifest_key(key))} | {other_env}
    assert store.head(main[40]) is None
    again = apply_retention.fn(  # idempotent: an interrupted run is finished by the next one
        store_config, "prod/", expired_keys=[main[40]], catalogued_keys=catalogued, now=NOW
    )
    assert again.deleted == [main[40], manifest_key(main[40])]
    assert {o.key for o in store.list("")} == remaining
    with pytest.raises(PermanentError, match="not backups under 'prod/'; nothing was deleted"):
        apply_retention.fn(
            store_config,
            "prod/",
            expired_keys=[main[35], other_env],
            catalogued_keys=catalogued,
            now=NOW,
        )
    assert {o.key for o in store.list("")} == remaining


def test_check_backup_present_heads_the_object_and_its_checksum(
    store_config: BackupStore,
) -> None:
    store = open_store(store_config)
    key = backup_key("prod", "main", NOW, "sql.zst")
    stored = store.put_stream(key, [b"a backup"])
    assert stored.sha256 is not None
    source = CatalogEntry(
        backup_id="b1",
        env="prod",
        database="main",
        kind="postgres",
        store_url=store_config.url,
        key=key,
        sha256=stored.sha256,
        bytes=stored.size,
        codec="zstd",
        created_at=NOW,
    )

    assert check_backup_present.fn(store_config, source) == store.head(key)
    wrong = source.model_copy(update={"sha256": "f" * 64})
    with pytest.raises(PermanentError, match="is not the catalogued one") as info:
        check_backup_present.fn(store_config, wrong)
    assert stored.sha256 in str(info.value) and "f" * 64 in str(info.value)
    with pytest.raises(PermanentError, match="is not the catalogued one"):
        check_backup_present.fn(store_config, source.model_copy(update={"bytes": 7}))
    moved = source.model_copy(update={"store_url": "file:///elsewhere"})
    with pytest.raises(PermanentError, match="was stored in file:///elsewhere"):
        check_backup_present.fn(store_config, moved)
    store.delete(key)
    with pytest.raises(PermanentError, match="backup b1 of postgres 'main' is not in the store"):
        check_backup_present.fn(store_config, source)


def test_verify_backup_task_reads_the_whole_object(store_config: BackupStore) -> None:
    store = open_store(store_config)
    key = backup_key("prod", "main", NOW, "sql.zst")
    stored = store.put_stream(key, chunks_of(3 * MiB, 7))

    assert verify_backup.fn(store_config, key, stored.sha256) == store.head(key)
    with pytest.raises(PermanentError, match="not the expected backup"):
        verify_backup.fn(store_config, key, "f" * 64)
    with pytest.raises(PermanentError, match="does not exist"):
        verify_backup.fn(store_config, backup_key("prod", "main", NOW, "other"), stored.sha256)


# --- never replace, unique keys, all-or-nothing ---------------------------------------------


def test_put_never_replaces_an_existing_key(store: Store, s3_client_or_none: Any) -> None:
    key = backup_key("prod", "main", NOW, "sql.zst")
    first = store.put_stream(key, chunks_of(6 * MiB, 11))  # multipart on S3
    before = raw_names(store, s3_client_or_none)

    for second in (chunks_of(6 * MiB, 12), iter([b"a small one"])):  # multipart, single PUT
        with pytest.raises(PermanentError, match="already exists"):
            store.put_stream(key, second)

    head = store.head(key)
    assert head is not None and (head.size, head.sha256) == (first.size, first.sha256)
    data = b"".join(store.get_stream(key))  # object and checksum still belong together
    assert hashlib.sha256(data).hexdigest() == first.sha256
    assert raw_names(store, s3_client_or_none) == before
    assert open_uploads(store, s3_client_or_none) == []


def test_keys_are_unique_by_construction_within_one_second(tmp_path: Path) -> None:
    backend = LocalStore(tmp_path)
    # what two backups started in the same second do: both choose before either writes
    keys = [choose_key(backend, "prod", "main", NOW, "sql.zst") for _ in range(50)]

    assert len(set(keys)) == 50
    assert len({manifest_key(k) for k in keys}) == 50
    for key in keys:
        assert key.startswith("prod/main/2026/03/20260301T020000Z-") and key.endswith(".sql.zst")
        assert manifest_key(key).endswith(".manifest.json") and manifest_key(key) != key
        stored = StoredObject(key=key, size=1, last_modified=NOW, url=f"file:///{key}")
        assert backup_time(stored) == NOW and backup_series(key) == "prod/main"


def test_store_dump_is_all_or_nothing_when_the_disk_fills_up(
    tmp_path: Path, small_tmpfs: Any
) -> None:
    payload = os.urandom(300 * 1024)  # incompressible: the stored size is known in advance

    def dump(backend: Store, key: str) -> Any:
        return store_dump(
            BackupStore(url=f"file://{tmp_path}/unused"),
            key,
            [payload],
            database="main",
            kind="sqlite",
            via="file",
            codec="zstd",
            row_counts={"t": 1},
            started=time.monotonic(),
            created_at=NOW,
            backend=backend,
        )

    sized = dump(LocalStore(tmp_path / "probe"), backup_key("prod", "main", NOW, "sqlite.zst"))
    pages = -(-sized.bytes // PAGE)  # the object; its checksum, manifest, manifest checksum: 1 each
    mount = small_tmpfs("2m")
    store = LocalStore(mount / "store")
    earlier = store.put_stream(backup_key("prod", "main", NOW - timedelta(days=1), "sql"), [b"ok"])
    outcomes = {}
    for spare in range(-1, 4):  # from "the object does not fit" to "everything fits"
        fill_to(mount, (pages + spare) * PAGE)
        before = raw_names(store, None)
        key = choose_key(store, "prod", "main", NOW, "sqlite.zst")
        try:
            result = dump(store, key)
        except PermanentError as exc:
            assert "free space" in str(exc), exc
            assert raw_names(store, None) == before, spare  # nothing at all, no temp file
            outcomes[spare] = "nothing"
        else:
            assert store.head(key) is not None and store.head(result.manifest_key) is not None
            assert hashlib.sha256(b"".join(store.get_stream(key))).hexdigest() == result.sha256
            assert store.get_json(result.manifest_key)["sha256"] == result.sha256
            outcomes[spare] = "complete"
            for gone in (key, result.manifest_key):
                store.delete(gone)
    assert outcomes == {-1: "nothing", 0: "nothing", 1: "nothing", 2: "nothing", 3: "complete"}
    assert b"".join(store.get_stream(earlier.key, expected_sha256=earlier.sha256)) == b"ok"


# --- S3 faults through the proxy ------------------------------------------------------------


def proxied_store(bucket: str, proxy: FaultProxy) -> S3Store:
    config = BackupStore(url=f"s3://{bucket}/prod-backups", endpoint_url=proxy.endpoint_url)
    store = open_store(config, part_size=PART)
    assert isinstance(store, S3Store)
    return store


def test_s3_5xx_mid_upload_is_retried(moto_s3_bucket: str, moto_s3_fault_proxy: FaultProxy) -> None:
    store = proxied_store(moto_s3_bucket, moto_s3_fault_proxy)
    key = backup_key("prod", "main", NOW, "sql.zst")
    moto_s3_fault_proxy.fail_part(2, times=1)

    stored = store.put_stream(key, chunks_of(16 * MiB, 8))

    assert moto_s3_fault_proxy.injected == [2]
    assert moto_s3_fault_proxy.part_requests.count(2) == 2  # failed once, then retried
    assert stored.sha256 == sha_of(16 * MiB, 8)
    assert hashlib.sha256(b"".join(store.get_stream(key))).hexdigest() == stored.sha256


def test_s3_5xx_that_persists_aborts_and_leaves_nothing(
    moto_s3_bucket: str, moto_s3_fault_proxy: FaultProxy, moto_s3_client: Any
) -> None:
    store = proxied_store(moto_s3_bucket, moto_s3_fault_proxy)
    earlier_key = backup_key("prod", "main", NOW - timedelta(days=1), "sql.zst")
    earlier = store.put_stream(earlier_key, chunks_of(6 * MiB, 9))
    key = backup_key("prod", "main", NOW, "sql.zst")
    moto_s3_fault_proxy.fail_part(2, times=None)

    with pytest.raises(TransientError, match="upload part 2"):
        store.put_stream(key, chunks_of(16 * MiB, 10))

    assert moto_s3_fault_proxy.part_requests.count(2) >= 2  # botocore retried before giving up
    assert store.head(key) is None
    assert [o.key for o in store.list("prod/")] == [earlier_key]
    assert moto_s3_client.list_multipart_uploads(Bucket=moto_s3_bucket).get("Uploads", []) == []
    keys = [o["Key"] for o in moto_s3_client.list_objects_v2(Bucket=moto_s3_bucket)["Contents"]]
    assert sorted(keys) == [f"prod-backups/{earlier_key}", f"prod-backups/{earlier_key}.sha256"]
    data = b"".join(store.get_stream(earlier_key, expected_sha256=earlier.sha256))
    assert len(data) == 6 * MiB


def test_s3_failed_overwrite_leaves_the_object_and_its_checksum_as_they_were(
    moto_s3_bucket: str, moto_s3_fault_proxy: FaultProxy, moto_s3_client: Any
) -> None:
    store = proxied_store(moto_s3_bucket, moto_s3_fault_proxy)
    key = backup_key("prod", "main", NOW, "sql.zst")
    first = store.put_stream(key, chunks_of(12 * MiB, 13))
    moto_s3_fault_proxy.fail_complete(times=None)

    with pytest.raises(PermanentError, match="already exists"):
        store.put_stream(key, chunks_of(12 * MiB, 14))

    head = store.head(key)
    assert head is not None and head.sha256 == first.sha256
    data = b"".join(store.get_stream(key))  # the checksum file still describes the object
    assert hashlib.sha256(data).hexdigest() == first.sha256
    assert moto_s3_client.list_multipart_uploads(Bucket=moto_s3_bucket).get("Uploads", []) == []


def test_s3_5xx_on_complete_that_persists_aborts_and_leaves_nothing(
    moto_s3_bucket: str, moto_s3_fault_proxy: FaultProxy, moto_s3_client: Any
) -> None:
    store = proxied_store(moto_s3_bucket, moto_s3_fault_proxy)
    earlier = store.put_stream(backup_key("prod", "main", NOW, "sql"), [b"earlier"])
    key = choose_key(store, "prod", "main", NOW, "sql.zst")
    moto_s3_fault_proxy.fail_complete(times=None)

    with pytest.raises(TransientError, match="complete the upload"):
        store.put_stream(key, chunks_of(12 * MiB, 15))

    assert moto_s3_fault_proxy.complete_requests >= 2  # botocore retried before giving up
    assert store.head(key) is None
    keys = [o["Key"] for o in moto_s3_client.list_objects_v2(Bucket=moto_s3_bucket)["Contents"]]
    assert sorted(keys) == [f"prod-backups/{earlier.key}", f"prod-backups/{earlier.key}.sha256"]
    assert moto_s3_client.list_multipart_uploads(Bucket=moto_s3_bucket).get("Uploads", []) == []


@pytest.mark.parametrize("fault", ["answer-lost", "timeout", "precondition-after-success"])
def test_s3_complete_that_succeeded_but_was_not_answered_is_recognised(
    fault: str, moto_s3_bucket: str, moto_s3_fault_proxy: FaultProxy, moto_s3_client: Any
) -> None:
    """S3 completed the upload but the client saw a 500, a timeout or (on the retry of the
    conditional complete) a 412: the object is ours, stored once, with its checksum."""
    proxy = moto_s3_fault_proxy
    config = BackupStore(url=f"s3://{moto_s3_bucket}/prod-backups", endpoint_url=proxy.endpoint_url)
    store = S3Store(config.url, endpoint_url=proxy.endpoint_url, part_size=PART, read_timeout=1.5)
    key = choose_key(store, "prod", "main", NOW, "sql.zst")
    if fault == "answer-lost":
        proxy.fail_complete(times=1, forwarded=True)
    elif fault == "timeout":
        proxy.stall_complete(seconds=4, times=1)
    else:
        proxy.fail_complete(times=1, forwarded=True)
        proxy.precondition_failed_on_complete(times=1)

    stored = store.put_stream(key, chunks_of(12 * MiB, 16))

    assert proxy.complete_injected and proxy.complete_requests >= 2  # it was retried
    assert stored.sha256 == sha_of(12 * MiB, 16)
    assert hashlib.sha256(b"".join(store.get_stream(key))).hexdigest() == stored.sha256
    keys = [o["Key"] for o in moto_s3_client.list_objects_v2(Bucket=moto_s3_bucket)["Contents"]]
    assert sorted(keys) == [f"prod-backups/{key}", f"prod-backups/{key}.sha256"]
    assert moto_s3_client.list_multipart_uploads(Bucket=moto_s3_bucket).get("Uploads", []) == []


def test_s3_missing_bucket_is_a_permanent_error_with_a_fix(moto_s3_endpoint: str) -> None:
    config = BackupStore(url="s3://no-such-bucket-opsflow/x", endpoint_url=moto_s3_endpoint)
    store = open_store(config)
    with pytest.raises(PermanentError, match="create bucket no-such-bucket-opsflow"):
        store.put_stream(backup_key("prod", "main", NOW, "sql"), [b"data"])


# --- constant memory ------------------------------------------------------------------------


def test_streamed_put_of_200_mb_keeps_memory_small(tmp_path: Path) -> None:
    store = open_store(BackupStore(url=(tmp_path / "backups").as_uri()))
    total = 200 * MiB
    tracemalloc.start()
    try:
        stored = store.put_stream(
            backup_key("prod", "main", NOW, "bin"), (os.urandom(MiB) for _ in range(200))
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert stored.size == total
    assert peak < 8 * MiB, f"peak traced memory {peak / MiB:.1f} MiB for a 200 MiB stream"
