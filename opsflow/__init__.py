"""opsflow: runbook automation for operations teams, built on Prefect.

The ``opsflow`` package is the core layer (inventory, secrets, errors, approvals,
ledger, plans, reports, redaction) plus the CLI in ``opsflow.cli``. Core modules never
import ``tasks``, ``flows`` or ``deployments``; import-linter enforces it.
"""

__version__ = "0.1.0"
