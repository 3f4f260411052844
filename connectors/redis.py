"""Redis access below the tasks: error translation and the RDB snapshot stream."""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.connection import SSLConnection, parse_url
from redis.exceptions import (
    AuthenticationWrongNumberOfArgsError,
    AuthorizationError,
    NoPermissionError,
)
from redis.retry import Retry

from opsflow.errors import (
    OpsflowError,
    PermanentError,
    TransientError,
)
from opsflow.redaction import redact

SOCKET_TIMEOUT_S = 5.0

AUTH_ERRORS = (
    redis.AuthenticationError,
    AuthenticationWrongNumberOfArgsError,
    AuthorizationError,
    NoPermissionError,
)


def redis_client(url: str, field: str) -> redis.Redis:
    """A client for ``url`` with socket timeouts and no retries of its own (Prefect retries
    transient failures, not the client); a URL that cannot be parsed is a PermanentError."""
    try:
        return redis.Redis.from_url(
            url,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
            retry=Retry(NoBackoff(), 0),
        )
    except ValueError:
        raise PermanentError(
            f"{field}.url: the Redis URL cannot be parsed "
            "(fix: use redis://[:password@]host:port/db, rediss:// or unix://)"
        ) from None


def _where(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def _classify(exc: redis.RedisError, where: str, field: str) -> Exception:
    text = redact(str(exc))
    if isinstance(exc, AUTH_ERRORS) or any(
        marker in text for marker in ("NOAUTH", "WRONGPASS", "NOPERM", "invalid password")
    ):
        return PermanentError(
            f"{where}: Redis refused the credentials: {text} (fix: check the password in the "
            f"secret referenced by {field}.url, redis://:PASSWORD@host:port/db)"
        )
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return TransientError(
            f"{where}: cannot reach Redis: {text} (fix: check that the server is running and "
            "reachable from this worker)"
        )
    if isinstance(exc, redis.ResponseError) and "LOADING" in text:
        return TransientError(f"{where}: Redis is loading its dataset: {text}")
    return PermanentError(f"{where}: {text}")


# --- RDB snapshot (backup) ---------------------------------------------------------------------
#
# ``dump_redis`` asks the server for a snapshot the way a replica does: AUTH, ``REPLCONF capa
# eof`` (diskless transfer welcome), ``REPLCONF rdb-only 1`` (Redis 7+: the snapshot only, no
# replication stream after it), ``SYNC``. The server answers with ``$EOF:<40-byte mark>`` (a
# diskless stream that ends with the mark) or ``$<length>`` (a file of that size), preceded by
# newlines while it prepares. ``redis-cli --rdb -`` does the same, but Redis 7.0's copy leaves
# the 40-byte EOF mark at the end of stdout, so we speak the protocol ourselves.

RDB_TIMEOUT_S = 6 * 3600
RDB_IDLE_TIMEOUT_S = 120.0
RDB_MAGIC = b"REDIS"
_RDB_EOF_OPCODE = 0xFF
_RDB_TAIL = 9  # EOF opcode + CRC64
_EOF_MARK_LEN = 40
_RECV_SIZE = 1 << 20
_MAX_LINE = 4096
_AUTH_MARKERS = ("NOAUTH", "WRONGPASS", "NOPERM", "invalid password", "invalid username")
_BUSY_MARKERS = ("LOADING", "MASTERDOWN", "BUSY", "Background save", "BGSAVE", "fork")


def _resp_command(*args: str | bytes) -> bytes:
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _reply_error(reply: str, where: str, field: str) -> OpsflowError:
    text = redact(reply.lstrip("-").strip())
    if any(marker in text for marker in _AUTH_MARKERS):
        return PermanentError(
            f"{where}: Redis refused the snapshot: {text} (fix: check the password in the secret "
            f"referenced by {field}.url; an ACL user needs +sync/+psync and +replconf)"
        )
    if any(marker in text for marker in _BUSY_MARKERS):
        return TransientError(f"{where}: Redis cannot take a snapshot right now: {text}")
    return PermanentError(f"{where}: Redis refused the snapshot: {text}")


class _SyncConnection:
    """A raw connection speaking just enough RESP for AUTH, REPLCONF and SYNC."""

    def __init__(self, url: str, where: str, field: str, idle_timeout: float) -> None:
        self.where, self.field = where, field
        self.received = 0
        self._buffer = bytearray()
        options: dict[str, Any] = parse_url(url)
        sock: socket.socket | None = None
        try:
            if "path" in options:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(SOCKET_TIMEOUT_S)
                sock.connect(options["path"])
            else:
                address = (options.get("host", "localhost"), int(options.get("port", 6379)))
                sock = socket.create_connection(address, timeout=SOCKET_TIMEOUT_S)
            if options.get("connection_class") is SSLConnection:
                context = ssl.create_default_context(cafile=options.get("ssl_ca_certs"))
                if str(options.get("ssl_cert_reqs", "required")).lower() == "none":
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                sock = context.wrap_socket(sock, server_hostname=options.get("host"))
        except ssl.SSLCertVerificationError as exc:
            if sock is not None:
                sock.close()
            raise PermanentError(
                redact(
                    f"{where}: the server's TLS certificate is not trusted: {exc.verify_message} "
                    f"(fix: add ?ssl_ca_certs=/path/to/ca.pem to {field}.url)"
                )
            ) from None
        except OSError as exc:
            if sock is not None:
                sock.close()
            raise TransientError(
                redact(f"{where}: cannot reach Redis for a snapshot: {exc}")
            ) from None
        sock.settimeout(idle_timeout)
        self.sock = sock
        self.username: str | None = options.get("username")
        self.password: str | None = options.get("password")

    def close(self) -> None:
        self.sock.close()

    def _recv(self) -> bytes:
        try:
            data = self.sock.recv(_RECV_SIZE)
        except TimeoutError:
            raise TransientError(
                f"{self.where}: no data from Redis for {self.sock.gettimeout():g}s during the "
                f"snapshot ({self.received} bytes received); nothing was stored"
            ) from None
        except OSError as exc:
            raise TransientError(
                redact(f"{self.where}: connection lost during the snapshot: {exc}")
            ) from None
        self.received += len(data)
        return data

    def _ended(self) -> TransientError:
        return TransientError(
            f"{self.where}: Redis closed the connection before the snapshot ended "
            f"({self.received} bytes received); nothing was stored (fix: check the server log "
            "for a failed background save, e.g. out of memory or disk)"
        )

    def line(self) -> str:
        while b"\n" not in self._buffer:
            if len(self._buffer) > _MAX_LINE:
                raise PermanentError(f"{self.where}: unexpected answer to a replication command")
            data = self._recv()
            if not data:
                raise self._ended()
            self._buffer += data
        end = self._buffer.index(b"\n")
        text = bytes(self._buffer[:end]).decode("utf-8", errors="replace").rstrip("\r")
        del self._buffer[: end + 1]
        return text

    def send(self, *args: str) -> None:
        try:
            self.sock.sendall(_resp_command(*args))
        except OSError as exc:
            raise TransientError(
                redact(f"{self.where}: connection lost before the snapshot started: {exc}")
            ) from None

    def command(self, *args: str, optional: bool = False) -> None:
        """Send a command that answers +OK; an error reply raises (or is ignored: ``optional``)."""
        self.send(*args)
        reply = self.line()
        if reply.startswith("-") and not optional:
            raise _reply_error(reply, self.where, self.field)

    def snapshot(self) -> Iterator[bytes]:
        """AUTH, REPLCONF, SYNC; then yield the RDB payload (without any framing)."""
        if self.password:
            auth = [self.username, self.password] if self.username else [self.password]
            self.command("AUTH", *auth)
        self.command("REPLCONF", "capa", "eof")
        self.command("REPLCONF", "rdb-only", "1", optional=True)  # before Redis 7: unknown
        self.send("SYNC")
        header = ""
        while not header:  # newlines keep the link alive while the server prepares
            header = self.line()
        if header.startswith("-"):
            raise _reply_error(header, self.where, self.field)
        if header.startswith("$EOF:") and len(header) == 5 + _EOF_MARK_LEN:
            yield from self._until_mark(header[5:].encode())
        elif header.startswith("$") and header[1:].isdigit():
            yield from self._exactly(int(header[1:]))
        else:
            raise PermanentError(f"{self.where}: unexpected answer to SYNC: {redact(header[:80])}")

    def _exactly(self, size: int) -> Iterator[bytes]:
        left = size
        pending = bytes(self._buffer)
        self._buffer.clear()
        while left > 0:
            if not pending:
                pending = self._recv()
                if not pending:
                    raise self._ended()
            piece, pending = pending[:left], pending[left:]
            left -= len(piece)
            yield piece

    def _until_mark(self, mark: bytes) -> Iterator[bytes]:
        pending = bytes(self._buffer)
        self._buffer.clear()
        while True:
            found = pending.find(mark)
            if found >= 0:
                if found:
                    yield pending[:found]
                return
            if len(pending) > _EOF_MARK_LEN:
                cut = len(pending) - _EOF_MARK_LEN  # the mark may straddle two reads
                yield pending[:cut]
                pending = pending[cut:]
            data = self._recv()
            if not data:
                raise self._ended()
            pending += data


def _checked_rdb(chunks: Iterable[bytes], where: str) -> Iterator[bytes]:
    """Pass an RDB stream through; raise PermanentError if it does not look like a whole RDB."""
    head = b""
    tail = b""
    for chunk in chunks:
        if len(head) < len(RDB_MAGIC):
            head += chunk[: len(RDB_MAGIC) - len(head)]
            if len(head) == len(RDB_MAGIC) and head != RDB_MAGIC:
                raise PermanentError(f"{where}: the snapshot is not an RDB file (bad magic)")
        tail = (tail + chunk)[-_RDB_TAIL:]
        yield chunk
    if head != RDB_MAGIC or len(tail) < _RDB_TAIL or tail[0] != _RDB_EOF_OPCODE:
        raise PermanentError(
            f"{where}: the snapshot is incomplete (no RDB end marker); nothing was stored"
        )


def rdb_stream(
    url: str,
    where: str,
    field: str,
    idle_timeout: float = RDB_IDLE_TIMEOUT_S,
    timeout: float = RDB_TIMEOUT_S,
) -> Iterator[bytes]:
    """Yield an RDB snapshot of the server at ``url`` (SYNC), checked for magic and end marker.

    More than ``idle_timeout`` seconds without data, or ``timeout`` in total, raise
    ``TransientError``; errors come after the chunks already yielded, so a consumer must treat
    what it got as incomplete when this raises. Closing the generator closes the connection.
    """
    deadline = time.monotonic() + timeout
    conn = _SyncConnection(url, where, field, idle_timeout)
    try:
        for chunk in _checked_rdb(conn.snapshot(), where):
            if time.monotonic() > deadline:
                raise TransientError(
                    f"{where}: the snapshot took longer than {timeout:g}s; nothing was stored"
                )
            yield chunk
    finally:
        conn.close()
