"""Local directory backup store (``file://``): temp file + fsync, published with ``link``.

A write goes to a hidden temp file next to its key, is fsynced, and is published by a hard
link to the key's name, which fails when the name exists: an object is never replaced, and
two writers racing for one key cannot both win. The checksum file ``<key>.sha256`` is published
the same way just before the object (see ``connectors.stores.base`` for the order), then the
directory is fsynced. On a file system without hard links a rename after an existence check is
used instead (best effort: two writers of one key at the same instant could still race; keys
are unique by construction, so they do not).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import os
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from connectors.stores.base import (
    SHA256_SUFFIX,
    KeyExists,
    Progress,
    Store,
    StoredObject,
    check_key,
    parse_sidecar,
    sidecar_text,
)
from connectors.streams import CHUNK_SIZE, Hashed, iter_file
from opsflow.errors import OpsflowError, PermanentError, TransientError, is_transient

TEMP_SUFFIX = ".tmp"
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_NO_ACCESS = {errno.EACCES, errno.EPERM, errno.EROFS}
_NO_LINKS = {errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP}  # file systems without hard links


class LocalStore(Store):
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = root.as_uri()

    # --- writing --------------------------------------------------------------------------

    def put_stream(
        self, key: str, chunks: Iterable[bytes], *, progress: Progress | None = None
    ) -> StoredObject:
        path = self._path(key)
        with _os_errors("create the directory of", path):
            path.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(path):  # before reading the stream: refuse early, cheaply
            raise _exists(self.url, key)
        temp = _temp_name(path)
        sidecar = _sidecar(path)
        hashed = Hashed(chunks)
        published: list[Path] = []
        try:
            with _os_errors("create", temp):
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            _write_all(os.fdopen(fd, "wb"), temp, hashed, progress)
            # the checksum file first, then the object: once visible, its sha256 is known
            _publish(_write_temp(sidecar, sidecar_text(hashed.sha256, key)), sidecar, self.url, key)
            published.append(sidecar)
            _publish(temp, path, self.url, key)
            published.append(path)
            with _os_errors("sync the directory of", path):
                _fsync_dir(path.parent)
        except BaseException:
            temp.unlink(missing_ok=True)
            for name in reversed(published):  # only what this write created
                name.unlink(missing_ok=True)
            raise
        stat = path.stat()
        return self._object(key, path, stat.st_size, hashed.sha256, stat.st_mtime)

    def delete(self, key: str) -> None:
        path = self._path(key)
        with _os_errors("delete", path):
            path.unlink(missing_ok=True)
            _sidecar(path).unlink(missing_ok=True)
            if path.parent.is_dir():
                _fsync_dir(path.parent)

    def cleanup_incomplete(
        self, older_than: timedelta = timedelta(days=1), prefix: str = ""
    ) -> builtins.list[str]:
        limit = datetime.now(UTC).timestamp() - older_than.total_seconds()
        removed: builtins.list[str] = []
        for directory, _dirs, files in os.walk(self._start(prefix)):
            for name in files:
                temp = Path(directory, name)
                if name.startswith(".") and name.endswith(TEMP_SUFFIX):
                    if not temp.relative_to(self.root).as_posix().startswith(prefix):
                        continue
                    try:
                        stale = temp.stat().st_mtime < limit
                    except FileNotFoundError:  # finished or removed meanwhile
                        continue
                    if stale:
                        temp.unlink(missing_ok=True)
                        removed.append(str(temp))
        return removed

    # --- reading --------------------------------------------------------------------------

    def get_stream(
        self, key: str, *, expected_sha256: str | None = None, chunk_size: int = CHUNK_SIZE
    ) -> Iterator[bytes]:
        path = self._path(key)
        stored = self._stored_sha256(path)
        want = _want_sha256(f"{self.url}/{key}", expected_sha256, stored)
        try:
            fileobj = path.open("rb")
        except FileNotFoundError:
            raise PermanentError(f"backup {self.url}/{key} does not exist") from None
        except OSError as exc:
            raise _os_error(exc, "open", path) from exc
        return _read(fileobj, Hashed(iter_file(fileobj, chunk_size), want, f"{self.url}/{key}"))

    def head(self, key: str) -> StoredObject | None:
        path = self._path(key)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _os_error(exc, "stat", path) from exc
        return self._object(key, path, stat.st_size, self._stored_sha256(path), stat.st_mtime)

    def list(self, prefix: str = "") -> builtins.list[StoredObject]:
        found: builtins.list[StoredObject] = []
        for directory, dirs, files in os.walk(self._start(prefix)):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if name.startswith(".") or name.endswith(SHA256_SUFFIX):
                    continue
                path = Path(directory, name)
                key = path.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                try:
                    stat = path.stat()
                except FileNotFoundError:  # deleted while listing
                    continue
                sha = self._stored_sha256(path)
                found.append(self._object(key, path, stat.st_size, sha, stat.st_mtime))
        return sorted(found, key=lambda o: o.key)

    # --- helpers --------------------------------------------------------------------------

    def _start(self, prefix: str) -> Path:
        """The deepest directory holding every key that starts with ``prefix``."""
        return self.root / prefix.rsplit("/", 1)[0] if "/" in prefix else self.root

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _stored_sha256(self, path: Path) -> str | None:
        try:
            return parse_sidecar(_sidecar(path).read_bytes())
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _os_error(exc, "read", _sidecar(path)) from exc

    def _object(
        self, key: str, path: Path, size: int, sha256: str | None, mtime: float
    ) -> StoredObject:
        return StoredObject(
            key=key,
            size=size,
            sha256=sha256,
            last_modified=datetime.fromtimestamp(mtime, UTC),
            url=path.as_uri(),
        )


def _read(fileobj: BinaryIO, chunks: Iterator[bytes]) -> Iterator[bytes]:
    with fileobj:
        yield from chunks


def _want_sha256(where: str, expected: str | None, stored: str | None) -> str | None:
    """The digest a read must match; refuses early when the caller and the store disagree."""
    if expected and stored and expected.lower() != stored:
        raise PermanentError(
            f"{where} is not the expected backup: its stored sha256 {stored} differs from the "
            f"expected {expected.lower()}; nothing was read"
        )
    return expected or stored


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + SHA256_SUFFIX)


def _temp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{uuid.uuid4().hex}{TEMP_SUFFIX}")


def _write_all(
    out: BinaryIO, temp: Path, chunks: Iterable[bytes], progress: Progress | None
) -> None:
    """Write, flush, fsync and close ``out``; store errors are classified, the producer's
    propagate unchanged. A close that fails again after an error (a full disk flushing the
    rest of the buffer) does not hide the first error."""
    try:
        for chunk in chunks:  # exceptions of the producer propagate unchanged
            with _os_errors("write", temp):
                out.write(chunk)
            if progress is not None:
                progress(len(chunk))
        with _os_errors("flush", temp):
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            out.close()
        raise
    with _os_errors("close", temp):
        out.close()


def _write_temp(path: Path, data: bytes) -> Path:
    """``data`` in a fsynced hidden temp file next to ``path``; returns the temp file."""
    temp = _temp_name(path)
    try:
        with _os_errors("write", temp):
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        _write_all(os.fdopen(fd, "wb"), temp, [data], None)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def _publish(temp: Path, path: Path, url: str, key: str) -> None:
    """Give ``temp`` the name ``path`` unless that name exists (then ``KeyExists``); the temp
    name is gone afterwards either way."""
    try:
        try:
            os.link(temp, path)
        except FileExistsError:
            raise _exists(url, key) from None
        except OSError as exc:
            if exc.errno not in _NO_LINKS:
                raise _os_error(exc, "publish", path) from exc
            if os.path.lexists(path):  # best effort where hard links are not supported
                raise _exists(url, key) from None
            with _os_errors("rename into place", path):
                os.rename(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def _exists(url: str, key: str) -> KeyExists:
    return KeyExists(
        f"{url}/{key} already exists: a stored backup is never replaced (fix: take the backup "
        "again, it gets a new key; keys from choose_key are unique)"
    )


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _os_errors(action: str, path: Path) -> Iterator[None]:
    """Turn an ``OSError`` of the store into a classified, operator-facing error."""
    try:
        yield
    except OSError as exc:
        raise _os_error(exc, action, path) from exc


def _os_error(exc: OSError, action: str, path: Path) -> OpsflowError:
    reason = exc.strerror or str(exc)
    if exc.errno in _NO_SPACE:
        return PermanentError(
            f"cannot {action} {path}: {reason} (fix: free space on that disk or lower "
            "retention_days)"
        )
    if exc.errno in _NO_ACCESS:
        return PermanentError(
            f"cannot {action} {path}: {reason} (fix: give the user running the flow write "
            "access to the backup directory)"
        )
    if is_transient(exc):
        return TransientError(f"cannot {action} {path}: {reason}")
    return PermanentError(f"cannot {action} {path}: {reason}")
