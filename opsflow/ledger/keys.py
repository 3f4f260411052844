"""The ledger's HMAC key, kept outside the database.

``OPSFLOW_LEDGER_KEY`` names it with a secret reference (``env:VAR`` or ``secret:NAME``,
resolved with ``opsflow.secrets``); unset, the key is the key file
(``OPSFLOW_LEDGER_KEY_FILE``, default ``$OPSFLOW_HOME/ledger.key``), created on first use
with mode 0600 and refused when group or others may read it. Either way the key is 32 (or
more) random bytes written as hex (``openssl rand -hex 32``). The key never appears in a
message, a log or the database: only its ``key_id`` does.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from opsflow.errors import InputError
from opsflow.ledger.chain import key_id
from opsflow.redaction import register_secret
from opsflow.secrets import resolve
from opsflow.settings import Settings

KEY_BYTES = 32
SETTING = "OPSFLOW_LEDGER_KEY"
FILE_SETTING = "OPSFLOW_LEDGER_KEY_FILE"
GENERATE = "openssl rand -hex 32"


@dataclass(frozen=True)
class LedgerKey:
    """A resolved key; ``source`` says where it came from (a reference or a file path)."""

    secret: bytes = field(repr=False)
    source: str

    @property
    def key_id(self) -> str:
        return key_id(self.secret)

    @classmethod
    def from_text(cls, text: str, source: str, field_name: str) -> LedgerKey:
        value = text.strip()
        try:
            secret = bytes.fromhex(value)
        except ValueError:
            secret = b""
        if len(secret) < KEY_BYTES:
            raise InputError(
                field_name,
                f"the ledger key from {source} is not {KEY_BYTES} or more bytes written as hex",
                f"put the output of `{GENERATE}` there",
            )
        register_secret(value)
        return cls(secret, source)


def load_key(settings: Settings, *, create: bool) -> LedgerKey:
    """The configured key; with ``create`` a missing key file is made (never otherwise)."""
    if settings.ledger_key:
        reference = settings.ledger_key.strip()  # a reference: the settings refuse a literal
        return LedgerKey.from_text(resolve(reference, SETTING), reference, SETTING)
    path = settings.resolved_ledger_key_file()
    if not path.exists():
        if not create:
            raise InputError(
                FILE_SETTING,
                f"there is no ledger key at {path}",
                f"copy the ledger's key file to {path} (mode 0600), or set {SETTING} to the "
                "secret reference the other processes use",
            )
        create_key_file(path)
    return read_key_file(path)


def read_key_file(path: Path) -> LedgerKey:
    try:
        info = path.stat()
    except OSError as exc:
        raise InputError(FILE_SETTING, f"cannot read {path}: {exc.strerror}", _fix(path)) from None
    if not stat.S_ISREG(info.st_mode):
        raise InputError(FILE_SETTING, f"{path} is not a file", _fix(path))
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o077:
        raise InputError(
            FILE_SETTING,
            f"{path} has mode {mode:04o}: other users may read the ledger key",
            f"chmod 600 {path} (and check who copied it), or keep the key elsewhere with "
            f"{SETTING}=secret:NAME",
        )
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(FILE_SETTING, f"cannot read {path}: {exc}", _fix(path)) from None
    return LedgerKey.from_text(text, str(path), FILE_SETTING)


def create_key_file(path: Path) -> None:
    """Write 32 random bytes (hex) to ``path`` with mode 0600, atomically: a concurrent
    process either sees no file or the whole key, and the first writer wins."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".ledger-key-", dir=path.parent)  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="ascii") as handle:
            handle.write(secrets.token_hex(KEY_BYTES) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another process made it first: use that
            os.link(tmp, path)
    finally:
        os.unlink(tmp)


def _fix(path: Path) -> str:
    return f"restore the key file {path} from where you keep its copy, or set {SETTING}"
