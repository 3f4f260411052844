"""What can go wrong opening or writing the ledger, as operator-facing one-line errors."""

from __future__ import annotations

from opsflow.errors import PermanentError, TransientError


class LedgerUnavailable(TransientError):
    """The ledger database cannot be reached, opened, locked or written (nothing was written)."""

    def __init__(self, url: str, problem: str, fix: str) -> None:
        self.url = url
        self.problem = problem
        self.fix = fix
        super().__init__(f"ledger {url} {problem} (fix: {fix})")


class LedgerSchemaError(PermanentError):
    """The ledger's schema cannot be used or upgraded by this opsflow."""


class LedgerIntegrityError(PermanentError):
    """The ledger was tampered with in a way that stops it from being written or upgraded."""
