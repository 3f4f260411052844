"""Approvers for tests: each has a TOTP secret (made afresh per test session, handed to the
flow processes through ``<NAME>_TOTP`` environment variables, as an operator would), and an
authenticator that gives a valid code the ledger has not spent yet.

A code counts once per (approver, 30 s time step), across every run sharing a ledger, and the
verifier accepts the step before and after now; ``Authenticator.code`` picks one of those three
that is unspent, or waits for the next step when all three are spent."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pyotp
from sqlalchemy import create_engine, select

from opsflow.ledger import UsedCode
from tests.support.prefect_api import api_get

NAMES = ("alice", "bob", "carol")
SECRETS = {name: pyotp.random_base32() for name in NAMES}


def env_var(name: str) -> str:
    return f"{name.upper()}_TOTP"


def approver_env() -> dict[str, str]:
    """The environment variables the inventory's ``env:<NAME>_TOTP`` references point at."""
    return {env_var(name): secret for name, secret in SECRETS.items()}


def approvers_yaml(*names: str) -> str:
    """An inventory ``approvers:`` mapping (flow style) for ``names``."""
    return "{" + ", ".join(f"{n}: {{totp: 'env:{env_var(n)}'}}" for n in names) + "}"


class Authenticator:
    """What an approver's phone shows, minus the codes a ledger has already spent."""

    def __init__(self, ledger_url: str) -> None:
        self.engine = create_engine(ledger_url)

    def spent(self, name: str) -> set[int]:
        with self.engine.connect() as conn:
            query = select(UsedCode.step).where(UsedCode.approver == name)
            return {int(step) for step in conn.execute(query).scalars()}

    def fresh_step(self, name: str, *, current_only: bool = False) -> int:
        """An unspent step the verifier accepts now (with ``current_only``: the current step,
        as ``TOTP.now()`` makes it), waiting for the next step if there is none."""
        totp = pyotp.TOTP(SECRETS[name])
        while True:
            now = time.time()
            counter = totp.timecode(now)
            candidates = [counter] if current_only else [counter, counter + 1, counter - 1]
            spent = self.spent(name)
            free = [s for s in candidates if s not in spent]
            if free:
                return free[0]
            time.sleep(totp.interval - now % totp.interval + 0.05)

    def code(self, name: str) -> str:
        """A valid, unspent code of ``name`` for now."""
        return pyotp.TOTP(SECRETS[name]).generate_otp(self.fresh_step(name))

    def answer(
        self, api: str, run_id: str, approver: str, reason: str, *, approved: bool = True
    ) -> None:
        """``approver`` answers ``run_id`` through the REST API with a valid, unspent code."""
        code = self.code(approver)
        resume(api, run_id, approved=approved, approver=approver, code=code, reason=reason)

    def close(self) -> None:
        self.engine.dispose()


def wrong_code(name: str) -> str:
    """A well-formed code that is not ``name``'s within the verifier's window."""
    totp = pyotp.TOTP(SECRETS[name])
    counter = totp.timecode(time.time())
    valid = {totp.generate_otp(s) for s in range(counter - 2, counter + 3)}
    return next(c for c in (f"{n:06d}" for n in range(1000, 10**6, 7919)) if c not in valid)


def resume(
    api: str, run_id: str, *, approved: bool, approver: str, code: str, reason: str
) -> dict[str, object]:
    """Answer a paused run through Prefect's REST API (what the UI and scripts do)."""
    answer = {"approved": approved, "approver": approver, "code": code, "reason": reason}
    for _attempt in range(3):  # a loaded server answers 503 now and then (Prefect's client
        response = httpx.post(  # retries those too)
            f"{api}/flow_runs/{run_id}/resume", json={"run_input": answer}, timeout=30
        )
        if response.status_code != 503:
            break
        time.sleep(1)
    assert response.status_code in (200, 201), response.text
    body = dict(response.json())
    assert body["status"] == "ACCEPT", body
    return body


def wait_until(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def run_state(api: str, run_id: str) -> str:
    response = api_get(f"{api}/flow_runs/{run_id}", timeout=10)
    response.raise_for_status()
    return str(response.json()["state"]["type"])
