"""opsflow: runbook automation for operations teams, built on Prefect.

The ``opsflow`` package is the core layer (inventory, secrets, errors and retry policies,
approvals, ledger, catalog, plans, reports, redaction). It imports nothing above it
(``connectors``, ``tasks``, ``flows``, ``deployments``, ``cli``); import-linter enforces it.
"""

__version__ = "0.1.0"
