"""A whole :class:`~aiops.runtime.pipeline.Pipeline` as one snapshot, and back; or either half alone.

The snapshot composes every stage's own ``snapshot()`` (deriver, metric detector, log stage,
correlator, decider) with what the pipeline itself holds between records: the reorder buffer's
pending records and watermark, the step cursor (the first step not yet closed), the signals and
changes of the step not yet closed, and the counters. Scale-out (docs/scale-out.md) keeps the two
halves apart: :func:`snapshot_detect` / :func:`restore_detect` for a partition's
:class:`~aiops.runtime.pipeline.DetectHalf`, :func:`snapshot_correlate` /
:func:`restore_correlate` for the one :class:`~aiops.runtime.pipeline.CorrelateHalf`. A whole
pipeline's snapshot is the union of its halves' (same keys), so either half can also be restored
from it.
Restoring it into a *new* pipeline built with the same settings, rules and topology, then
feeding the rest of the input, gives exactly the decisions an uninterrupted run gives
(``tests/state/test_resume.py`` checks this on a generated scenario).

Restoring is all-or-nothing: every stage is rebuilt first and only then swapped in, so a state
the stages refuse (another version, another step) leaves the pipeline as it was and raises
:class:`IncompatibleState`. :func:`resume` turns that into "set the checkpoint aside and start
from the previous one (or cold)".

>>> import structlog
>>> from aiops.config import Settings
>>> from aiops.correlate.topology import Topology
>>> from aiops.decide.rules import parse_rules
>>> from aiops.observe.rejects import Rejects
>>> from aiops.records import MetricSample
>>> from aiops.runtime.pipeline import Pipeline
>>> from aiops.state.memory import MemoryCheckpointStore
>>> def new() -> Pipeline:
...     return Pipeline(Settings(), parse_rules({}), Topology(), Rejects(log_examples=False), step_s=15)
>>> p = new()
>>> _ = p.feed_many(MetricSample(t * 15.0, "up", (("service", "api"),), 1.0) for t in range(10))
>>> store = MemoryCheckpointStore(logger=structlog.wrap_logger(structlog.ReturnLogger()))
>>> checkpoint(p, store)
>>> q = new()
>>> cp = resume(q, store)
>>> cp.created_event_ts == p.reorder.watermark  # the event time the state covers
True
>>> q.stats.metric_samples, len(q.reorder)  # 6 samples released to the stages, 4 still waiting
(6, 4)
"""

from __future__ import annotations

import heapq
import itertools
import math
from dataclasses import asdict
from typing import Any

import numpy as np

from aiops.correlate.correlator import Correlator
from aiops.decide.engine import Decider
from aiops.decode.metrics import MetricDeriver
from aiops.detect.stage import MetricDetectStage
from aiops.drift.monitor import DriftMonitor
from aiops.drift.records import PredictionRecord
from aiops.logs.stage import LogStage
from aiops.records import ChangeEvent, LogRecord, MetricSample, Record
from aiops.runtime.pipeline import CorrelateHalf, DetectHalf, Pipeline, PipelineStats
from aiops.runtime.reorder import ReorderBuffer
from aiops.runtime.signals_topic import item_from_plain, item_to_plain
from aiops.state.base import CheckpointStore, Offsets
from aiops.state.envelope import Checkpoint

SNAPSHOT_VERSION = 1
_PACK_MIN = 64  # shorter lists stay JSON: arrays only pay off when there are many numbers

DETECT_STAGES = ("deriver", "detect", "logs", "drift")
CORRELATE_STAGES = ("correlator", "decider")
STAGES = DETECT_STAGES + CORRELATE_STAGES
"""Stage attributes holding state, each with ``snapshot()``/``from_snapshot()``."""

DETECT_COVERED = frozenset({*DETECT_STAGES, "reorder", "stats", "_next_step", "_pending"})
CORRELATE_COVERED = frozenset({*CORRELATE_STAGES, "stats"})
COVERED = frozenset({"detect_half", "correlate_half"})
"""Every attribute that changes while records flow (of a pipeline, and of each half); the rest is configuration.

A test compares these with the attributes of live objects, so a stage added there without
being added here fails loudly instead of being silently forgotten at restart.
"""


class IncompatibleState(ValueError):
    """A snapshot this build cannot restore (other version, other step, missing or malformed parts)."""


def snapshot_detect(h: DetectHalf) -> dict[str, Any]:
    """Everything a new detect half needs to continue exactly where ``h`` stands (plain data + arrays)."""
    # The stages' snapshots may share lists with live state: serialize (checkpoint) before feeding ``h`` again.
    return {
        "version": SNAPSHOT_VERSION,
        "step_s": h.step_s,
        "next_step": h._next_step,
        "stats": asdict(h.stats),
        "reorder": _reorder_out(h.reorder),
        "pending": [item_to_plain(x) for x in h._pending],
        **{name: getattr(h, name).snapshot() for name in DETECT_STAGES if name != "detect"},
        # Baselines are millions of numbers: as arrays the envelope stores them as bytes, not JSON text.
        "detect": _pack(h.detect.snapshot()),
    }


def snapshot_correlate(h: CorrelateHalf) -> dict[str, Any]:
    """Everything a new correlate half needs to continue where ``h`` stands."""
    return {"version": SNAPSHOT_VERSION, "stats": asdict(h.stats),
            **{name: getattr(h, name).snapshot() for name in CORRELATE_STAGES}}


def snapshot_pipeline(p: Pipeline) -> dict[str, Any]:
    """Everything a new pipeline needs to continue exactly where ``p`` stands (plain JSON-able data)."""
    return {**snapshot_correlate(p.correlate_half), **snapshot_detect(p.detect_half)}


def _pack(x: Any) -> Any:
    """Long numeric lists (and rectangular lists of them) as float64 arrays; everything else as is.

    Only for stages whose ``from_snapshot`` reads these lists with ``np.asarray`` (the metric
    detector): NaN stands in for ``None``, exactly what ``np.asarray(..., float)`` makes of it.
    """
    if isinstance(x, dict):
        return {k: _pack(v) for k, v in x.items()}
    if isinstance(x, list) and len(x) >= _PACK_MIN:
        try:
            return np.array(x, dtype=np.float64)
        except (ValueError, TypeError):  # strings, ragged rows: keep the list, pack what is inside
            return [_pack(v) for v in x]
    return x


def _check_version(data: dict[str, Any]) -> None:
    if data.get("version") != SNAPSHOT_VERSION:
        raise IncompatibleState(f"pipeline snapshot version {data.get('version')!r}, "
                                f"this build reads {SNAPSHOT_VERSION}")


def _stats_in(data: dict[str, Any]) -> PipelineStats:
    return PipelineStats(**{**data, "signals_by_kind": dict(data["signals_by_kind"])})


def _build_detect(h: DetectHalf, data: dict[str, Any]) -> dict[str, Any]:
    _check_version(data)
    if float(data["step_s"]) != h.step_s:
        raise IncompatibleState(f"state was saved with step {data['step_s']} s, this pipeline uses {h.step_s} s")
    s, rt = h.settings, h.settings.runtime
    next_step = data["next_step"]
    return {
        "deriver": MetricDeriver.from_snapshot(data["deriver"], h.step_s, rt.stale_steps, rt.max_gap_steps,
                                               h.rejects),
        "detect": MetricDetectStage.from_snapshot(data["detect"], s.detect, h.detect.overrides),
        "logs": LogStage.from_snapshot(data["logs"], s.logs),
        "drift": DriftMonitor.from_snapshot(data["drift"], s.drift),
        "reorder": _reorder_in(data["reorder"], rt.lateness_s, h),
        "stats": _stats_in(data["stats"]),
        # Older snapshots fed these straight to the correlator: nothing was pending then.
        "_pending": [item_from_plain(x) for x in data.get("pending", ())],
        "_next_step": None if next_step is None else int(next_step),
    }


def _build_correlate(h: CorrelateHalf, data: dict[str, Any]) -> dict[str, Any]:
    _check_version(data)
    s = h.settings
    return {
        "correlator": Correlator.from_snapshot(data["correlator"], s.correlate, h.correlator.topology),
        "decider": Decider.from_snapshot(data["decider"], h.decider.rules, s.act),
        "stats": _stats_in(data["stats"]),
    }


def _guarded(build: Any, h: Any, data: dict[str, Any]) -> dict[str, Any]:
    try:
        return dict(build(h, data))
    except IncompatibleState:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
        raise IncompatibleState(f"{type(exc).__name__}: {exc}") from exc


def restore_detect(h: DetectHalf, data: dict[str, Any]) -> None:
    """Replace ``h``'s state with ``data`` (from :func:`snapshot_detect` or :func:`snapshot_pipeline`).

    All or nothing: raises :class:`IncompatibleState` and leaves ``h`` untouched if unusable.
    """
    for name, value in _guarded(_build_detect, h, data).items():
        setattr(h, name, value)


def restore_correlate(h: CorrelateHalf, data: dict[str, Any]) -> None:
    """Replace ``h``'s state with ``data`` (from :func:`snapshot_correlate` or :func:`snapshot_pipeline`).

    ``h`` supplies today's settings, rules and topology (the saved topology is merged with it).
    All or nothing: raises :class:`IncompatibleState` and leaves ``h`` untouched if unusable.
    """
    for name, value in _guarded(_build_correlate, h, data).items():
        setattr(h, name, value)


def restore_pipeline(p: Pipeline, data: dict[str, Any]) -> None:
    """Replace ``p``'s state with ``data`` (from :func:`snapshot_pipeline`); all or nothing.

    ``p`` supplies today's settings, rules and topology (the saved topology is merged with it).
    Raises :class:`IncompatibleState` and leaves ``p`` untouched if the state cannot be used.
    """
    detect = _guarded(_build_detect, p.detect_half, data)
    correlate = _guarded(_build_correlate, p.correlate_half, data)
    correlate["stats"] = detect["stats"]  # one set of counters for the whole pipeline, as before the split
    for name, value in detect.items():
        setattr(p.detect_half, name, value)
    for name, value in correlate.items():
        setattr(p.correlate_half, name, value)


def checkpoint(p: Pipeline, store: CheckpointStore, offsets: Offsets | None = None) -> None:
    """Save ``p``'s state with the event time it covers (its watermark) and the source ``offsets``.

    ``offsets`` must be the positions *after* the last record fed to ``p``: a consumer commits
    them to Kafka only once this returns, and seeks to them after :func:`resume`.
    """
    wm = p.reorder.watermark
    store.save(snapshot_pipeline(p), event_ts=wm if math.isfinite(wm) else None, offsets=offsets)


def resume(p: Pipeline, store: CheckpointStore) -> Checkpoint | None:
    """Restore the newest checkpoint ``p`` can use; ``None`` (cold start) if there is none.

    A checkpoint whose state the stages refuse is set aside (counted as ``incompatible_state``)
    and the next older one is tried, so a bad checkpoint costs a longer replay, never a crash.
    """
    while True:
        cp = store.load_checkpoint()
        if cp is None:
            return None
        try:
            restore_pipeline(p, cp.state)
        except IncompatibleState as exc:
            store.set_aside("incompatible_state", str(exc))
            continue
        return cp


# -- the reorder buffer and raw records --------------------------------------------------------
# ReorderBuffer has no snapshot of its own yet: its pending records and watermark are read here.

def _reorder_out(rb: ReorderBuffer) -> dict[str, Any]:
    pending = sorted(rb._heap, key=lambda e: (e[0], e[1]))  # (ts, arrival seq): the release order
    return {"lateness_s": rb.lateness_s, "max_ts": rb._max_ts, "released": rb._released,
            "records": [_record_out(r) for _, _, r in pending]}


def _reorder_in(data: dict[str, Any], lateness_s: float, h: DetectHalf) -> ReorderBuffer:
    rb = ReorderBuffer(lateness_s, h.rejects)
    rb._heap = [(r.ts, i, r) for i, r in enumerate(_record_in(x) for x in data["records"])]
    heapq.heapify(rb._heap)  # already sorted, so already a heap; cheap insurance
    rb._seq = itertools.count(len(rb._heap))
    rb._max_ts = float(data["max_ts"])
    rb._released = float(data["released"])
    return rb


def _record_out(r: Record | PredictionRecord) -> list[Any]:
    if isinstance(r, PredictionRecord):
        return ["p", r.ts, r.model, [list(f) for f in r.features], r.prediction, r.label, r.id, r.version, r.service]
    if isinstance(r, MetricSample):
        return ["m", r.ts, r.name, [list(x) for x in r.labels], r.value]
    if isinstance(r, LogRecord):
        return ["l", r.ts, r.service, r.message, r.level]
    return ["e", r.ts, r.type, r.service, [list(x) for x in r.attrs]]


def _record_in(x: list[Any]) -> Record | PredictionRecord:
    kind = x[0]
    if kind == "p":
        return PredictionRecord(float(x[1]), str(x[2]), tuple((str(k), v) for k, v in x[3]), *x[4:9])
    if kind == "m":
        return MetricSample(float(x[1]), str(x[2]), tuple((str(k), str(v)) for k, v in x[3]), float(x[4]))
    if kind == "l":
        return LogRecord(float(x[1]), str(x[2]), str(x[3]), x[4])
    if kind == "e":
        return ChangeEvent(float(x[1]), str(x[2]), x[3], tuple((str(k), str(v)) for k, v in x[4]))
    raise ValueError(f"unknown record kind {kind!r} in reorder state")
