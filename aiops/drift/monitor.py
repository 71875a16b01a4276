"""The drift monitor: prediction-log records in, drift signal onsets and ends out (pure, event time).

For each model (and model version) the first ``reference_size`` predictions form the reference
window. Every ``eval_every_s`` of event time the last ``window_s`` of predictions are compared
with it:

- **data drift**: per feature, PSI with the KS test (numeric) or chi-square (categorical);
- **prediction drift**: the same on the model's output;
- **concept drift**: river's ADWIN on the per-prediction error once labels arrive, reported when
  it detects a change and its estimate is above the reference error;
- **performance decay**: the windowed error of labelled predictions above the reference error
  (the first ``reference_size`` labels) by ``error_margin``, and significantly so (Welch's t-test).

Each kind becomes one ``Signal(kind=drift)`` per model, confirmed after ``onset_evals``
drifting evaluations and ended after ``clear_evals`` calm ones (with a lower PSI to clear than
to fire, so it does not flap). A new model version ends every open signal of the model and
starts a new reference: the retrained model is judged against the data it now serves.

>>> import random
>>> random.seed(3)
>>> mon = DriftMonitor(DriftSettings(reference_size=300, min_window=100, window_s=300, eval_every_s=60))
>>> out = []
>>> for i in range(1500):
...     shift = 2.0 if i >= 600 else 0.0
...     _ = mon.process(PredictionRecord(ts=float(i), model="m", features=(("x", random.gauss(shift, 1)),),
...                                      prediction=0.0))
...     out += mon.tick(float(i))
>>> [(s.name, s.ts, s.end_ts is None) for s in out]
[('m:data_drift', 660.0, True)]
>>> out[0].evidence[0].startswith("feature x: PSI")
True
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from river import drift as river_drift
from scipy import stats as scipy_stats

from aiops.config import DriftSettings
from aiops.drift import stats
from aiops.drift.records import PredictionRecord, Value
from aiops.records import Signal, SignalKind

PREDICTION = "__prediction__"
KINDS = ("data", "prediction", "concept", "performance")
__all__ = ["DriftMonitor", "DriftSettings", "KINDS"]


@dataclass
class _Reference:
    numeric: dict[str, np.ndarray]
    edges: dict[str, np.ndarray]
    categorical: dict[str, Counter[str]]


@dataclass
class _Episode:
    """Hysteresis state of one drift kind of one model."""

    streak: int = 0  # consecutive drifting (while inactive) or calm (while active) evaluations
    first_ts: float | None = None  # first evaluation of the current drifting streak
    signal: Signal | None = None


@dataclass
class _Model:
    version: str | None
    service: str
    ref_rows: list[dict[str, Value]] = field(default_factory=list)
    reference: _Reference | None = None
    window: deque[tuple[float, dict[str, Value]]] = field(default_factory=deque)
    ref_errors: list[float] = field(default_factory=list)
    errors: deque[tuple[float, float]] = field(default_factory=deque)
    adwin: river_drift.ADWIN | None = None
    adwin_changed: bool = False
    last_eval: float = -math.inf
    episodes: dict[str, _Episode] = field(default_factory=lambda: {k: _Episode() for k in KINDS})


def _error(prediction: Value, label: Value) -> float:
    if isinstance(prediction, float) and isinstance(label, float) and not (
            prediction in (0.0, 1.0) and label in (0.0, 1.0)):
        return abs(prediction - label)
    return 0.0 if prediction == label else 1.0


class DriftMonitor:
    """Pure, synchronous drift detection over prediction-log records (see the module docstring)."""

    def __init__(self, settings: DriftSettings) -> None:
        self.s = settings
        self._models: dict[str, _Model] = {}
        self._pending: OrderedDict[tuple[str, str], tuple[Value, str | None]] = OrderedDict()
        self.skipped = Counter[str]()

    def process(self, rec: PredictionRecord) -> list[Signal]:
        """Take one prediction or late label; returns the ends of signals a new model version closes."""
        out: list[Signal] = []
        m = self._models.get(rec.model)
        if m is None:
            if len(self._models) >= self.s.max_models:
                self.skipped["too_many_models"] += 1
                return out
            m = self._models[rec.model] = self._new(rec)
        elif rec.version is not None and rec.version != m.version and not rec.is_label_only:
            out += self._close_all(m, rec.model, rec.ts, f"model version {rec.version} deployed")
            m = self._models[rec.model] = self._new(rec)
        if rec.is_label_only:
            pending = self._pending.pop((rec.model, rec.id or ""), None)
            if pending is None or rec.label is None:
                self.skipped["label_without_prediction"] += 1
                return out
            prediction, version = pending
            if version == m.version:
                self._learn_error(m, rec.ts, _error(prediction, rec.label))
            return out
        row = dict(rec.features)
        if rec.prediction is not None:
            row[PREDICTION] = rec.prediction
            if rec.label is not None:
                self._learn_error(m, rec.ts, _error(rec.prediction, rec.label))
            elif rec.id is not None and self.s.max_pending_labels:
                self._pending[(rec.model, rec.id)] = (rec.prediction, m.version)
                if len(self._pending) > self.s.max_pending_labels:
                    self._pending.popitem(last=False)
        if m.reference is None:
            m.ref_rows.append(row)
            if len(m.ref_rows) >= self.s.reference_size:
                m.reference = self._build_reference(m.ref_rows)
                m.ref_rows = []
            return out
        m.window.append((rec.ts, row))
        if len(m.window) > self.s.max_window:
            m.window.popleft()
        return out

    def tick(self, ts: float) -> list[Signal]:
        """Evaluate every model whose evaluation is due at event time ``ts``."""
        out: list[Signal] = []
        for name in sorted(self._models):
            m = self._models[name]
            if ts - m.last_eval < self.s.eval_every_s:
                continue
            m.last_eval = ts
            while m.window and m.window[0][0] <= ts - self.s.window_s:
                m.window.popleft()
            while m.errors and m.errors[0][0] <= ts - self.s.window_s:
                m.errors.popleft()
            out += self._evaluate(name, m, ts)
        return out

    def active(self) -> list[Signal]:
        """The drift signals currently open."""
        return [e.signal for m in self._models.values() for e in m.episodes.values() if e.signal is not None]

    # -- state --------------------------------------------------------------------------------

    SNAPSHOT_VERSION = 1

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON-able state. ADWIN is rebuilt on restore from the reference and window errors."""
        models = {}
        for name, m in self._models.items():
            ref = m.reference
            models[name] = {
                "version": m.version, "service": m.service, "ref_rows": m.ref_rows,
                "reference": None if ref is None else {
                    "numeric": {k: v.tolist() for k, v in ref.numeric.items()},
                    "categorical": {k: dict(v) for k, v in ref.categorical.items()}},
                "window": [[ts, row] for ts, row in m.window], "ref_errors": m.ref_errors,
                "errors": [[ts, e] for ts, e in m.errors], "adwin_changed": m.adwin_changed,
                "last_eval": None if m.last_eval == -math.inf else m.last_eval,
                "episodes": {k: {"streak": e.streak, "first_ts": e.first_ts,
                                 "signal": None if e.signal is None else _signal_out(e.signal)}
                             for k, e in m.episodes.items()},
            }
        return {"version": self.SNAPSHOT_VERSION, "models": models,
                "pending": [[mod, pid, pred, ver] for (mod, pid), (pred, ver) in self._pending.items()]}

    @classmethod
    def from_snapshot(cls, data: dict[str, Any], settings: DriftSettings) -> DriftMonitor:
        """Rebuild a monitor from :meth:`snapshot`; raise ``ValueError`` on an unknown version."""
        if data.get("version") != cls.SNAPSHOT_VERSION:
            raise ValueError(f"drift snapshot version {data.get('version')!r} is not {cls.SNAPSHOT_VERSION}")
        mon = cls(settings)
        for name, d in data["models"].items():
            m = _Model(version=d["version"], service=d["service"], ref_rows=list(d["ref_rows"]))
            if d["reference"] is not None:
                numeric = {k: np.asarray(v, dtype=float) for k, v in d["reference"]["numeric"].items()}
                edges = {k: stats.quantile_edges(v, settings.bins) for k, v in numeric.items()}
                m.reference = _Reference(numeric, edges,
                                         {k: Counter(v) for k, v in d["reference"]["categorical"].items()})
            m.window = deque((float(ts), row) for ts, row in d["window"])
            m.ref_errors = [float(e) for e in d["ref_errors"]]
            m.errors = deque((float(ts), float(e)) for ts, e in d["errors"])
            if m.errors:
                m.adwin = river_drift.ADWIN(delta=settings.adwin_delta)
                for e in (*m.ref_errors, *(e for _, e in m.errors)):
                    m.adwin.update(e)
            m.adwin_changed = bool(d["adwin_changed"])
            m.last_eval = -math.inf if d["last_eval"] is None else float(d["last_eval"])
            for k, e in d["episodes"].items():
                m.episodes[k] = _Episode(int(e["streak"]), e["first_ts"],
                                         None if e["signal"] is None else _signal_in(e["signal"]))
            mon._models[name] = m
        for mod, pid, pred, ver in data["pending"]:
            mon._pending[(mod, pid)] = (pred, ver)
        return mon

    # -- internals ----------------------------------------------------------------------------

    def _new(self, rec: PredictionRecord) -> _Model:
        return _Model(version=rec.version, service=rec.service or rec.model)

    def _learn_error(self, m: _Model, ts: float, err: float) -> None:
        if len(m.ref_errors) < self.s.reference_size:
            m.ref_errors.append(err)
            return
        if m.adwin is None:
            m.adwin = river_drift.ADWIN(delta=self.s.adwin_delta)
            for e in m.ref_errors:
                m.adwin.update(e)
        m.adwin.update(err)
        m.adwin_changed = m.adwin_changed or m.adwin.drift_detected
        m.errors.append((ts, err))

    def _build_reference(self, rows: list[dict[str, Value]]) -> _Reference:
        numeric: dict[str, np.ndarray] = {}
        edges: dict[str, np.ndarray] = {}
        categorical: dict[str, Counter[str]] = {}
        names = sorted({k for r in rows for k in r})
        for name in names:
            values = [r[name] for r in rows if name in r]
            if all(isinstance(v, float) for v in values):
                arr = np.asarray(values, dtype=float)
                numeric[name] = arr
                edges[name] = stats.quantile_edges(arr, self.s.bins)
            else:
                categorical[name] = Counter(str(v) for v in values)
        return _Reference(numeric, edges, categorical)

    def _compare(self, m: _Model) -> dict[str, stats.Comparison]:
        assert m.reference is not None
        ref = m.reference
        out: dict[str, stats.Comparison] = {}
        for name, arr in ref.numeric.items():
            cur = np.fromiter((r[name] for _, r in m.window if isinstance(r.get(name), float)), dtype=float)
            if len(cur) >= self.s.min_window:
                out[name] = stats.numeric(arr, cur, edges=ref.edges[name])
        for name, counts in ref.categorical.items():
            cur_counts = Counter(str(r[name]) for _, r in m.window if name in r)
            if sum(cur_counts.values()) >= self.s.min_window:
                out[name] = stats.categorical(counts, cur_counts)
        return out

    def _evaluate(self, name: str, m: _Model, ts: float) -> list[Signal]:
        out: list[Signal] = []
        if m.reference is not None and len(m.window) >= self.s.min_window:
            comps = self._compare(m)
            features = {k: c for k, c in comps.items() if k != PREDICTION}
            out += self._judge(name, m, "data", ts, *self._drifting(features))
            pred = {k: c for k, c in comps.items() if k == PREDICTION}
            if pred:
                out += self._judge(name, m, "prediction", ts, *self._drifting(pred))
        if len(m.ref_errors) >= self.s.reference_size:
            ref_err = float(np.mean(m.ref_errors))
            if m.adwin is not None:
                est = float(m.adwin.estimation)
                ep = m.episodes["concept"]
                high = est > ref_err + self.s.error_margin
                firing = high and (m.adwin_changed or ep.signal is not None or ep.streak > 0)
                calm = est <= ref_err + self.s.error_margin / 2
                out += self._judge(name, m, "concept", ts, firing, calm, est - ref_err, (
                    f"ADWIN error estimate {est:.3f} vs reference {ref_err:.3f} over {int(m.adwin.width)} labels",))
                m.adwin_changed = False
            if len(m.errors) >= self.s.min_labels:
                cur = np.fromiter((e for _, e in m.errors), dtype=float, count=len(m.errors))
                err = float(cur.mean())
                # Welch's t-test: a window of a few hundred labels is noisy; a margin alone would flap.
                p = float(scipy_stats.ttest_ind(cur, m.ref_errors, equal_var=False, alternative="greater").pvalue)
                firing = err > ref_err + self.s.error_margin and p < self.s.alpha
                out += self._judge(name, m, "performance", ts, firing, err <= ref_err + self.s.error_margin / 2,
                                   err - ref_err, (f"error {err:.3f} over the last {len(m.errors)} labelled "
                                                   f"predictions vs reference {ref_err:.3f} (t-test p={p:.2g})",))
        return out

    def _drifting(self, comps: dict[str, stats.Comparison]) -> tuple[bool, bool, float, tuple[str, ...]]:
        if not comps:
            return False, True, 0.0, ()
        firing = any(c.psi >= self.s.psi_threshold and c.p_value < self.s.alpha for c in comps.values())
        calm = all(c.psi < self.s.psi_clear or c.p_value >= self.s.alpha for c in comps.values())
        ranked = sorted(comps.items(), key=lambda kv: (-kv[1].psi, kv[0]))
        evidence = tuple(
            f"{'prediction' if k == PREDICTION else 'feature ' + k}: PSI {c.psi:.3f}, "
            f"{c.test.upper()} p={c.p_value:.2g}" for k, c in ranked[:3])
        return firing, calm, ranked[0][1].psi, evidence

    def _judge(self, name: str, m: _Model, kind: str, ts: float, firing: bool, calm: bool, score: float,
               evidence: tuple[str, ...]) -> list[Signal]:
        ep = m.episodes[kind]
        if ep.signal is None:
            if not firing:
                ep.streak, ep.first_ts = 0, None
                return []
            ep.streak += 1
            ep.first_ts = ts if ep.first_ts is None else ep.first_ts
            if ep.streak < self.s.onset_evals:
                return []
            ep.streak = 0
            ep.signal = Signal(
                id=f"drift:{name}:{kind}:{ep.first_ts:.0f}", ts=ep.first_ts, kind=SignalKind.DRIFT, service=m.service,
                name=f"{name}:{kind}_drift", score=float(score), direction="up", evidence=evidence,
                labels=(("drift", kind), ("model", name), *((("version", m.version),) if m.version else ())),
            )
            return [ep.signal]
        if not calm:
            ep.streak = 0
            return []
        ep.streak += 1
        if ep.streak < self.s.clear_evals:
            return []
        return [self._end(ep, ts, evidence)]

    @staticmethod
    def _end(ep: _Episode, ts: float, evidence: tuple[str, ...]) -> Signal:
        assert ep.signal is not None
        s = ep.signal
        ended = Signal(id=s.id, ts=s.ts, kind=s.kind, service=s.service, name=s.name, score=s.score,
                       direction=s.direction, evidence=evidence or s.evidence, end_ts=ts, labels=s.labels)
        ep.signal, ep.streak, ep.first_ts = None, 0, None
        return ended

    def _close_all(self, m: _Model, name: str, ts: float, why: str) -> list[Signal]:
        return [self._end(ep, ts, (why,)) for ep in m.episodes.values() if ep.signal is not None]


def _signal_out(s: Signal) -> dict[str, Any]:
    return {"id": s.id, "ts": s.ts, "kind": s.kind.value, "service": s.service, "name": s.name, "score": s.score,
            "direction": s.direction, "evidence": list(s.evidence), "end_ts": s.end_ts,
            "labels": [list(kv) for kv in s.labels]}


def _signal_in(d: dict[str, Any]) -> Signal:
    return Signal(id=d["id"], ts=float(d["ts"]), kind=SignalKind(d["kind"]), service=d["service"], name=d["name"],
                  score=float(d["score"]), direction=d["direction"], evidence=tuple(d["evidence"]),
                  end_ts=d["end_ts"], labels=tuple((str(k), str(v)) for k, v in d["labels"]))
