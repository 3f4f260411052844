"""OSV records parsed and matched (opsflow.osv) and the package lists read for matching
(opsflow.packages): range evaluation as the OSV spec says, each ecosystem's version order,
severities, fixes, and records that must not parse."""

from __future__ import annotations

from typing import Any

import pytest

from opsflow.osv import AdvisoryError, AdvisoryIndex, VersionError
from opsflow.packages import (
    Installed,
    match_packages,
    os_ecosystem,
    parse_dpkg_status,
    parse_npm_lock,
    parse_os_release,
    parse_requirements,
)
from opsflow.security import Severity
from tests.support.osv_records import REQUESTS, record


def index(*records: dict[str, Any]) -> AdvisoryIndex:
    return AdvisoryIndex.from_records(
        ((f"test.json[{i}]", r) for i, r in enumerate(records)), "test.json"
    )


DJANGO = record(  # several ranges: each release line has its own fix
    "GHSA-django",
    "PyPI",
    "Django",
    [{"introduced": "3.2"}, {"fixed": "3.2.20"}],
    [{"introduced": "4.0"}, {"fixed": "4.1.10"}],
    [{"introduced": "4.2"}, {"fixed": "4.2.3"}],
    database_specific={"severity": "HIGH"},
)
LAST_AFFECTED = record(
    "PYSEC-last", "PyPI", "Foo_Bar", [{"introduced": "1.0"}, {"last_affected": "1.4.2"}]
)
LISTED = record("PYSEC-listed", "PyPI", "listed", versions=["0.9.1", "0.9.2"])
LODASH = record(
    "GHSA-35jh-r3h4-6jhm",
    "npm",
    "lodash",
    [{"introduced": "0"}, {"fixed": "4.17.21"}],
    kind="SEMVER",
    database_specific={"severity": "HIGH"},
)
GLIBC = record(
    "DSA-5514-1", "Debian:12", "glibc", [{"introduced": "0"}, {"fixed": "2.36-9+deb12u3"}]
)


@pytest.mark.parametrize(
    ("rec", "name", "version", "affected"),
    [
        (REQUESTS, "requests", "2.25.0", True),  # introduced "0": every version before the fix
        (REQUESTS, "requests", "0.0.1", True),
        (REQUESTS, "requests", "2.31.0", False),  # fixed: the fix itself is not affected
        (REQUESTS, "requests", "2.31.0rc1", True),  # a pre-release sorts before its release
        (REQUESTS, "Requests", "2.32.3", False),
        (DJANGO, "django", "3.1.9", False),  # before the first range
        (DJANGO, "django", "3.2.19", True),
        (DJANGO, "django", "3.2.20", False),
        (DJANGO, "django", "4.0", True),
        (DJANGO, "django", "4.1.10", False),  # between the second and the third range
        (DJANGO, "django", "4.2.2", True),
        (DJANGO, "django", "4.2.3", False),
        (LAST_AFFECTED, "foo-bar", "0.9", False),
        (LAST_AFFECTED, "FOO.bar", "1.4.2", True),  # last_affected: itself affected (PEP 503)
        (LAST_AFFECTED, "foo_bar", "1.4.2.post1", False),
        (LISTED, "listed", "0.9.2", True),  # a versions list, no range
        (LISTED, "listed", "0.9.2.0", True),  # PEP 440: the same version
        (LISTED, "listed", "0.9.3", False),
        (LODASH, "lodash", "4.17.20", True),
        (LODASH, "lodash", "4.17.21", False),
        (LODASH, "lodash", "4.17.21-rc.1", True),  # SemVer pre-release before the release
        (LODASH, "Lodash", "4.17.20", False),  # npm names are not normalized
        (GLIBC, "glibc", "2.36-9+deb12u2", True),
        (GLIBC, "glibc", "2.36-9+deb12u10", False),  # Debian order, not string order
        (GLIBC, "glibc", "2.36-9", True),
    ],
)
def test_range_evaluation(rec: dict[str, Any], name: str, version: str, affected: bool) -> None:
    ecosystem = rec["affected"][0]["package"]["ecosystem"]
    found = index(rec).matches(ecosystem, name, version)
    assert [a.id for a in found] == ([rec["id"]] if affected else [])


def test_limit_and_git_ranges() -> None:
    rec = record(
        "X-limit", "PyPI", "lim", [{"introduced": "1.0"}, {"limit": "2.0"}], kind="ECOSYSTEM"
    )
    rec["affected"][0]["ranges"].append(
        {"type": "GIT", "repo": "https://example.org/r", "events": [{"introduced": "abc123"}]}
    )
    idx = index(rec)
    assert idx.matches("PyPI", "lim", "1.5") and not idx.matches("PyPI", "lim", "2.0")


def test_unsorted_events_are_sorted_and_epochs_count() -> None:
    rec = record("DEB-x", "Debian:12", "openssl", [{"fixed": "3.0.11-1"}, {"introduced": "0"}])
    idx = index(rec)
    assert idx.matches("Debian:12", "openssl", "3.0.9-1")
    assert not idx.matches("Debian:12", "openssl", "1:1.0-1")  # epoch 1 beats any epoch 0


def test_debian_release_and_unversioned_records() -> None:
    idx = index(
        GLIBC,
        record("DSA-old", "Debian:11", "glibc", [{"introduced": "0"}, {"fixed": "2.99-1"}]),
        record("DEB-any", "Debian", "glibc", [{"introduced": "0"}, {"fixed": "2.99-1"}]),
    )
    found = {a.id for a in idx.matches("Debian:12", "glibc", "2.36-9")}
    assert found == {"DSA-5514-1", "DEB-any"}  # not the Debian 11 advisory
    assert idx.covers("Debian:12") and idx.covers("Debian:13")  # Debian:13 via "Debian"
    assert not index(GLIBC).covers("Debian:11")
    assert not idx.covers("PyPI")


def test_severity_mapping() -> None:
    cvss = record(
        "CVE-cvss",
        "PyPI",
        "a",
        [{"introduced": "0"}],
        severity=[{"type": "CVSS_V3", "score": "CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:L/I:N/A:N"}],
    )
    low = record(
        "GHSA-low", "PyPI", "a", [{"introduced": "0"}], database_specific={"severity": "LOW"}
    )
    critical = record("GHSA-crit", "PyPI", "a", [{"introduced": "0"}])
    critical["affected"][0]["ecosystem_specific"] = {"severity": "critical"}
    plain = record("PYSEC-none", "PyPI", "a", [{"introduced": "0"}])
    found = {a.id: a for a in index(cvss, low, critical, plain, REQUESTS).matches("PyPI", "a", "1")}
    assert found["CVE-cvss"].severity is Severity.HIGH  # a vector is not scored
    assert found["CVE-cvss"].cvss == ("CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:L/I:N/A:N",)
    assert found["GHSA-low"].severity is Severity.LOW
    assert found["GHSA-crit"].severity is Severity.CRITICAL
    assert found["PYSEC-none"].severity is Severity.HIGH
    (req,) = index(REQUESTS).matches("PyPI", "requests", "2.0")
    assert req.severity is Severity.MEDIUM  # MODERATE


def test_check_reports_the_fix_of_every_advisory() -> None:
    second = record(
        "PYSEC-2018-28",
        "PyPI",
        "requests",
        [{"introduced": "0"}, {"fixed": "2.20.0"}],
        database_specific={"severity": "HIGH"},
    )
    vulnerable = index(REQUESTS, second, DJANGO).check("PyPI", "requests", "2.19.1")
    assert vulnerable is not None
    assert vulnerable.severity is Severity.HIGH  # the worst of the two
    assert vulnerable.fixed == {"GHSA-j8r2-6x86-q33q": "2.31.0", "PYSEC-2018-28": "2.20.0"}
    assert vulnerable.upgrade_to == "2.31.0"
    assert "GHSA-j8r2-6x86-q33q (CVE-2023-32681)" in vulnerable.summary()
    assert "upgrade to 2.31.0 or later" in vulnerable.summary()
    # on the 4.0 line the fix is that line's, not an older line's
    django = index(DJANGO).check("PyPI", "django", "4.0.5")
    assert django is not None and django.upgrade_to == "4.1.10"
    unfixed = index(LAST_AFFECTED).check("PyPI", "foo-bar", "1.2")
    assert unfixed is not None and unfixed.upgrade_to is None
    assert "none published" in unfixed.summary()
    assert index(REQUESTS).check("PyPI", "requests", "2.31.0") is None


def test_installed_version_that_does_not_compare() -> None:
    idx = index(REQUESTS)
    with pytest.raises(VersionError, match="not a PyPI version"):
        idx.matches("PyPI", "requests", "not a version")
    assert idx.matches("PyPI", "other", "not a version") == []  # no advisory, no comparison
    result = match_packages(
        idx,
        [Installed("requests", "weird!"), Installed("requests", "2.0"), Installed("six", "1.16")],
        ecosystem="PyPI",
        check="dependencies",
        where="python api",
        env="dev",
    )
    assert result.checked == 3 and len(result.not_comparable) == 1
    (finding,) = result.findings
    assert finding.target == "python api: requests 2.0"
    assert finding.details["advisories"] == ["GHSA-j8r2-6x86-q33q"]


def test_withdrawn_and_other_ecosystems_are_left_out() -> None:
    withdrawn = dict(REQUESTS, id="GHSA-gone", withdrawn="2024-01-01T00:00:00Z")
    maven = record("GHSA-mvn", "Maven", "org.x:y", [{"introduced": "0"}])
    idx = index(REQUESTS, withdrawn, maven)
    assert len(idx) == 1 and idx.skipped == 2
    assert [a.id for a in idx.matches("PyPI", "requests", "1.0")] == ["GHSA-j8r2-6x86-q33q"]


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ({"summary": "no id"}, r"test.json\[1\]: not an OSV record"),
        ([1, 2], "not an OSV record"),
        ({"id": "X-1", "affected": {"package": {}}}, r"X-1\): `affected` is not a list"),
        ({"id": "X-2", "affected": [{"ranges": []}]}, r"affected\[0\]: has no `package`"),
        (
            record("X-3", "PyPI", "a", [{"introduced": "0"}, {"fixed": "not a version"}]),
            r"X-3\): affected\[0\].ranges\[0\].events\[1\]: fixed 'not a version' is not a PyPI",
        ),
        (
            record("X-4", "PyPI", "a", [{"introduced": "0"}, {"patched": "1.0"}]),
            r"events\[1\]: an event is one of introduced, fixed, last_affected, limit",
        ),
        (record("X-5", "PyPI", "a", [{"introduced": "0"}], kind="SVN"), "range type 'SVN'"),
        (record("X-6", "PyPI", "a", [{"fixed": "1.0"}]), r"ranges\[0\]: has no `introduced`"),
        (
            record("X-7", "npm", "a", [{"introduced": "0"}, {"fixed": "1.0"}], kind="SEMVER"),
            "fixed '1.0' is not a npm version",  # SemVer needs major.minor.patch
        ),
    ],
)
def test_bad_records_name_where_and_what(bad: Any, problem: str) -> None:
    with pytest.raises(AdvisoryError, match=problem):  # a good record first: still refused
        index(REQUESTS, bad)


def test_a_source_with_nothing_usable_raises() -> None:
    with pytest.raises(AdvisoryError, match=r"test\.json: holds no OSV record"):
        index()
    maven = record("GHSA-mvn", "Maven", "org.x:y", [{"introduced": "0"}])
    with pytest.raises(AdvisoryError, match="none of its 1 record"):
        index(maven)


# --- package lists ---------------------------------------------------------------------------


def test_requirements_lines() -> None:
    text = """# pinned by pip-compile
requests==2.25.0 \\
    --hash=sha256:aaaa \\
    --hash=sha256:bbbb
Foo_Bar[security,socks]==1.2.3 ; python_version >= "3.8"  # inline comment
legacy===1.0-odd
-r base.txt
--index-url https://pypi.example/simple
-e git+https://example.org/x.git#egg=x
loose>=1.0
wild==1.*
direct @ https://example.org/direct-1.0.whl
this is not a requirement
"""
    parsed = parse_requirements(text)
    assert [(p.name, p.version) for p in parsed.pinned] == [
        ("requests", "2.25.0"),
        ("Foo_Bar", "1.2.3"),
        ("legacy", "1.0-odd"),
    ]
    assert parsed.includes == ["base.txt"]
    assert parsed.unpinned == [
        "-e git+https://example.org/x.git#egg=x",
        "loose>=1.0",
        "wild==1.*",
        "direct @ https://example.org/direct-1.0.whl",
    ]
    assert parsed.invalid == ["this is not a requirement"]


def test_npm_lock_versions() -> None:
    v3 = {
        "lockfileVersion": 3,
        "packages": {
            "": {"name": "web", "version": "1.0.0"},
            "node_modules/lodash": {"version": "4.17.20"},
            "node_modules/a/node_modules/@scope/b": {"version": "2.0.0"},
            "node_modules/alias": {"name": "real", "version": "1.1.0"},
            "node_modules/local": {"resolved": "packages/local", "link": True},
            "packages/local": {"version": "0.1.0"},
        },
    }
    assert [(p.name, p.version) for p in parse_npm_lock(v3)] == [
        ("@scope/b", "2.0.0"),
        ("lodash", "4.17.20"),
        ("real", "1.1.0"),
    ]
    v1 = {
        "lockfileVersion": 1,
        "dependencies": {
            "lodash": {"version": "4.17.20"},
            "a": {"version": "1.0.0", "dependencies": {"lodash": {"version": "4.17.4"}}},
            "alias": {"version": "npm:real@1.1.0"},
        },
    }
    assert [(p.name, p.version) for p in parse_npm_lock(v1)] == [
        ("a", "1.0.0"),
        ("lodash", "4.17.20"),
        ("lodash", "4.17.4"),
        ("real", "1.1.0"),
    ]
    with pytest.raises(ValueError, match="neither `packages`"):
        parse_npm_lock({"name": "web"})


def test_dpkg_status_by_source_package() -> None:
    status = """Package: libc6
Status: install ok installed
Source: glibc
Version: 2.36-9+deb12u4
Description: GNU C Library
 continued description

Package: libc-bin
Status: install ok installed
Source: glibc
Version: 2.36-9+deb12u4

Package: libgcrypt20
Status: install ok installed
Source: libgcrypt20 (1.10.1-3)
Version: 1.10.1-3+b1

Package: bash
Status: install ok installed
Version: 5.2.15-2+b2

Package: removed
Status: deinstall ok config-files
Version: 1.0-1
"""
    assert parse_dpkg_status(status) == [
        Installed("bash", "5.2.15-2+b2", ("bash",)),
        Installed("glibc", "2.36-9+deb12u4", ("libc-bin", "libc6")),
        Installed("libgcrypt20", "1.10.1-3", ("libgcrypt20",)),
    ]


def test_os_release_ecosystem() -> None:
    debian = parse_os_release(
        'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n'
    )
    assert os_ecosystem(debian) == "Debian:12"
    assert os_ecosystem(parse_os_release("ID=debian\n")) == "Debian"  # sid: no VERSION_ID
    assert os_ecosystem(parse_os_release("ID=ubuntu\nVERSION_ID=22.04\n")) is None
