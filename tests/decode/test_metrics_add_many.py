"""MetricDeriver.add_many against add one sample at a time: same points, same rejects, same state."""

from __future__ import annotations

import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from aiops.decode.metrics import MetricDeriver
from aiops.observe.rejects import Rejects
from aiops.records import MetricSample, make_labels

STEP = 15.0

SERIES = [
    ("http_requests_total", make_labels({"service": "api", "code": "200"})),
    ("http_requests_total", make_labels({"service": "api", "code": "503"})),
    ("http_requests_total", make_labels({"service": "web", "code": "200"})),
    ("http_request_duration_seconds_bucket", make_labels({"service": "api", "le": "0.1"})),
    ("http_request_duration_seconds_bucket", make_labels({"service": "api", "le": "+Inf"})),
    ("http_request_duration_seconds_sum", make_labels({"service": "api"})),
    ("http_request_duration_seconds_count", make_labels({"service": "api"})),
    ("queue_depth", make_labels({"service": "api", "queue": "a"})),
    ("up", make_labels({"service": "web"})),
]

# Values that take every branch: ordinary, resets, gaps (NaN), infinities, negatives, overflowing jumps.
VALUES = st.one_of(
    st.floats(min_value=0, max_value=1e6), st.just(math.nan), st.just(math.inf), st.just(-math.inf),
    st.floats(min_value=-10, max_value=-0.1), st.just(1.7e308),
)
# Scrape rounds: each round moves time on (usually about a step; sometimes within the step, not at
# all, back, or far: skipped steps, stale members, long gaps), then samples some series, each
# with a small jitter that can be zero (duplicates) or negative (out of order).
ADVANCES = st.one_of(
    st.floats(min_value=13.0, max_value=17.0), st.just(15.0), st.floats(min_value=0.0, max_value=5.0),
    st.floats(min_value=-20.0, max_value=0.0), st.floats(min_value=40.0, max_value=120.0),
    st.floats(min_value=120.0, max_value=400.0), st.floats(min_value=1e-9, max_value=1e-6),
)
JITTER = st.one_of(st.floats(min_value=0.0, max_value=1.0), st.just(0.0), st.floats(min_value=-1.0, max_value=0.0))
ROUNDS = st.lists(st.tuples(ADVANCES, st.lists(st.tuples(st.integers(0, len(SERIES) - 1), JITTER, VALUES),
                                               max_size=12)), max_size=25)


def _samples(rounds: list[tuple[float, list[tuple[int, float, float]]]]) -> list[MetricSample]:
    ts, out = 1000.0, []
    for advance, picks in rounds:
        ts = max(0.0, ts + advance)
        for i, jitter, value in picks:
            ts = max(0.0, ts + jitter)
            name, labels = SERIES[i]
            out.append(MetricSample(ts, name, labels, value))
    return out


def _deriver(limits_series: int | None = None) -> MetricDeriver:
    from aiops.config import LimitSettings
    limits = LimitSettings(max_series_per_service=limits_series) if limits_series else None
    return MetricDeriver(STEP, stale_steps=2, max_gap_steps=4, rejects=Rejects(log_examples=False), limits=limits)


@settings(max_examples=300, deadline=None)
@given(ROUNDS, st.lists(st.integers(1, 40), min_size=1, max_size=10), st.sampled_from([None, 3]),
       st.integers(0, 300))
def test_add_many_is_add_in_turn(stream: list[tuple[float, list[tuple[int, float, float]]]], cuts: list[int],
                                 limit: int | None, restore_at: int) -> None:
    samples = _samples(stream)
    one, many = _deriver(limit), _deriver(limit)
    out_one, out_many = [], []
    for s in samples:
        one.add(s)
    end = max((s.ts for s in samples), default=0.0) + 10 * STEP  # past every step with data
    out_one += one.flush(end)
    # add_many over chunks of varying size, with a restore from a snapshot in the middle
    # (restored series are unrouted until their next sample, which add_many hands to add).
    pos, k = 0, 0
    while pos < len(samples):
        chunk = samples[pos:pos + cuts[k % len(cuts)]]
        many.add_many(chunk)
        pos += len(chunk)
        k += 1
        if pos > restore_at and restore_at >= 0:
            restore_at = -1
            many = MetricDeriver.from_snapshot(json.loads(json.dumps(many.snapshot())), STEP, 2, 4,
                                               many._rejects, many.limits)
    out_many += many.flush(end)
    assert repr(out_one) == repr(out_many)
    assert one._rejects.by_reason() == many._rejects.by_reason()
    assert json.dumps(one.snapshot(), sort_keys=True) == json.dumps(many.snapshot(), sort_keys=True)


def test_add_many_of_an_ordinary_stream_gives_rates_and_gauges() -> None:
    d = _deriver()
    labels = make_labels({"service": "api"})
    d.add_many([MetricSample(t * STEP, "jobs_total", labels, 30.0 * t) for t in range(5)]
               + [MetricSample(5 * STEP, "queue_depth", labels, 4.0)])
    points = {(ts, p.metric): p.value for ts, batch in d.flush(6 * STEP) for p in batch}
    # step 5 has no counter sample: its rate stands in while fresh (stale_steps)
    assert points == {(STEP * t, "jobs_total:rate"): 2.0 for t in range(1, 6)} | {(75.0, "queue_depth"): 4.0}


def test_add_many_gives_a_pruned_member_a_new_one() -> None:
    # jobs_total's member goes stale over a 4-step silence and is pruned, while the series itself
    # is still tracked (silent less than max_gap); its next sample, not the first of its step,
    # must join its group again instead of updating the pruned member.
    labels = make_labels({"service": "api"})
    samples = [MetricSample(t * STEP, "jobs_total", labels, 30.0 * t) for t in range(3)]
    samples += [MetricSample(t * STEP - 6, "up", labels, 1.0) for t in range(3, 7)]
    samples += [MetricSample(6 * STEP - 5, "jobs_total", labels, 300.0)]  # 55 s after its last: a rate
    samples += [MetricSample(7 * STEP, "up", labels, 1.0)]
    one, many = _deriver(), _deriver()
    for s in samples:
        one.add(s)
    many.add_many(samples)
    expected = one.flush(8 * STEP)
    assert repr(many.flush(8 * STEP)) == repr(expected)
    assert any(p.metric == "jobs_total:rate" for ts, batch in expected if ts == 6 * STEP for p in batch)
