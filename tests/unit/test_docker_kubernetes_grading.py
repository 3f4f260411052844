"""Pure grading helpers of tasks.docker and tasks.kubernetes (no I/O)."""

from __future__ import annotations

import kubernetes.client
import pytest

from opsflow.inventory import Thresholds
from opsflow.results import Status
from tasks.docker.checks import _cpu_pct, _log_lines, _memory_pct
from tasks.kubernetes.checks import pod_status
from tests.support.fake_controller import make_pod

TEMPLATE = {
    "metadata": {"labels": {"app": "a"}},
    "spec": {"containers": [{"name": "a", "image": "a:1"}]},
}
RS = {"metadata": {"name": "a-1", "namespace": "n", "uid": "u"}, "spec": {"template": TEMPLATE}}


def _pod(mode: str) -> kubernetes.client.V1Pod:
    return kubernetes.client.V1Pod.from_dict(make_pod(RS, TEMPLATE, mode))


@pytest.mark.parametrize(
    ("mode", "status", "words"),
    [
        ("Running", Status.HEALTHY, "Running, ready"),
        ("OOMKilled", Status.CRITICAL, "a OOMKilled"),
        ("ImagePullBackOff", Status.CRITICAL, "a ImagePullBackOff"),
        ("CrashLoopBackOff", Status.CRITICAL, "a CrashLoopBackOff"),
        ("Pending", Status.DEGRADED, "Unschedulable"),
    ],
)
def test_pod_status_grades_reasons(mode: str, status: Status, words: str) -> None:
    graded, notes, _ = pod_status(_pod(mode), Thresholds(restarts=20))
    assert graded is status
    assert words in ", ".join(notes)


def test_pod_restarts_over_threshold_degrade() -> None:
    graded, notes, details = pod_status(_pod("OOMKilled"), Thresholds(restarts=2))
    assert graded is Status.CRITICAL
    assert details["restarts"] == 3 and "3 restarts (threshold 2)" in notes


def test_memory_pct_ignores_page_cache_like_docker_stats() -> None:
    v1 = {"memory_stats": {"usage": 600, "limit": 1000, "stats": {"total_inactive_file": 100}}}
    v2 = {"memory_stats": {"usage": 600, "limit": 1000, "stats": {"inactive_file": 300}}}
    assert _memory_pct(v1) == (50.0, 500, 1000)
    assert _memory_pct(v2) == (30.0, 300, 1000)
    assert _memory_pct({"memory_stats": {}}) is None


def test_cpu_pct_is_relative_to_the_cpu_limit_or_the_host() -> None:
    stats = {
        "cpu_stats": {
            "cpu_usage": {"total_usage": 3_000},
            "system_cpu_usage": 20_000,
            "online_cpus": 4,
        },
        "precpu_stats": {"cpu_usage": {"total_usage": 1_000}, "system_cpu_usage": 10_000},
    }
    # 2000/10000 of all 4 cpus = 0.8 cpu used
    assert _cpu_pct(stats, nano_cpus=0) == pytest.approx(20.0)
    assert _cpu_pct(stats, nano_cpus=1_000_000_000) == pytest.approx(80.0)
    assert _cpu_pct({"cpu_stats": {}, "precpu_stats": {}}, 0) is None


def test_log_lines_split_across_chunks() -> None:
    chunks = [b"ERROR one\nIN", b"FO two\r\nERR", b"OR three"]
    assert list(_log_lines(chunks)) == ["ERROR one", "INFO two", "ERROR three"]
