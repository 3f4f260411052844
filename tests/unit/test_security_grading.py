"""The pure parts of the security review's checks: the failed-login pattern and counting, weak
ciphers, and the grading of PostgreSQL roles."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from opsflow.inventory import AccessPolicy
from opsflow.inventory.security import DEFAULT_LOGIN_PATTERN
from opsflow.security import Severity
from tasks.security.access import grade_roles
from tasks.security.logins import Tally, count_failed_logins
from tasks.security.tls import weak_cipher


def test_default_login_pattern_captures_the_user_and_the_ip() -> None:
    pattern = re.compile(DEFAULT_LOGIN_PATTERN)
    cases = {
        "sshd[1]: Failed password for root from 10.0.0.7 port 22 ssh2": ("root", "10.0.0.7"),
        "Failed password for invalid user admin from 10.0.0.8 port 2 ssh2": ("admin", "10.0.0.8"),
        "app: invalid credentials for alice from 2001:db8::1": ("alice", "2001:db8::1"),
        "failed login from 1.2.3.4": (None, "1.2.3.4"),
    }
    for line, (user, ip) in cases.items():
        match = pattern.search(line)
        assert match is not None, line
        assert (match.group("user"), match.group("ip")) == (user, ip), line
    assert pattern.search("Accepted publickey for deploy from 10.0.0.2") is None


def test_counting_keeps_to_the_window_and_counts_undated_lines() -> None:
    now = datetime.now(UTC)
    old, new = (now - timedelta(hours=2)).isoformat(), now.isoformat()
    lines = [
        "Failed password for root from 10.0.0.1 port 1",  # before any timestamp: counted
        f"{old} Failed password for root from 10.0.0.2 port 1",
        f"{new} Failed password for bob from 10.0.0.3 port 1",
        "  Failed password for eve from 10.0.0.3 port 1",  # inherits the line above's time
    ]
    tally = Tally()
    count_failed_logins(lines, re.compile(DEFAULT_LOGIN_PATTERN), now - timedelta(hours=1), tally)
    assert dict(tally.by_ip) == {"10.0.0.1": 1, "10.0.0.3": 2}
    assert dict(tally.by_user) == {"root": 1, "bob": 1, "eve": 1}
    assert tally.users_of["10.0.0.3"] == {"bob", "eve"} and tally.undated == 1


def test_weak_ciphers() -> None:
    assert weak_cipher("ECDHE-ECDSA-NULL-SHA", 0)
    assert weak_cipher("DES-CBC3-SHA", 168)
    assert weak_cipher("RC4-MD5", 128)
    assert weak_cipher("EXP-RC2-CBC-MD5", 40)
    assert weak_cipher("AES128-SHA", 64)
    assert not weak_cipher("TLS_AES_256_GCM_SHA384", 256)
    assert not weak_cipher("ECDHE-RSA-AES128-GCM-SHA256", 128)


def _role(name: str, **flags: object) -> dict[str, object]:
    base = {"super": False, "login": False, "createrole": False, "createdb": False}
    return {"name": name, **base, "expired": False, "valid_until": None, "member_of": [], **flags}


def test_grade_roles_only_audits_the_lists_given() -> None:
    roles = [
        _role("root", super=True, login=True),
        _role("app", login=True, expired=True, valid_until="2001-01-01T00:00:00+00:00"),
    ]
    unaudited = grade_roles("main", roles, AccessPolicy())
    assert [(f.severity, f.target) for f in unaudited] == [
        (Severity.MEDIUM, "postgres main role app")  # an expired password is always reported
    ]
    audited = grade_roles("main", roles, AccessPolicy(postgres_superusers=[], postgres_logins=[]))
    assert [(f.severity, f.target) for f in audited] == [
        (Severity.CRITICAL, "postgres main role root"),
        (Severity.HIGH, "postgres main role root"),
        (Severity.HIGH, "postgres main role app"),
        (Severity.MEDIUM, "postgres main role app"),
    ]
    allowed = grade_roles(
        "main", roles[:1], AccessPolicy(postgres_superusers=["root"], postgres_logins=[])
    )
    assert allowed == []  # an allowed superuser may log in without being in postgres_logins
