"""psql's restricted mode around a restore stream (the CVE-2025-8714 fix: psql 15.14, 16.10,
17.6 and later).

Verifying the object against the catalogued sha256 (``connectors.stores.objects.BackupStream``)
is what keeps a forged backup out; this is the second wall: even a stream that got through
cannot make psql run a shell command, read or write local files, or switch databases.
It does not stop SQL itself (``COPY ... TO PROGRAM`` as a superuser): the restore runs
``SET ROLE`` to the database's owner, and that owner should not be a superuser.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable, Iterator

_RESTRICT_LINE = re.compile(rb"^\\(?:un)?restrict[ \t]+[A-Za-z0-9]+[ \t]*\r?\n", re.M)
_HOLD = 512  # a line start this short that begins with a backslash may be such a line


def restricted(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """The SQL stream for psql with its restricted mode switched on before the first byte.

    ``\\restrict KEY`` (a fresh random key) comes first, so psql refuses every backslash command
    in the stream (``\\!``, ``\\connect``, ``\\i``, ``\\o`` ...) wherever it stands, and nothing
    in the stream can lift it without the key. A dump made by pg_dump >= 15.14 carries its own
    ``\\restrict``/``\\unrestrict`` pair, and psql refuses a second ``\\restrict``: lines that
    are exactly such a command are dropped (a line of COPY data never starts with a lone
    backslash, so no data is touched). Needs psql >= 15.14 (ENVIRONMENT.md).
    """
    yield b"\\restrict " + secrets.token_hex(24).encode() + b"\n"
    pending = b""  # the start of a line that may turn out to be a restrict line
    mid_line = False  # the last bytes handed on ended inside a line
    for chunk in chunks:
        if mid_line:
            newline = chunk.find(b"\n")
            if newline < 0:
                yield chunk
                continue
            yield chunk[: newline + 1]
            chunk, mid_line = chunk[newline + 1 :], False
        data = pending + chunk if pending else chunk
        cut = data.rfind(b"\n") + 1
        body, rest = data[:cut], data[cut:]
        if b"restrict" in body:
            body = _RESTRICT_LINE.sub(b"", body)
        if body:
            yield body
        pending = b""
        if rest.startswith(b"\\") and len(rest) < _HOLD:
            pending = rest
        elif rest:
            yield rest
            mid_line = True
    if pending and not _RESTRICT_LINE.fullmatch(pending + b"\n"):
        yield pending
