"""Prometheus over its HTTP API: ``/api/v1/query`` (an instant vector) and
``/api/v1/query_range`` (a matrix), through ``tasks.http.client``; and the incident's figures:
each of the inventory's ``incident.prometheus.queries`` over ``[start - window, end]``.

An unreachable Prometheus, a 5xx or a 429 is a ``TransientError``; a query Prometheus refuses
(``status: error``, 400/422) is a ``PermanentError`` naming the query and Prometheus' reason.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from pydantic import BaseModel, Field

from opsflow.errors import OpsflowError, PermanentError, TransientError
from opsflow.inventory.incident import Prometheus
from opsflow.redaction import redact
from opsflow.secrets import resolve
from tasks.http.client import excerpt, http_get, json_body, tls_verify
from tasks.policy import probe_task

MAX_POINTS = 240
"""A range query's step is chosen so that a series has at most this many points (at least 1 s)."""


class Series(BaseModel):
    """One series of a query's answer: its labels and its (unix time, value) points."""

    labels: dict[str, str] = Field(default_factory=dict)
    points: list[tuple[float, float]] = Field(default_factory=list)

    @property
    def last(self) -> float | None:
        return self.points[-1][1] if self.points else None

    @property
    def peak(self) -> float | None:
        values = [v for _, v in self.points if not math.isnan(v)]
        return max(values) if values else None


class Figure(BaseModel):
    """One named query over the incident's window: its series, or why it has none."""

    name: str
    query: str
    start: datetime
    end: datetime
    step_seconds: float
    series: list[Series] = Field(default_factory=list)
    error: str | None = None

    def line(self) -> str:
        if self.error:
            return f"{self.name}: {self.error}"
        if not self.series:
            return f"{self.name}: no data"
        peaks = [s.peak for s in self.series if s.peak is not None]
        lasts = [s.last for s in self.series if s.last is not None]
        text = f"{self.name}: {len(self.series)} series"
        if lasts:
            text += f", last {_num(max(lasts))}"
        if peaks:
            text += f", peak {_num(max(peaks))}"
        return text


def _num(value: float) -> str:
    return f"{value:.4g}"


def _value(raw: Any) -> float:
    try:
        return float(raw)
    except (TypeError, ValueError):
        return math.nan


def _get(prom: Prometheus, path: str, params: dict[str, str]) -> Any:
    base = resolve(prom.url, field="incident.prometheus.url").rstrip("/")
    headers = {
        k: resolve(v, field=f"incident.prometheus.headers.{k}") for k, v in prom.headers.items()
    }
    url = f"{base}{path}?{urlencode(params)}"
    response = http_get(url, prom.timeout, tls_verify(True, None), headers)
    body = json_body(response)
    query = params.get("query", "")
    if response.status_code == 429 or response.status_code >= 500:
        raise TransientError(
            f"Prometheus {redact(prom.url)} answered {response.status_code} to {query!r}"
        )
    if not isinstance(body, dict) or body.get("status") != "success":
        reason = body.get("error") if isinstance(body, dict) else excerpt(response.text)
        raise PermanentError(
            f"Prometheus {redact(prom.url)} refused {query!r}: {response.status_code} "
            f"{redact(str(reason))} (fix: check the query in incident.prometheus.queries)"
        )
    return body.get("data") or {}


def _series(data: dict[str, Any]) -> list[Series]:
    kind, result = data.get("resultType"), data.get("result") or []
    if kind == "scalar":
        return [Series(points=[(float(result[0]), _value(result[1]))])]
    found: list[Series] = []
    for item in result:
        labels = {str(k): str(v) for k, v in (item.get("metric") or {}).items()}
        if kind == "matrix":
            points = [(float(t), _value(v)) for t, v in item.get("values") or []]
        else:
            stamp, raw = item.get("value") or (0, "NaN")
            points = [(float(stamp), _value(raw))]
        found.append(Series(labels=labels, points=points))
    return found


def query(prom: Prometheus, promql: str, at: datetime | None = None) -> list[Series]:
    """``/api/v1/query``: the instant vector of ``promql`` (at ``at``, default now)."""
    params = {"query": promql}
    if at is not None:
        params["time"] = f"{at.timestamp():.3f}"
    return _series(_get(prom, "/api/v1/query", params))


def query_range(
    prom: Prometheus, promql: str, start: datetime, end: datetime, step: timedelta
) -> list[Series]:
    """``/api/v1/query_range``: ``promql`` from ``start`` to ``end`` every ``step``."""
    params = {
        "query": promql,
        "start": f"{start.timestamp():.3f}",
        "end": f"{end.timestamp():.3f}",
        "step": f"{max(step.total_seconds(), 0.001):g}",
    }
    return _series(_get(prom, "/api/v1/query_range", params))


def range_step(start: datetime, end: datetime) -> timedelta:
    """The step that gives at most ``MAX_POINTS`` points, at least one second."""
    seconds = max((end - start).total_seconds(), 1.0)
    return timedelta(seconds=max(math.ceil(seconds / MAX_POINTS), 1))


def read_figures(prom: Prometheus, around: datetime, end: datetime) -> list[Figure]:
    """Each query of ``prom`` over ``[around - prom.window, end]``; a query that fails is
    a figure with its (redacted) error, the others are still read. Prometheus unreachable
    for every query raises the first error."""
    start = around - prom.window
    end = max(end, start + timedelta(seconds=1))
    step = range_step(start, end)
    figures: list[Figure] = []
    errors: list[OpsflowError] = []
    for name, promql in prom.queries.items():
        figure = Figure(
            name=name, query=promql, start=start, end=end, step_seconds=step.total_seconds()
        )
        try:
            figure.series = query_range(prom, promql, start, end, step)
        except OpsflowError as exc:
            figure.error = redact(str(exc))
            errors.append(exc)
        figures.append(figure)
    if errors and len(errors) == len(figures) and isinstance(errors[0], TransientError):
        raise errors[0]
    return figures


@probe_task("prometheus_figures", timeout_seconds=120)
def prometheus_figures(prom: Prometheus, around: datetime, end: datetime) -> list[Figure]:
    """``read_figures`` as a task (PROBE_RETRIES: an unreachable Prometheus is retried)."""
    return read_figures(prom, around, end)
