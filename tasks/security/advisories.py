"""``load_advisories``: the inventory's OSV advisory source (``security.advisories``) read
into an ``opsflow.osv.AdvisoryIndex`` for the package checks.

A ``path`` is a directory searched recursively for ``*.json`` files (osv.dev's ecosystem
exports, unpacked); a ``url`` is one HTTP(S) document, fetched with the source's ``headers``
(``env:`` / ``secret:`` references resolved here) and ``timeout`` (each network wait; the
whole download also has ``DOWNLOAD_DEADLINE_S``), redirects not followed. Either way a
document holds one record, a list of records or ``{"vulns": [...]}``, at most
``MAX_DOCUMENT_BYTES``.

Anything that keeps the source from being read whole (a missing directory, a file that is
not JSON, a record that is not OSV, a 4xx, a document over the size bound, no record at all)
is a ``PermanentError`` "advisory source unusable: <file or url>: <why>" — the checks never
match packages against part of a source. Network trouble and 5xx/429 answers are a
``TransientError`` (retried).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from opsflow.errors import PermanentError, TransientError
from opsflow.inventory.security import AdvisorySource
from opsflow.osv import AdvisoryError, AdvisoryIndex
from opsflow.redaction import redact
from opsflow.secrets import resolve
from tasks.http.client import tls_verify
from tasks.policy import api_task

MAX_DOCUMENT_BYTES = 128 * 1024 * 1024
DOWNLOAD_DEADLINE_S = 300.0


def unusable(where: str, why: str) -> PermanentError:
    return PermanentError(redact(f"advisory source unusable: {where}: {why}"))


def records_of(document: Any, where: str) -> Iterator[tuple[str, Any]]:
    """The records of one document, each with where it came from (``file[3]``)."""
    if isinstance(document, dict) and isinstance(document.get("vulns"), list):
        document = document["vulns"]
    if isinstance(document, list):
        for i, record in enumerate(document):
            yield f"{where}[{i}]", record
    elif isinstance(document, dict):
        yield where, document
    else:
        raise unusable(where, "is neither an OSV record, a list of records nor {vulns: [...]}")


def _parse(data: bytes, where: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise unusable(where, f"is not JSON ({exc})") from None


def _directory_records(root: Path) -> Iterator[tuple[str, Any]]:
    if not root.is_dir():
        raise unusable(
            str(root),
            "is not a directory (fix: sync OSV records there or correct security.advisories.path)",
        )
    files = sorted(root.rglob("*.json"))
    if not files:
        raise unusable(str(root), "holds no *.json file (fix: unpack osv.dev's exports there)")
    for file in files:
        try:
            if file.stat().st_size > MAX_DOCUMENT_BYTES:
                raise unusable(str(file), f"is larger than {MAX_DOCUMENT_BYTES} bytes")
            data = file.read_bytes()
        except OSError as exc:
            raise unusable(str(file), f"cannot be read ({exc.strerror or exc})") from None
        yield from records_of(_parse(data, str(file)), str(file))


def _download(source: AdvisorySource) -> bytes:
    assert source.url is not None
    url = resolve(source.url, "security.advisories.url")
    headers = {k: resolve(v, f"security.advisories.headers.{k}") for k, v in source.headers.items()}
    seconds = source.timeout.total_seconds()
    deadline = time.monotonic() + DOWNLOAD_DEADLINE_S
    body = bytearray()
    try:
        with (
            httpx.Client(verify=tls_verify(True, None), timeout=seconds) as client,
            client.stream("GET", url, headers=headers) as response,
        ):
            if response.status_code >= 500 or response.status_code == 429:
                raise TransientError(redact(f"{url} answered {response.status_code}"))
            if response.status_code != 200:
                raise unusable(
                    url,
                    f"answered HTTP {response.status_code} (fix: check the URL "
                    "and security.advisories.headers)",
                )
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise unusable(url, f"is larger than {MAX_DOCUMENT_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise TransientError(
                        redact(f"{url}: download took over {DOWNLOAD_DEADLINE_S:g}s")
                    )
    except httpx.TimeoutException:
        raise TransientError(redact(f"{url} did not answer within {seconds:g}s")) from None
    except httpx.TransportError as exc:
        raise TransientError(redact(f"cannot fetch {url}: {exc}")) from None
    return bytes(body)


def read_advisories(source: AdvisorySource) -> AdvisoryIndex:
    """The index of every record of ``source`` (``load_advisories`` without the task)."""
    if source.path is not None:
        name, records = source.path, _directory_records(Path(source.path))
    else:
        assert source.url is not None
        name = source.url
        records = records_of(_parse(_download(source), name), name)
    try:
        return AdvisoryIndex.from_records(records, name)
    except AdvisoryError as exc:
        raise unusable(exc.where, exc.problem) from None


@api_task("load_advisories", timeout_seconds=600)
def load_advisories(source: AdvisorySource) -> AdvisoryIndex:
    """The OSV advisories of ``security.advisories``, indexed for the package checks;
    ``PermanentError`` ("advisory source unusable: ...") when the source does not parse."""
    return read_advisories(source)
