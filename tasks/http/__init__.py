"""HTTP: health endpoints, Prometheus metrics and smoke tests (one home for HTTP).

``client`` — the one request helper (``http_request`` / ``http_get``), resolved targets, TLS
contexts, safe body excerpts; ``endpoints`` — ``check_endpoint``; ``metrics`` —
``check_metrics`` and the metric parsing (cumulative and over a window between two scrapes);
``smoke`` — ``run_smoke_test``. Everything is importable from ``tasks.http`` as before the
split.
"""

from tasks.http.client import (
    TLSVerificationError,
    excerpt,
    http_get,
    http_request,
    json_body,
    resolved,
    tls_verify,
)
from tasks.http.endpoints import DEFAULT_ACCEPTED, DEGRADED_WORDS, check_endpoint
from tasks.http.metrics import (
    METRICS_TIMEOUT,
    check_metrics,
    error_rate_pct,
    histogram_quantile,
    memory_pct,
    p95_latency_ms,
    parse_metrics,
    scrape_metrics,
    snapshot,
    window_error_rate,
    window_p95_ms,
)
from tasks.http.smoke import run_smoke_test

__all__ = [
    "DEFAULT_ACCEPTED",
    "DEGRADED_WORDS",
    "METRICS_TIMEOUT",
    "TLSVerificationError",
    "check_endpoint",
    "check_metrics",
    "error_rate_pct",
    "excerpt",
    "histogram_quantile",
    "http_get",
    "http_request",
    "json_body",
    "memory_pct",
    "p95_latency_ms",
    "parse_metrics",
    "resolved",
    "run_smoke_test",
    "scrape_metrics",
    "snapshot",
    "tls_verify",
    "window_error_rate",
    "window_p95_ms",
]
