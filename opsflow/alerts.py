"""Alerts in, the pure parts: the Prometheus Alertmanager webhook payload (version 4), which
inventory rule an alert matches, the checks of the rules against the runbooks, and the two
decisions the receiver takes before it starts a run — a repeat (dedup) and the environment's
rate limit — as functions over the history they are given (no Prefect, no I/O).

The payload is Alertmanager's documented webhook format::

    {"version": "4", "groupKey": "...", "truncatedAlerts": 0, "status": "firing|resolved",
     "receiver": "...", "groupLabels": {...}, "commonLabels": {...},
     "commonAnnotations": {...}, "externalURL": "...",
     "alerts": [{"status": "firing|resolved", "labels": {...}, "annotations": {...},
                 "startsAt": "<rfc3339>", "endsAt": "<rfc3339>", "generatorURL": "...",
                 "fingerprint": "<hex>"}, ...]}

It is read strictly (unknown fields, sizes, counts and lengths are refused) and every refusal
is a ``PayloadError`` whose message is the reason the receiver answers with 400.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
)

from opsflow.inventory.incident import Alerting, AlertRule
from opsflow.inventory.models import Inventory

MAX_BODY_BYTES = 1024 * 1024
"""The largest payload the receiver reads (400 above it)."""
MAX_ALERTS = 1000
MAX_LABELS = 64
MAX_NAME_CHARS = 128
MAX_VALUE_CHARS = 4096
MAX_ANNOTATION_CHARS = 16 * 1024
MAX_REASONS = 3
ZERO_TIME = datetime(1, 1, 1)
"""Alertmanager's ``endsAt`` of an alert that still fires (``0001-01-01T00:00:00Z``)."""
RATE_WINDOW = timedelta(hours=1)

Outcome = Literal[
    "accepted",
    "started",
    "deduplicated",
    "rate_limited",
    "unmatched",
    "failed_to_start",
    "resolved",
]
RUN_OUTCOMES = frozenset({"accepted", "started"})
"""Rows that stand for a run the receiver began to start (``accepted``: recorded before the
answer; ``started``: the flow run exists)."""


class PayloadError(ValueError):
    """Why a payload is refused (the 400's reason)."""


def _label_name(name: str) -> str:
    if not name or len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise ValueError(f"label name {name[:40]!r} is empty, too long or not printable")
    return name


def _bounded(limit: int, what: str) -> Any:
    def check(value: dict[str, str]) -> dict[str, str]:
        if len(value) > MAX_LABELS:
            raise ValueError(f"has {len(value)} {what}, at most {MAX_LABELS}")
        for name, text in value.items():
            _label_name(name)
            if len(text) > limit:
                raise ValueError(f"{what} {name!r} has {len(text)} characters, at most {limit}")
        return value

    return AfterValidator(check)


Labels = Annotated[dict[str, str], _bounded(MAX_VALUE_CHARS, "labels")]
Annotations = Annotated[dict[str, str], _bounded(MAX_ANNOTATION_CHARS, "annotations")]
Text = Annotated[str, StringConstraints(max_length=MAX_VALUE_CHARS)]
Fingerprint = Annotated[str, StringConstraints(pattern=r"^[0-9A-Za-z]{1,64}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Alert(_Strict):
    """One alert of a payload."""

    status: Literal["firing", "resolved"]
    labels: Labels
    annotations: Annotations = Field(default_factory=dict)
    starts_at: datetime = Field(alias="startsAt")
    ends_at: datetime = Field(ZERO_TIME.replace(tzinfo=UTC), alias="endsAt")
    generator_url: Text = Field("", alias="generatorURL")
    fingerprint: Fingerprint

    @field_validator("labels")
    @classmethod
    def _alertname(cls, value: dict[str, str]) -> dict[str, str]:
        if not value.get("alertname"):
            raise ValueError("has no alertname label")
        return value

    @property
    def alertname(self) -> str:
        return self.labels["alertname"]


class AlertmanagerPayload(_Strict):
    """Alertmanager's webhook payload, version 4."""

    version: Literal["4"]
    group_key: Text = Field(alias="groupKey", min_length=1)
    truncated_alerts: int = Field(0, alias="truncatedAlerts", ge=0)
    status: Literal["firing", "resolved"]
    receiver: Text = ""
    group_labels: Labels = Field(default_factory=dict, alias="groupLabels")
    common_labels: Labels = Field(default_factory=dict, alias="commonLabels")
    common_annotations: Annotations = Field(default_factory=dict, alias="commonAnnotations")
    external_url: Text = Field("", alias="externalURL")
    alerts: list[Alert] = Field(min_length=1, max_length=MAX_ALERTS)


def parse_payload(body: bytes) -> AlertmanagerPayload:
    """The payload in ``body``; ``PayloadError`` naming the first problems otherwise."""
    if len(body) > MAX_BODY_BYTES:
        raise PayloadError(f"the payload has {len(body)} bytes, at most {MAX_BODY_BYTES}")
    try:
        return AlertmanagerPayload.model_validate_json(body)
    except ValidationError as exc:
        raise PayloadError(_reasons(exc)) from None


def _reasons(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False, include_input=False)
    parts = []
    for err in errors[:MAX_REASONS]:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
        message = str(err["msg"]).removeprefix("Value error, ")
        if err["type"] == "literal_error" and err["loc"] == ("version",):
            message = "must be '4' (Alertmanager's webhook payload version 4)"
        if err["type"].startswith("json"):
            where, message = "", f"is not JSON ({message})"
        parts.append(f"{where.lstrip('.') or 'the payload'}: {message}")
    more = f" (and {len(errors) - MAX_REASONS} more)" if len(errors) > MAX_REASONS else ""
    return "; ".join(parts) + more


def naive_utc(when: datetime) -> datetime:
    """A time as the ledger keeps it: naive UTC."""
    return when.astimezone(UTC).replace(tzinfo=None) if when.tzinfo is not None else when


def alert_parameter(alert: Alert, payload: AlertmanagerPayload) -> dict[str, Any]:
    """The ``alert`` parameter of a run an alert starts (for runbooks that take one)."""
    return {
        "labels": dict(alert.labels),
        "annotations": dict(alert.annotations),
        "startsAt": alert.starts_at.astimezone(UTC).isoformat(),
        "fingerprint": alert.fingerprint,
        "groupKey": payload.group_key,
        "status": alert.status,
    }


# ----- rules -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Match:
    """The environment an alert belongs to and the rule it matched (``None``: no rule);
    ``place`` names the rule (``environments.prod.alert_rules[0]``), ``reason`` says why
    nothing matched."""

    env: str
    rule: AlertRule | None
    place: str = ""
    reason: str = ""


def _matches(rule: AlertRule, labels: Mapping[str, str]) -> bool:
    return all(labels.get(name) == value for name, value in rule.match.items())


def match_alert(inventory: Inventory, labels: Mapping[str, str]) -> Match:
    """The first rule whose every ``match`` label equals the alert's: the rules of each
    environment first (of the environment its ``env`` label names; without one, of every
    environment, in inventory order), then the shared rules, whose environment is the
    alert's ``env`` label."""
    env_label = labels.get("env", "")
    if env_label and env_label not in inventory.environments:
        known = ", ".join(sorted(inventory.environments))
        return Match(
            env_label, None, reason=f"env label {env_label!r} is not in the inventory ({known})"
        )
    names = [env_label] if env_label else list(inventory.environments)
    for name in names:
        for i, rule in enumerate(inventory.environments[name].alert_rules):
            if _matches(rule, labels):
                return Match(name, rule, f"environments.{name}.alert_rules[{i}]")
    if env_label:
        for i, rule in enumerate(inventory.alert_rules):
            if _matches(rule, labels):
                return Match(env_label, rule, f"alert_rules[{i}]")
    alertname = labels.get("alertname", "")
    where = f"environment {env_label!r}" if env_label else "any environment (no env label)"
    return Match(env_label, None, reason=f"no rule of {where} matches alert {alertname!r}")


def check_rules(inventory: Inventory, runbook_names: Iterable[str]) -> list[str]:
    """Problems of the inventory's alert rules against the runbooks of prefect.yaml, each as
    ``place: problem (fix: …)`` ([] when there are none)."""
    known = sorted(runbook_names)
    problems = []
    places = [
        (f"environments.{name}.alert_rules[{i}]", rule)
        for name, env in inventory.environments.items()
        for i, rule in enumerate(env.alert_rules)
    ] + [(f"alert_rules[{i}]", rule) for i, rule in enumerate(inventory.alert_rules)]
    for place, rule in places:
        if rule.runbook not in known:
            problems.append(
                f"{place}.runbook: unknown runbook {rule.runbook!r} "
                f"(fix: choose one of prefect.yaml's runbooks: {', '.join(known)})"
            )
    for i, rule in enumerate(inventory.alert_rules):
        env = rule.match.get("env")
        if env is not None and env not in inventory.environments:
            problems.append(
                f"alert_rules[{i}].match.env: unknown environment {env!r} (fix: name one of "
                f"the inventory's environments: {', '.join(sorted(inventory.environments))})"
            )
    return problems


# ----- dedup and the rate limit ------------------------------------------------------------


@dataclass(frozen=True)
class Seen:
    """One earlier alert row as the decisions read it (from the ledger's ``alerts``)."""

    at: datetime
    env: str
    group_key: str
    fingerprint: str
    outcome: str
    flow_run_id: str = ""


@dataclass(frozen=True)
class Decision:
    start: bool
    outcome: Outcome
    reason: str = ""
    flow_run_id: str = ""
    """The earlier run this alert repeats (deduplicated)."""


def decide(
    *,
    env: str,
    group_key: str,
    fingerprint: str,
    now: datetime,
    alerting: Alerting,
    history: Sequence[Seen],
    running: frozenset[str] = frozenset(),
) -> Decision:
    """Start a run for this firing alert, or not: a repeat (same group key and fingerprint)
    of one that started a run within ``dedup_window``, or whose run is still ``running``,
    is ``deduplicated``; past ``max_runs_per_hour`` runs of the environment in the last hour
    (sliding) it is ``rate_limited``. ``history``: earlier rows, any order; times naive UTC."""
    now = naive_utc(now)
    mine = [
        s
        for s in history
        if s.group_key == group_key
        and s.fingerprint == fingerprint
        and s.outcome in RUN_OUTCOMES | {"failed_to_start"}
    ]
    last = max(mine, key=lambda s: s.at, default=None)
    if last is not None and last.outcome in RUN_OUTCOMES:
        age = now - naive_utc(last.at)
        run = last.flow_run_id or _run_of(mine, last)
        if age < alerting.dedup_window:
            return Decision(
                False,
                "deduplicated",
                f"a repeat within the dedup window ({_span(alerting.dedup_window)}): its run "
                f"{run or '(being created)'} began {_span(age)} ago",
                run,
            )
        if run and run in running:
            return Decision(False, "deduplicated", f"its run {run} is still running", run)
    since = now - RATE_WINDOW
    started = sum(1 for s in history if s.env == env and s.outcome == "accepted" and s.at > since)
    if started >= alerting.max_runs_per_hour:
        return Decision(
            False,
            "rate_limited",
            f"environment {env!r} had {started} alert runs in the last hour, its limit "
            f"(alerting.max_runs_per_hour) is {alerting.max_runs_per_hour}",
        )
    return Decision(True, "accepted")


def _run_of(rows: Sequence[Seen], accepted: Seen) -> str:
    """The flow run a later ``started`` row gave the same alert, if any."""
    later = [s for s in rows if s.outcome == "started" and s.at >= accepted.at and s.flow_run_id]
    return later[-1].flow_run_id if later else ""


def last_run(history: Sequence[Seen], group_key: str, fingerprint: str) -> str:
    """The flow run the newest ``started`` row of this alert (group key + fingerprint) names."""
    runs = [
        s
        for s in history
        if s.group_key == group_key
        and s.fingerprint == fingerprint
        and s.outcome == "started"
        and s.flow_run_id
    ]
    newest = max(runs, key=lambda s: s.at, default=None)
    return newest.flow_run_id if newest else ""


def firing_run(history: Sequence[Seen], group_key: str, fingerprint: str) -> str:
    """The flow run the firing of this alert started (the newest), for its resolved row."""
    runs = [
        s
        for s in history
        if s.fingerprint == fingerprint and s.outcome == "started" and s.flow_run_id
    ]
    same_group = [s for s in runs if s.group_key == group_key]
    chosen = max(same_group or runs, key=lambda s: s.at, default=None)
    return chosen.flow_run_id if chosen else ""


class History:
    """The recent alert rows the decisions read, kept in memory by the receiver (seeded from
    the ledger when it starts, then fed every row it records): per fingerprint its newest
    ``per_alert`` rows (at most ``alerts`` fingerprints, the least recently seen dropped
    first), and per environment the ``accepted`` rows of the last hour."""

    def __init__(self, per_alert: int = 20, alerts: int = 100_000) -> None:
        self._per_alert, self._alerts = per_alert, alerts
        self._by_fingerprint: OrderedDict[str, deque[Seen]] = OrderedDict()
        self._accepted: dict[str, deque[Seen]] = {}

    def add(self, seen: Seen) -> None:
        rows = self._by_fingerprint.get(seen.fingerprint)
        if rows is None:
            rows = self._by_fingerprint[seen.fingerprint] = deque(maxlen=self._per_alert)
            if len(self._by_fingerprint) > self._alerts:
                self._by_fingerprint.popitem(last=False)
        else:
            self._by_fingerprint.move_to_end(seen.fingerprint)
        rows.append(seen)
        if seen.outcome == "accepted":
            self._accepted.setdefault(seen.env, deque()).append(seen)

    def relevant(self, env: str, fingerprint: str, now: datetime) -> list[Seen]:
        """What ``decide`` needs for an alert: its fingerprint's rows and the environment's
        accepted rows of the last hour (older ones are dropped here)."""
        accepted = self._accepted.get(env, deque())
        since = naive_utc(now) - RATE_WINDOW
        while accepted and naive_utc(accepted[0].at) <= since:
            accepted.popleft()
        mine = list(self._by_fingerprint.get(fingerprint, ()))
        known = {id(s) for s in mine}
        return mine + [s for s in accepted if id(s) not in known]

    def of(self, fingerprint: str) -> list[Seen]:
        return list(self._by_fingerprint.get(fingerprint, ()))


def _span(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h"
