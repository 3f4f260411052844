from __future__ import annotations

from opsflow.approvals import Approval, policy_violation
from opsflow.inventory import Approvals

POLICY = Approvals(approvers=["alice", "bob"], timeout="1h", four_eyes=True)  # type: ignore[arg-type]


def answer(approver: str, reason: str = "CHG-42", approved: bool = True) -> Approval:
    return Approval(approved=approved, approver=approver, reason=reason)


def test_listed_second_person_may_approve() -> None:
    assert policy_violation(answer("bob"), POLICY, requested_by="alice") is None


def test_self_approval_is_refused() -> None:
    problem = policy_violation(answer("alice"), POLICY, requested_by="alice")
    assert problem is not None and "four-eyes" in problem


def test_self_approval_allowed_without_four_eyes() -> None:
    relaxed = Approvals(approvers=["alice"], four_eyes=False)
    assert policy_violation(answer("alice"), relaxed, requested_by="alice") is None


def test_unknown_approver_is_refused() -> None:
    problem = policy_violation(answer("mallory"), POLICY, requested_by="alice")
    assert problem is not None and "not an approver" in problem and "alice, bob" in problem


def test_reason_is_required_for_approval_and_rejection() -> None:
    for approved in (True, False):
        problem = policy_violation(answer("bob", "  ", approved), POLICY, requested_by="alice")
        assert problem is not None and "reason is required" in problem


def test_rejection_by_listed_approver_is_valid() -> None:
    assert policy_violation(answer("bob", "not now", False), POLICY, requested_by="alice") is None
