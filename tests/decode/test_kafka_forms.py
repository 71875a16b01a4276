"""Kafka message forms: adapter JSON, project JSON lines, Fluent Bit / Vector Kubernetes logs, raw lines."""

from __future__ import annotations

import json
import math

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiops.decode.kafka_forms import KafkaDecoder, LogFields, lookup, parse_time


def test_adapter_metric_value_as_string_and_name_label_dropped() -> None:
    msg = {"timestamp": "2024-01-01T00:00:15.5Z", "value": "NaN", "name": "http_requests_total",
           "labels": {"__name__": "http_requests_total", "service": "api", "code": "500"}}
    recs, errs = KafkaDecoder().metrics(json.dumps(msg).encode())
    assert errs == []
    (s,) = recs
    assert s.ts == 1704067215.5 and s.name == "http_requests_total" and math.isnan(s.value)
    assert s.labels == (("code", "500"), ("service", "api"))


def test_jsonline_batch_keeps_good_lines_and_reports_bad_ones() -> None:
    lines = [
        {"ts": 1, "name": "up", "labels": {"service": "a"}, "value": 1},
        {"ts": "x", "name": "up", "value": 1},
        {"ts": 2, "name": "up", "labels": {"service": ["not", "a", "string"]}, "value": 1},
        {"ts": 3, "name": "up", "value": "1e3"},
    ]
    value = "\n".join(json.dumps(x) for x in lines).encode() + b"\n{broken"
    recs, errs = KafkaDecoder().metrics(value)
    assert [r.ts for r in recs] == [1.0, 3.0]
    assert sorted(e.reason for e in errs) == ["bad_json", "bad_labels", "bad_ts"]


def test_forced_format_rejects_the_other_form() -> None:
    adapter = b'{"timestamp":"1970-01-01T00:00:01Z","value":"1","name":"up","labels":{}}'
    recs, errs = KafkaDecoder(metrics_format="jsonline").metrics(adapter)
    assert recs == [] and errs[0].reason == "bad_ts"


def test_wrong_types_are_errors_not_crashes() -> None:
    d = KafkaDecoder()
    for value in (b"[]", b"42", b'"s"', b"null", b'{"timestamp": true, "name": "x", "value": "1"}',
                  b'{"timestamp": "2024-01-01T00:00:00Z", "name": "x", "value": {"a": 1}}',
                  b'{"timestamp": "2024-01-01T00:00:00Z", "name": 7, "value": "1"}'):
        recs, errs = d.metrics(value)
        assert recs == [] and len(errs) == 1, value


def test_invalid_utf8_is_counted_reason() -> None:
    d = KafkaDecoder()
    assert d.metrics(b'{"ts": 1, "name": "\xff\xfe"}')[1][0].reason == "bad_utf8"
    assert d.logs(b"\xc3\x28")[1][0].reason == "bad_utf8"
    assert KafkaDecoder(logs_format="raw").logs(b"\xc3\x28", key=b"a", kafka_ts=1.0)[1][0].reason == "bad_utf8"


def test_fluent_bit_kubernetes_shape() -> None:
    msg = {"date": 1704067200.25, "log": "GET /cart 500 12ms\n", "stream": "stderr", "time": "ignored",
           "kubernetes": {"pod_name": "checkout-7d9f", "namespace_name": "shop", "container_name": "app",
                          "labels": {"app.kubernetes.io/name": "checkout", "pod-template-hash": "7d9f"}}}
    (rec,), errs = KafkaDecoder(log_fields=LogFields(ts=("date",))).logs(json.dumps(msg).encode())
    assert errs == [] and rec.service == "checkout" and rec.message == "GET /cart 500 12ms" and rec.ts == 1704067200.25


def test_vector_kubernetes_logs_shape() -> None:
    msg = {"message": "level=error msg=\"db timeout\"", "timestamp": "2024-01-01T00:00:01.123456789Z",
           "source_type": "kubernetes_logs", "stream": "stdout",
           "kubernetes": {"container_name": "payments", "pod_name": "payments-0", "pod_namespace": "shop",
                          "pod_labels": {"app": "payments"}}, "level": "error"}
    (rec,), _ = KafkaDecoder().logs(json.dumps(msg).encode())
    assert rec.service == "payments" and rec.level == "ERROR"
    assert abs(rec.ts - 1704067201.123456) < 1e-6


def test_log_service_and_time_fall_back_to_header_key_and_kafka_time() -> None:
    d = KafkaDecoder()
    (rec,), _ = d.logs(b'{"msg": "hello"}', key=b"from-key", headers=[("service", b"from-header")], kafka_ts=7.0)
    assert (rec.service, rec.ts) == ("from-header", 7.0)
    (rec,), _ = d.logs(b'{"msg": "hello"}', key=b"from-key", kafka_ts=7.0)
    assert rec.service == "from-key"
    assert d.logs(b'{"msg": "hello"}', kafka_ts=7.0)[1][0].reason == "bad_service"
    assert d.logs(b'{"msg": "hello", "service": "a"}')[1][0].reason == "bad_ts"


def test_raw_text_lines() -> None:
    d = KafkaDecoder(logs_format="raw", service_header="app")
    (rec,), _ = d.logs(b"connection refused to db:5432\n", headers=[("app", b"orders")], kafka_ts=99.5)
    assert (rec.service, rec.message, rec.ts, rec.level) == ("orders", "connection refused to db:5432", 99.5, None)
    assert d.logs(b"x", kafka_ts=1.0)[1][0].reason == "bad_service"


def test_events_take_time_from_timestamp_or_kafka() -> None:
    d = KafkaDecoder()
    (ev,), _ = d.events(b'{"type": "deploy", "service": "api", "version": "v2", "timestamp": "1970-01-01T00:01:00Z"}')
    assert ev.ts == 60.0 and ev.attr("version") == "v2"
    (ev,), _ = d.events(b'{"type": "deploy", "service": "api"}', kafka_ts=5.0)
    assert ev.ts == 5.0


def test_parse_time_units() -> None:
    assert parse_time(1_700_000_000) == 1_700_000_000.0
    assert parse_time(1_700_000_000_000_000) == 1_700_000_000.0
    assert parse_time(1_700_000_000_000_000_000) == 1_700_000_000.0
    assert parse_time("2024-01-01T01:00:00+01:00") == 1704067200.0
    assert parse_time("2024-01-01T00:00:00") == 1704067200.0  # no zone: UTC


def test_lookup_prefers_existing_dotted_keys() -> None:
    obj = {"a.b": 1, "a": {"b": 2}}
    assert lookup(obj, "a.b") == 1
    assert lookup({"a": {"b": 2}}, "a.b") == 2


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_any_bytes_never_raise(value: bytes) -> None:
    d = KafkaDecoder()
    for fn in (d.metrics, d.logs, d.events):
        recs, errs = fn(value)
        assert isinstance(recs, list) and isinstance(errs, list)
    KafkaDecoder(logs_format="raw").logs(value, key=b"k", kafka_ts=1.0)


json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = st.recursive(
    json_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
    max_leaves=12)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["ts", "timestamp", "name", "labels", "value", "service", "message", "log",
                                        "type", "kubernetes", "date", "level"]), json_values, max_size=8))
def test_any_json_object_never_raises(obj: dict) -> None:
    value = json.dumps(obj).encode()
    d = KafkaDecoder()
    for fn in (d.metrics, d.logs, d.events):
        recs, errs = fn(value)
        assert len(recs) + len(errs) == 1


metric_objs = st.fixed_dictionaries(
    {"ts": st.one_of(st.floats(), st.integers(-5, 2**40), st.text(max_size=5), st.none(), st.booleans()),
     "name": st.one_of(st.text(max_size=6), st.integers(), st.none()),
     "value": st.one_of(st.floats(), st.integers(), st.text(max_size=5), st.none(), st.booleans())},
    optional={"labels": st.one_of(st.dictionaries(st.text(max_size=4), st.one_of(st.text(max_size=4), st.integers()),
                                                  max_size=3), st.none(), st.lists(st.text(), max_size=2))})


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(metric_objs, min_size=1, max_size=6))
def test_batched_fast_path_equals_the_general_decoder(objs: list) -> None:
    from aiops.decode.jsonline import DecodeError, decode_metric

    d = KafkaDecoder(metrics_format="jsonline")
    value = "\n".join(json.dumps(o) for o in objs).encode()
    recs, errs = d.metrics(value)
    expected, reasons = [], []
    for o in objs:
        try:
            expected.append(decode_metric(o))
        except DecodeError as e:
            reasons.append(e.reason)
    assert sorted(e.reason for e in errs) == sorted(reasons)
    assert len(recs) == len(expected)
    for a, b in zip(recs, expected, strict=True):
        assert (a.ts, a.name, a.labels) == (b.ts, b.name, b.labels)
        assert a.value == b.value or (math.isnan(a.value) and math.isnan(b.value))
