"""Hostile input to the JSON-line decoders: a record or a counted DecodeError, never anything else."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from aiops.decode.jsonline import DecodeError, decode_event, decode_log, decode_metric, parse_json
from aiops.records import ChangeEvent, LogRecord, MetricSample
from tests.properties.strategies import (
    EXAMPLES,
    dumps,
    event_objects,
    hostile_lines,
    json_values,
    log_objects,
    metric_objects,
)

METRIC_REASONS = {"not_an_object", "bad_ts", "bad_name", "bad_labels", "too_many_labels", "label_too_long",
                  "bad_value", "infinite_value"}
LOG_REASONS = {"not_an_object", "bad_ts", "bad_service", "bad_message"}
EVENT_REASONS = {"not_an_object", "bad_ts", "bad_type", "bad_service"}


def _check_ts(ts: float) -> None:
    assert isinstance(ts, float) and math.isfinite(ts) and ts >= 0


@EXAMPLES
@given(st.one_of(json_values, metric_objects))
def test_decode_metric_returns_clean_sample_or_reason(obj: object) -> None:
    try:
        s = decode_metric(obj)
    except DecodeError as exc:
        assert exc.reason in METRIC_REASONS, exc
        return
    assert isinstance(s, MetricSample)
    _check_ts(s.ts)
    assert isinstance(s.value, float) and not math.isinf(s.value)
    assert isinstance(s.name, str) and s.name
    assert list(s.labels) == sorted(s.labels) and all(isinstance(k, str) and isinstance(v, str) for k, v in s.labels)


@EXAMPLES
@given(st.one_of(json_values, log_objects))
def test_decode_log_returns_clean_record_or_reason(obj: object) -> None:
    try:
        r = decode_log(obj, max_message_bytes=16)
    except DecodeError as exc:
        assert exc.reason in LOG_REASONS, exc
        return
    assert isinstance(r, LogRecord)
    _check_ts(r.ts)
    assert isinstance(r.service, str) and r.service and isinstance(r.message, str) and len(r.message) <= 16
    assert r.level is None or (isinstance(r.level, str) and r.level == r.level.upper())


@EXAMPLES
@given(st.one_of(json_values, event_objects))
def test_decode_event_returns_clean_event_or_reason(obj: object) -> None:
    try:
        e = decode_event(obj)
    except DecodeError as exc:
        assert exc.reason in EVENT_REASONS, exc
        return
    assert isinstance(e, ChangeEvent)
    _check_ts(e.ts)
    assert e.type and (e.service is None or isinstance(e.service, str))
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in e.attrs)


@EXAMPLES
@given(hostile_lines | st.binary(max_size=200))
def test_parse_json_on_any_bytes_is_value_or_bad_json(line: bytes) -> None:
    try:
        parse_json(line)
    except DecodeError as exc:
        assert exc.reason == "bad_json"
    try:
        parse_json(line.decode("utf-8", errors="replace"))
    except DecodeError as exc:
        assert exc.reason == "bad_json"


@EXAMPLES
@given(hostile_lines)
def test_line_through_all_decoders(line: bytes) -> None:
    """What a consumer loop does with one line: parse, decode; only DecodeError may come out."""
    for decode in (decode_metric, decode_log, decode_event):
        try:
            decode(parse_json(line))
        except DecodeError:
            pass


def test_known_hostile_values_are_reasons_not_crashes() -> None:
    """Regressions found by the properties above, kept as plain examples."""
    cases = [
        ({"ts": 10**400, "name": "up", "value": 1}, "bad_ts"),  # int too large for a float
        ({"ts": 1, "name": "up", "value": 10**400}, "infinite_value"),
        ({"ts": 1, "name": "up", "value": "1e999"}, "infinite_value"),
    ]
    for obj, reason in cases:
        try:
            decode_metric(obj)
        except DecodeError as exc:
            assert exc.reason == reason, (obj, exc)
        else:
            raise AssertionError(f"{obj} decoded")
    try:
        parse_json(b"[" * 100_000 + b"]" * 100_000)
    except DecodeError as exc:
        assert exc.reason == "bad_json"
    assert math.isnan(decode_metric(parse_json(dumps({"ts": 1, "name": "up", "value": float("nan")}))).value)
