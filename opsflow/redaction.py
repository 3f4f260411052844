"""Keep secret values out of logs, artifacts, the ledger, exceptions and CLI output.

Every resolved secret value is registered here; ``redact`` replaces registered values and
any password embedded in a URL (``scheme://user:password@host``). A logging filter applies
the same to every record that goes through Prefect's or the root logger's handlers.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

MASK = "***"
_MIN_SECRET_LEN = 4
_lock = threading.Lock()
_secrets: set[str] = set()
_URL_PASSWORD = re.compile(r"(?P<prefix>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s/]+)@")
_KEY_VALUE = re.compile(
    r"(?P<key>\b(?:password|passwd|pwd|secret|token|api[_-]?key)\s*[=:]\s*)(?P<val>[^\s&;,'\"]+)",
    re.IGNORECASE,
)


def register_secret(value: str) -> None:
    """Remember a secret value so that it is masked wherever it shows up later."""
    if value and len(value) >= _MIN_SECRET_LEN:
        with _lock:
            _secrets.add(value)
            for part in _URL_PASSWORD.finditer(value):
                if len(part.group("pw")) >= _MIN_SECRET_LEN:
                    _secrets.add(part.group("pw"))


def redact(text: str) -> str:
    """Mask registered secrets, URL passwords and ``password=…`` pairs in ``text``."""
    if not text:
        return text
    with _lock:
        known = sorted(_secrets, key=len, reverse=True)
    for value in known:
        if value in text:
            text = text.replace(value, MASK)
    text = _URL_PASSWORD.sub(lambda m: f"{m.group('prefix')}{MASK}@", text)
    return _KEY_VALUE.sub(lambda m: f"{m.group('key')}{MASK}", text)


def redact_data(data: Any) -> Any:
    """Redact every string inside nested dicts/lists/tuples (for JSON going to ledger/reports)."""
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        return {k: redact_data(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return type(data)(redact_data(v) for v in data)
    return data


class RedactingFilter(logging.Filter):
    """Rewrites each record's message with secrets masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):
            message = str(record.msg)
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            if redact(str(exc)) != str(exc):
                record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
        return True


_FILTER = RedactingFilter()


def install_log_redaction() -> None:
    """Attach the redacting filter to the handlers Prefect and the root logger use (idempotent)."""
    for name in ("", "prefect", "prefect.flow_runs", "prefect.task_runs", "opsflow"):
        for handler in logging.getLogger(name).handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
