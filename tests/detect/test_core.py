"""The batched scorer: batching is invisible, state round-trips, and each feature does its job."""

from __future__ import annotations

import numpy as np
import pytest

from aiops.detect import BatchScorer, ScorerParams
from aiops.detect.core import FEATURES

from .snapshots import as_old_lists, through_checkpoint

DAY = 86400.0


def series(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = 10 + np.sin(np.arange(n) / 7.0) + 0.3 * rng.standard_normal(n)
    v[rng.random(n) < 0.05] = np.nan
    return v


def stream(scorer: BatchScorer, idx: np.ndarray, vals: np.ndarray, ts: np.ndarray) -> np.ndarray:
    return np.array([scorer.update(idx, vals[k], ts[k]).score for k in range(len(vals))])


def test_batching_does_not_change_scores() -> None:
    n, m = 300, 5
    vals = np.stack([series(n, s) for s in range(m)], axis=1)
    ts = np.arange(n, dtype=float)[:, None] * 600.0 + np.zeros(m)
    together = BatchScorer()
    both = stream(together, together.add_series(m), vals, ts)
    for j in range(m):
        alone = BatchScorer()
        one = stream(alone, alone.add_series(1), vals[:, j : j + 1], ts[:, j : j + 1])
        np.testing.assert_array_equal(one[:, 0], both[:, j])


def test_subset_updates_leave_other_series_alone() -> None:
    s = BatchScorer(ScorerParams(warmup=3))
    idx = s.add_series(3)
    for k in range(10):
        s.update(idx, np.array([1.0 + k % 2, 5.0, 7.0]), k * 60.0)
    before = s.snapshot()["arrays"]
    s.update(idx[:1], np.array([1.5]), 600.0)
    after = s.snapshot()["arrays"]
    for name in before:
        np.testing.assert_array_equal(before[name][1:], after[name][1:], err_msg=name)


def test_snapshot_round_trip_with_a_seasonal_profile() -> None:
    n = 600  # more than a day at 5 min, so the profile and the transitions are in use
    vals = series(n, 3)[:, None]
    ts = np.arange(n, dtype=float)[:, None] * 300.0
    ref = BatchScorer()
    full = stream(ref, ref.add_series(1), vals, ts)
    first = BatchScorer()
    idx = first.add_series(1)
    head = stream(first, idx, vals[:400], ts[:400])
    snap = first.snapshot()
    assert np.isnan(snap["season"]).any()  # unvisited bins must survive as such
    for data in (through_checkpoint(snap), as_old_lists(snap)):  # new arrays and old checkpoints
        restored = BatchScorer.from_snapshot(data)
        tail = stream(restored, idx, vals[400:], ts[400:])
        np.testing.assert_array_equal(np.concatenate([head, tail]), full)


def test_snapshot_is_a_copy() -> None:
    s = BatchScorer(ScorerParams(warmup=3))
    idx = s.add_series(2)
    s.update(idx, np.array([1.0, 2.0]), 0.0)
    snap = s.snapshot()
    level, season = snap["arrays"]["level"].copy(), snap["season"].copy()
    for k in range(1, 5):
        s.update(idx, np.array([5.0 * k, 7.0 * k]), k * 60.0)
    np.testing.assert_array_equal(snap["arrays"]["level"], level)
    np.testing.assert_array_equal(snap["season"], season)


def test_seasonal_profile_explains_a_daily_pattern() -> None:
    # a square wave that jumps twice a day: after a day of learning the jumps are expected
    step = 300.0
    n = int(4 * DAY / step)
    t = np.arange(n) * step
    vals = np.where((t % DAY) < DAY / 2, 10.0, 50.0) + 0.1 * np.random.default_rng(1).standard_normal(n)
    s = BatchScorer()
    idx = s.add_series(1)
    zs = np.array([s.update(idx, vals[k : k + 1], t[k]).z[0] for k in range(n)])
    jumps = np.flatnonzero(np.abs(np.diff(vals)) > 20) + 1
    late = jumps[t[jumps] > 2 * DAY]
    assert len(late) >= 3
    assert np.all(np.abs(zs[late]) < 4), zs[late]


def test_novelty_fires_once_for_a_level_shift() -> None:
    vals = np.r_[series(200, 4), np.full(100, 30.0)]
    s = BatchScorer()
    idx = s.add_series(1)
    out = [s.update(idx, vals[k : k + 1], k * 60.0) for k in range(len(vals))]
    scores = np.array([o.score[0] for o in out])
    assert scores[200] > 0.9 and FEATURES[out[200].feature[0]] == "value"
    assert np.all(scores[201:] < 0.5)  # the shift is the new normal: no repeats


def test_direction_mask_and_sensitivity() -> None:
    vals = np.r_[series(200, 5), [2.0]]
    s = BatchScorer()
    up_only = s.add_series(1, down=False)
    both = s.add_series(1)
    touchy = s.add_series(1, sensitivity=4.0)
    for k in range(len(vals)):
        out = s.update(np.r_[up_only, both, touchy], np.full(3, vals[k]), k * 60.0)
    assert out.score[0] == 0.0 and out.score[1] > 0.5 and out.score[2] > out.score[1]
    assert out.z[1] < 0


def test_state_stays_small() -> None:
    assert BatchScorer().bytes_per_series <= 2048


def test_likelihood_sees_a_sustained_deviation_inside_the_old_range() -> None:
    # an early excursion to 30 makes a later move to 14 old news to novelty; the deviation
    # likelihood still sees a calm series leave its baseline and stay away
    rng = np.random.default_rng(6)
    vals = 10 + 0.2 * rng.standard_normal(1000)
    vals[100:110] = 30.0
    vals[900:] += 4.0
    s = BatchScorer(ScorerParams(trans_bins=0))  # a new jump between levels would fire first
    idx = s.add_series(1)
    out = [s.update(idx, vals[k : k + 1], k * 60.0) for k in range(len(vals))]
    scores = np.array([o.score[0] for o in out])
    assert np.all(scores[400:900] < 0.5)
    dev = [k for k in range(900, 910) if scores[k] >= 0.5 and FEATURES[out[k].feature[0]] == "deviation"]
    assert dev and dev[0] < 906
    off = BatchScorer(ScorerParams(trans_bins=0, lk_half=0.0))
    idx = off.add_series(1)
    feats = [off.update(idx, vals[k : k + 1], k * 60.0).feature[0] for k in range(len(vals))]
    assert FEATURES.index("deviation") not in feats



def test_a_score_that_climbs_over_a_few_samples_fires_once() -> None:
    # the likelihood's short mean fills up over a few samples after a shift: one event, one
    # detection, unless a later sample is clearly (twice the odds) stronger
    rng = np.random.default_rng(6)
    vals = 10 + 0.2 * rng.standard_normal(1000)
    vals[100:110] = 30.0
    vals[900:] += 4.0
    fires = []
    for gain in (1.0, 2.0):
        s = BatchScorer(ScorerParams(trans_bins=0, quiet_gain=gain))
        idx = s.add_series(1)
        scores = np.array([s.update(idx, vals[k : k + 1], k * 60.0).score[0] for k in range(len(vals))])
        fires.append(int((scores[900:915] >= 0.5).sum()))
    assert fires[0] > 1 and fires[1] == 1


def test_a_spike_does_not_become_tomorrows_expectation() -> None:
    # a daily pattern with one large spike on day 3: on day 4 at that time of day the ordinary
    # value must not look like a drop against a profile that learned the spike
    step = 300.0
    n = int(5 * DAY / step)
    t = np.arange(n) * step
    rng = np.random.default_rng(5)
    vals = 50 + 20 * np.sin(2 * np.pi * t / DAY) + rng.standard_normal(n)
    spike = int(2.5 * DAY / step)
    vals[spike] += 500.0
    s = BatchScorer()
    idx = s.add_series(1)
    out = [s.update(idx, vals[k : k + 1], t[k]) for k in range(n)]
    assert out[spike].score[0] > 0.5  # the spike itself is news
    next_day = spike + int(DAY / step)
    assert out[next_day].score[0] < 0.1, out[next_day].score[0]
    assert abs(out[next_day].z[0]) < 4


def test_an_unseen_move_is_not_more_alarming_the_longer_a_series_ran() -> None:
    # a series hopping between its floor and its top; then, once, it lands in between. How
    # rare that move is should not keep growing with how long the series ran before
    def first_middle_score(n: int, memory: float) -> float:
        vals = np.where(np.arange(n) % 7 == 0, 100.0, 0.0) + 0.01 * np.random.default_rng(2).standard_normal(n)
        vals = np.r_[vals, 50.0]
        s = BatchScorer(ScorerParams(trans_memory=memory, w_value=0.0, w_season=0.0, w_shift=0.0, lk_half=0.0))
        idx = s.add_series(1)
        out = [s.update(idx, vals[k : k + 1]) for k in range(len(vals))]
        assert FEATURES[out[-1].feature[0]] == "transition"
        return float(out[-1].novelty[0])

    bounded = [first_middle_score(n, 500.0) for n in (2000, 8000)]
    unbounded = [first_middle_score(n, 0.0) for n in (2000, 8000)]
    assert bounded[1] == pytest.approx(bounded[0], rel=0.05)
    assert unbounded[1] > 1.1 * unbounded[0]  # what the bound is for


def test_a_new_extreme_is_routine_for_a_series_that_keeps_reaching_its_extreme() -> None:
    # topping the old maximum by 2% of the range: news for a series whose maximum was one
    # excursion, routine for one whose spikes reach 95-100% of its maximum every 25 samples
    def last_score(near_band: float, spikes: int) -> float:
        rng = np.random.default_rng(7)
        n = 1500
        vals = 1.0 + 0.1 * rng.standard_normal(n)
        at = np.arange(50, n, n // spikes)[:spikes]
        vals[at] = rng.uniform(95.0, 100.0, len(at))
        vals[at[0]] = 100.0
        vals = np.r_[vals, 1.0 + 0.02 * (100.0 - 1.0) + 100.0 - 1.0]
        s = BatchScorer(ScorerParams(near_band=near_band, w_season=0.0, w_shift=0.0, trans_bins=0, lk_half=0.0))
        idx = s.add_series(1)
        out = [s.update(idx, vals[k : k + 1], k * 60.0) for k in range(len(vals))]
        assert FEATURES[out[-1].feature[0]] == "value"
        return float(out[-1].score[0])

    assert last_score(0.05, spikes=1) > 0.5
    assert last_score(0.05, spikes=60) < 0.4
    assert last_score(0.0, spikes=60) > 0.5  # what the count of visits is for
