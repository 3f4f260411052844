"""The backup catalog: what the ledger's backup rows say exists, folded to one entry per backup.

Pure (no I/O, no Prefect): restore, the DR drill, retention, the freshness check and
``opsflow backups list`` read their backups through it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

Codec = Literal["zstd", "gzip", "none"]
"""How a stored backup is compressed."""


class RestoreSource(BaseModel):
    """One catalogued backup to restore: where it is and what it must hash to."""

    model_config = ConfigDict(frozen=True)

    backup_id: str
    database: str
    kind: str
    store_url: str
    key: str
    sha256: str
    bytes: int
    codec: Codec
    via: str = ""
    created_at: datetime
    manifest_key: str = ""
    row_counts: dict[str, int] = Field(default_factory=dict)
    table_checksums: dict[str, str] = Field(default_factory=dict)
    verified: bool = False

    @property
    def exact_counts(self) -> bool:
        """Counts taken in the dumped snapshot (direct pg_dump, SQLite copy) must match exactly;
        docker_exec/kubectl_exec counts were taken just before the dump and may differ under
        writes."""
        return self.kind == "sqlite" or self.via in ("direct", "file")


def codec_of(key: str, recorded: str | None = None) -> Codec:
    """The compression of a stored backup: the catalogued codec, else its key's extension."""
    if recorded in ("zstd", "gzip", "none"):
        return recorded  # type: ignore[return-value]
    if key.endswith(".zst"):
        return "zstd"
    if key.endswith(".gz"):
        return "gzip"
    return "none"
