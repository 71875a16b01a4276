"""Cardinality limits where raw series enter: label count and length, series per service and in all."""

from __future__ import annotations

import random

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from aiops.config import LimitSettings, load_settings
from aiops.decode.jsonline import DecodeError, decode_metric
from aiops.decode.kafka_forms import KafkaDecoder, decode_adapter_metric
from aiops.decode.metrics import MetricDeriver, SeriesCollector
from aiops.observe.rejects import Rejects
from aiops.records import MetricSample, make_labels
from tests.properties.strategies import EXAMPLES

STEP = 15.0


def deriver(rejects: Rejects | None = None, **limits: object) -> MetricDeriver:
    return MetricDeriver(STEP, 4, 20, rejects or Rejects(log_examples=False),
                         LimitSettings(**limits))  # type: ignore[arg-type]


def req(ts: float, value: float, service: str = "api", **labels: str) -> MetricSample:
    return MetricSample(ts, "http_requests_total", make_labels({"service": service, **labels}), value)


def rates(batches: list, service: str = "api") -> dict[float, float]:
    return {ts: p.value for ts, pts in batches for p in pts
            if p.service == service and p.metric == "http_requests_total:rate"}


# -- labels per sample ----------------------------------------------------------------------------

def test_label_count_and_length_limits_in_every_metric_form() -> None:
    many = {f"l{i}": "v" for i in range(9)}
    with pytest.raises(DecodeError, match="too_many_labels"):
        decode_metric({"ts": 1, "name": "up", "labels": many, "value": 1}, max_labels=8)
    with pytest.raises(DecodeError, match="label_too_long"):
        decode_metric({"ts": 1, "name": "up", "labels": {"a": "x" * 65}, "value": 1}, max_label_len=64)
    with pytest.raises(DecodeError, match="too_many_labels"):
        decode_adapter_metric({"timestamp": 1, "value": "1", "labels": {"__name__": "up", **many}}, max_labels=8)
    with pytest.raises(DecodeError, match="label_too_long"):
        decode_adapter_metric({"timestamp": 1, "value": "1", "labels": {"__name__": "up", "a": "x" * 65}},
                              max_label_len=64)
    # __name__ is the metric name, not a label: eight labels plus it fit a limit of eight
    assert decode_adapter_metric({"timestamp": 1, "value": "1", "labels": {"__name__": "up", **dict(
        list(many.items())[:8])}}, max_labels=8).name == "up"


@pytest.mark.parametrize("fmt", ["auto", "jsonline", "prometheus_kafka_adapter"])
def test_kafka_decoder_applies_its_limits_on_every_path(fmt: str) -> None:
    d = KafkaDecoder(metrics_format=fmt, max_labels=4, max_label_len=32)  # type: ignore[arg-type]

    def line(labels: dict[str, str]) -> bytes:
        if fmt == "prometheus_kafka_adapter":
            return (b'{"timestamp": 10, "value": "1", "name": "up", "labels": '
                    + repr(labels).replace("'", '"').encode() + b"}")
        return b'{"ts": 10, "name": "up", "value": 1, "labels": ' + repr(labels).replace("'", '"').encode() + b"}"

    ok = line({"service": "a"})
    wide = line({f"k{i}": "v" for i in range(5)})
    long = line({"service": "s" * 33})
    for _ in range(2):  # the second round goes through the label caches
        recs, errs = d.metrics(b"\n".join([ok, wide, long]))
        assert [r.labels for r in recs] == [(("service", "a"),)]
        assert sorted(e.reason for e in errs) == ["label_too_long", "too_many_labels"]
        for bad, reason in ((wide, "too_many_labels"), (long, "label_too_long")):  # alone: the msgspec fast path
            recs, errs = d.metrics(bad)
            assert recs == [] and [e.reason for e in errs] == [reason]


def test_limit_settings_are_read_from_the_environment() -> None:
    s = load_settings(env={"AIOPS_LIMITS__MAX_SERIES_PER_SERVICE": "50", "AIOPS_LIMITS__MAX_LABELS": "10"})
    assert s.limits.max_series_per_service == 50 and s.limits.max_labels == 10
    assert LimitSettings().max_series_per_service == 10_000  # generous by default


# -- series per service / in all --------------------------------------------------------------------

def test_series_beyond_the_per_service_limit_are_refused_and_existing_ones_keep_working() -> None:
    rejects = Rejects(log_examples=False)
    d = deriver(rejects, max_series_per_service=3)
    for i in range(4):
        ts = i * STEP
        for inst in range(3):
            d.add(req(ts, 100.0 * i, instance=f"i{inst}"))
        d.add(req(ts + 1, 30.0 * i, service="other", instance="x"))  # another service is not affected
        for k in range(50):  # a label explosion in api: a fresh pod id per sample
            d.add(req(ts + 2, 1.0, instance=f"pod-{i}-{k}"))
    out = d.flush(4 * STEP)
    assert d.series_per_service() == {"api": 3, "other": 1}
    assert rejects.by_reason() == {("derive", "series_limit_per_service"): 200}
    assert rates(out) == {STEP * i: pytest.approx(3 * 100.0 / STEP) for i in range(1, 4)}  # unchanged by the flood
    assert rates(out, "other") == {STEP * i: pytest.approx(2.0) for i in range(1, 4)}


def test_total_limit_refuses_a_flood_of_services() -> None:
    rejects = Rejects(log_examples=False)
    d = deriver(rejects, max_series=10)
    for k in range(100):
        d.add(req(0.0, 1.0, service=f"svc-{k}"))
    assert d.series_count == 10 and rejects.by_reason() == {("derive", "series_limit_total"): 90}


def test_one_warning_per_service_per_interval() -> None:
    d = deriver(max_series_per_service=1, warn_interval_s=300)
    with structlog.testing.capture_logs() as logs:
        for i in range(40):  # 10 minutes of a flood
            ts = i * STEP
            d.add(req(ts, 1.0, instance="kept"))
            d.add(req(ts + 1, 1.0, instance=f"new-{i}"))
            d.add(req(ts + 2, 1.0, service="b", instance="kept"))
            d.add(req(ts + 3, 1.0, service="b", instance=f"new-{i}"))
    warnings = [(e["service"], e["refused"]) for e in logs if e["event"] == "cardinality_limit"]
    assert warnings == [("api", 1), ("b", 1), ("api", 20), ("b", 20)]


def test_idle_series_are_forgotten_so_pod_churn_does_not_fill_the_quota() -> None:
    """A rollout replaces five pods with five new ones: at a limit of five, the new pods are refused
    until the old ones have been silent for max_gap, then admitted. (Size the limit for both
    generations of a rollout; the default, 10,000 per service, is far above that.)"""
    rejects = Rejects(log_examples=False)
    d = deriver(rejects, max_series_per_service=5)
    out: list = []
    for deploy in range(6):  # each deploy brings five new pods; the old ones go silent
        for i in range(30):
            ts = (deploy * 30 + i) * STEP
            for pod in range(5):
                d.add(req(ts, 10.0 * (deploy * 30 + i), instance=f"d{deploy}-{pod}"))
            out += d.flush(ts)
    assert {dict(lb)["instance"] for _, lb in d._last} == {f"d5-{p}" for p in range(5)}
    assert 0 < rejects.total <= 5 * 5 * 25  # each rollout: five pods refused for at most ~max_gap steps
    assert rates(out)[(5 * 30 + 29) * STEP - STEP] == pytest.approx(5 * 10.0 / STEP)


def _stream(seed: int) -> list[MetricSample]:
    """Series that come and go with gaps longer than max_gap, counters, a status family, a histogram, a gauge."""
    rnd = random.Random(seed)
    out: list[MetricSample] = []
    for step in range(300):
        ts = step * STEP
        for inst in range(6):
            if (step // (25 + 5 * inst)) % 3 == 2:
                continue  # this instance is down for a while (longer than max_gap sometimes)
            for code in ("200", "503"):
                out.append(MetricSample(ts + inst * 0.1, "http_requests_total", make_labels(
                    {"service": f"s{inst % 2}", "instance": f"i{inst}", "code": code}), float(step * (5 + inst))))
            for le in ("0.1", "1", "+Inf"):
                out.append(MetricSample(ts + inst * 0.1 + 0.01, "lat_seconds_bucket", make_labels(
                    {"service": f"s{inst % 2}", "instance": f"i{inst}", "le": le}), float(step * (2 + inst))))
            out.append(MetricSample(ts + inst * 0.1 + 0.02, "mem_bytes", make_labels(
                {"service": f"s{inst % 2}", "instance": f"i{inst}"}), rnd.random()))
    return out


def test_forgetting_idle_series_changes_no_output() -> None:
    a = deriver()
    b = deriver()
    b._sweep_every = 10 ** 9  # never forgets: the reference
    out_a, out_b, forgot = [], [], 0
    for s in _stream(3):
        a.add(s)
        b.add(s)
        out_a += a.flush(s.ts)
        out_b += b.flush(s.ts)
        forgot = max(forgot, b.series_count - a.series_count)
    key = lambda out: [(ts, sorted((p.key, round(p.value, 9)) for p in pts)) for ts, pts in out]  # noqa: E731
    assert len(out_a) > 250 and key(out_a) == key(out_b)
    assert forgot >= 6  # and it did forget series while they were down


def test_snapshot_keeps_the_counts_and_the_limits_apply_after_restore() -> None:
    d = deriver(max_series_per_service=3)
    for inst in range(3):
        d.add(req(0.0, 1.0, instance=f"i{inst}"))
    rejects = Rejects(log_examples=False)
    e = MetricDeriver.from_snapshot(d.snapshot(), STEP, 4, 20, rejects, LimitSettings(max_series_per_service=3))
    assert e.series_per_service() == {"api": 3}
    e.add(req(STEP, 2.0, instance="i0"))
    e.add(req(STEP, 2.0, instance="i9"))
    assert rejects.by_reason() == {("derive", "series_limit_per_service"): 1}


def test_series_collector_exports_the_counts() -> None:
    d = deriver(max_series_per_service=7)
    d.add(req(0.0, 1.0))
    reg = CollectorRegistry()
    reg.register(SeriesCollector(lambda: d))
    text = generate_latest(reg).decode()
    assert "aiops_deriver_series 1.0" in text and 'aiops_deriver_series_limit{limit="per_service"} 7.0' in text


# -- a flood cannot grow the state past the limits ----------------------------------------------------

flood = st.lists(
    st.tuples(st.sampled_from(["api", "db", "x"]) | st.text(min_size=1, max_size=6),  # service (maybe unique)
              st.sampled_from(["http_requests_total", "mem_bytes", "lat_bucket", "q_total"]),
              st.text(max_size=8),  # a unique label value per sample
              st.floats(min_value=0, max_value=1e6), st.integers(0, 3)),
    max_size=300)


@EXAMPLES
@given(flood, st.integers(1, 8), st.integers(1, 20))
def test_a_flood_of_unique_label_values_cannot_grow_the_state_past_the_limits(
        events: list[tuple[str, str, str, float, int]], per_service: int, total: int) -> None:
    d = deriver(max_series_per_service=per_service, max_series=total)
    ts = 0.0
    for service, name, value_label, value, advance in events:
        ts += advance * 7.5
        labels = {"service": service, "pod": value_label}
        if name == "lat_bucket":
            labels["le"] = "0.5"
        d.add(MetricSample(ts, name, make_labels(labels), value))
        d.flush(ts - 30)
        assert d.series_count <= total
        assert all(n <= per_service for n in d.series_per_service().values())
        assert len(d._names) <= 2 * total + 64 and len(d._hist_names_cache) <= 2 * total + 64  # name caches
        members = sum(len(m) for g in (d._rates, d._errors) for m in g.values())
        members += sum(len(m) for by_le in d._hist.values() for m in by_le.values())
        assert members <= 2 * total
        assert len(d._gauges) <= total
