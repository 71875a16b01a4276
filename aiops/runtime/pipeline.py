"""The synchronous pipeline: raw records in event-time order -> decisions.

One object wires the stages (see docs/architecture.md); it is pure and deterministic — the
same records give the same decisions — so replay and the live daemon run exactly this code.
The live shell (``aiops.runtime.live``) only adds I/O around it.

Per released record: metric samples go to the deriver, log lines to the log stage and a
model's predictions to the drift monitor (their signals go straight to the correlator),
change events to the correlator. Whenever event time
passes the end of an aligned step, that step is closed: its derived points are scored by the
metric detector, the log stage ticks, the correlator ticks, and each incident record it
returns is turned into alerts and actions by the decider.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

from aiops.config import Settings
from aiops.correlate.correlator import Correlator
from aiops.correlate.topology import Topology
from aiops.decide.engine import Decider
from aiops.decide.rules import Rules
from aiops.decode.metrics import MetricDeriver
from aiops.detect.stage import MetricDetectStage
from aiops.drift.monitor import DriftMonitor
from aiops.drift.records import PredictionRecord
from aiops.logs.stage import LogStage
from aiops.observe.rejects import Rejects
from aiops.records import Alert, ChangeEvent, Decision, LogRecord, MetricSample, Record, SeriesPoint, Signal
from aiops.runtime.reorder import ReorderBuffer


@dataclass
class PipelineStats:
    """Counts for the replay summary and the live self-metrics."""

    metric_samples: int = 0
    log_lines: int = 0
    change_events: int = 0
    predictions: int = 0
    steps: int = 0
    points: int = 0
    signals: int = 0
    incidents: int = 0
    alerts: int = 0
    actions: int = 0
    first_ts: float = math.inf
    last_ts: float = -math.inf
    signals_by_kind: dict[str, int] = field(default_factory=dict)


class Pipeline:
    """Wires deriver, detectors, log miner, correlator and decider behind a reorder buffer.

    ``step_s`` overrides ``settings.runtime.step_s`` (a scenario names its own scrape step).
    """

    def __init__(
        self,
        settings: Settings,
        rules: Rules,
        topology: Topology,
        rejects: Rejects,
        *,
        step_s: float | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.settings = settings
        self.step_s = float(step_s or settings.runtime.step_s)
        self.rejects = rejects
        self.registry = registry
        self.stats = PipelineStats()
        rt = settings.runtime
        self.reorder = ReorderBuffer(rt.lateness_s, rejects)
        self.deriver = MetricDeriver(self.step_s, rt.stale_steps, rt.max_gap_steps, rejects)
        self.detect = MetricDetectStage(settings.detect, rules.detector_overrides)
        self.logs = LogStage(settings.logs)
        self.drift = DriftMonitor(settings.drift)
        self.correlator = Correlator(settings.correlate, topology)
        self.decider = Decider(rules, settings.act)
        self._next_step: int | None = None  # first aligned step not yet closed

    # -- input ---------------------------------------------------------------------------

    def feed(self, record: Record | PredictionRecord) -> list[Decision]:
        """Accept one record (any order within the lateness bound); return decisions it completes."""
        return self._process(self.reorder.push(record))

    def feed_many(self, records: Iterable[Record | PredictionRecord]) -> list[Decision]:
        out: list[Decision] = []
        for record in records:
            released = self.reorder.push(record)
            if released:
                out.extend(self._process(released))
        return out

    def advance(self, event_ts: float) -> list[Decision]:
        """Move event time forward with no new record (idle sources in live mode)."""
        out = self._process(self.reorder.advance(event_ts))
        out.extend(self._close_steps_before(self.reorder.watermark))
        return out

    def finish(self) -> list[Decision]:
        """End of input: release everything and close every step that has data."""
        out = self._process(self.reorder.drain())
        if self._next_step is not None and self.stats.last_ts > -math.inf:
            out.extend(self._close_steps_before(self.stats.last_ts + self.step_s))
        return out

    # -- stages --------------------------------------------------------------------------

    def _process(self, records: list[Record | PredictionRecord]) -> list[Decision]:
        out: list[Decision] = []
        stats = self.stats
        step_s = self.step_s
        # A step s covers [(s - 1/2) * step, (s + 1/2) * step); it closes once a record at or past its end arrives.
        boundary = (self._next_step + 0.5) * step_s if self._next_step is not None else -math.inf
        for record in records:
            ts = record.ts
            if ts >= boundary:
                if self._next_step is None:
                    self._next_step = math.floor(ts / step_s + 0.5)
                else:
                    out.extend(self._close_steps_before(ts))
                boundary = (self._next_step + 0.5) * step_s
            if ts < stats.first_ts:
                stats.first_ts = ts
            if ts > stats.last_ts:
                stats.last_ts = ts
            if isinstance(record, MetricSample):
                stats.metric_samples += 1
                self.deriver.add(record)
            elif isinstance(record, LogRecord):
                stats.log_lines += 1
                self._signals(self.logs.process(record))
            elif isinstance(record, ChangeEvent):
                stats.change_events += 1
                self.correlator.on_change(record)
            elif isinstance(record, PredictionRecord):
                stats.predictions += 1
                self._signals(self.drift.process(record))
        return out

    def _close_steps_before(self, ts: float) -> list[Decision]:
        """Close every aligned step whose window ends at or before ``ts``."""
        if self._next_step is None:
            return []
        last = math.floor(ts / self.step_s - 0.5)
        if last < self._next_step:
            return []
        batches: dict[float, list[SeriesPoint]] = dict(self.deriver.flush(ts))
        out: list[Decision] = []
        first = self._next_step
        # After a long silence, only the last few steps matter: nothing happened in between.
        if last - first > 10_000:
            first = last - 10_000
        for step in range(first, last + 1):
            step_ts = step * self.step_s
            points = batches.get(step_ts, [])
            self.stats.steps += 1
            self.stats.points += len(points)
            if points:
                self._signals(self.detect.process(step_ts, points))
            self._signals(self.logs.tick(step_ts))
            self._signals(self.drift.tick(step_ts))
            for incident in self.correlator.tick(step_ts):
                self.stats.incidents += 1
                out.append(incident)
                for decision in self.decider.on_incident(incident):
                    out.append(decision)
                    if isinstance(decision, Alert):
                        self.stats.alerts += 1
                    else:
                        self.stats.actions += 1
        self._next_step = last + 1
        return out

    def _signals(self, signals: list[Signal]) -> None:
        if not signals:
            return
        by_kind = self.stats.signals_by_kind
        for signal in signals:
            self.stats.signals += 1
            by_kind[signal.kind.value] = by_kind.get(signal.kind.value, 0) + 1
            self.correlator.on_signal(signal)
