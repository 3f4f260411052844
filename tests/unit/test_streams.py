"""Streaming helpers (connectors.streams) and the pure parts of connectors.stores.base: keys,
manifests and backup times (what retention deletes is decided by the catalog:
tests/unit/test_catalog.py)."""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import random
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import zstandard

from connectors.stores.base import (
    StoredObject,
    backup_key,
    backup_time,
    check_key,
    local_root,
    manifest_key,
    parse_sidecar,
    sidecar_text,
)
from connectors.streams import (
    CHUNK_SIZE,
    Hashed,
    compress,
    decompress,
    decrypt,
    encrypt,
    iter_file,
    load_key,
    rechunk,
    resolve_key,
)
from opsflow.errors import InputError, PermanentError
from opsflow.redaction import redact

KEY = bytes(range(32))


def sample(size: int, seed: int = 0) -> bytes:
    """Half random, half repetitive: exercises both compressible and incompressible paths."""
    rng = random.Random(seed)
    text = b"INSERT INTO accounts VALUES (1, 'alice', 100);\n" * (size // 40 + 1)
    return rng.randbytes(size // 2) + text[: size - size // 2]


def pieces(data: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


# --- chunking and hashing -------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 7, 4096])
def test_rechunk_gives_exact_sizes(size: int) -> None:
    data = sample(50_000)
    out = list(rechunk(pieces(data, 999), size))
    assert b"".join(out) == data
    assert all(len(p) == size for p in out[:-1]) and 0 < len(out[-1]) <= size


def test_iter_file_reads_in_chunks(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(sample(10_000))
    with path.open("rb") as handle:
        out = list(iter_file(handle, 4096))
    assert [len(p) for p in out] == [4096, 4096, 1808]


def test_hashed_passes_chunks_and_reports_digest() -> None:
    data = sample(100_000)
    hashed = Hashed(pieces(data, 3000))
    assert b"".join(hashed) == data
    assert (hashed.sha256, hashed.size) == (hashlib.sha256(data).hexdigest(), len(data))


def test_hashed_mismatch_raises_after_the_last_chunk() -> None:
    data = sample(10_000)
    received = []
    with pytest.raises(PermanentError, match="corrupt: sha256"):
        for chunk in Hashed(pieces(data, 1000), expected_sha256="0" * 64, what="backup x"):
            received.append(chunk)
    assert b"".join(received) == data
    assert list(Hashed([data], expected_sha256=hashlib.sha256(data).hexdigest().upper())) == [data]


# --- compression ----------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["zstd", "gzip", "none"])
@pytest.mark.parametrize("size", [0, 1, 3 * CHUNK_SIZE + 17])
def test_compress_round_trip(codec: str, size: int) -> None:
    data = sample(size)
    packed = b"".join(compress(pieces(data, 65_536), codec))  # type: ignore[arg-type]
    assert b"".join(decompress(pieces(packed, 1000), codec)) == data  # type: ignore[arg-type]


def test_compressed_output_is_standard_zstd_and_gzip() -> None:
    data = sample(500_000)
    zst = b"".join(compress([data], "zstd"))
    gz = b"".join(compress([data], "gzip", level=1))
    assert zstandard.ZstdDecompressor().decompress(zst, max_output_size=len(data)) == data
    assert gzip.decompress(gz) == data
    assert zstandard.get_frame_parameters(zst).has_checksum


def test_decompress_reads_concatenated_frames_and_members() -> None:
    zst = zstandard.ZstdCompressor().compress(b"a" * 10) + zstandard.ZstdCompressor().compress(b"b")
    assert b"".join(decompress(pieces(zst, 3), "zstd")) == b"a" * 10 + b"b"
    gz = gzip.compress(b"first ") + gzip.compress(b"second")
    assert b"".join(decompress(pieces(gz, 5), "gzip")) == b"first second"


@pytest.mark.parametrize("codec", ["zstd", "gzip"])
def test_decompress_output_is_chunked_even_for_huge_ratios(codec: str) -> None:
    size = 64 * CHUNK_SIZE
    packed = b"".join(compress((bytes(CHUNK_SIZE) for _ in range(64)), codec))  # type: ignore[arg-type]
    assert len(packed) < size // 100
    total = 0
    largest = 0
    for chunk in decompress([packed], codec):  # type: ignore[arg-type]
        total += len(chunk)
        largest = max(largest, len(chunk))
    assert total == size
    assert largest <= 16 * CHUNK_SIZE  # never the whole 64 MiB at once


@pytest.mark.parametrize("codec", ["zstd", "gzip"])
def test_truncated_or_corrupt_compressed_stream_is_permanent_error(codec: str) -> None:
    data = sample(300_000)
    packed = b"".join(compress([data], codec))  # type: ignore[arg-type]
    with pytest.raises(PermanentError, match="truncated"):
        b"".join(decompress([packed[: len(packed) - 9]], codec))  # type: ignore[arg-type]
    damaged = bytearray(packed)
    damaged[len(damaged) // 2] ^= 0xFF
    with pytest.raises(PermanentError, match="corrupt"):
        b"".join(decompress([bytes(damaged)], codec))  # type: ignore[arg-type]
    with pytest.raises(PermanentError, match="empty"):
        b"".join(decompress([], codec))  # type: ignore[arg-type]


def test_unknown_codec_is_input_error() -> None:
    with pytest.raises(InputError, match="unknown codec 'xz'"):
        list(compress([b"x"], "xz"))  # type: ignore[arg-type]


# --- encryption -----------------------------------------------------------------------------


def seal(data: bytes, frame: int = 1000, key: bytes = KEY) -> bytes:
    return b"".join(encrypt(pieces(data, 333), key, frame_size=frame))


@pytest.mark.parametrize("size", [0, 1, 999, 1000, 1001, 5000])
def test_encrypt_round_trip_streams_frames(size: int) -> None:
    data = os.urandom(size)
    sealed = seal(data)
    assert size < 16 or data[:16] not in sealed  # the plaintext does not show
    frames = max(1, -(-size // 1000))
    assert len(sealed) == 22 + frames * (5 + 16) + size  # header + framing + tags + data
    assert b"".join(decrypt(pieces(sealed, 7), KEY)) == data


def test_each_stream_gets_a_fresh_nonce() -> None:
    assert seal(b"same plaintext") != seal(b"same plaintext")


def test_encrypt_default_frames_are_chunk_sized() -> None:
    data = os.urandom(2 * CHUNK_SIZE + 5)
    out = list(decrypt(encrypt([data], KEY), KEY))
    assert [len(p) for p in out] == [CHUNK_SIZE, CHUNK_SIZE, 5]


def tampered(sealed: bytes, position: int) -> bytes:
    damaged = bytearray(sealed)
    damaged[position] ^= 0x01
    return bytes(damaged)


@pytest.mark.parametrize(
    "position",
    [0, 11, 15, 21, 22, 23, 30, 22 + 21 + 500, -1],  # magic, version, size, nonce, frame header,
)  # ciphertext, tag of the last frame
def test_any_modified_byte_is_detected(position: int) -> None:
    sealed = seal(os.urandom(2500))
    with pytest.raises(PermanentError):
        b"".join(decrypt([tampered(sealed, position)], KEY))


def test_truncation_reordering_and_trailing_bytes_are_detected() -> None:
    data = os.urandom(2500)
    sealed = seal(data)
    header, frame = 22, 5 + 1000 + 16
    first, second = sealed[header : header + frame], sealed[header + frame : header + 2 * frame]
    cases = {
        "cut at a frame boundary": sealed[: header + 2 * frame],
        "cut inside a frame": sealed[:-3],
        "frames swapped": sealed[:header] + second + first + sealed[header + 2 * frame :],
        "frame dropped": sealed[:header] + second + sealed[header + 2 * frame :],
        "trailing bytes": sealed + b"x",
        "empty": b"",
    }
    for name, variant in cases.items():
        with pytest.raises(PermanentError):
            b"".join(decrypt([variant], KEY))
            pytest.fail(f"{name} was not detected")


def test_wrong_key_fails_and_plaintext_is_never_released() -> None:
    sealed = seal(os.urandom(3000))
    received = []
    with pytest.raises(PermanentError, match="wrong key or tampered"):
        for chunk in decrypt([sealed], bytes(32)):
            received.append(chunk)
    assert received == []


def test_load_key_accepts_base64_and_hex_and_never_echoes_the_value() -> None:
    assert load_key(base64.b64encode(KEY).decode()) == KEY
    assert load_key(base64.urlsafe_b64encode(KEY).decode().rstrip("=")) == KEY
    assert load_key(KEY.hex()) == KEY
    assert load_key(" " + KEY.hex().upper() + "\n") == KEY
    secret = base64.b64encode(os.urandom(16)).decode()  # 16 bytes: too short
    with pytest.raises(InputError) as caught:
        load_key(secret, field="environments.prod.backup_store.encryption_key")
    assert secret not in str(caught.value)
    assert "environments.prod.backup_store.encryption_key" in str(caught.value)


def test_encrypted_then_compressed_pipeline_round_trip() -> None:
    data = sample(2 * CHUNK_SIZE)
    stored = list(encrypt(compress(pieces(data, 100_000), "zstd"), KEY))
    restored: Iterable[bytes] = decompress(decrypt(stored, KEY), "zstd")
    assert b"".join(restored) == data


# --- keys, manifests and backup times (stores.base) ---------------------------------------

NOW = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)


def test_backup_key_layout() -> None:
    when = datetime(2026, 1, 5, 3, 4, 5, tzinfo=UTC)
    key = backup_key("prod", "main", when, ".sql.zst")
    assert key == "prod/main/2026/01/20260105T030405Z.sql.zst"
    assert manifest_key(key) == "prod/main/2026/01/20260105T030405Z.manifest.json"
    assert check_key(key) == key
    cet = datetime(2026, 1, 1, 0, 30, tzinfo=UTC).astimezone(
        datetime.now().astimezone().tzinfo
    )  # any zone: converted to UTC
    assert backup_key("e", "d", cet, "gz") == "e/d/2026/01/20260101T003000Z.gz"


@pytest.mark.parametrize(
    ("env", "db", "ext"), [("pro/d", "main", "sql"), ("prod", "..", "sql"), ("prod", "m", "a/b")]
)
def test_backup_key_refuses_unsafe_parts(env: str, db: str, ext: str) -> None:
    with pytest.raises(InputError):
        backup_key(env, db, NOW, ext)


def test_backup_key_needs_an_aware_datetime() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        backup_key("prod", "main", datetime(2026, 1, 1), "sql")


@pytest.mark.parametrize("key", ["", "/a", "a/", "a//b", "a/../b", "a/.tmp", "a\\b", "a.sha256"])
def test_check_key_refuses(key: str) -> None:
    with pytest.raises(InputError):
        check_key(key)


def test_local_root_forms(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert local_root("file:///var/backups") == Path("/var/backups")
    assert local_root("file://.opsflow/backups") == tmp_path / ".opsflow" / "backups"
    assert local_root("file://localhost/srv/b") == Path("/srv/b")


def test_sidecar_is_sha256sum_format() -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    text = sidecar_text(digest, "prod/main/2026/01/x.sql.zst")
    assert text == f"{digest}  x.sql.zst\n".encode()
    assert parse_sidecar(text) == digest
    assert parse_sidecar(b"garbage") is None


def obj(key: str, days_old: float = 0) -> StoredObject:
    return StoredObject(
        key=key,
        size=1,
        last_modified=NOW - timedelta(days=days_old),
        url=f"file:///b/{key}",
    )


def test_backup_time_is_the_key_stamp_not_the_file_time() -> None:
    copied = obj(backup_key("prod", "main", NOW - timedelta(days=40), "sql"), days_old=0)
    assert backup_time(copied) == NOW - timedelta(days=40)
    loose = obj("misc/a.tar", 35)  # no stamp: the file time
    assert backup_time(loose) == NOW - timedelta(days=35)


def test_resolve_key_reads_a_reference_and_registers_it_for_redaction(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = base64.b64encode(bytes(range(100, 132))).decode()
    field = "environments.prod.backup_store.encryption_key"
    monkeypatch.setenv("OPSFLOW_TEST_BACKUP_KEY", text)
    assert resolve_key("env:OPSFLOW_TEST_BACKUP_KEY", field) == bytes(range(100, 132))
    assert text not in redact(f"the key was {text}")
    monkeypatch.delenv("OPSFLOW_TEST_BACKUP_KEY")
    with pytest.raises(InputError, match="OPSFLOW_TEST_BACKUP_KEY is not set"):
        resolve_key("env:OPSFLOW_TEST_BACKUP_KEY", field)
