"""Remote-write decoding: round trips, snappy, and garbage that must be a counted error, not a crash."""

from __future__ import annotations

import math

import cramjam
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiops.decode.jsonline import DecodeError
from aiops.sources.remote_write import decode_write_request, decompress, encode_write_request

STALE_NAN = bytes.fromhex("020000000000f07f")  # Prometheus' stale marker, little endian


def test_round_trip_with_snappy() -> None:
    body = encode_write_request([
        ({"__name__": "http_requests_total", "service": "api", "code": "500"}, [(3.0, 1000.5), (4.0, 1015.5)]),
        ({"__name__": "up", "job": "node"}, [(1.0, 1000.0)]),
    ])
    samples = decode_write_request(decompress(bytes(cramjam.snappy.compress_raw(body))))
    assert [(s.name, s.labels, s.value, s.ts) for s in samples] == [
        ("http_requests_total", (("code", "500"), ("service", "api")), 3.0, 1000.5),
        ("http_requests_total", (("code", "500"), ("service", "api")), 4.0, 1015.5),
        ("up", (("job", "node"),), 1.0, 1000.0),
    ]


def test_stale_marker_is_a_gap() -> None:
    body = bytearray(encode_write_request([({"__name__": "up"}, [(1.0, 5.0)])]))
    i = body.index(bytes([0x09])) + 1  # the double after the field-1 fixed64 tag
    body[i:i + 8] = STALE_NAN
    (s,) = decode_write_request(bytes(body))
    assert math.isnan(s.value)


def test_unknown_fields_are_skipped() -> None:
    # metadata (field 3) and a future varint field 9 at the top level
    extra = bytes([0x1a, 0x02, 0x08, 0x01, 0x48, 0x05])
    body = encode_write_request([({"__name__": "up"}, [(1.0, 5.0)])]) + extra
    assert len(decode_write_request(body)) == 1


def test_series_without_name_is_rejected() -> None:
    with pytest.raises(DecodeError) as e:
        decode_write_request(encode_write_request([({"job": "a"}, [(1.0, 5.0)])]))
    assert e.value.reason == "bad_name"


def test_bad_snappy() -> None:
    with pytest.raises(DecodeError) as e:
        decompress(b"\xff\xff\xff\xff not snappy")
    assert e.value.reason == "bad_snappy"


names = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF), min_size=1, max_size=12)


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.dictionaries(names, names, max_size=4), names,
                          st.lists(st.tuples(st.floats(allow_nan=False), st.integers(0, 2**40)), max_size=4)),
                max_size=5))
def test_round_trip_property(series: list) -> None:
    encoded = [({**labels, "__name__": name}, [(v, ts / 1000) for v, ts in samples])
               for labels, name, samples in series]
    out = decode_write_request(encode_write_request(encoded))
    expected = [(name, tuple(sorted((k, v) for k, v in labels.items() if k != "__name__")), v, ts / 1000)
                for labels, name, samples in series for v, ts in samples]
    assert [(s.name, s.labels, s.value, s.ts) for s in out] == expected


@settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_garbage_is_a_decode_error_or_samples(body: bytes) -> None:
    try:
        decode_write_request(body)
    except DecodeError:
        pass
