"""The approval policy and the one-time codes: who may answer, which codes count (RFC 6238,
one step either side, each code once), and who may request a protected run."""

from __future__ import annotations

import pyotp
import pytest

from opsflow.approval_input import Approval
from opsflow.approvals import (
    Verifier,
    judge,
    matching_steps,
    policy_violation,
    requester,
    totp_of,
)
from opsflow.errors import InputError
from opsflow.inventory import Approvals, Environment

SECRETS = {"alice": pyotp.random_base32(), "bob": pyotp.random_base32()}
POLICY = Approvals.model_validate(
    {
        "approvers": {"alice": {"totp": "env:ALICE_TOTP"}, "bob": {"totp": "env:BOB_TOTP"}},
        "timeout": "1h",
    }
)
NOW = 1_900_000_015.0  # 15 s into a time step
STEP = 30


class SpentCodes:
    """The ledger's ``use_code`` (a unit-test stand-in of our own class): True the first time."""

    def __init__(self) -> None:
        self.spent: set[tuple[str, int]] = set()

    def use_code(self, approver: str, step: int, flow_run_id: str) -> bool:
        fresh = (approver, step) not in self.spent
        self.spent.add((approver, step))
        return fresh


def verifier(now: float = NOW) -> tuple[Verifier, SpentCodes]:
    spent = SpentCodes()
    totps = {name: pyotp.TOTP(secret) for name, secret in SECRETS.items()}
    return Verifier(totps, spent, "run-1", clock=lambda: now), spent  # type: ignore[arg-type]


def code(name: str, at: float = NOW) -> str:
    return pyotp.TOTP(SECRETS[name]).at(at)


def answer(approver: str, the_code: str, reason: str = "CHG-42", approved: bool = True) -> Approval:
    return Approval(approved=approved, approver=approver, code=the_code, reason=reason)


# --- the policy without codes (what the CLI checks before sending) -----------------------


def test_listed_second_person_may_answer() -> None:
    assert policy_violation("bob", "CHG-42", POLICY, requested_by="alice") is None


def test_self_approval_is_refused_whatever_the_case() -> None:
    for who in ("alice", "Alice"):
        problem = policy_violation("alice", "x", POLICY, requested_by=who)
        assert problem is not None and "four-eyes" in problem


def test_self_approval_allowed_without_four_eyes() -> None:
    relaxed = POLICY.model_copy(update={"four_eyes": False})
    assert policy_violation("alice", "x", relaxed, requested_by="alice") is None


def test_unknown_approver_is_refused_naming_the_approvers() -> None:
    problem = policy_violation("mallory", "x", POLICY, requested_by="alice")
    assert problem is not None and "not an approver" in problem and "alice, bob" in problem


def test_reason_is_required() -> None:
    problem = policy_violation("bob", "  ", POLICY, requested_by="alice")
    assert problem is not None and "reason is required" in problem


# --- codes -----------------------------------------------------------------------------------


def test_a_code_counts_one_step_either_side_and_no_further() -> None:
    totp = pyotp.TOTP(SECRETS["bob"])
    step = totp.timecode(NOW)
    for offset in (-1, 0, 1):
        assert matching_steps(totp, totp.at(NOW + offset * STEP), NOW) == [step + offset]
    for offset in (-3, -2, 2, 3):
        assert matching_steps(totp, totp.at(NOW + offset * STEP), NOW) == []
    assert matching_steps(totp, "not-a-code", NOW) == []
    assert matching_steps(totp, " ".join(totp.at(NOW)), NOW) == [step]  # spaces are ignored


def test_a_valid_code_counts_once() -> None:
    check, spent = verifier()
    assert judge(answer("bob", code("bob")), "bob", POLICY, "alice", check) is None
    replayed = judge(answer("bob", code("bob")), "bob", POLICY, "alice", check)
    assert replayed is not None and "used before" in replayed
    assert spent.spent == {("bob", pyotp.TOTP(SECRETS["bob"]).timecode(NOW))}


def test_a_wrong_code_is_refused_and_spends_nothing() -> None:
    check, spent = verifier()
    wrong = "000000" if code("bob") != "000000" else "111111"
    problem = judge(answer("bob", wrong), "bob", POLICY, "alice", check)
    assert problem == "wrong or expired one-time code for 'bob'"
    assert spent.spent == set()


def test_another_approvers_code_does_not_prove_bob_and_is_spent() -> None:
    check, spent = verifier()
    problem = judge(answer("bob", code("alice")), "bob", POLICY, "x", check)
    assert problem == "wrong or expired one-time code for 'bob'"
    step = pyotp.TOTP(SECRETS["alice"]).timecode(NOW)
    assert spent.spent == {("alice", step)}  # shown in Prefect now: worthless to a replayer
    again = judge(answer("alice", code("alice")), "alice", POLICY, "x", check)
    assert again is not None and "used before" in again


def test_a_refused_answer_still_spends_its_code() -> None:
    """Prefect keeps the refused answer, code included: a second answer reusing it (with a
    reason this time) must not count."""
    check, _ = verifier()
    no_reason = judge(answer("bob", code("bob"), reason=" "), "bob", POLICY, "alice", check)
    assert no_reason is not None and "reason is required" in no_reason
    retry = judge(answer("bob", code("bob")), "bob", POLICY, "alice", check)
    assert retry is not None and "used before" in retry


def test_the_requesters_own_valid_code_is_refused() -> None:
    check, _ = verifier()
    problem = judge(answer("alice", code("alice")), "alice", POLICY, "alice", check)
    assert problem is not None and "four-eyes" in problem


def test_the_same_approver_cannot_approve_twice() -> None:
    check, _ = verifier()
    later = code("bob", NOW + STEP)  # a new code, a new step: still the same person
    problem = judge(answer("bob", later), "bob", POLICY, "alice", check, approved_by=["bob"])
    assert problem == "'bob' approved already; the others must approve too"


def test_a_secret_that_is_not_base32_or_too_short_is_refused_without_showing_it() -> None:
    for bad in ("not base32 at all!", "JBSWY3DPEHPK3PXP"):  # the second: 80 bits
        with pytest.raises(InputError) as info:
            totp_of(bad, "environments.p.approvals.approvers.bob.totp")
        assert info.value.field == "environments.p.approvals.approvers.bob.totp"
        assert "128 bits" in str(info.value) and bad not in str(info.value)
    assert totp_of(SECRETS["bob"].lower(), "f").at(NOW) == code("bob")


# --- the requester -----------------------------------------------------------------------


def test_a_protected_run_needs_a_requester() -> None:
    protected = Environment(protected=True, approvals=POLICY)
    for nobody in ("", "   ", "unknown", "UNKNOWN"):
        with pytest.raises(InputError) as info:
            requester("prod", protected, nobody)
        assert info.value.field == "requested_by" and "OPSFLOW_USER" in info.value.fix
    assert requester("prod", protected, "  carol ") == "carol"


def test_an_unprotected_run_without_requester_is_unknown() -> None:
    assert requester("dev", Environment(), "") == "unknown"


def test_a_requester_name_is_bounded() -> None:
    with pytest.raises(InputError, match="at most 64"):
        requester("dev", Environment(), "x" * 65)
