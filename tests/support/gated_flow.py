"""An approval-gated flow for the e2e tests: it asks for approval on a protected environment
and, only when approved, writes a marker file (the "change"). Run as a module:

    python -m tests.support.gated_flow --env gated --requested-by alice --marker PATH
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefect import flow

from flows.common import RunbookRun
from opsflow.approvals import final_decision, request_approval
from opsflow.errors import ApprovalRejected
from opsflow.ledger import Ledger
from opsflow.plans import Plan, PlanStep


@flow(name="approval-probe")
def approval_probe(env: str, requested_by: str, marker: str, timeout_seconds: int = 120) -> str:
    run = RunbookRun.start("approval-probe", env, requested_by)
    plan = Plan(
        runbook="approval-probe",
        env=env,
        steps=[PlanStep(action="write_marker", target=marker, why="the change", changes=True)],
    )
    assert run.env.approvals is not None
    request_approval(
        flow_run_id=run.flow_run_id,
        action="approval-probe",
        env=env,
        policy=run.env.approvals,
        plan=plan,
        requested_by=requested_by,
        ledger=run.ledger,
        log=run.logger.info,
        notify=run.notifier(),
        timeout_seconds=timeout_seconds,
    )
    Path(marker).write_text("changed")
    run.finish("succeeded", "marker written")
    return "changed"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--env", required=True)
    parser.add_argument("--requested-by", required=True)
    parser.add_argument("--marker", required=True)
    parser.add_argument("--timeout", type=int, default=120)
    args = parser.parse_args()
    state = approval_probe(
        env=args.env,
        requested_by=args.requested_by,
        marker=args.marker,
        timeout_seconds=args.timeout,
        return_state=True,
    )
    result = state.result(raise_on_failure=False)
    decision = final_decision(Ledger(), str(state.state_details.flow_run_id))
    if isinstance(result, ApprovalRejected) or decision is not None:
        why = f"{decision.event}: {decision.reason}" if decision else ""
        print(f"REJECTED: {result} {why}")
        return 3
    print(f"STATE {state.name}")
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
