"""Backup stores: a local directory (``file://``) and S3 (``s3://``) behind one interface
(``connectors.stores.base.Store``); ``open_store`` returns the one an inventory names.

The implementations are imported on first use, so a local-only run never loads boto3.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from connectors.stores.base import Store, local_root
from opsflow.errors import InputError
from opsflow.inventory import BackupStore


def open_store(
    store: BackupStore, *, part_size: int | None = None, max_concurrency: int | None = None
) -> Store:
    """The store described by an inventory ``backup_store`` (``file://`` or ``s3://``).

    ``part_size``/``max_concurrency`` tune S3 multipart uploads (ignored for local stores).
    No I/O happens here; a missing bucket or directory problem shows on first use.
    """
    scheme = urlsplit(store.url).scheme
    if scheme == "file":
        from connectors.stores.local import LocalStore

        return LocalStore(local_root(store.url))
    if scheme == "s3":
        from connectors.stores.s3 import S3Store

        options: dict[str, int] = {}
        if part_size is not None:
            options["part_size"] = part_size
        if max_concurrency is not None:
            options["max_concurrency"] = max_concurrency
        return S3Store(store.url, endpoint_url=store.endpoint_url, **options)
    raise InputError("backup_store.url", f"unsupported scheme {scheme!r}", "use file:// or s3://")
