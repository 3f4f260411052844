"""Configuration export: Kubernetes ConfigMaps/Secrets, Docker container configs, the inventory.

The parts are collected by ``tasks.kubernetes.config.export_kubernetes_config``,
``tasks.docker.config.export_docker_config`` and ``export_inventory`` and handed to
``store_config_export``, which serialises them to one JSON document, encrypts it in memory
(AES-256-GCM, ``connectors.streams.encrypt``) with the key referenced by the environment's
``backup_store.encryption_key`` and stores only the ciphertext, at
``<env>/config/<YYYY>/<MM>/<stamp>.json.enc``. There is no unencrypted fallback: without a key
reference the export refuses to run.

The manifest next to it holds names and counts only (which ConfigMaps, Secrets and containers
the export holds), never a value. ``read_config_export`` decrypts and authenticates an export
(a wrong key or a modified object raise ``PermanentError``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from connectors.stores import open_store
from connectors.stores.base import manifest_key
from connectors.stores.objects import DumpResult, choose_key, manifest
from connectors.streams import decrypt, encrypt, resolve_key
from opsflow.backup_names import CONFIG_BACKUP_NAME
from opsflow.errors import InputError, PermanentError
from opsflow.inventory import BackupStore, inventory_path
from opsflow.redaction import redact_data
from tasks.policy import api_task

CONFIG_SERIES = CONFIG_BACKUP_NAME  # reserved in the inventory: no database may take it
CONFIG_EXTENSION = "json.enc"
EXPORT_FORMAT = 1
CIPHER = "AES-256-GCM (opsflow framed stream v1)"


def key_field(env_name: str) -> str:
    return f"environments.{env_name}.backup_store.encryption_key"


def encryption_key(env_name: str, encryption_key_ref: str | None) -> bytes:
    """Resolve the export key; a missing reference is an ``InputError`` saying how to add one."""
    field = key_field(env_name)
    if not encryption_key_ref:
        raise InputError(
            field,
            "is missing: configuration exports hold secrets and are stored only encrypted",
            'generate a key with `python -c "import os,base64; '
            'print(base64.b64encode(os.urandom(32)).decode())"`, keep it in a Prefect Secret '
            "block (or an environment variable) and set encryption_key: secret:NAME (or env:VAR) "
            "under backup_store",
        )
    return resolve_key(encryption_key_ref, field)


def export_inventory(path: str | Path | None = None) -> dict[str, Any]:
    """The inventory file as text (it holds secret references, never secret values)."""
    source = Path(path) if path is not None else inventory_path()
    try:
        data = source.read_bytes()
    except OSError as exc:
        raise PermanentError(
            f"cannot read the inventory {source} for the configuration export: {exc.strerror} "
            "(fix: set OPSFLOW_INVENTORY to its path)"
        ) from None
    return {
        "path": str(source.resolve()),
        "sha256": hashlib.sha256(data).hexdigest(),
        "text": data.decode("utf-8", errors="replace"),
    }


def _names(objects: Any) -> list[str]:
    if not isinstance(objects, list):
        return []
    return sorted(
        str((obj.get("metadata") or {}).get("name"))
        for obj in objects
        if isinstance(obj, dict) and isinstance(obj.get("metadata"), dict)
    )


def describe_parts(parts: Mapping[str, Any]) -> dict[str, Any]:
    """What an export holds, by name and count only: safe for the manifest and the ledger.

    Known parts: ``kubernetes`` (ConfigMap/Secret names, and the key names inside each),
    ``docker`` (service names, missing services), ``inventory`` (path and sha256). Other parts
    are described by their top-level key count.
    """
    described: dict[str, Any] = {}
    for name, part in sorted(parts.items()):
        if name == "kubernetes" and isinstance(part, dict):
            described[name] = {
                "namespace": part.get("namespace"),
                "configmaps": _names(part.get("configmaps")),
                "secrets": {
                    str((obj.get("metadata") or {}).get("name")): sorted(
                        [*(obj.get("data") or {}), *(obj.get("stringData") or {})]
                    )
                    for obj in part.get("secrets") or []
                    if isinstance(obj, dict)
                },
            }
        elif name == "docker" and isinstance(part, dict):
            described[name] = {
                "containers": sorted(part.get("containers") or {}),
                "missing": sorted(part.get("missing") or []),
            }
        elif name == "inventory" and isinstance(part, dict):
            described[name] = {"path": part.get("path"), "sha256": part.get("sha256")}
        else:
            described[name] = {"entries": len(part) if isinstance(part, dict | list) else 1}
    return described


def count_parts(parts: Mapping[str, Any]) -> dict[str, int]:
    """Counts per kind of object (``kubernetes.secrets``: 3, ...) for ``DumpResult.row_counts``."""
    counts: dict[str, int] = {}
    for name, part in sorted(parts.items()):
        if name == "kubernetes" and isinstance(part, dict):
            counts["kubernetes.configmaps"] = len(part.get("configmaps") or [])
            counts["kubernetes.secrets"] = len(part.get("secrets") or [])
        elif name == "docker" and isinstance(part, dict):
            counts["docker.containers"] = len(part.get("containers") or {})
            counts["docker.missing"] = len(part.get("missing") or [])
        elif name == "inventory":
            counts["inventory"] = 1
        else:
            counts[name] = len(part) if isinstance(part, dict | list) else 1
    return counts


def config_manifest(
    result: DumpResult, parts: Mapping[str, Any], encryption_key_ref: str
) -> dict[str, Any]:
    """The manifest of an export: the backup manifest, plus which key reference encrypted it
    and what it holds (names and counts only)."""
    data = {
        **manifest(result),
        "encryption": {"cipher": CIPHER, "key_reference": encryption_key_ref},
        "contents": describe_parts(parts),
    }
    return dict(redact_data(data))


@api_task(
    "store_config_export",
    timeout_seconds=600,
    persist_result=False,  # inputs hold secrets: never hashed, cached or persisted
)
def store_config_export(
    env_name: str,
    parts: dict[str, Any],
    store: BackupStore,
    encryption_key_ref: str | None,
    when: datetime | None = None,
) -> DumpResult:
    """Serialise ``parts`` to JSON, encrypt it in memory and store it with a names-only manifest.

    Key: ``choose_key(env_name, "config", when, "json.enc")`` (the stamp and a random suffix).
    ``encryption_key_ref`` is the ``env:``/``secret:`` reference of
    ``environments.<env>.backup_store.encryption_key``; without it nothing is stored
    (``InputError``). Returns a ``DumpResult`` (kind ``config``, codec ``none``,
    ``row_counts`` = objects per kind) like the database dumps, for ``confirm_backup`` and
    the catalog.
    """
    started = time.monotonic()
    when = when or datetime.now(UTC)
    key_bytes = encryption_key(env_name, encryption_key_ref)
    assert encryption_key_ref is not None  # encryption_key() raised otherwise
    document = {
        "opsflow_config_export": EXPORT_FORMAT,
        "env": env_name,
        "created_at": when.astimezone(UTC).isoformat(),
        "parts": parts,
    }
    plaintext = json.dumps(document, sort_keys=True, default=str).encode()
    backend = open_store(store)
    key = choose_key(backend, env_name, CONFIG_SERIES, when, CONFIG_EXTENSION)
    stored = backend.put_stream(key, encrypt([plaintext], key_bytes))
    if stored.sha256 is None:
        backend.delete(key)
        raise PermanentError(f"{stored.url}: the store did not report a sha256")
    result = DumpResult(
        database=CONFIG_SERIES,
        kind="config",
        via="export",
        store_url=store.url,
        key=key,
        manifest_key=manifest_key(key),
        codec="none",
        bytes=stored.size,
        raw_bytes=len(plaintext),
        sha256=stored.sha256,
        seconds=round(time.monotonic() - started, 3),
        created_at=when,
        row_counts=count_parts(parts),
    )
    try:
        backend.put_json(result.manifest_key, config_manifest(result, parts, encryption_key_ref))
    except BaseException:
        backend.delete(key)  # an export without its manifest is not a backup
        raise
    return result


def read_config_export(
    env_name: str, store: BackupStore, key: str, encryption_key_ref: str | None
) -> dict[str, Any]:
    """Fetch, authenticate and decrypt an export; returns the document (``parts`` inside).

    A wrong key, a modified or truncated object raise ``PermanentError`` (the sha256 sidecar
    is checked as well as the GCM tags).
    """
    key_bytes = encryption_key(env_name, encryption_key_ref)
    backend = open_store(store)
    plaintext = b"".join(decrypt(backend.get_stream(key), key_bytes))
    try:
        document = json.loads(plaintext)
    except ValueError as exc:
        raise PermanentError(f"{backend.url}/{key} is not a configuration export: {exc}") from None
    if not isinstance(document, dict) or "parts" not in document:
        raise PermanentError(f"{backend.url}/{key} is not a configuration export")
    return document
