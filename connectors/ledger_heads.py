"""The ledger's chain heads in a backup store, outside the ledger's database.

Each run of an environment publishes its signed heads document as a new object
``_ledger/<env>/history/<stamp>-<flow run>.json``: a store never replaces an object (see
``connectors.stores.base``), so there is no "latest" file to overwrite; the newest document is
the one with the greatest stamp (``published_at`` breaks a tie within one second). The prefix is
outside ``<env>/``, so backup retention (which lists ``<env>/``) never deletes them, and ``_``
cannot start an environment's name, so it cannot clash with a backup series.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from connectors.stores import open_store
from connectors.stores.base import STAMP_FORMAT, Store
from opsflow.inventory import BackupStore, load_inventory
from opsflow.ledger import Ledger, PublishedHeads
from opsflow.ledger.heads import read_heads_file

PREFIX = "_ledger"
HISTORY = "history"


def history_prefix(env: str) -> str:
    return f"{PREFIX}/{env}/{HISTORY}/"


def history_key(env: str, doc: dict[str, Any]) -> str:
    stamp = datetime.now(UTC).strftime(STAMP_FORMAT)
    run = "".join(ch for ch in str(doc.get("flow_run_id") or "run") if ch.isalnum() or ch == "-")
    return f"{history_prefix(env)}{stamp}-{run or 'run'}-{secrets.token_hex(4)}.json"


def published_in(backend: Store, env: str) -> PublishedHeads | None:
    """The newest heads an environment published in ``backend`` (None: it has none)."""
    keys = sorted(o.key for o in backend.list(history_prefix(env)) if o.key.endswith(".json"))
    if not keys:
        return None
    stamp = keys[-1].rsplit("/", 1)[1].split("-", 1)[0]
    newest: PublishedHeads | None = None
    for key in [k for k in keys if k.rsplit("/", 1)[1].startswith(stamp + "-")]:
        source = f"{backend.url.rstrip('/')}/{key}"
        try:
            found = PublishedHeads(source, backend.get_json(key))
        except Exception as exc:  # noqa: BLE001 - reported as a problem of this copy
            found = PublishedHeads(source, None, f"cannot be read: {exc}")
        if newest is None or _published_at(found) >= _published_at(newest):
            newest = found
    return newest


def _published_at(found: PublishedHeads) -> str:
    return str((found.doc or {}).get("published_at") or "")


def publish(store: BackupStore, env: str, doc: dict[str, Any]) -> list[str]:
    """Write ``doc`` as a new object of the environment's heads history; its key."""
    key = history_key(env, doc)
    open_store(store).put_json(key, doc)
    return [key]


def previous(store: BackupStore, env: str) -> PublishedHeads | None:
    return published_in(open_store(store), env)


def all_published(store: BackupStore) -> list[PublishedHeads]:
    """Every environment's newest heads in a store (for ``opsflow ledger verify --store``)."""
    backend = open_store(store)
    envs = sorted(
        {
            obj.key.split("/")[1]
            for obj in backend.list(f"{PREFIX}/")
            if obj.key.count("/") == 3 and obj.key.split("/")[2] == HISTORY
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
