"""Metric semantics: counter rates with resets, histogram quantiles, error ratios, gaps."""

from __future__ import annotations

import math

import pytest

from aiops.decode.metrics import MetricDeriver, histogram_quantile
from aiops.observe.rejects import Rejects
from aiops.records import MetricSample, PointKind, SeriesPoint, make_labels

STEP = 15.0


def deriver(rejects: Rejects | None = None) -> MetricDeriver:
    return MetricDeriver(STEP, stale_steps=4, max_gap_steps=20, rejects=rejects or Rejects(log_examples=False))


def sample(ts: float, name: str, value: float, **labels: str) -> MetricSample:
    return MetricSample(ts, name, make_labels({"service": "api", **labels}), value)


def series(batches: list[tuple[float, list[SeriesPoint]]], metric: str) -> dict[float, float]:
    return {ts: p.value for ts, points in batches for p in points if p.metric == metric}


def test_counter_rate_sums_instances_and_handles_reset() -> None:
    d = deriver()
    for i in range(10):
        ts = i * STEP
        d.add(sample(ts, "http_requests_total", 1000 + 30.0 * i, instance="a", code="200"))
        # instance b restarts at step 5: its counter drops to a small value
        b = 500 + 15.0 * i if i < 5 else 15.0 * (i - 5)
        d.add(sample(ts + 0.3, "http_requests_total", b, instance="b", code="200"))
    rates = series(d.flush(10 * STEP), "http_requests_total:rate")
    assert rates[STEP] == pytest.approx(3.0)
    # the reset step counts the post-reset value as the increase, never a negative rate
    assert all(v >= 0 for v in rates.values())
    assert rates[6 * STEP] == pytest.approx(2.0 + 1.0)
    assert rates[5 * STEP] == pytest.approx(2.0 + 0.0)  # b restarted at exactly 0


def test_error_ratio_from_status_label() -> None:
    d = deriver()
    for i in range(5):
        ts = i * STEP
        d.add(sample(ts, "http_requests_total", 90.0 * i * STEP / 15, code="200"))
        d.add(sample(ts, "http_requests_total", 9.0 * i, code="503"))
        d.add(sample(ts, "http_requests_total", 1.0 * i, code="404"))
    batches = d.flush(5 * STEP)
    ratio = series(batches, "http_requests_total:error_ratio")
    assert ratio[STEP] == pytest.approx(9.0 / 100.0)
    assert all(p.kind is PointKind.ERROR_RATIO for _, pts in batches for p in pts if p.metric.endswith("error_ratio"))


def test_histogram_quantiles_and_mean() -> None:
    d = deriver()
    bounds = ["0.1", "0.25", "0.5", "1", "+Inf"]
    # per step: 100 requests; 50 under 0.1 s, 30 in (0.1, 0.25], 15 in (0.25, 0.5], 5 in (0.5, 1]
    per_step = [50, 80, 95, 100, 100]
    for i in range(4):
        ts = i * STEP
        for le, c in zip(bounds, per_step, strict=True):
            d.add(sample(ts, "rpc_seconds_bucket", float(c * i), le=le))
        d.add(sample(ts, "rpc_seconds_sum", 20.0 * i))
        d.add(sample(ts, "rpc_seconds_count", 100.0 * i))
    batches = d.flush(4 * STEP)
    p50, p90, p99 = (series(batches, f"rpc_seconds:{q}")[STEP] for q in ("p50", "p90", "p99"))
    assert p50 == pytest.approx(0.1)
    assert p90 == pytest.approx(0.25 + 0.25 * (90 - 80) / 15)
    assert p99 == pytest.approx(0.5 + 0.5 * (99 - 95) / 5)
    assert series(batches, "rpc_seconds:mean")[STEP] == pytest.approx(0.2)
    assert not series(batches, "rpc_seconds_sum:rate")


def test_histogram_quantile_edges() -> None:
    assert math.isnan(histogram_quantile(0.5, []))
    assert math.isnan(histogram_quantile(0.5, [(1.0, 0.0), (math.inf, 0.0)]))  # no traffic: a gap
    # rank in the +Inf bucket answers the highest finite bound
    assert histogram_quantile(0.99, [(1.0, 90.0), (math.inf, 100.0)]) == 1.0


def test_missed_scrape_of_one_instance_does_not_dip_the_service_total() -> None:
    d = deriver()
    for i in range(12):
        ts = i * STEP
        d.add(sample(ts, "jobs_total", 10.0 * i, instance="a"))
        if i not in (6, 7):  # instance b misses two scrapes
            d.add(sample(ts, "jobs_total", 10.0 * i, instance="b"))
    rates = series(d.flush(12 * STEP), "jobs_total:rate")
    assert min(rates.values()) == pytest.approx(max(rates.values()))


def test_nan_is_a_gap_and_a_long_gap_restarts_the_rate() -> None:
    d = deriver()
    d.add(sample(0, "jobs_total", 0.0))
    d.add(sample(STEP, "jobs_total", 15.0))
    d.add(sample(2 * STEP, "jobs_total", math.nan))
    d.add(sample(3 * STEP, "jobs_total", 45.0))
    # a 30-minute gap, then the counter has moved a lot: no averaged rate across it
    d.add(sample(3 * STEP + 1800, "jobs_total", 99999.0))
    d.add(sample(4 * STEP + 1800, "jobs_total", 99999.0 + 15.0))
    rates = series(d.flush(10_000), "jobs_total:rate")
    assert rates[STEP] == pytest.approx(1.0)
    assert rates[3 * STEP] == pytest.approx(1.0)  # the NaN step did not break the counter
    assert max(rates.values()) == pytest.approx(1.0)


def test_duplicate_and_out_of_order_samples_are_counted() -> None:
    rejects = Rejects(log_examples=False)
    d = deriver(rejects)
    d.add(sample(0, "temp", 1.0))
    d.add(sample(0, "temp", 1.0))
    d.add(sample(5, "temp", 2.0))
    d.add(sample(4, "temp", 3.0))
    assert rejects.by_reason() == {("derive", "duplicate_sample"): 1, ("derive", "out_of_order_sample"): 1}


def test_gauges_stay_per_series() -> None:
    d = deriver()
    for i in range(3):
        d.add(sample(i * STEP, "memory_bytes", 100.0 + i, instance="a"))
        d.add(sample(i * STEP, "memory_bytes", 200.0 + i, instance="b"))
    batches = d.flush(3 * STEP)
    keys = {p.key for _, pts in batches for p in pts}
    assert keys == {"api/memory_bytes{instance=a}", "api/memory_bytes{instance=b}"}
    assert [len(pts) for _, pts in batches] == [2, 2, 2]


def test_an_instance_back_after_its_rate_went_stale_joins_the_sum_again() -> None:
    # Instance b's rate member is pruned while it is silent (stale after 4 steps) but its series
    # is still tracked (max_gap 20 steps): its return must add a fresh member, not revive the old one.
    d = deriver()
    for i in range(20):
        ts = i * STEP
        d.add(sample(ts, "http_requests_total", 30.0 * i, instance="a", code="500"))
        if i < 3 or i >= 12:
            d.add(sample(ts + 1, "http_requests_total", 15.0 * i, instance="b", code="200"))
    batches = d.flush(20 * STEP)
    rates = series(batches, "http_requests_total:rate")
    ratio = series(batches, "http_requests_total:error_ratio")
    assert rates[2 * STEP] == pytest.approx(3.0) and ratio[2 * STEP] == pytest.approx(2.0 / 3.0)
    assert rates[10 * STEP] == pytest.approx(2.0) and ratio[10 * STEP] == pytest.approx(1.0)  # b stale
    # at step 12 b's first sample after the gap averages over it (150 over 150 s)
    assert rates[12 * STEP] == pytest.approx(3.0) and ratio[12 * STEP] == pytest.approx(2.0 / 3.0)
    assert rates[15 * STEP] == pytest.approx(3.0) and ratio[15 * STEP] == pytest.approx(2.0 / 3.0)


def test_restore_in_the_middle_of_a_step_keeps_its_gauges_rates_and_order() -> None:
    import json

    def feed(d: MetricDeriver, i: int, part: int) -> None:
        ts = i * STEP
        if part == 0:
            d.add(sample(ts, "queue_depth", 5.0 + i, queue="b"))
            d.add(sample(ts, "http_requests_total", 30.0 * i, code="503"))
        else:
            d.add(sample(ts + 1, "queue_depth", 7.0 - i, queue="a"))
            d.add(sample(ts + 1, "http_requests_total", 60.0 * i, code="200"))
            d.add(sample(ts + 2, "queue_depth", 9.0, queue="b"))  # again in the step: its newest value counts

    plain, hopping = deriver(), deriver()
    out_plain, out_hop = [], []
    for i in range(8):
        for part in (0, 1):
            feed(plain, i, part)
            feed(hopping, i, part)
            hopping = MetricDeriver.from_snapshot(json.loads(json.dumps(hopping.snapshot())), STEP, 4, 20,
                                                  Rejects(log_examples=False))
        out_plain += plain.flush(i * STEP)
        out_hop += hopping.flush(i * STEP)
    assert repr(out_plain) == repr(out_hop) and len(out_plain) == 7
    last = out_plain[-1][1]
    assert [p.key for p in last] == ["api/http_requests_total:rate", "api/http_requests_total:error_ratio",
                                     "api/queue_depth{queue=b}", "api/queue_depth{queue=a}"]
    assert [p.value for p in last][1:] == [pytest.approx(1 / 3), 9.0, 7.0 - 6]


def test_points_are_ordinary_series_points() -> None:
    # The deriver builds points by filling their slots directly (fast); they must be the same records.
    d = deriver()
    d.add(sample(0.0, "queue_depth", 3.0))
    (ts, (p,)), = d.flush(STEP)
    assert type(p) is SeriesPoint
    assert p == SeriesPoint(0.0, "api/queue_depth{}", "api", "queue_depth", PointKind.GAUGE, 3.0)
    assert hash(p) == hash(SeriesPoint(0.0, "api/queue_depth{}", "api", "queue_depth", PointKind.GAUGE, 3.0))
    with pytest.raises(AttributeError):
        p.value = 4.0  # type: ignore[misc]


def test_samples_on_and_next_to_step_boundaries_land_in_the_step_step_of_names() -> None:
    # The deriver skips the floor for times well inside the current step; at the edges it must not guess.
    base = 1_767_225_600.0
    stamps = []
    for k in range(1, 40):
        edge = base + (k + 0.5) * STEP
        stamps += [math.nextafter(edge, -math.inf), edge, math.nextafter(edge, math.inf)]
    d = deriver()
    for i, ts in enumerate(sorted(set(stamps))):
        d.add(sample(ts, "queue_depth", float(i), queue=str(i)))  # one series per sample: none is a duplicate
    got = {p.value: ts for ts, points in d.flush(base + 50 * STEP) for p in points}
    for i, ts in enumerate(sorted(set(stamps))):
        assert got[float(i)] == d.step_of(ts) * STEP, ts


def test_a_snapshot_listing_a_gauge_it_does_not_track_is_refused() -> None:
    d = deriver()
    d.add(sample(0.0, "queue_depth", 1.0))
    data = d.snapshot()
    assert data["gauges"] == [["queue_depth", [["service", "api"]], 1.0]]
    data["gauges"].append(["other_gauge", [["service", "api"]], 2.0])
    with pytest.raises(ValueError, match="other_gauge"):
        MetricDeriver.from_snapshot(data, STEP, 4, 20, Rejects(log_examples=False))


def test_snapshot_lists_status_groups_in_a_fixed_order() -> None:
    # A set's order follows string hashes (different in every process): the snapshot must not.
    services = ["redis", "catalog", "api", "zeta", "cart"]
    snaps = []
    for order in (services, services[::-1]):
        d = deriver()
        for svc in order:
            d.add(MetricSample(0.0, "http_requests_total", make_labels({"service": svc, "code": "500"}), 1.0))
        d.add(MetricSample(0.0, "http_requests_total", (("code", "200"),), 1.0))  # no service label
        snaps.append(d.snapshot()["status_groups"])
    assert snaps[0] == snaps[1] == [[s, "http_requests_total"] for s in sorted(services)] + [[None, "http_requests_total"]]
