"""Typed records that flow between the pipeline stages.

Every stage takes and returns these, never a free-form ``dict``::

    sources  -> MetricSample, LogRecord, ChangeEvent        (raw telemetry, event time)
    decode   -> SeriesPoint                                  (rates, quantiles, ratios, gauges)
    detect   -> Signal(kind="metric")                        (anomaly onsets and ends)
    logs     -> Signal(kind="log")                           (new / bursting templates, error bursts)
    correlate-> Incident (with ranked RootCause)             (open / update / resolved)
    decide   -> Alert, Action                                (what to notify, what to do)

All timestamps are event time in unix seconds (float); no stage reads a clock.
Records are frozen and slotted: cheap to create, safe to share between stages. The two built
per sample and per derived point (:class:`MetricSample`, :class:`SeriesPoint`) are frozen
msgspec ``Struct`` types, the others frozen dataclasses; both behave as plain value objects.

>>> s = MetricSample(ts=1.0, name="up", labels=(("service", "api"),), value=1.0)
>>> s.service, s.label("instance")
('api', None)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgspec

Labels = tuple[tuple[str, str], ...]
"""Label set as a tuple of ``(name, value)`` pairs sorted by name: hashable and immutable."""


def make_labels(mapping: Mapping[str, str]) -> Labels:
    """Return the canonical (sorted, hashable) form of a label mapping.

    >>> make_labels({"b": "2", "a": "1"})
    (('a', '1'), ('b', '2'))
    """
    return tuple(sorted((str(k), str(v)) for k, v in mapping.items()))


class MetricSample(msgspec.Struct, frozen=True, gc=False):
    """One raw sample as Prometheus would expose it (counters cumulative, histograms as buckets).

    One is built per sample on every source's hot path, so this record (like :class:`SeriesPoint`)
    is a frozen msgspec ``Struct`` rather than a dataclass: the same fields, keyword or positional
    construction, equality, hashing, repr and immutability, built several times faster, and left
    out of the cyclic GC's scans (its fields are numbers, strings and tuples of strings, so it can
    never be part of a reference cycle).
    """

    ts: float
    name: str
    labels: Labels
    value: float  # NaN marks a gap

    def label(self, key: str) -> str | None:
        for k, v in self.labels:
            if k == key:
                return v
        return None

    @property
    def service(self) -> str | None:
        return self.label("service")


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One log line after its header: ``message`` is the raw text."""

    ts: float
    service: str
    message: str
    level: str | None = None


@dataclass(frozen=True, slots=True)
class ChangeEvent:
    """A deploy, config change, scaling operation or any other change to a service."""

    ts: float
    type: str
    service: str | None
    attrs: tuple[tuple[str, str], ...] = ()  # version, previous_version, ... as given

    def attr(self, key: str) -> str | None:
        for k, v in self.attrs:
            if k == key:
                return v
        return None


class PointKind(StrEnum):
    """What a derived series measures; drives which direction is bad by default."""

    GAUGE = "gauge"
    RATE = "rate"  # per-second rate of a counter
    QUANTILE = "quantile"  # p50/p90/p99 of a histogram
    ERROR_RATIO = "error_ratio"  # 5xx rate / total rate
    LOG_RATE = "log_rate"  # per-template or per-level line rate


class SeriesPoint(msgspec.Struct, frozen=True, gc=False):
    """One value of a derived series at an aligned step timestamp (a msgspec ``Struct``: see :class:`MetricSample`).

    ``metric`` is the derived name, e.g. ``http_requests_total:rate``,
    ``http_request_duration_seconds:p99``, ``http_requests_total:error_ratio``,
    or a gauge's own name. ``key`` identifies the series uniquely (metric + labels).
    """

    ts: float
    key: str
    service: str | None
    metric: str
    kind: PointKind
    value: float


class SignalKind(StrEnum):
    METRIC = "metric"  # a metric anomaly
    LOG = "log"  # a new or bursting log template, an error burst
    CHANGE = "change"  # a deploy or config change, as context for root causes
    DRIFT = "drift"  # model data / prediction / concept drift


@dataclass(frozen=True, slots=True)
class Signal:
    """Evidence that something about one service is abnormal (or changed).

    A signal has an onset (``ts``) and, once it is over, an end (``end_ts``); the detect
    and log stages emit one signal when the onset is confirmed and one with ``end_ts``
    set when it recovers, with the same ``id``.
    """

    id: str
    ts: float  # onset, event time
    kind: SignalKind
    service: str | None
    name: str  # metric name, template id, change type, model name
    score: float  # strength; comparable within a kind, larger = more abnormal
    direction: str = ""  # "up", "down" or "" when it does not apply
    evidence: tuple[str, ...] = ()  # short sentences an engineer can check
    end_ts: float | None = None
    labels: Labels = ()  # e.g. source/destination workload for topology learning

    @property
    def active(self) -> bool:
        return self.end_ts is None


@dataclass(frozen=True, slots=True)
class RootCause:
    """A ranked root-cause hypothesis with the evidence that ranked it."""

    service: str
    score: float
    metric: str | None = None
    template: str | None = None
    evidence: tuple[str, ...] = ()


class IncidentStatus(StrEnum):
    OPEN = "open"
    UPDATE = "update"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why an incident opened, why each cause ranked where it did, and what was left out.

    Plain sentences, kept by the correlator so ``aiops explain`` can answer from a replay
    output file or a state file without re-running anything.
    """

    opened: tuple[str, ...] = ()
    ranking: tuple[str, ...] = ()
    left_out: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Incident:
    """A snapshot of an incident at one decision point (open, update or resolved)."""

    id: str
    ts: float
    status: IncidentStatus
    opened_ts: float
    services: tuple[str, ...]
    root_causes: tuple[RootCause, ...]
    severity: str
    signals: tuple[Signal, ...] = ()
    changes: tuple[ChangeEvent, ...] = ()
    explain: Explanation | None = None


class AlertStatus(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(frozen=True, slots=True)
class Alert:
    """What is (or would be) sent to notification sinks for one incident."""

    ts: float
    incident_id: str
    status: AlertStatus
    labels: tuple[tuple[str, str], ...]
    annotations: tuple[tuple[str, str], ...]


class ActionOutcome(StrEnum):
    PLANNED = "planned"
    DONE = "done"
    REFUSED = "refused"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Action:
    """A remediation decided for an incident: planned (dry run) or carried out."""

    ts: float
    incident_id: str
    type: str  # scale_up, rollback, retrain, ...
    target: tuple[tuple[str, str], ...]  # at least ("service", name)
    dry_run: bool
    outcome: ActionOutcome
    reason: str = ""
    params: tuple[tuple[str, str], ...] = field(default=())


Record = MetricSample | LogRecord | ChangeEvent
"""A raw input record, as produced by a source."""

Decision = Incident | Alert | Action
"""An output record, as written by replay and sent to sinks."""


def to_output(decision: Decision) -> dict[str, Any]:
    """Render a decision in the replay output form of SCENARIO_FORMAT.md.

    >>> a = Action(ts=5.0, incident_id="inc-1", type="rollback", target=(("service", "api"),),
    ...            dry_run=True, outcome=ActionOutcome.PLANNED, reason="deploy v2 preceded onset")
    >>> to_output(a)["target"]
    {'service': 'api'}
    """
    if isinstance(decision, Incident):
        return {
            "kind": "incident",
            "ts": decision.ts,
            "id": decision.id,
            "status": decision.status.value,
            "opened_ts": decision.opened_ts,
            "root_causes": [_root_cause_out(rc) for rc in decision.root_causes],
            "services": list(decision.services),
            "severity": decision.severity,
            "signals": [
                {"service": s.service, "kind": s.kind.value, "name": s.name, "onset": s.ts,
                 "score": round(s.score, 3)}
                for s in decision.signals
            ],
            **({"explain": {"opened": list(decision.explain.opened), "ranking": list(decision.explain.ranking),
                            "left_out": list(decision.explain.left_out)}} if decision.explain else {}),
        }
    if isinstance(decision, Alert):
        return {
            "kind": "alert",
            "ts": decision.ts,
            "incident_id": decision.incident_id,
            "status": decision.status.value,
            "labels": dict(decision.labels),
            "annotations": dict(decision.annotations),
        }
    return {
        "kind": "action",
        "ts": decision.ts,
        "incident_id": decision.incident_id,
        "type": decision.type,
        "target": dict(decision.target),
        "dry_run": decision.dry_run,
        "outcome": decision.outcome.value,
        "reason": decision.reason,
        **({"params": dict(decision.params)} if decision.params else {}),
    }


def _root_cause_out(rc: RootCause) -> dict[str, Any]:
    out: dict[str, Any] = {"service": rc.service, "score": round(rc.score, 4)}
    if rc.metric:
        out["metric"] = rc.metric
    if rc.template:
        out["template"] = rc.template
    if rc.evidence:
        out["evidence"] = list(rc.evidence)
    return out
