"""The verification window's pure parts: counter and histogram deltas, counter resets,
thresholds, failure_limit and the verdict's text; verify_window's schedule and early stop
with sample_health replaced (the real one runs in tests/integration)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

import tasks.verification as verification_module
from opsflow.inventory import Environment, Verification
from tasks.http import (
    error_rate_pct,
    p95_latency_ms,
    parse_metrics,
    snapshot,
    window_error_rate,
    window_p95_ms,
)
from tasks.http.metrics import buckets_delta, series_delta
from tasks.verification import (
    VerificationSample,
    judge_sample,
    judge_window,
    selected_sources,
    verify_window,
)

V = Verification.model_validate({"duration": "2s", "interval": "200ms"})


class App:
    """A registry like an application's: counters by status, a latency histogram."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("http_requests", "r", ["status"], registry=self.registry)
        self.latency = Histogram(
            "http_request_duration_seconds",
            "l",
            buckets=(0.1, 0.5, 1.0, 2.0),
            registry=self.registry,
        )

    def serve(self, ok: int, errors: int = 0, seconds: float = 0.05) -> None:
        if ok:
            self.requests.labels("200").inc(ok)
        if errors:
            self.requests.labels("500").inc(errors)
        for _ in range(ok + errors):
            self.latency.observe(seconds)

    def scrape(self) -> dict[str, Any]:
        return snapshot(parse_metrics(generate_latest(self.registry).decode()))


def test_series_delta_counts_increase_new_series_and_resets() -> None:
    assert series_delta({"a": 10, "b": 5}, {"a": 15, "b": 5}) == {"a": 5, "b": 0}
    assert series_delta({"a": 10}, {"a": 10, "c": 3}) == {"a": 0, "c": 3}  # new series: whole
    assert series_delta({"a": 100}, {"a": 7}) == {"a": 7}  # reset: counts from zero
    assert series_delta(None, {"a": 4}) == {"a": 4}


def test_buckets_delta_resets_a_series_as_a_whole() -> None:
    before = {"h{}": {"0.1": 50.0, "+Inf": 100.0}}
    assert buckets_delta(before, {"h{}": {"0.1": 60.0, "+Inf": 130.0}}) == {
        "h{}": {"0.1": 10.0, "+Inf": 30.0}
    }
    # the application restarted: +Inf went down although 0.1 did not
    after_restart = {"h{}": {"0.1": 55.0, "+Inf": 60.0}}
    assert buckets_delta(before, after_restart) == after_restart


def test_error_rate_over_the_window_not_since_start() -> None:
    app = App()
    app.serve(ok=1000)
    baseline = app.scrape()
    app.serve(ok=20, errors=10)
    current = app.scrape()
    rate = window_error_rate(current["counter"], baseline["counter"])
    assert rate is not None
    assert (rate["requests"], rate["errors_5xx"]) == (30, 10)
    assert rate["pct"] == pytest.approx(33.333, abs=0.01)
    # the cumulative figure hides it
    cumulative = error_rate_pct(parse_metrics(generate_latest(app.registry).decode()))
    assert cumulative is not None and cumulative["pct"] < 1


def test_counter_reset_is_a_fresh_start_not_a_negative_rate() -> None:
    old = App()
    old.serve(ok=500, errors=5)
    baseline = old.scrape()
    restarted = App()  # the process restarted: counters begin at zero
    restarted.serve(ok=8, errors=2)
    rate = window_error_rate(restarted.scrape()["counter"], baseline["counter"])
    assert rate is not None
    assert (rate["requests"], rate["errors_5xx"], rate["pct"]) == (10, 2, 20.0)
    p95 = window_p95_ms(restarted.scrape()["histograms"], baseline["histograms"])
    assert p95 is not None and p95["observations"] == 10 and p95["ms"] > 0


def test_p95_over_the_window() -> None:
    app = App()
    app.serve(ok=1000, seconds=0.05)
    baseline = app.scrape()
    app.serve(ok=40, seconds=1.5)  # all new requests slow: 3.8 % of all since the start
    current = app.scrape()
    p95 = window_p95_ms(current["histograms"], baseline["histograms"])
    assert p95 is not None and p95["observations"] == 40
    assert 1000 < p95["ms"] <= 2000  # inside the (1.0, 2.0] bucket
    cumulative = p95_latency_ms(parse_metrics(generate_latest(app.registry).decode()))
    assert cumulative is not None and cumulative["ms"] < 1000


def test_no_requests_in_the_window() -> None:
    app = App()
    app.serve(ok=10)
    baseline = app.scrape()
    current = app.scrape()
    rate = window_error_rate(current["counter"], baseline["counter"])
    assert rate is not None and rate["requests"] == 0
    assert window_p95_ms(current["histograms"], baseline["histograms"]) is None


def test_judge_sample_thresholds() -> None:
    assert judge_sample(V, {"app": {"error_rate_pct": 5.0, "p95_ms": 1000.0}}, []) == []
    assert judge_sample(V, {"app": {"error_rate_pct": 33.33, "p95_ms": 1200.0}}, []) == [
        "error rate 33.3% > 5%",
        "p95 1200 ms > 1000 ms",
    ]
    assert judge_sample(V, {"app": {"error_rate_pct": None, "p95_ms": None}}, []) == []
    two = {"a": {"error_rate_pct": 9.0, "p95_ms": None}, "b": {"error_rate_pct": 1.0}}
    assert judge_sample(V, two, ["endpoint api: HTTP 500"]) == [
        "error rate 9.0% > 5% (a)",
        "endpoint api: HTTP 500",
    ]


def sample(second: int, *failures: str) -> VerificationSample:
    return VerificationSample(
        at=datetime(2026, 12, 1, 14, 2, second, tzinfo=UTC),
        error_rate_pct=0.0,
        p95_ms=10.0,
        requests=5,
        endpoints_ok=True,
        failures=list(failures),
    )


def test_verdict_passes_within_thresholds() -> None:
    verdict = judge_window(V, [sample(i) for i in range(10)], 2.01)
    assert verdict.passed and verdict.reason == "10 samples within thresholds"
    assert verdict.seconds == 2.01


def test_verdict_counts_failures_in_total_not_consecutive() -> None:
    samples = [sample(0, "error rate 33.3% > 5%"), sample(1), sample(2, "p95 1200 ms > 1000 ms")]
    samples += [sample(3, "endpoint api: HTTP 500")]
    verdict = judge_window(V, samples, 0.8)
    assert not verdict.passed
    assert verdict.reason == (
        "3 of 4 samples failed (limit 3, stopped after 4 of 10): error rate 33.3% > 5% at "
        "14:02:00; p95 1200 ms > 1000 ms at 14:02:02; endpoint api: HTTP 500 at 14:02:03"
    )


def test_verdict_below_the_limit_passes_and_says_so() -> None:
    samples = [sample(i, "error rate 6.0% > 5%") if i < 2 else sample(i) for i in range(10)]
    verdict = judge_window(V, samples, 2.0)
    assert verdict.passed
    assert verdict.reason.startswith("2 of 10 samples failed (limit 3): error rate 6.0% > 5%")


def test_selected_sources_by_name_and_unknown_name() -> None:
    env = Environment.model_validate(
        {
            "metrics": [
                {"name": "a", "url": "http://127.0.0.1:1/m"},
                {"name": "b", "url": "http://127.0.0.1:2/m"},
            ]
        }
    )
    assert [s.name for s in selected_sources(env, V)] == ["a", "b"]
    only_b = Verification.model_validate({"metrics": ["b"]})
    assert [s.name for s in selected_sources(env, only_b)] == ["b"]
    with pytest.raises(ValueError, match=r"choose from \['a', 'b'\]"):
        selected_sources(env, Verification.model_validate({"metrics": ["c"]}))


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 6))
        self.now += seconds


def run_window(
    monkeypatch: pytest.MonkeyPatch, failing: set[int], verification: Verification = V
) -> tuple[Any, list[Any], FakeClock]:
    clock = FakeClock()
    baselines: list[Any] = []

    def fake_sample(env: Environment, v: Verification, baseline: Any) -> Any:
        baselines.append(baseline)
        number = len(baselines) - 1  # 0 is the baseline scrape
        clock.now += 0.05  # a sample takes 50 ms
        failures = ["error rate 50.0% > 5%"] if number in failing else []
        return sample(number % 60, *failures), {"n": number}

    monkeypatch.setattr(verification_module, "sample_health", fake_sample)
    verdict = verify_window(Environment(), verification, sleep=clock.sleep, clock=clock)
    return verdict, baselines, clock


def test_verify_window_takes_every_sample_on_schedule(monkeypatch: pytest.MonkeyPatch) -> None:
    verdict, baselines, clock = run_window(monkeypatch, failing=set())
    assert verdict.passed and len(verdict.samples) == 10
    # each sample gets the previous one's raw series as its baseline
    assert baselines == [None] + [{"n": i} for i in range(10)]
    # scheduled from the start: the 50 ms a sample takes is not added to the interval
    assert clock.sleeps[0] == pytest.approx(0.15) and clock.sleeps[1] == pytest.approx(0.15)
    assert verdict.seconds == pytest.approx(2.05)


def test_verify_window_stops_at_the_failure_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    verdict, baselines, _ = run_window(monkeypatch, failing={2, 5, 6, 7})
    assert not verdict.passed
    assert len(verdict.samples) == 6  # the third failure (sample 6) ends the window
    assert len(baselines) == 7
    assert verdict.reason.startswith("3 of 6 samples failed (limit 3, stopped after 6 of 10)")


def test_verify_window_logs_one_line_per_sample(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="tasks.verification")
    run_window(monkeypatch, failing={3})
    lines = [r.getMessage() for r in caplog.records if "verification sample" in r.getMessage()]
    assert len(lines) == 10
    assert lines[2].endswith("FAILED: error rate 50.0% > 5%")
    assert lines[0].endswith("5 requests, error rate 0.0%, p95 10 ms; ok")
