"""The metric detection stage: aligned ``SeriesPoint`` batches in, metric ``Signal`` onsets/ends out.

Scoring is done by :class:`~aiops.detect.core.BatchScorer` for all series of a step at once;
this module adds the per-series defaults (which direction is bad, scale floors), the
per-metric overrides, and the onset/recovery state machine, itself kept in numpy arrays:

* a series *deviates* at a step when its robust deviation ``|z|`` reaches
  ``settings.confirm_z`` in a direction that is bad for it;
* an onset needs a run of ``min_duration`` consecutive deviating steps (same direction) in
  which the novelty score reached ``settings.threshold`` at least once; it is reported with
  the first deviating step of the run as its ``ts``;
* it ends after ``recover_steps`` consecutive calm steps (same ``id``, ``end_ts`` set).

Gaps (NaN values or a series missing from a step) neither advance nor reset the counters.

>>> from aiops.config import DetectSettings
>>> from aiops.records import PointKind, SeriesPoint
>>> stage = MetricDetectStage(DetectSettings(warmup=10, min_duration=2, recover_steps=2))
>>> def pt(t, v):
...     return [SeriesPoint(t, "api/p99", "api", "http_request_duration_seconds:p99", PointKind.QUANTILE, v)]
>>> out = [s for t in range(30) for s in stage.process(t * 15.0, pt(t * 15.0, 0.2 + 0.01 * (t % 3)))]
>>> out += [s for t in range(30, 33) for s in stage.process(t * 15.0, pt(t * 15.0, 0.9))]
>>> [(s.ts, s.direction, s.end_ts) for s in out]
[(450.0, 'up', None)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from aiops.config import DetectSettings
from aiops.detect.core import FEATURES, BatchScorer, ScoreBatch, ScorerParams
from aiops.detect.overrides import MetricOverride, resolve
from aiops.records import PointKind, SeriesPoint, Signal, SignalKind


@dataclass(frozen=True, slots=True)
class SeriesDefaults:
    """Which direction is bad and how small the scale may get, for one kind of series."""

    up: bool
    down: bool
    rel_floor: float
    abs_floor: float


_UP_ONLY_WORDS = ("memory", "cpu", "restart", "latency", "duration", "error", "fail")


def series_defaults(kind: PointKind, metric: str) -> SeriesDefaults:
    """Direction and scale floors by kind and name.

    Latency quantiles and error ratios are bad only going up; throughput is bad both ways (a
    drop is an outage, a surge an overload); memory, CPU and restarts are bad going up.
    An error ratio's scale is floored at 1 percentage point so that one extra error on a quiet
    service does not alert.

    >>> series_defaults(PointKind.ERROR_RATIO, "http_requests_total:error_ratio")
    SeriesDefaults(up=True, down=False, rel_floor=0.0, abs_floor=0.01)
    >>> series_defaults(PointKind.GAUGE, "container_memory_working_set_bytes").down
    False
    """
    name = metric.lower()
    if kind is PointKind.ERROR_RATIO:
        return SeriesDefaults(True, False, 0.0, 0.01)
    if kind is PointKind.QUANTILE:
        return SeriesDefaults(True, False, 0.15, 1e-3)
    up_only = any(w in name for w in _UP_ONLY_WORDS)
    if kind is PointKind.RATE:
        # traffic breathes by tens of percent (bursts, the daily ramp): only a change of about
        # half the level is worth a page, whatever the noise
        return SeriesDefaults(True, not up_only, 0.15, 1e-2)
    if kind is PointKind.LOG_RATE:
        return SeriesDefaults(True, True, 0.05, 0.05)
    return SeriesDefaults(True, not up_only, 0.01, 1e-9)


class MetricDetectStage:
    """Streaming per-series anomaly detection, batched across series (see module docstring)."""

    SNAPSHOT_VERSION = 2

    def __init__(self, settings: DetectSettings, overrides: Sequence[MetricOverride] = (),
                 params: ScorerParams | None = None) -> None:
        self.settings = settings
        self.overrides = tuple(overrides)
        self.scorer = BatchScorer(params or ScorerParams(warmup=settings.warmup))
        self._index: dict[str, int] = {}
        self._meta: list[tuple[str, str | None, str, PointKind]] = []  # key, service, metric, kind
        self._cap = 0
        self._st: dict[str, np.ndarray] = {}
        for name in ("anom_run", "calm_run", "active", "active_ts", "onset_ts", "armed", "peak", "min_dur",
                     "on_value", "on_base", "on_z", "on_feature"):
            self._st[name] = np.zeros(0)
        self._grow(16)
        self.duplicates = 0  # points whose key repeated within one step (the last one wins)

    def _grow(self, need: int) -> None:
        if need <= self._cap:
            return
        cap = max(need, 2 * self._cap, 16)
        for name, arr in self._st.items():
            new = np.zeros(cap)
            new[: len(self._meta)] = arr[: len(self._meta)]
            self._st[name] = new
        self._cap = cap

    def _register(self, p: SeriesPoint) -> int:
        i = int(self.scorer.add_series(1)[0])
        self._grow(i + 1)
        self._meta.append((p.key, p.service, p.metric, p.kind))
        self._index[p.key] = i
        self._configure(i)
        return i

    def _configure(self, i: int) -> None:
        """Apply the kind defaults and today's overrides to series ``i``."""
        _, service, metric, kind = self._meta[i]
        d = series_defaults(kind, metric)
        o = resolve(self.overrides, metric, service)
        up, down = d.up, d.down
        if o.direction is not None:
            up, down = o.direction in ("up", "both"), o.direction in ("down", "both")
        self.scorer.configure(np.array([i]), up=up, down=down, sensitivity=o.sensitivity or 1.0,
                              rel_floor=d.rel_floor, abs_floor=d.abs_floor)
        self._st["min_dur"][i] = o.min_duration or self.settings.min_duration

    @property
    def series_count(self) -> int:
        return len(self._meta)

    def process(self, ts: float, points: Sequence[SeriesPoint]) -> list[Signal]:
        """Score one aligned step (all points share ``ts``); return onsets and recoveries.

        A key repeated within the step is counted in ``duplicates``; its last value is scored.

        >>> from aiops.config import DetectSettings
        >>> one, two = MetricDetectStage(DetectSettings()), MetricDetectStage(DetectSettings())
        >>> p = lambda key, v: SeriesPoint(0.0, key, "api", "queue_depth", PointKind.GAUGE, v)
        >>> _ = one.process(0.0, [p("x", 1.0), p("y", 5.0), p("x", 2.0)])
        >>> _ = two.process(0.0, [p("x", 2.0), p("y", 5.0)])
        >>> one.duplicates, repr(one.snapshot()) == repr(two.snapshot()).replace("'duplicates': 0", "'duplicates': 1")
        (1, True)
        """
        if not points:
            return []
        index = self._index
        slots = list(map(index.get, [p.key for p in points]))
        if None in slots:  # new series, registered in the order they first appear
            for k, p in enumerate(points):
                if slots[k] is None:
                    i = index.get(p.key)
                    slots[k] = i if i is not None else self._register(p)
        if len(set(slots)) == len(slots):
            idx = np.array(slots, dtype=np.intp)
            vals = np.array([p.value for p in points], dtype=np.float64)
        else:  # a key repeated within the step: the last value wins, in the place of the first
            batch: dict[int, float] = {}
            for i, p in zip(slots, points, strict=True):
                if i in batch:
                    self.duplicates += 1
                batch[i] = p.value
            idx = np.fromiter(batch.keys(), dtype=np.intp, count=len(batch))
            vals = np.fromiter(batch.values(), dtype=np.float64, count=len(batch))
        out = self.scorer.update(idx, vals, ts)
        return self._transitions(ts, idx, vals, out)

    def _transitions(self, ts: float, idx: np.ndarray, vals: np.ndarray, out: ScoreBatch) -> list[Signal]:
        st = self._st
        valid = np.isfinite(vals)
        z = out.z
        dir_ok = self.scorer.bad_direction(idx, z)
        deviating = valid & dir_ok & (np.abs(z) >= self.settings.confirm_z)
        calm = valid & ~deviating
        sign = np.sign(z)
        run = st["anom_run"][idx]
        same = np.sign(run) == sign
        starting = deviating & ~same
        new_run = np.where(deviating, np.where(same, run + sign, sign), np.where(calm, 0.0, run))
        st["anom_run"][idx] = new_run
        if starting.any():
            s_idx = idx[starting]
            st["onset_ts"][s_idx] = ts
            st["peak"][s_idx] = 0.0
            st["armed"][s_idx] = 0.0
        # an onset needs novelty (the series does something it has not done before) and a
        # deviation from its baseline that lasts; a slow trend has the first, a repeat of a
        # known pattern only the second
        novel = deviating & (out.score >= self.settings.threshold)
        st["armed"][idx[novel]] = 1.0
        better = deviating & (out.score >= st["peak"][idx])
        b_idx = idx[better]
        st["peak"][b_idx] = out.score[better]
        st["on_value"][b_idx] = vals[better]
        st["on_base"][b_idx] = out.baseline[better]
        st["on_z"][b_idx] = z[better]
        st["on_feature"][b_idx] = out.feature[better]
        active = st["active"][idx] > 0
        calm_run = np.where(calm & active, st["calm_run"][idx] + 1, np.where(deviating, 0.0, st["calm_run"][idx]))
        st["calm_run"][idx] = calm_run
        onset = (deviating & ~active & (st["armed"][idx] > 0)
                 & (np.abs(new_run) >= st["min_dur"][idx]))
        recover = calm & active & (calm_run >= self.settings.recover_steps)
        signals: list[Signal] = []
        for k in np.flatnonzero(onset | recover):
            i = int(idx[k])
            key, service, metric, _ = self._meta[i]
            if onset[k]:
                onset_ts = float(st["onset_ts"][i])
                st["active"][i] = 1.0
                st["active_ts"][i] = onset_ts
                st["calm_run"][i] = 0.0
                peak = float(st["peak"][i])
                signals.append(Signal(id=f"m:{key}:{int(onset_ts)}", ts=onset_ts, kind=SignalKind.METRIC,
                                      service=service, name=metric, score=round(peak, 4),
                                      direction="up" if z[k] >= 0 else "down",
                                      evidence=(_evidence(metric, float(st["on_value"][i]), float(st["on_base"][i]),
                                                          float(st["on_z"][i]), int(st["on_feature"][i]), peak),)))
            else:
                onset_ts = float(st["active_ts"][i])
                st["active"][i] = 0.0
                signals.append(Signal(id=f"m:{key}:{int(onset_ts)}", ts=onset_ts, kind=SignalKind.METRIC,
                                      service=service, name=metric, score=round(float(st["peak"][i]), 4),
                                      end_ts=ts, evidence=(f"{metric} back to normal ({vals[k]:.3g})",)))
        return signals

    # -- state ---------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Versioned state of every series; per-series numbers as numpy array copies (see
        :meth:`BatchScorer.snapshot`), names and keys as plain lists."""
        n = len(self._meta)
        return {
            "version": self.SNAPSHOT_VERSION,
            "scorer": self.scorer.snapshot(),
            "series": [[k, s, m, kind.value] for k, s, m, kind in self._meta],
            "state": {k: v[:n].copy() for k, v in self._st.items()},
            "duplicates": self.duplicates,
        }

    @classmethod
    def from_snapshot(cls, data: dict[str, Any], settings: DetectSettings,
                      overrides: Sequence[MetricOverride] = ()) -> MetricDetectStage:
        """Rebuild the stage from :meth:`snapshot` output (arrays or the older lists); today's settings
        and overrides apply."""
        if data.get("version") != cls.SNAPSHOT_VERSION:
            raise ValueError(f"unsupported detect snapshot version {data.get('version')!r}")
        obj = cls(settings, overrides)
        obj.scorer = BatchScorer.from_snapshot(data["scorer"])
        meta = [(str(k), s, str(m), PointKind(kind)) for k, s, m, kind in data["series"]]
        obj._grow(len(meta))  # before _meta is set: _grow copies len(_meta) rows of the old (16-row) arrays
        obj._meta = meta
        obj._index = {m[0]: i for i, m in enumerate(obj._meta)}
        for k, v in data["state"].items():
            if k in obj._st:
                obj._st[k][: len(obj._meta)] = np.asarray(v, dtype=np.float64)
        # directions, sensitivities and durations follow today's rules, not the checkpoint's
        for i in range(len(obj._meta)):
            obj._configure(i)
        obj.duplicates = int(data.get("duplicates", 0))
        return obj


_FEATURE_WORDS = {
    "value": "beyond its range so far",
    "season": "unusual for the time of day",
    "shift": "level shift",
    "season_shift": "sustained departure from the daily pattern",
    "volatility": "volatility change",
    "transition": "a jump between levels it rarely makes",
    "deviation": "a sustained deviation unusual for it",
}


def _evidence(metric: str, value: float, base: float, z: float, feature: int, score: float) -> str:
    if np.isfinite(base) and abs(base) > 1e-12:
        pct = f" ({(value - base) / abs(base) * 100:+.0f}%)"
    else:
        pct = ""
    what = _FEATURE_WORDS[FEATURES[feature]] if 0 <= feature < len(FEATURES) else "deviation"
    return f"{metric} {value:.3g} vs baseline {base:.3g}{pct}, {what}, z {z:+.1f}, score {score:.2f}"
