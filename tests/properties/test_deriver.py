"""Hostile sample streams through MetricDeriver: no exception, no negative rate, nothing non-finite out."""

from __future__ import annotations

import json
import math

from hypothesis import given
from hypothesis import strategies as st

from aiops.decode.metrics import MetricDeriver
from aiops.observe.rejects import Rejects
from aiops.records import MetricSample, PointKind
from tests.properties.strategies import EXAMPLES

SERIES = [
    ("http_requests_total", (("code", "200"), ("instance", "a"), ("service", "api"))),
    ("http_requests_total", (("code", "500"), ("instance", "a"), ("service", "api"))),
    ("http_requests_total", (("code", "503"), ("instance", "b"), ("service", "api"))),
    ("jobs_total", (("service", "worker"),)),
    ("lat_seconds_bucket", (("le", "0.1"), ("service", "api"))),
    ("lat_seconds_bucket", (("le", "1"), ("service", "api"))),
    ("lat_seconds_bucket", (("le", "+Inf"), ("service", "api"))),
    ("lat_seconds_bucket", (("le", "-5"), ("service", "api"))),
    ("lat_seconds_bucket", (("le", "nan"), ("service", "api"))),
    ("lat_seconds_bucket", (("le", "abc"), ("service", "api"))),
    ("lat_seconds_sum", (("service", "api"),)),
    ("lat_seconds_count", (("service", "api"),)),
    ("memory_bytes", (("service", "api"),)),
    ("up", ()),
]

values = (st.floats(min_value=0, max_value=1e6) | st.floats(allow_nan=True, allow_infinity=True)
          | st.sampled_from([0.0, -1.0, math.nan, math.inf, -math.inf, 1e308, 5e-324]))
# Mostly moving forward, sometimes backwards or repeating: duplicates and disorder.
time_steps = st.sampled_from([0.0, 0.001, 1.0, 7.5, 15.0, 15.0, 15.0, 30.0, 400.0, -3.0, -20.0])

events = st.lists(
    st.tuples(st.integers(0, len(SERIES) - 1), time_steps, values, st.integers(0, 9)),
    max_size=120,
)


def _check_points(batches: list, last_ts: list[float]) -> None:
    for ts, points in batches:
        assert math.isfinite(ts) and ts > last_ts[0], "steps out of order or repeated"
        last_ts[0] = ts
        keys = [p.key for p in points]
        assert len(keys) == len(set(keys)), "one series twice in a step"
        for p in points:
            assert p.ts == ts
            assert math.isfinite(p.value), p
            if p.kind in (PointKind.RATE, PointKind.ERROR_RATIO):  # a quantile may be negative (le < 0 buckets)
                assert p.value >= 0, p
            if p.kind is PointKind.ERROR_RATIO:
                assert p.value <= 1 + 1e-9, p


@EXAMPLES
@given(events=events, start=st.floats(min_value=0, max_value=2e9), step=st.sampled_from([1.0, 15.0, 60.0]),
       stale=st.integers(1, 5), gap=st.integers(1, 30))
def test_any_stream_gives_clean_points(events: list[tuple[int, float, float, int]], start: float, step: float,
                                       stale: int, gap: int) -> None:
    rejects = Rejects(log_examples=False)
    d = MetricDeriver(step_s=step, stale_steps=stale, max_gap_steps=gap, rejects=rejects)
    ts = start
    last = [-math.inf]
    for i, (series, dt, value, flush_roll) in enumerate(events):
        ts = max(0.0, ts + dt)
        name, labels = SERIES[series]
        d.add(MetricSample(ts, name, labels, value))
        if flush_roll == 0:  # the runtime flushes as the watermark moves, not after every sample
            _check_points(d.flush(ts - step * (i % 3)), last)
        if flush_roll == 1:  # and a restart may happen at any point: state survives a JSON round trip
            d = MetricDeriver.from_snapshot(json.loads(json.dumps(d.snapshot())), step, stale, gap, rejects)
    _check_points(d.flush(ts + 10 * step), last)
    assert all(stage == "derive" and reason for stage, reason in rejects.by_reason())


@EXAMPLES
@given(events=events)
def test_snapshot_at_any_point_changes_nothing(events: list[tuple[int, float, float, int]]) -> None:
    """Two derivers, one restored from a snapshot after every sample, emit identical points."""
    plain = MetricDeriver(15.0, 4, 20, Rejects(log_examples=False))
    hopping = MetricDeriver(15.0, 4, 20, Rejects(log_examples=False))
    ts = 1000.0
    for series, dt, value, flush_roll in events:
        ts = max(0.0, ts + dt)
        name, labels = SERIES[series]
        sample = MetricSample(ts, name, labels, value)
        plain.add(sample)
        hopping.add(sample)
        hopping = MetricDeriver.from_snapshot(json.loads(json.dumps(hopping.snapshot())), 15.0, 4, 20,
                                              Rejects(log_examples=False))
        if flush_roll < 3:
            assert repr(plain.flush(ts)) == repr(hopping.flush(ts))
    assert repr(plain.flush(ts + 150)) == repr(hopping.flush(ts + 150))


def test_known_hostile_streams() -> None:
    """Regressions found by the properties above, as plain examples."""
    labels = (("service", "api"),)
    cases = {
        "negative counter": [(0.0, 5.0), (15.0, -3.0), (30.0, -1.0)],
        "infinite counter": [(0.0, 5.0), (15.0, math.inf), (30.0, 10.0)],
        "huge counter over a tiny gap": [(0.0, 0.0), (1e-9, 1e308)],
    }
    for what, samples in cases.items():
        d = MetricDeriver(15.0, 4, 20, Rejects(log_examples=False))
        for ts, v in samples:
            d.add(MetricSample(ts, "jobs_total", labels, v))
        for _, points in d.flush(100.0):
            for p in points:
                assert math.isfinite(p.value) and p.value >= 0, (what, p)
    g = MetricDeriver(15.0, 4, 20, Rejects(log_examples=False))
    g.add(MetricSample(0.0, "memory_bytes", labels, math.inf))
    assert all(math.isfinite(p.value) for _, pts in g.flush(100.0) for p in pts)
