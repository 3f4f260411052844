"""Streaming helpers for backups: chunking, hashing, compression and encryption.

Every helper takes an iterator of ``bytes`` and returns one, so a pipeline reads like the
shell one it replaces (``dump | zstd | sha256sum | upload``) and holds only a few chunks in
memory whatever the size of the data::

    stored = store.put_stream(key, compress(dump_chunks, "zstd"))  # hashes what it stores
    plain = decompress(store.get_stream(key, expected_sha256=stored.sha256), "zstd")

Corrupt, truncated or tampered input raises ``PermanentError`` (retrying cannot fix it).

zstd comes from ``compression.zstd`` (standard library from Python 3.14; ``backports.zstd``
before): unlike the streaming decompressors of ``zstandard`` it caps the output of each call
and reports where a frame ends, so decompressed chunks stay small even at ratios of 1000:1 and
a truncated stream is an error instead of silently shorter data. The output is standard zstd
with content checksums (``zstd -d`` and ``zstandard`` read it).

Encrypted format (``encrypt``/``decrypt``, AES-256-GCM, for configuration exports)::

    header  = b"OPSFLOWENC" | version (1 byte) | frame size (4 bytes BE) | nonce prefix (7 bytes)
    frame   = last flag (1 byte) | ciphertext length (4 bytes BE) | ciphertext + 16-byte tag
    nonce   = nonce prefix | frame counter (4 bytes BE) | last flag (1 byte)
    AAD     = header | frame header

Each frame is sealed on its own, so decryption streams; the counter in the nonce detects
reordered or dropped frames, the last flag detects truncation, and the header is bound to every
frame through the AAD. A fresh random nonce prefix per stream keeps nonces unique per key.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from opsflow.catalog import Codec
from opsflow.errors import InputError, PermanentError
from opsflow.secrets import resolve

try:  # the standard library's module from Python 3.14 on, the same code before
    from compression import zstd  # type: ignore[import-not-found, unused-ignore]
except ImportError:
    from backports import zstd  # type: ignore[no-redef, unused-ignore]

CHUNK_SIZE = 1 << 20  # 1 MiB

CODECS: tuple[Codec, ...] = ("zstd", "gzip", "none")
EXTENSIONS: dict[Codec, str] = {"zstd": ".zst", "gzip": ".gz", "none": ""}
ENCRYPTED_EXTENSION = ".enc"
DEFAULT_LEVELS: dict[Codec, int] = {"zstd": 3, "gzip": 6, "none": 0}
_P = zstd.CompressionParameter


# --- chunking and hashing -------------------------------------------------------------------


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def iter_file(fileobj: Readable, chunk_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Read a binary file-like object (file, pipe, socket file) in chunks until EOF."""
    while chunk := fileobj.read(chunk_size):
        yield bytes(chunk)


def rechunk(chunks: Iterable[bytes], size: int) -> Iterator[bytes]:
    """Regroup chunks into pieces of exactly ``size`` bytes (the last one may be shorter)."""
    if size <= 0:
        raise ValueError("size must be positive")
    buffer = bytearray()
    for chunk in chunks:
        buffer += chunk
        if len(buffer) >= size:
            view = memoryview(buffer)
            whole = len(buffer) - len(buffer) % size
            for start in range(0, whole, size):
                yield bytes(view[start : start + size])
            rest = bytes(view[whole:])
            view.release()
            buffer = bytearray(rest)
    if buffer:
        yield bytes(buffer)


class Counted(Iterator[bytes]):
    """Pass chunks through, counting their bytes (and telling ``progress`` each chunk's size)."""

    def __init__(
        self, chunks: Iterable[bytes], progress: Callable[[int], None] | None = None
    ) -> None:
        self._chunks = iter(chunks)
        self.size = 0
        self._progress = progress

    def __iter__(self) -> Counted:
        return self

    def __next__(self) -> bytes:
        chunk = next(self._chunks)
        self.size += len(chunk)
        if self._progress is not None:
            self._progress(len(chunk))
        return chunk


class Hashed(Iterator[bytes]):
    """Pass chunks through while computing their sha256 and size.

    After the stream is exhausted, ``sha256`` (hex) and ``size`` describe every byte that went
    through. With ``expected_sha256`` the end of the stream raises ``PermanentError`` when the
    digest differs, after every chunk was yielded: a consumer writing into a scratch target
    learns about corruption before it swaps the target in.
    """

    def __init__(
        self,
        chunks: Iterable[bytes],
        expected_sha256: str | None = None,
        what: str = "stream",
    ) -> None:
        self._chunks = iter(chunks)
        self._hash = hashlib.sha256()
        self._expected = expected_sha256.lower() if expected_sha256 else None
        self._what = what
        self.size = 0
        self.done = False

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def __iter__(self) -> Hashed:
        return self

    def __next__(self) -> bytes:
        try:
            chunk = next(self._chunks)
        except StopIteration:
            if not self.done:
                self.done = True
                self._verify()
            raise
        self._hash.update(chunk)
        self.size += len(chunk)
        return chunk

    def _verify(self) -> None:
        if self._expected is not None and self.sha256 != self._expected:
            raise PermanentError(
                f"{self._what} is corrupt: sha256 {self.sha256} does not match the expected "
                f"{self._expected} ({self.size} bytes read); do not use it, restore from "
                "another backup"
            )


# --- compression ----------------------------------------------------------------------------


def compress(
    chunks: Iterable[bytes], codec: Codec = "zstd", level: int | None = None, threads: int = 0
) -> Iterator[bytes]:
    """Compress a stream. zstd frames carry a content checksum, gzip output is one member.

    ``threads`` > 0 lets zstd compress on that many extra threads (0: in the calling thread).
    """
    level = DEFAULT_LEVELS[_codec(codec)] if level is None else level
    if codec == "none":
        yield from chunks
        return
    if codec == "zstd":
        zobj = zstd.ZstdCompressor(
            options={_P.compression_level: level, _P.checksum_flag: 1, _P.nb_workers: threads}
        )
        for chunk in chunks:
            if out := zobj.compress(chunk):
                yield out
        yield zobj.flush()
        return
    gobj = zlib.compressobj(level, zlib.DEFLATED, 31)  # wbits 31: gzip container
    for chunk in chunks:
        if out := gobj.compress(chunk):
            yield out
    yield gobj.flush()


def decompress(
    chunks: Iterable[bytes], codec: Codec = "zstd", chunk_size: int = CHUNK_SIZE
) -> Iterator[bytes]:
    """Decompress a stream; truncated or corrupt input raises ``PermanentError``."""
    if _codec(codec) == "none":
        yield from chunks
    elif codec == "zstd":
        yield from _unzstd(chunks, chunk_size)
    else:
        yield from _gunzip(chunks, chunk_size)


def _unzstd(chunks: Iterable[bytes], chunk_size: int) -> Iterator[bytes]:
    return _frames(chunks, chunk_size, zstd.ZstdDecompressor, zstd.ZstdError, "zstd", "frame")


def _gunzip(chunks: Iterable[bytes], chunk_size: int) -> Iterator[bytes]:
    return _frames(chunks, chunk_size, lambda: zlib.decompressobj(31), zlib.error, "gzip", "member")


def _frames(
    chunks: Iterable[bytes],
    chunk_size: int,
    decoder: Callable[[], Any],
    error: type[Exception],
    name: str,
    unit: str,
) -> Iterator[bytes]:
    """Decompress a stream of concatenated frames (``zstd -c a b``, ``cat a.gz b.gz``) with at
    most ``chunk_size`` bytes out per step; an empty, corrupt or truncated stream is an error."""
    dobj = decoder()
    started = in_frame = False
    for chunk in chunks:
        data = chunk
        while True:
            if data:
                started = in_frame = True
            try:
                out = dobj.decompress(data, chunk_size)
            except error as exc:
                raise PermanentError(f"{name} stream is corrupt: {exc}") from exc
            if out:
                yield out
            if dobj.eof:  # a frame ended; what follows is the next frame
                data, dobj, in_frame = dobj.unused_data, decoder(), False
                if not data:
                    break
            elif getattr(dobj, "unconsumed_tail", b""):  # zlib keeps unread input here
                data = dobj.unconsumed_tail
            elif getattr(dobj, "needs_input", len(out) < chunk_size):
                break
            else:  # output was cut at chunk_size: collect the rest before reading on
                data = b""
    if not started:
        raise PermanentError(f"{name} stream is empty: expected at least one {unit}")
    if in_frame:
        raise PermanentError(f"{name} stream is truncated: it ends in the middle of a {unit}")


def _codec(codec: str) -> Codec:
    if codec not in CODECS:
        raise InputError("compression", f"unknown codec {codec!r}", f"use one of {CODECS}")
    return cast(Codec, codec)


# --- encryption -----------------------------------------------------------------------------

MAGIC = b"OPSFLOWENC"
VERSION = 1
_HEADER = struct.Struct(f">{len(MAGIC)}sBI7s")
_FRAME = struct.Struct(">BI")
_TAG = 16
MAX_FRAME = 16 << 20


def load_key(text: str, field: str = "encryption_key") -> bytes:
    """A 32-byte AES key written as hex or base64 (standard or URL-safe alphabet).

    The key itself never appears in the error.
    """
    value = text.strip()
    if re.fullmatch(r"[0-9a-fA-F]{64}", value):
        return bytes.fromhex(value)
    if re.fullmatch(r"[A-Za-z0-9+/_-]{43}=?", value):
        urlsafe = value.rstrip("=").replace("+", "-").replace("/", "_") + "="
        return base64.urlsafe_b64decode(urlsafe)
    raise InputError(
        field,
        "is not a 32-byte key written as base64 or hex",
        'generate one with `python -c "import os,base64; print(base64.b64encode(os.urandom(32))'
        '.decode())"` and store it in the referenced secret',
    )


def resolve_key(reference: str, field: str) -> bytes:
    """Resolve an ``env:``/``secret:`` reference to a key (the value is registered for redaction).

    ``field`` names the inventory field in errors, e.g.
    ``environments.prod.backup_store.encryption_key``.
    """
    return load_key(resolve(reference, field=field), field=field)


def encrypt(chunks: Iterable[bytes], key: bytes, frame_size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """Encrypt a stream with AES-256-GCM in independently sealed frames (see module doc)."""
    if len(key) != 32:
        raise InputError("encryption_key", "must be 32 bytes", "use a 256-bit key")
    if not 0 < frame_size <= MAX_FRAME:
        raise ValueError(f"frame_size must be in 1..{MAX_FRAME}")
    aead = AESGCM(key)
    header = _HEADER.pack(MAGIC, VERSION, frame_size, os.urandom(7))
    prefix = header[-7:]
    yield header
    frames = rechunk(chunks, frame_size)
    current = next(frames, b"")
    counter = 0
    while True:
        following = next(frames, None)
        last = following is None
        frame_header = _FRAME.pack(int(last), len(current) + _TAG)
        nonce = prefix + struct.pack(">IB", counter, int(last))
        yield frame_header + aead.encrypt(nonce, current, header + frame_header)
        if following is None:
            return
        current, counter = following, counter + 1
        if counter >= 1 << 32:
            raise PermanentError("stream too long to encrypt (2^32 frames)")


def decrypt(chunks: Iterable[bytes], key: bytes) -> Iterator[bytes]:
    """Decrypt and authenticate a stream made by ``encrypt``, frame by frame.

    A wrong key, a modified/reordered/dropped frame, truncation or trailing bytes raise
    ``PermanentError``. Plaintext is yielded only after its frame authenticated.
    """
    aead = AESGCM(key)
    reader = _Reader(chunks)
    header = reader.exact(_HEADER.size, "header")
    magic, version, frame_size, prefix = _HEADER.unpack(header)
    if magic != MAGIC:
        raise PermanentError("not an opsflow encrypted stream (bad magic bytes)")
    if version != VERSION:
        raise PermanentError(f"unsupported encrypted stream version {version}")
    if not 0 < frame_size <= MAX_FRAME:
        raise PermanentError("encrypted stream header is corrupt (frame size)")
    counter = 0
    while True:
        frame_header = reader.exact(_FRAME.size, f"frame {counter}")
        flag, length = _FRAME.unpack(frame_header)
        if flag not in (0, 1) or not _TAG <= length <= frame_size + _TAG:
            raise PermanentError(f"encrypted stream is corrupt (frame {counter} header)")
        sealed = reader.exact(length, f"frame {counter}")
        nonce = prefix + struct.pack(">IB", counter, flag)
        try:
            plain = aead.decrypt(nonce, sealed, header + frame_header)
        except InvalidTag:
            raise PermanentError(
                f"encrypted stream failed authentication at frame {counter}: wrong key or "
                "tampered data; do not use it"
            ) from None
        if plain:
            yield plain
        if flag == 1:
            break
        counter += 1
    if not reader.at_end():
        raise PermanentError("encrypted stream has unexpected bytes after its last frame")


class _Reader:
    """Exact-size reads over an iterator of chunks."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = bytearray()

    def exact(self, size: int, what: str) -> bytes:
        while len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                raise PermanentError(f"encrypted stream is truncated (in {what})")
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def at_end(self) -> bool:
        if self._buffer:
            return False
        return all(not chunk for chunk in self._chunks)
