"""The synchronous pipeline: raw records in event-time order -> decisions.

One object wires the stages (see docs/architecture.md); it is pure and deterministic — the
same records give the same decisions — so replay and the live daemon run exactly this code.
The live shell (``aiops.runtime.live``) only adds I/O around it.

It is made of two halves that scale-out (docs/scale-out.md) runs in different places:

* :class:`DetectHalf` — reorder buffer, metric deriver, metric detector, log stage and drift
  monitor: everything that learns from raw telemetry, so it can run once per Kafka partition.
  Per released record: metric samples go to the deriver, log lines to the log stage, a model's
  predictions to the drift monitor; their signals and the change events are kept, in order,
  for the step they fall in. Whenever event time passes the end of an aligned step, that step is
  closed: its derived points are scored, the log stage and drift monitor tick, and the step comes
  out as one :class:`ClosedStep` (step time + every signal and change event, in order).
* :class:`CorrelateHalf` — correlator and decider: for each closed step, the signals and
  changes go to the correlator, the correlator ticks, and each incident record it returns is
  turned into alerts and actions by the decider. Scale-out runs one of these for all partitions.

:class:`Pipeline` hands each closed step of its detect half straight to its correlate half,
which is exactly what the single daemon and replay run.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass, field
from operator import attrgetter

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

_ts = attrgetter("ts")

MAX_CLOSE_STEPS = 10_000
"""After a longer silence only the last this many steps are closed: nothing happened in between."""


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


StepItem = Signal | ChangeEvent
"""What a closed step carries to the correlator: signals (``on_signal``) and changes (``on_change``)."""


@dataclass(frozen=True, slots=True)
class ClosedStep:
    """One aligned step the detect half closed: ``index * step_s`` is its time.

    ``items`` are the signals and change events the correlator must take before it ticks at
    this step, in the order the detect half produced them (records of the step's window in
    event-time order, then the detector's, log stage's and drift monitor's signals of the step).
    """

    index: int
    step_s: float
    items: tuple[StepItem, ...] = ()

    @property
    def ts(self) -> float:
        return self.index * self.step_s


class DetectHalf:
    """Reorder buffer, deriver, metric detector, log stage and drift monitor: records -> closed steps.

    ``stats`` may be shared with a :class:`CorrelateHalf` (the whole pipeline does); this half
    counts records, steps, points and signals in it.
    """

    def __init__(
        self, settings: Settings, rules: Rules, rejects: Rejects, *, step_s: float | None = None,
        stats: PipelineStats | None = None,
    ) -> None:
        self.settings = settings
        self.step_s = float(step_s or settings.runtime.step_s)
        self.rejects = rejects
        self.stats = stats if stats is not None else PipelineStats()
        rt = settings.runtime
        self.reorder = ReorderBuffer(rt.lateness_s, rejects)
        self.deriver = MetricDeriver(self.step_s, rt.stale_steps, rt.max_gap_steps, rejects)
        self.detect = MetricDetectStage(settings.detect, rules.detector_overrides)
        self.logs = LogStage(settings.logs)
        self.drift = DriftMonitor(settings.drift)
        self._next_step: int | None = None  # first aligned step not yet closed
        self._pending: list[StepItem] = []  # signals and changes of the step not yet closed

    @property
    def next_step(self) -> int | None:
        """The first aligned step not yet closed (``None`` before the first record)."""
        return self._next_step

    # -- input ---------------------------------------------------------------------------

    def feed(self, record: Record | PredictionRecord) -> list[ClosedStep]:
        """Accept one record (any order within the lateness bound); return the steps it closes."""
        return self._process(self.reorder.push(record))

    def feed_many(self, records: Iterable[Record | PredictionRecord]) -> list[ClosedStep]:
        # One call per batch: the released sequence is the one single pushes give, and _process
        # depends only on that sequence.
        return self._process(self.reorder.push_many(records))

    def advance(self, event_ts: float) -> list[ClosedStep]:
        """Move event time forward with no new record (idle sources in live mode)."""
        out = self._process(self.reorder.advance(event_ts))
        out.extend(self._close_steps_before(self.reorder.watermark))
        return out

    def finish(self) -> list[ClosedStep]:
        """End of input: release everything and close every step that has data."""
        out = self._process(self.reorder.drain())
        if self._next_step is not None and self.stats.last_ts > -math.inf:
            out.extend(self._close_steps_before(self.stats.last_ts + self.step_s))
        return out

    # -- stages --------------------------------------------------------------------------

    def _process(self, records: list[Record | PredictionRecord]) -> list[ClosedStep]:
        if not records:
            return []
        out: list[ClosedStep] = []
        stats = self.stats
        step_s = self.step_s
        # Released records are in event-time order (the reorder buffer's contract): the batch's
        # first and last are its extremes, and the records before the next step boundary are
        # found by bisection, so the per-record work is only the stage each record goes to.
        if records[0].ts < stats.first_ts:
            stats.first_ts = records[0].ts
        if records[-1].ts > stats.last_ts:
            stats.last_ts = records[-1].ts
        # A step s covers [(s - 1/2) * step, (s + 1/2) * step); it closes once a record at or past its end arrives.
        boundary = (self._next_step + 0.5) * step_s if self._next_step is not None else -math.inf
        n = len(records)
        i = 0
        while i < n:
            ts = records[i].ts
            if ts >= boundary:
                if self._next_step is None:
                    self._next_step = math.floor(ts / step_s + 0.5)
                else:
                    out.extend(self._close_steps_before(ts))
                boundary = (self._next_step + 0.5) * step_s
            # records[i] is in the step now being filled (as when fed one by one, it is not
            # checked against the new boundary again); the run ends before the next crossing.
            end = bisect_left(records, boundary, i + 1, n, key=_ts) if records[-1].ts >= boundary else n
            run = records if i == 0 and end == n else records[i:end]
            samples = [r for r in run if r.__class__ is MetricSample]
            if len(samples) == len(run):
                stats.metric_samples += len(samples)
                self.deriver.add_many(samples)
            else:
                self._dispatch(run)
            i = end
        return out

    def _dispatch(self, records: list[Record | PredictionRecord]) -> None:
        """Each record to its stage, in order: consecutive metric samples go to the deriver together."""
        stats = self.stats
        samples: list[MetricSample] = []
        for record in records:
            if isinstance(record, MetricSample):
                samples.append(record)
                continue
            if samples:
                stats.metric_samples += len(samples)
                self.deriver.add_many(samples)
                samples = []
            if isinstance(record, LogRecord):
                stats.log_lines += 1
                self._signals(self.logs.process(record))
            elif isinstance(record, ChangeEvent):
                stats.change_events += 1
                self._pending.append(record)
            elif isinstance(record, PredictionRecord):
                stats.predictions += 1
                self._signals(self.drift.process(record))
        if samples:
            stats.metric_samples += len(samples)
            self.deriver.add_many(samples)

    def _close_steps_before(self, ts: float) -> list[ClosedStep]:
        """Close every aligned step whose window ends at or before ``ts``."""
        if self._next_step is None:
            return []
        last = math.floor(ts / self.step_s - 0.5)
        if last < self._next_step:
            return []
        batches: dict[float, list[SeriesPoint]] = dict(self.deriver.flush(ts))
        out: list[ClosedStep] = []
        first = self._next_step
        if last - first > MAX_CLOSE_STEPS:
            first = last - MAX_CLOSE_STEPS
        for step in range(first, last + 1):
            step_ts = step * self.step_s
            points = batches.get(step_ts, [])
            self.stats.steps += 1
            self.stats.points += len(points)
            if points:
                self._signals(self.detect.process(step_ts, points))
            self._signals(self.logs.tick(step_ts))
            self._signals(self.drift.tick(step_ts))
            out.append(ClosedStep(step, self.step_s, tuple(self._pending)))
            self._pending = []
        self._next_step = last + 1
        return out

    def _signals(self, signals: list[Signal]) -> None:
        if not signals:
            return
        by_kind = self.stats.signals_by_kind
        for signal in signals:
            self.stats.signals += 1
            by_kind[signal.kind.value] = by_kind.get(signal.kind.value, 0) + 1
            self._pending.append(signal)


class CorrelateHalf:
    """Correlator and decider: closed steps -> incidents, alerts and actions (in event-time order)."""

    def __init__(
        self, settings: Settings, rules: Rules, topology: Topology, *, stats: PipelineStats | None = None,
    ) -> None:
        self.settings = settings
        self.stats = stats if stats is not None else PipelineStats()
        self.correlator = Correlator(settings.correlate, topology)
        self.decider = Decider(rules, settings.act)

    def on_step(self, step: ClosedStep) -> list[Decision]:
        """Give the correlator the step's signals and changes, tick it, and decide on what it returns."""
        correlator = self.correlator
        for item in step.items:
            if isinstance(item, Signal):
                correlator.on_signal(item)
            else:
                correlator.on_change(item)
        out: list[Decision] = []
        for incident in correlator.tick(step.ts):
            self.stats.incidents += 1
            out.append(incident)
            for decision in self.decider.on_incident(incident):
                out.append(decision)
                if isinstance(decision, Alert):
                    self.stats.alerts += 1
                else:
                    self.stats.actions += 1
        return out

    def on_steps(self, steps: Iterable[ClosedStep]) -> list[Decision]:
        out: list[Decision] = []
        for step in steps:
            out.extend(self.on_step(step))
        return out


class Pipeline:
    """Wires deriver, detectors, log miner, correlator and decider behind a reorder buffer.

    ``step_s`` overrides ``settings.runtime.step_s`` (a scenario names its own scrape step).
    The stages stay reachable as attributes (``pipeline.detect``, ``pipeline.correlator``, ...),
    which read and replace them in the half that owns them.
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
        stats = PipelineStats()
        self.detect_half = DetectHalf(settings, rules, rejects, step_s=self.step_s, stats=stats)
        self.correlate_half = CorrelateHalf(settings, rules, topology, stats=stats)

    # -- input ---------------------------------------------------------------------------

    def feed(self, record: Record | PredictionRecord) -> list[Decision]:
        """Accept one record (any order within the lateness bound); return decisions it completes."""
        return self.correlate_half.on_steps(self.detect_half.feed(record))

    def feed_many(self, records: Iterable[Record | PredictionRecord]) -> list[Decision]:
        return self.correlate_half.on_steps(self.detect_half.feed_many(records))

    def advance(self, event_ts: float) -> list[Decision]:
        """Move event time forward with no new record (idle sources in live mode)."""
        return self.correlate_half.on_steps(self.detect_half.advance(event_ts))

    def finish(self) -> list[Decision]:
        """End of input: release everything and close every step that has data."""
        return self.correlate_half.on_steps(self.detect_half.finish())

    # -- the stages, wherever they live ----------------------------------------------------

    @property
    def stats(self) -> PipelineStats:
        return self.detect_half.stats

    @stats.setter
    def stats(self, value: PipelineStats) -> None:
        self.detect_half.stats = self.correlate_half.stats = value

    @property
    def reorder(self) -> ReorderBuffer:
        return self.detect_half.reorder

    @reorder.setter
    def reorder(self, value: ReorderBuffer) -> None:
        self.detect_half.reorder = value

    @property
    def deriver(self) -> MetricDeriver:
        return self.detect_half.deriver

    @deriver.setter
    def deriver(self, value: MetricDeriver) -> None:
        self.detect_half.deriver = value

    @property
    def detect(self) -> MetricDetectStage:
        return self.detect_half.detect

    @detect.setter
    def detect(self, value: MetricDetectStage) -> None:
        self.detect_half.detect = value

    @property
    def logs(self) -> LogStage:
        return self.detect_half.logs

    @logs.setter
    def logs(self, value: LogStage) -> None:
        self.detect_half.logs = value

    @property
    def drift(self) -> DriftMonitor:
        return self.detect_half.drift

    @drift.setter
    def drift(self, value: DriftMonitor) -> None:
        self.detect_half.drift = value

    @property
    def correlator(self) -> Correlator:
        return self.correlate_half.correlator

    @correlator.setter
    def correlator(self, value: Correlator) -> None:
        self.correlate_half.correlator = value

    @property
    def decider(self) -> Decider:
        return self.correlate_half.decider

    @decider.setter
    def decider(self, value: Decider) -> None:
        self.correlate_half.decider = value
