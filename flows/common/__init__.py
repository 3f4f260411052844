"""What runbook flows share, and the only code they share (tests/unit/test_architecture.py):

- ``run``: ``RunbookRun``, the run of a runbook: environment, plan, the environment's lock,
  steps and the run recorded in the ledger, approvals, the ending;
- ``flow``: ``runbook_flow``, the Prefect flow of a runbook, with redaction;
- ``environment``: the backup store, reaching PostgreSQL, the application a restore stops;
- ``release``: the verification and report at the end of a deploy or rollback."""

from flows.common.environment import app_target, pg_reach, require_store, scales
from flows.common.flow import redacted_flow, runbook_flow
from flows.common.release import finish_release, verify_release
from flows.common.run import (
    CATALOG_SCAN,
    LOCK_WAIT_SECONDS,
    ApprovalWait,
    LockWait,
    RunbookRun,
    Step,
    current_flow_run_id,
    summarize,
)

__all__ = [
    "CATALOG_SCAN",
    "LOCK_WAIT_SECONDS",
    "ApprovalWait",
    "LockWait",
    "RunbookRun",
    "Step",
    "app_target",
    "current_flow_run_id",
    "finish_release",
    "pg_reach",
    "redacted_flow",
    "require_store",
    "runbook_flow",
    "scales",
    "summarize",
    "verify_release",
]
