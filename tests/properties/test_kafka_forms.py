"""Hostile Kafka messages and remote-write bodies: clean records plus counted errors, never an exception."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from aiops.decode.jsonline import DecodeError
from aiops.decode.kafka_forms import KafkaDecoder, parse_time
from aiops.records import ChangeEvent, LogRecord, MetricSample
from aiops.sources.remote_write import decode_write_request, decompress, encode_write_request
from tests.properties.strategies import (
    EXAMPLES,
    dumps,
    event_objects,
    hostile_lines,
    json_values,
    log_objects,
    metric_objects,
    mostly,
    near_miss,
    numberish,
    short_text,
    text,
)

adapter_objects = near_miss({
    "timestamp": st.sampled_from(["2024-01-01T00:00:00Z", "2024-01-01T00:00:00.5+02:00", "yesterday", ""])
    | st.integers(0, 2 * 10**12),
    "value": st.sampled_from(["1.5", "NaN", "+Inf", "x"]) | numberish,
    "name": st.sampled_from(["up", ""]) | text,
    "labels": st.dictionaries(short_text, short_text, max_size=4).map(lambda d: {"__name__": "up", **d})
    | json_values,
})
fluent_logs = near_miss({
    "date": st.floats(0, 2e9) | st.sampled_from(["2024-01-01T00:00:00Z", "bad"]),
    "log": text,
    "kubernetes": st.fixed_dictionaries({"labels": st.dictionaries(st.sampled_from(["app", "app.kubernetes.io/name"]),
                                                                   short_text | json_values, max_size=2)})
    | json_values,
})


def _message(objects: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """One Kafka message value: one or several JSON lines (producers batch), or garbage."""
    line = objects.map(lambda o: dumps(o).encode()) | hostile_lines
    return mostly(st.lists(line, min_size=1, max_size=5).map(b"\n".join), st.binary(max_size=100), 5)


headers = st.lists(st.tuples(st.sampled_from(["service", "x"]), st.binary(max_size=12)), max_size=2)
kafka_ts = st.none() | st.floats(allow_nan=True, allow_infinity=True) | st.floats(0, 2e12)


def _check(records: list[Any], errors: list[Any], kind: type) -> None:
    assert all(isinstance(e, DecodeError) and e.reason for e in errors)
    for r in records:
        assert isinstance(r, kind)
        assert isinstance(r.ts, float) and math.isfinite(r.ts), r
        if isinstance(r, MetricSample):
            assert not math.isinf(r.value) and r.name
            assert all(isinstance(k, str) and isinstance(v, str) for k, v in r.labels)
        if isinstance(r, LogRecord):
            assert isinstance(r.service, str) and r.service and isinstance(r.message, str)


@EXAMPLES
@given(value=_message(metric_objects | adapter_objects), fmt=st.sampled_from(["auto", "jsonline",
                                                                               "prometheus_kafka_adapter"]))
def test_metric_messages(value: bytes, fmt: str) -> None:
    records, errors = KafkaDecoder(metrics_format=fmt).metrics(value)  # type: ignore[arg-type]
    _check(records, errors, MetricSample)


@EXAMPLES
@given(value=_message(log_objects | fluent_logs), key=st.none() | st.binary(max_size=10), hdrs=headers, ts=kafka_ts,
       fmt=st.sampled_from(["json", "raw"]))
def test_log_messages(value: bytes, key: bytes | None, hdrs: list[tuple[str, bytes]], ts: float | None,
                      fmt: str) -> None:
    records, errors = KafkaDecoder(logs_format=fmt, max_line_bytes=64).logs(value, key, hdrs, ts)  # type: ignore[arg-type]
    _check(records, errors, LogRecord)


@EXAMPLES
@given(value=_message(event_objects), ts=kafka_ts)
def test_event_messages(value: bytes, ts: float | None) -> None:
    records, errors = KafkaDecoder().events(value, ts)
    _check(records, errors, ChangeEvent)


@EXAMPLES
@given(raw=json_values | st.sampled_from(["2024-02-30T00:00:00Z", "9999-12-31T23:59:59Z", "0000-01-01", "1e400"]))
def test_parse_time_is_seconds_or_decode_error(raw: Any) -> None:
    try:
        t = parse_time(raw)
    except DecodeError as exc:
        assert exc.reason
        return
    assert isinstance(t, float) and math.isfinite(t)


names = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=6)


@EXAMPLES
@given(body=mostly(
    st.lists(st.tuples(st.dictionaries(names, names, max_size=3).map(lambda d: {"__name__": "m", **d}),
                       st.lists(st.tuples(st.floats(allow_nan=True, allow_infinity=True),
                                          st.floats(-1e15, 1e15)), max_size=3)), max_size=3)
    .map(encode_write_request).flatmap(lambda b: st.sampled_from([b, b[: len(b) // 2], b + b"\x00", b[1:]])),
    st.binary(max_size=200), 2))
def test_remote_write_bodies(body: bytes) -> None:
    try:
        samples = decode_write_request(body)
    except DecodeError as exc:
        assert exc.reason
        return
    for s in samples:
        assert isinstance(s, MetricSample) and s.name and math.isfinite(s.ts)


@EXAMPLES
@given(body=st.binary(max_size=200))
def test_remote_write_snappy(body: bytes) -> None:
    try:
        decompress(body)
    except DecodeError as exc:
        assert exc.reason
