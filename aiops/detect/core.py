"""Batched streaming anomaly scoring: one set of numpy state arrays for many series.

Every series keeps a few dozen floats and a small time-of-day profile; one call to
:meth:`BatchScorer.update` advances any subset of series by one sample each, so the
per-sample Python work is nil and the throughput is that of numpy.

Two complementary views of each sample are computed:

**Novelty (the score).** A handful of cheap features describe the sample at different time
scales: the value itself, its residual from a seasonal (time-of-day) profile, a level shift
(fast minus slow EWMA), a persistent seasonal shift (EWMA of the seasonal residual) and the
volatility (EWMA of absolute first differences). Each feature keeps the range ``[lo, hi]`` it
has shown so far (shrinking very slowly, so that old extremes fade over days); the novelty of
a feature is how far it leaves that range, in units of the range. The score is the weighted
maximum over features mapped to ``[0, 1)`` by ``e / (e + half)``: monotone, so it keeps full
resolution at the top end. Novelty fires on the *first* sample that goes beyond what the
series has done before and stays quiet while it repeats, so a level shift gives one
detection at its onset and is then the new normal. This is the contextual-novelty idea behind
CAD OSE (Smirnov, NAB 2016) and the "new extreme" effect analysed by Wu & Keogh, "Current
Time Series Anomaly Detection Benchmarks are Flawed" (2021), taken across time scales.
A new extreme is not news for every series, though: one that keeps coming back to its
extreme (a daily peak of about the same height, a busy spiky series) tops it by a little now
and then. For the value and the seasonal residual, visits to the band just inside the edge of
the range are counted and the novelty of leaving the range is divided by ``1 + visits /
near_k``, so a series whose extreme was one rare excursion keeps its full sensitivity. On NAB
(41 files) this removes 3 of 62 false positives and no window (standard 77.83 -> 78.08).

**Likelihood of the deviation (also in the score).** Novelty cannot see an anomaly that stays
inside the range a series has already visited (a calm series that jumps to a level it once
spiked to). The HTM "anomaly likelihood" (Ahmad, Lavin, Purdy & Agha, "Unsupervised real-time
anomaly detection for streaming data", Neurocomputing 2017) judges a raw anomaly measure against
the series' own habit: here the raw measure is ``log(1 + |z|)``, its short EWMA (a few samples) is
compared with its long-run EW mean and standard deviation, and the Gaussian tail of that gap,
``-log10 p``, maps to ``[0, 1)`` by ``lk / (lk + lk_half)``. A spiky series deviates all the time
and so does not score; a calm one that leaves its baseline and stays away does. It needs
``lk_warmup`` deviations first (a count-based warm-up: the detector never knows a series' length).
On NAB (41 files) it adds 3 windows for 5 false positives: without it the standard score
falls from 78.08 to 73.91.

**Deviation (z and strength).** A robust baseline: an EWMA level and EW mean absolute
deviation updated with residuals clipped at ``clip`` scales (Huber-style: one outlier cannot
drag the baseline or inflate the scale), floored relative to the level and absolutely so a
near-constant series cannot produce huge values from a tiny wiggle, and the same against the
seasonal profile (the smaller deviation wins: a sample the profile explains is not unusual).
The profile's bins learn with the same clipping, so it is a robust, median-like picture of
the day: yesterday's spike does not make today's ordinary value look like a drop.
``z`` is that signed deviation; ``strength`` its one-sided Gaussian tail, ``-log10 p``. The
stage uses ``z`` to confirm a novelty before alerting (a slow trend sets new extremes without
deviating from its baseline).

>>> import numpy as np
>>> s = BatchScorer(ScorerParams(warmup=5))
>>> idx = s.add_series(3)
>>> for v in [1.0, 1.1, 0.9, 1.0, 1.05, 0.95, 1.0, 1.02]:
...     out = s.update(idx, np.array([v, 10 * v, np.nan]))
>>> out = s.update(idx, np.array([5.0, 10.0, 1.0]))
>>> bool(out.score[0] > 0.9), bool(out.score[1] < 0.5), float(out.score[2])
(True, True, 0.0)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from scipy.special import log_ndtr

_LN10 = math.log(10.0)
_MAD_TO_SIGMA = math.sqrt(math.pi / 2.0)  # mean absolute deviation -> sigma for Gaussian noise

RANGE_FEATURES = ("value", "season", "shift", "season_shift", "volatility")
# level-like features whose new extremes are discounted by how often the series comes back to
# its extreme (see ScorerParams.near_band)
NEAR_FEATURES = ("value", "season")
FEATURES = RANGE_FEATURES + ("transition", "deviation")
_DEVIATION = FEATURES.index("deviation")


@dataclass(frozen=True)
class ScorerParams:
    """Tuning of :class:`BatchScorer`; one configuration for every series."""

    warmup: int = 40  # samples before a series may score
    half: float = 0.015  # novelty (in units of the feature's range) that maps to score 0.5
    w_value: float = 1.0  # feature weights: how much novelty in each counts
    w_season: float = 0.2
    w_shift: float = 0.3
    w_season_shift: float = 0.0  # off by default: no gain on NAB once transitions are scored
    w_volatility: float = 0.0  # off by default: likewise
    w_transition: float = 0.005  # per unit of -log10 P(level transition), see trans_bins
    trans_bins: int = 6  # levels the value's range is cut into for transition novelty (0 = off)
    # a level's moves are judged on at most this many of them: beyond it the row's counts are
    # scaled down, so no move is ever judged rarer than ~0.5 / trans_memory (0 = unbounded)
    trans_memory: float = 500.0
    # anomaly likelihood of the deviation (Ahmad et al. 2017): a short mean of log(1+|z|) against
    # the long-run mean and spread of log(1+|z|) in this series; its tail, -log10 p, maps to
    # [0, 1) by lk / (lk + lk_half) (0 = off)
    lk_half: float = 3.5
    lk_alpha_short: float = 0.3  # the short mean (a few samples)
    lk_alpha_long: float = 0.002  # the long-run statistics (~500 samples)
    lk_warmup: int = 300  # deviations a series needs before its likelihood may score
    # |z| is capped here: a floored scale gives astronomic z on flat series, and beyond ~20 scales
    # a bigger deviation says nothing more about how persistently a series deviates
    lk_cap: float = 20.0
    range_decay: float = 5e-6  # per sample: how fast an old extreme fades (~200k samples, a month at 15 s)
    # a new extreme of a series that keeps coming back to its extreme is routine: visits within
    # near_band of the range's edge are counted (fading like the range), and the novelty of
    # exceeding that edge is divided by 1 + visits / near_k (0 = off); see NEAR_FEATURES
    near_band: float = 0.05
    near_k: float = 30.0
    quiet_steps: int = 20  # after a score >= 0.5, this many samples only score if they beat it
    quiet_gain: float = 2.0  # ... and beat it by this factor in odds, score / (1 - score)
    alpha_fast: float = 0.3  # fast EWMA (a few samples)
    alpha_slow: float = 0.01  # slow EWMA for level shifts (~100 samples)
    alpha_vol: float = 0.1
    alpha_season_shift: float = 0.2
    alpha: float = 0.02  # robust baseline level and scale (~50 samples)
    clip: float = 4.0  # residuals beyond clip*scale are clipped when learning the baseline
    adapt_steps: int = 20  # this many samples beyond clip*scale in one direction become the new normal
    season_period: float = 86400.0  # seconds; the profile is keyed by event time modulo this
    season_bins: int = 288  # profile resolution (0 = no seasonal profile)
    season_alpha: float = 0.3  # how much one period's visit of a bin moves it


@dataclass(frozen=True)
class ScoreBatch:
    """Per-sample outputs of one :meth:`BatchScorer.update` call (aligned with its input)."""

    score: np.ndarray  # novelty mapped to [0, 1); 0 for gaps and during warm-up
    novelty: np.ndarray  # weighted novelty, in units of the feature range
    feature: np.ndarray  # index into FEATURES of the most novel feature (-1: none)
    z: np.ndarray  # signed robust deviation from the baseline, in scales (+ = up)
    strength: np.ndarray  # -log10 of the one-sided tail probability of |z|
    baseline: np.ndarray  # what the sample was compared with (NaN before any data)


# per-series float64 state; "hi_*"/"lo_*" are the feature ranges
_STATE = (
    ("n", "quiet", "peak", "prev", "fast", "slow", "vol", "level", "dev", "run", "cfast")
    + ("s_dev", "s_shift", "s_dt", "s_t", "s_n", "s_first")
    + tuple(f"{b}_{f}" for f in RANGE_FEATURES for b in ("hi", "lo"))
    + ("t_prev", "lk_mean", "lk_var", "lk_short", "lk_n")
    + tuple(f"near_{b}_{f}" for f in NEAR_FEATURES for b in ("hi", "lo"))
)
_CONF = ("up_ok", "down_ok", "sens", "rel_floor", "abs_floor")
_CONF_DEFAULTS = {"up_ok": 1.0, "down_ok": 1.0, "sens": 1.0, "rel_floor": 0.01, "abs_floor": 1e-9}


class BatchScorer:
    """Streaming scorer for many series at once (state arrays indexed by series number).

    Series are added with :meth:`add_series` (with a direction mask, a sensitivity and scale
    floors) and fed with :meth:`update`. NaN values are gaps: neither learned nor scored.
    """

    def __init__(self, params: ScorerParams | None = None) -> None:
        self.params = params or ScorerParams()
        p = self.params
        self._w = np.array([p.w_value, p.w_season, p.w_shift, p.w_season_shift, p.w_volatility, p.w_transition])
        nb = max(p.trans_bins, 1)
        self._trans = np.zeros((0, nb * nb), dtype=np.float32)  # transition counts between levels
        self.size = 0
        self._cap = 0
        self._arrays: dict[str, np.ndarray] = {name: np.zeros(0) for name in _STATE + _CONF}
        self._season = np.full((0, max(p.season_bins, 1)), np.nan, dtype=np.float32)
        self._grow(16)

    # -- series management -------------------------------------------------------------
    def _grow(self, need: int) -> None:
        if need <= self._cap:
            return
        cap = max(need, 2 * self._cap, 16)
        for name, arr in self._arrays.items():
            new = np.full(cap, _CONF_DEFAULTS.get(name, 0.0), dtype=np.float64)
            new[: self.size] = arr[: self.size]
            self._arrays[name] = new
        season = np.full((cap, self._season.shape[1]), np.nan, dtype=np.float32)
        season[: self.size] = self._season[: self.size]
        self._season = season
        trans = np.zeros((cap, self._trans.shape[1]), dtype=np.float32)
        trans[: self.size] = self._trans[: self.size]
        self._trans = trans
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
        self._season[sl] = np.nan
        self._trans[sl] = 0.0
        a["t_prev"][sl] = -1.0
        idx = np.arange(start, start + count)
        self.configure(idx, up=up, down=down, sensitivity=sensitivity, rel_floor=rel_floor, abs_floor=abs_floor)
        return idx

    def configure(self, idx: np.ndarray, *, up: bool = True, down: bool = True, sensitivity: float = 1.0,
                  rel_floor: float = 0.01, abs_floor: float = 1e-9) -> None:
        """Set which directions are bad, the sensitivity and the scale floors of existing series."""
        a = self._arrays
        a["up_ok"][idx] = 1.0 if up else 0.0
        a["down_ok"][idx] = 1.0 if down else 0.0
        a["sens"][idx] = sensitivity
        a["rel_floor"][idx] = rel_floor
        a["abs_floor"][idx] = abs_floor

    def bad_direction(self, idx: np.ndarray, z: np.ndarray) -> np.ndarray:
        """True where the sign of ``z`` is a direction that is bad for series ``idx``."""
        a = self._arrays
        return np.where(z > 0, a["up_ok"][idx] > 0, a["down_ok"][idx] > 0)

    @property
    def bytes_per_series(self) -> int:
        """State and configuration bytes held per series."""
        return (sum(arr.itemsize for arr in self._arrays.values()) + self._season.itemsize * self._season.shape[1]
                + self._trans.itemsize * self._trans.shape[1])

    # -- the hot path --------------------------------------------------------------------
    def update(self, idx: np.ndarray, values: np.ndarray, ts: np.ndarray | float | None = None) -> ScoreBatch:
        """Score ``values[k]`` against series ``idx[k]`` and learn from it (indices unique).

        ``ts`` is the event time of the samples (one float for the whole batch or one per
        sample); without it the seasonal profile is not used.
        """
        p = self.params
        values = np.asarray(values, dtype=np.float64)
        idx = np.asarray(idx, dtype=np.intp)
        n_out = len(idx)
        valid = np.isfinite(values)
        t_all = None if ts is None else np.broadcast_to(np.asarray(ts, dtype=np.float64), values.shape)
        if t_all is not None:
            valid &= np.isfinite(t_all)
        if valid.all():
            pos = None
            i, x, t = idx, values, t_all
        else:
            pos = np.flatnonzero(valid)
            i, x = idx[pos], values[pos]
            t = None if t_all is None else t_all[pos]
        if len(i) == 0:
            zero = np.zeros(n_out)
            return ScoreBatch(zero, zero.copy(), np.full(n_out, -1), zero.copy(), zero.copy(), np.full(n_out, np.nan))
        a = self._arrays
        n = a["n"][i]
        first = n == 0
        warm = n >= p.warmup
        floor = np.maximum(a["rel_floor"][i] * np.abs(np.where(first, x, a["level"][i])), a["abs_floor"][i])
        up_ok, down_ok = a["up_ok"][i], a["down_ok"][i]

        # -- features ------------------------------------------------------------------
        prev = np.where(first, x, a["prev"][i])
        fast = np.where(first, x, a["fast"][i]) * (1 - p.alpha_fast) + p.alpha_fast * x
        slow = np.where(first, x, a["slow"][i]) * (1 - p.alpha_slow) + p.alpha_slow * x
        vol = a["vol"][i] + p.alpha_vol * (np.abs(x - prev) - a["vol"][i])
        a["prev"][i], a["fast"][i], a["slow"][i], a["vol"][i] = x, fast, slow, vol
        shift = fast - slow

        # robust baseline (level model); z is the larger of the point deviation and the fast
        # EWMA's deviation in its own standard errors (a modest shift that persists)
        level = np.where(first, x, a["level"][i])
        scale = np.maximum(a["dev"][i] * _MAD_TO_SIGMA, floor)
        resid = x - level
        zp = resid / scale
        lim = np.where(warm, p.clip * scale, np.inf)  # no clipping until the scale is trusted
        rc = np.clip(resid, -lim, lim)
        # fed with clipped residuals, so one spike does not echo into the next few samples
        cfast = np.where(first, 0.0, a["cfast"][i]) * (1 - p.alpha_fast) + p.alpha_fast * rc
        zf = cfast / (scale * math.sqrt(p.alpha_fast / (2.0 - p.alpha_fast)))
        z = np.where(np.abs(zf) > np.abs(zp), zf, zp)
        outside = np.abs(resid) > lim
        rate = np.where(warm, p.alpha, np.maximum(p.alpha, 1.0 / (n + 1.0)))
        new_level = level + rate * rc
        # the scale learns slowly from outliers: learning them at full rate would inflate it
        # within minutes during a drift and hide the drift
        d_rate = np.where(outside, rate * 0.2, rate)
        a["dev"][i] = np.where(first, 0.0, a["dev"][i] + d_rate * (np.abs(rc) - a["dev"][i]))
        sign = np.sign(resid)
        run = a["run"][i]
        new_run = np.where(outside, np.where(np.sign(run) == sign, run + sign, sign), 0.0)
        adopt = np.abs(new_run) >= p.adapt_steps  # a deviation this persistent is the new normal
        a["level"][i] = np.where(adopt, x, new_level)
        a["cfast"][i] = np.where(adopt, 0.0, cfast)
        a["run"][i] = np.where(adopt, 0.0, new_run)
        base = level

        # seasonal profile
        have_season = p.season_bins > 0 and t is not None
        if have_season:
            assert t is not None
            nb = p.season_bins
            b = np.clip(((t % p.season_period) * (nb / p.season_period)).astype(np.intp), 0, nb - 1)
            prof = self._season[i, b].astype(np.float64)
            # a profile is only a seasonal baseline once it holds a previous period's values
            s_first = np.where(first, t, a["s_first"][i])
            a["s_first"][i] = s_first
            known = np.isfinite(prof) & (t - s_first >= p.season_period)
            s_res = np.where(known, x - prof, 0.0)
            s_n = a["s_n"][i]
            s_scale = np.maximum(a["s_dev"][i] * _MAD_TO_SIGMA, floor)
            s_z = s_res / s_scale
            use = known & (s_n >= p.warmup) & (np.abs(s_z) < np.abs(z))
            z = np.where(use, s_z, z)
            base = np.where(use, prof, base)
            s_lim = np.where(s_n >= p.warmup, p.clip * s_scale, np.inf)
            s_rc = np.clip(s_res, -s_lim, s_lim)
            s_rate = np.where(s_n >= p.warmup, p.alpha, 1.0 / (s_n + 1.0))
            a["s_dev"][i] = np.where(known, a["s_dev"][i] + s_rate * (np.abs(s_rc) - a["s_dev"][i]), a["s_dev"][i])
            a["s_n"][i] = s_n + known
            s_shift = np.where(known, a["s_shift"][i] + p.alpha_season_shift * (s_res - a["s_shift"][i]),
                               a["s_shift"][i])
            a["s_shift"][i] = s_shift
            # a bin is visited by several samples in a row: spread one period's learning over them
            width = p.season_period / nb
            dt = np.where(a["s_dt"][i] > 0, a["s_dt"][i], width)
            per_visit = np.maximum(1.0, width / dt)
            v_rate = 1.0 - (1.0 - p.season_alpha) ** (1.0 / per_visit)
            # a bin learns what the series usually does at that time of day: like the level, from
            # residuals clipped at `clip` seasonal scales, so a spike today is not tomorrow's
            # expectation (unclipped, half of it stayed in the bin and the next day's normal
            # value looked like a drop against it)
            step = np.clip(x - prof, -s_lim, s_lim)
            self._season[i, b] = np.where(np.isfinite(prof), prof + v_rate * step, x).astype(np.float32)
            gap = t - a["s_t"][i]
            ok_gap = ~first & (gap > 0) & (gap < width)
            a["s_dt"][i] = np.where(ok_gap, np.where(a["s_dt"][i] > 0, a["s_dt"][i] + 0.1 * (gap - a["s_dt"][i]), gap),
                                    a["s_dt"][i])
            a["s_t"][i] = t
        else:
            known = np.zeros(len(i), dtype=bool)
            s_res = np.zeros(len(i))
            s_shift = np.zeros(len(i))
        a["n"][i] = n + 1.0

        # -- novelty of each feature against its own range ------------------------------
        feats = (x, s_res, shift, s_shift, vol)
        ones = np.ones(len(i), dtype=bool)
        ready = (ones, known, ones, known, ones)
        # seasonal residuals start a period after the series does: like every feature they need
        # `warmup` samples before their range means anything (a range of three residuals is
        # left by the fourth)
        s_ready = known & (a["s_n"][i] >= p.warmup)
        scoring = (ones, s_ready, ones, s_ready, ones)
        nov_up = np.zeros((len(self._w), len(i)))
        nov_down = np.zeros((len(self._w), len(i)))
        keep = 1.0 - p.range_decay
        # transition novelty (a light form of CAD OSE's context novelty): the value's range is
        # cut into trans_bins levels; a move between levels the series has rarely made scores
        # -log10 of its smoothed frequency among the moves out of the previous level
        if p.trans_bins:
            tb = p.trans_bins
            hi, lo = a["hi_value"][i], a["lo_value"][i]
            has = (a["n"][i] > 1) & (hi > lo)
            lvl = np.where(has, np.clip(((x - lo) / np.where(has, hi - lo, 1.0) * tb).astype(np.intp), 0, tb - 1), -1)
            prev_lvl = a["t_prev"][i].astype(np.intp)
            go = (lvl >= 0) & (prev_lvl >= 0)
            row = np.where(go, prev_lvl, 0) * tb
            cell = row + np.where(go, lvl, 0)
            g = np.flatnonzero(go)
            gi = i[g]
            counts = self._trans[gi, cell[g]].astype(np.float64)
            totals = self._trans[gi[:, None], row[g][:, None] + np.arange(tb)[None, :]].sum(axis=1, dtype=np.float64)
            t_nov = np.zeros(len(i))
            # Without a bound an unseen move grew more alarming with every step the series had
            # run (-log10 of 0.5 / total), so long-lived spiky series, whose jumps land on
            # ever-different levels, alerted on ordinary jumps. Bounding the evidence keeps the
            # empirical shape but mixes in a fixed share of the uniform prior (a floor under
            # every move's probability, as in additive smoothing with a constant weight).
            if p.trans_memory > 0:
                shrink = np.minimum(1.0, p.trans_memory / np.maximum(totals, 1.0))
                counts, totals = counts * shrink, totals * shrink
            t_nov[g] = -np.log10((counts + 0.5) / (totals + 0.5 * tb))
            t_up = np.zeros(len(i), dtype=bool)
            t_up[g] = lvl[g] >= prev_lvl[g]
            self._trans[gi, cell[g]] += 1.0
            a["t_prev"][i] = np.where(lvl >= 0, lvl, a["t_prev"][i])
            nov_up[5] = np.where(t_up, t_nov, 0.0)
            nov_down[5] = np.where(t_up, 0.0, t_nov)
        for k, name in enumerate(RANGE_FEATURES):
            if self._w[k] == 0.0 and not (k == 0 and p.trans_bins):
                continue  # weightless: skip its cost (but transitions need the value range)
            f, ok = feats[k], ready[k]
            hi, lo = a["hi_" + name][i], a["lo_" + name][i]
            seen = a["n"][i] > 1 if k in (0, 2, 4) else a["s_n"][i] > 1
            fresh = ok & ~seen  # first value of this feature: the range starts here
            hi = np.where(fresh, f, hi)
            lo = np.where(fresh, f, lo)
            span = np.maximum(hi - lo, floor)
            ex_up = np.maximum(f - hi, 0.0) / span
            ex_down = np.maximum(lo - f, 0.0) / span
            nov_up[k] = np.where(scoring[k], ex_up, 0.0)
            nov_down[k] = np.where(scoring[k], ex_down, 0.0)
            if p.near_band > 0 and name in NEAR_FEATURES:
                # A series that keeps returning to its ceiling (a daily peak of about the same
                # height, a busy spiky series) will, now and then, top it by a few percent; a
                # series whose extreme is one rare excursion will not. The count of visits to
                # the band below the edge (above it, for the floor) tells the two apart.
                nb = p.near_band
                n_hi, n_lo = a["near_hi_" + name][i] * keep, a["near_lo_" + name][i] * keep
                nov_up[k] /= 1.0 + n_hi / p.near_k
                nov_down[k] /= 1.0 + n_lo / p.near_k
                # the band follows a new extreme: the visits it leaves behind stop counting
                n_hi = n_hi * np.clip(1.0 - ex_up / nb, 0.0, 1.0) + (ok & (f > hi - nb * span))
                n_lo = n_lo * np.clip(1.0 - ex_down / nb, 0.0, 1.0) + (ok & (f < lo + nb * span))
                # the first value of a feature starts its count; a sample without one keeps it
                a["near_hi_" + name][i] = np.where(ok, np.where(seen, n_hi, 0.0), a["near_hi_" + name][i])
                a["near_lo_" + name][i] = np.where(ok, np.where(seen, n_lo, 0.0), a["near_lo_" + name][i])
            new_hi = np.where(ok, np.maximum(hi, f), hi)
            new_lo = np.where(ok, np.minimum(lo, f), lo)
            mid = 0.5 * (new_hi + new_lo)
            a["hi_" + name][i] = mid + keep * (new_hi - mid)
            a["lo_" + name][i] = mid + keep * (new_lo - mid)
        nov_up[4] += nov_down[4]  # more or less volatility: direction-free, counted as "up"
        nov_down[4] = 0.0
        w = self._w[:, None]
        nov_up = nov_up * w * up_ok
        nov_down = nov_down * w * down_ok
        best_up = nov_up.max(axis=0)
        best_down = nov_down.max(axis=0)
        is_up = best_up >= best_down
        novelty = np.where(is_up, best_up, best_down) * a["sens"][i]
        novelty = np.where(warm, novelty, 0.0)
        feature = np.where(novelty > 0, np.where(is_up, nov_up.argmax(axis=0), nov_down.argmax(axis=0)), -1)
        score = novelty / (novelty + p.half)
        z = np.where(warm, z, 0.0) * a["sens"][i]
        if p.lk_half > 0:
            # a series whose deviation is routinely large (spiky, heavy-tailed) is judged
            # against that habit; a calm one that starts deviating persistently inside its old
            # range (which novelty cannot see) stands out
            r = np.log1p(np.minimum(np.abs(z), p.lk_cap))
            ok = warm & (z != 0.0)
            lk_n, lk_mean, lk_var = a["lk_n"][i], a["lk_mean"][i], a["lk_var"][i]
            short = np.where(ok, a["lk_short"][i] + p.lk_alpha_short * (r - a["lk_short"][i]), a["lk_short"][i])
            zz = (short - lk_mean) / np.sqrt(np.maximum(lk_var, 1e-6))
            # the tail is only worth computing where it can matter (zz 2 is lk 1.6): log_ndtr is
            # the costliest call here
            hot = np.flatnonzero(ok & (lk_n >= p.lk_warmup) & (zz > 2.0) & np.where(z > 0, up_ok > 0, down_ok > 0))
            lk = np.zeros(len(i))
            lk[hot] = -log_ndtr(-zz[hot]) / _LN10
            lk_score = lk / (lk + p.lk_half)
            rate = np.maximum(p.lk_alpha_long, 1.0 / (lk_n + 1.0))
            d = r - lk_mean
            a["lk_mean"][i] = np.where(ok, lk_mean + rate * d, lk_mean)
            a["lk_var"][i] = np.where(ok, (1.0 - rate) * (lk_var + rate * d * d), lk_var)
            a["lk_short"][i] = short
            a["lk_n"][i] = lk_n + ok
            feature = np.where(lk_score > score, _DEVIATION, feature)
            score = np.maximum(score, lk_score)
        # one detection per event: NAB rewards the first detection in a window and charges every
        # repeat, and an on-call engineer wants one page, so right after a detection only a
        # clearly stronger sample may score: twice the odds, since a score that climbs over a few
        # samples (the likelihood's short mean filling up) is still the same event
        quiet = a["quiet"][i]
        peak = a["peak"][i]
        muted = (quiet > 0) & (score * (1.0 - peak) <= p.quiet_gain * peak * (1.0 - score))
        score = np.where(muted, 0.0, score)
        fire = score >= 0.5
        a["quiet"][i] = np.where(fire, float(p.quiet_steps), np.maximum(quiet - 1.0, 0.0))
        a["peak"][i] = np.where(fire, score, a["peak"][i])

        strength = np.maximum(0.0, -log_ndtr(-np.abs(z)) / _LN10)
        outs = (score, novelty, feature, z, strength, base)
        if pos is None:
            return ScoreBatch(*outs)
        full = []
        for arr, fill in zip(outs, (0.0, 0.0, -1, 0.0, 0.0, np.nan), strict=True):
            o = np.full(n_out, fill, dtype=arr.dtype)
            o[pos] = arr
            full.append(o)
        return ScoreBatch(*full)

    # -- state ---------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Versioned state; the per-series numbers are numpy array copies.

        Arrays, not lists: the checkpoint envelope (:mod:`aiops.state.envelope`) stores them as
        raw bytes, and copying them takes milliseconds where building Python lists of a
        100,000-series profile took seconds and blocked the live loop. The copies are
        independent of the live state, so the scorer may go on learning while they are saved.
        ``from_snapshot`` also reads the older list form (NaN as ``None``).
        """
        n = self.size
        return {
            "version": 2,
            "params": asdict(self.params),
            "size": n,
            "arrays": {k: v[:n].copy() for k, v in self._arrays.items()},
            "season": self._season[:n].copy(),  # NaN marks a bin not visited yet
            "transitions": self._trans[:n].copy(),
        }

    @classmethod
    def from_snapshot(cls, data: dict[str, Any]) -> BatchScorer:
        """Rebuild a scorer from :meth:`snapshot` output (numpy arrays or the older JSON lists)."""
        if data.get("version") != 2:
            raise ValueError(f"unsupported scorer snapshot version {data.get('version')!r}")
        known = {f.name for f in fields(ScorerParams)}
        obj = cls(ScorerParams(**{k: v for k, v in data["params"].items() if k in known}))
        size = int(data["size"])
        obj._grow(size)
        obj.size = size
        for k, v in data["arrays"].items():
            if k in obj._arrays:
                obj._arrays[k][:size] = np.asarray(v, dtype=np.float64)
        if size:
            # the list form holds None for NaN, which float64 conversion turns back into NaN
            obj._season[:size] = np.asarray(data["season"], dtype=np.float64).astype(np.float32)
            obj._trans[:size] = np.asarray(data["transitions"], dtype=np.float64).astype(np.float32)
        return obj
