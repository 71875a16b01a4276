"""Batched streaming anomaly scoring: one set of numpy state arrays for many series.

Every series keeps a handful of floats (a robust level, a fast level, a robust scale, a
run counter); one call to :meth:`BatchScorer.update` advances any subset of series by one
sample each, so the per-sample Python work is nil and the throughput is that of numpy.

The *strength* of a sample is a calibrated tail probability, ``-log10 p``, of its deviation
from the series' baseline, taken at two time scales:

* the point deviation ``(x - level) / scale`` catches spikes and abrupt shifts;
* the deviation of a fast EWMA of the (clipped) input from the level, divided by the standard
  error of that EWMA, catches modest shifts that persist (averaging shrinks the noise).

``level`` and ``scale`` are an EWMA and an EW mean absolute deviation updated with residuals
clipped at ``clip`` scales (a Huber-style update: one outlier cannot drag the baseline or
inflate the scale), and the scale is floored both relative to the level and absolutely so
that a near-constant series cannot produce enormous scores from a tiny wiggle. A deviation
that persists for ``adapt_steps`` samples in one direction is adopted as the new normal.

The *score* maps strength to ``[0, 1)`` as ``s / (s + half)``: monotone, so it keeps the full
ordering (and float64 resolution) at the top end, and ``0.5`` means ``p = 10**-half``.

References: Hampel et al., *Robust Statistics* (1986) for clipped M-estimation; Lavin &
Ahmad, "Evaluating Real-time Anomaly Detection Algorithms -- the Numenta Anomaly Benchmark"
(2015) for why the score must keep resolution and repeats must be suppressed.

>>> import numpy as np
>>> s = BatchScorer(ScorerParams(warmup=5))
>>> idx = s.add_series(3)
>>> for v in [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0]:
...     out = s.update(idx, np.array([v, 10 * v, np.nan]))
>>> out = s.update(idx, np.array([5.0, 10.0, 1.0]))
>>> bool(out.strength[0] > 10), bool(out.score[1] < 0.1), float(out.score[2])
(True, True, 0.0)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.special import log_ndtr

_LN10 = math.log(10.0)
# mean absolute deviation -> standard deviation for Gaussian noise
_MAD_TO_SIGMA = math.sqrt(math.pi / 2.0)


@dataclass(frozen=True)
class ScorerParams:
    """Tuning of :class:`BatchScorer`; one configuration for every series."""

    warmup: int = 40
    alpha: float = 0.02  # slow level / scale: ~50-sample memory
    alpha_fast: float = 0.3  # fast level: ~3-sample memory
    clip: float = 4.0  # residuals beyond clip*scale are anomalous and clipped when learning
    adapt_steps: int = 20  # this many anomalous samples in one direction become the new normal
    half: float = 6.0  # strength (-log10 p) that maps to score 0.5


@dataclass(frozen=True)
class ScoreBatch:
    """Per-sample outputs of one :meth:`BatchScorer.update` call (aligned with its input)."""

    score: np.ndarray  # strength / (strength + half), in [0, 1)
    strength: np.ndarray  # -log10 tail probability, 0 for gaps and during warm-up
    z: np.ndarray  # signed deviation in scales (+ = up), 0 for gaps
    baseline: np.ndarray  # level the sample was compared with (NaN before any data)


_STATE = ("n", "level", "fast", "dev", "run")
_CONF = ("up_ok", "down_ok", "sens", "rel_floor", "abs_floor")
_CONF_DEFAULTS = {"up_ok": 1.0, "down_ok": 1.0, "sens": 1.0, "rel_floor": 0.01, "abs_floor": 1e-9}


class BatchScorer:
    """Streaming scorer for many series at once (state arrays indexed by series number).

    Series are added with :meth:`add_series` (optionally with a per-series direction mask,
    sensitivity and scale floors) and fed with :meth:`update`. NaN values are gaps: they
    are neither learned nor scored.
    """

    def __init__(self, params: ScorerParams | None = None) -> None:
        self.params = params or ScorerParams()
        self.size = 0
        self._cap = 0
        self._arrays: dict[str, np.ndarray] = {}
        for name in _STATE + _CONF:
            self._arrays[name] = np.zeros(0)
        self._grow(16)

    # -- series management -------------------------------------------------------------
    def _grow(self, need: int) -> None:
        if need <= self._cap:
            return
        cap = max(need, 2 * self._cap, 16)
        for name, arr in self._arrays.items():
            fill = _CONF_DEFAULTS.get(name, 0.0)
            new = np.full(cap, fill, dtype=np.float64)
            new[: self.size] = arr[: self.size]
            self._arrays[name] = new
        self._cap = cap

    def add_series(self, count: int = 1, *, up: bool = True, down: bool = True, sensitivity: float = 1.0,
                   rel_floor: float = 0.01, abs_floor: float = 1e-9) -> np.ndarray:
        """Register ``count`` new series with one configuration; returns their indices."""
        start = self.size
        self._grow(start + count)
        self.size = start + count
        sl = slice(start, start + count)
        a = self._arrays
        for name in _STATE:
            a[name][sl] = 0.0
        a["up_ok"][sl] = 1.0 if up else 0.0
        a["down_ok"][sl] = 1.0 if down else 0.0
        a["sens"][sl] = sensitivity
        a["rel_floor"][sl] = rel_floor
        a["abs_floor"][sl] = abs_floor
        return np.arange(start, start + count)

    @property
    def bytes_per_series(self) -> int:
        """State and configuration bytes held per series."""
        return sum(arr.itemsize for arr in self._arrays.values())

    # -- the hot path --------------------------------------------------------------------
    def update(self, idx: np.ndarray, values: np.ndarray) -> ScoreBatch:
        """Score ``values[k]`` against series ``idx[k]`` and learn from it (indices unique)."""
        p = self.params
        values = np.asarray(values, dtype=np.float64)
        idx = np.asarray(idx, dtype=np.intp)
        n_out = len(idx)
        score = np.zeros(n_out)
        strength = np.zeros(n_out)
        z_out = np.zeros(n_out)
        base_out = np.full(n_out, np.nan)
        valid = np.isfinite(values)
        if not valid.all():
            pos = np.flatnonzero(valid)
            i, x = idx[pos], values[pos]
        else:
            pos = None
            i, x = idx, values
        if len(i) == 0:
            return ScoreBatch(score, strength, z_out, base_out)
        a = self._arrays
        n = a["n"][i]
        level = a["level"][i]
        fast = a["fast"][i]
        dev = a["dev"][i]
        run = a["run"][i]
        first = n == 0
        level = np.where(first, x, level)
        fast = np.where(first, x, fast)

        scale = np.maximum(dev * _MAD_TO_SIGMA, np.maximum(a["rel_floor"][i] * np.abs(level), a["abs_floor"][i]))
        resid = x - level
        zp = resid / scale
        warm = n >= p.warmup
        # before warm-up the scale is not trusted, so nothing is clipped and learning is a plain mean
        lim = np.where(warm, p.clip * scale, np.inf)
        rc = np.clip(resid, -lim, lim)
        new_fast = fast + p.alpha_fast * (level + rc - fast)
        zf = (new_fast - level) / (scale * math.sqrt(p.alpha_fast / (2.0 - p.alpha_fast)))

        up = np.maximum(zp, zf) * a["up_ok"][i]
        down = np.maximum(-zp, -zf) * a["down_ok"][i]
        is_up = up >= down
        zmag = np.where(is_up, up, down) * a["sens"][i]
        zmag = np.where(warm, zmag, 0.0)
        sc = np.maximum(0.0, -log_ndtr(-zmag) / _LN10 - math.log10(2.0))

        # learning
        rate = np.where(warm, p.alpha, np.maximum(p.alpha, 1.0 / (n + 1.0)))
        new_level = level + rate * rc
        new_dev = np.where(first, 0.0, dev + rate * (np.abs(rc) - dev))
        outside = np.abs(resid) > lim
        sign = np.sign(resid)
        new_run = np.where(outside, np.where(np.sign(run) == sign, run + sign, sign), 0.0)
        adopt = np.abs(new_run) >= p.adapt_steps
        if adopt.any():
            new_level = np.where(adopt, x, new_level)
            new_fast = np.where(adopt, x, new_fast)
            new_run = np.where(adopt, 0.0, new_run)
        a["n"][i] = n + 1.0
        a["level"][i] = new_level
        a["fast"][i] = new_fast
        a["dev"][i] = new_dev
        a["run"][i] = new_run

        signed_z = np.where(is_up, zmag, -zmag)
        bounded = sc / (sc + p.half)
        if pos is None:
            return ScoreBatch(bounded, sc, signed_z, level)
        score[pos] = bounded
        strength[pos] = sc
        z_out[pos] = signed_z
        base_out[pos] = level
        return ScoreBatch(score, strength, z_out, base_out)

    # -- state ---------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Plain, JSON-able state (floats survive a JSON round trip exactly)."""
        return {
            "version": 1,
            "params": asdict(self.params),
            "size": self.size,
            "arrays": {k: v[: self.size].tolist() for k, v in self._arrays.items()},
        }

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> BatchScorer:
        """Rebuild a scorer from :meth:`snapshot` output."""
        if data.get("version") != 1:
            raise ValueError(f"unsupported scorer snapshot version {data.get('version')!r}")
        obj = cls(ScorerParams(**data["params"]))
        size = int(data["size"])
        obj._grow(size)
        obj.size = size
        for k, v in data["arrays"].items():
            obj._arrays[k][:size] = np.asarray(v, dtype=np.float64)
        return obj
