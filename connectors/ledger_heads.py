"""The ledger's chain heads in a backup store, outside the ledger's database.

``_ledger/<env>/heads.json`` is the newest signed heads document published by a run of that
environment, and ``_ledger/<env>/history/<stamp>-<flow run>.json`` keeps each one. The prefix
is outside ``<env>/``, so backup retention (which lists ``<env>/``) never deletes them, and
``_`` cannot start an environment's name, so it cannot clash with a backup series.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from connectors.stores import open_store
from connectors.stores.base import STAMP_FORMAT, Store
from opsflow.inventory import BackupStore, load_inventory
from opsflow.ledger import Ledger, PublishedHeads
from opsflow.ledger.heads import read_heads_file

PREFIX = "_ledger"
NAME = "heads.json"


def heads_key(env: str) -> str:
    return f"{PREFIX}/{env}/{NAME}"


def history_key(env: str, doc: dict[str, Any]) -> str:
    stamp = datetime.now(UTC).strftime(STAMP_FORMAT)
    run = "".join(ch for ch in str(doc.get("flow_run_id") or "run") if ch.isalnum() or ch == "-")
    return f"{PREFIX}/{env}/history/{stamp}-{run or 'run'}.json"


def published_in(backend: Store, env: str) -> PublishedHeads | None:
    """The newest heads an environment published in ``backend`` (None: it has none)."""
    key = heads_key(env)
    source = f"{backend.url.rstrip('/')}/{key}"
    if backend.head(key) is None:
        return None
    try:
        return PublishedHeads(source, backend.get_json(key))
    except Exception as exc:  # noqa: BLE001 - reported as a problem of this copy
        return PublishedHeads(source, None, f"cannot be read: {exc}")


def publish(store: BackupStore, env: str, doc: dict[str, Any]) -> list[str]:
    """Write ``doc`` as the environment's newest heads and into its history; the keys."""
    backend = open_store(store)
    keys = [history_key(env, doc), heads_key(env)]
    for key in keys:
        backend.put_json(key, doc)
    return keys


def previous(store: BackupStore, env: str) -> PublishedHeads | None:
    return published_in(open_store(store), env)


def all_published(store: BackupStore) -> list[PublishedHeads]:
    """Every environment's newest heads in a store (for ``opsflow ledger verify --store``)."""
    backend = open_store(store)
    envs = sorted(
        {
            obj.key.split("/")[1]
            for obj in backend.list(f"{PREFIX}/")
            if obj.key.count("/") == 2 and obj.key.endswith("/" + NAME)
        }
    )
    return [found for env in envs if (found := published_in(backend, env)) is not None]


def gather(
    ledger: Ledger, store_urls: list[str], inventory_stores: bool, files: list[Path]
) -> list[PublishedHeads]:
    """Every published heads document ``opsflow ledger verify`` checks: the local copy, the
    given files, every environment's newest heads in the given stores and (with
    ``inventory_stores``) in each backup store of the inventory. A store that cannot be read,
    or a given store or file without heads, is a copy with its ``error``."""
    found: list[PublishedHeads] = []
    local = ledger.local_heads()
    if local is not None:
        found.append(local)
    for path in files:
        found.append(read_heads_file(path) or PublishedHeads(str(path), None, "does not exist"))
    targets = [(BackupStore(url=url), True) for url in store_urls]
    if inventory_stores:
        environments = load_inventory().environments.values()
        targets += [(env.backup_store, False) for env in environments if env.backup_store]
    seen: set[str] = set()
    for target, given in targets:
        if target.url in seen:
            continue
        seen.add(target.url)
        try:
            in_store = all_published(target)
        except Exception as exc:  # noqa: BLE001 - reported as a problem of that store
            in_store = [PublishedHeads(target.url, None, f"cannot be read: {exc}")]
        if not in_store and given:
            in_store = [PublishedHeads(target.url, None, "holds no published heads")]
        found += in_store
    return found
