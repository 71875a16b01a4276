"""Prometheus remote-write receiver (``POST /api/v1/write``, remote-write spec 1.0).

The body is a snappy-compressed (block format, not framed) protobuf ``WriteRequest``::

    message WriteRequest { repeated TimeSeries timeseries = 1; reserved 2; repeated MetricMetadata metadata = 3; }
    message TimeSeries   { repeated Label labels = 1; repeated Sample samples = 2;
                           repeated Exemplar exemplars = 3; repeated Histogram histograms = 4; }
    message Label        { string name = 1; string value = 2; }
    message Sample       { double value = 1; int64 timestamp = 2; }   // timestamp in ms

Why a hand-written decoder: no well-kept Python package ships the remote-write messages
(``prometheus-client`` has none; the ``protobuf`` runtime would need generated code and a
protoc step in the build). The four messages above use three wire types (varint, fixed64,
length-delimited); decoding them is ~60 lines, skips every field it does not know (exemplars,
native histograms, metadata — as the spec allows for receivers that do not support them)
and is checked against Prometheus itself in tests/integration. Snappy comes from ``cramjam``.

Stale markers (a NaN with a special bit pattern) decode to NaN: a gap, as the scenario form says.

>>> decode_write_request(bytes([0x0a, 0x05, 0x0a]))
Traceback (most recent call last):
...
aiops.decode.jsonline.DecodeError: bad_protobuf: truncated
"""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable

import cramjam
import structlog
from aiohttp import web

from aiops.decode.jsonline import DecodeError
from aiops.observe.metrics import SelfMetrics
from aiops.observe.rejects import Rejects
from aiops.records import MetricSample

log = structlog.get_logger(__name__)

_DOUBLE = struct.Struct("<d")


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise DecodeError("bad_protobuf", "truncated")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise DecodeError("bad_protobuf", "varint too long")


def _skip(buf: bytes, pos: int, end: int, wire: int) -> int:
    if wire == 0:
        return _varint(buf, pos, end)[1]
    if wire == 1:
        pos += 8
    elif wire == 2:
        n, pos = _varint(buf, pos, end)
        pos += n
    elif wire == 5:
        pos += 4
    else:
        raise DecodeError("bad_protobuf", f"wire type {wire}")
    if pos > end:
        raise DecodeError("bad_protobuf", "truncated")
    return pos


def _fields(buf: bytes, pos: int, end: int):  # type: ignore[no-untyped-def]
    """Yield ``(field, wire, start, stop)``; for length-delimited fields start/stop bound the payload."""
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 2:
            n, pos = _varint(buf, pos, end)
            if pos + n > end:
                raise DecodeError("bad_protobuf", "truncated")
            yield field, wire, pos, pos + n
            pos += n
        else:
            start = pos
            pos = _skip(buf, pos, end, wire)
            yield field, wire, start, pos


def _label(buf: bytes, start: int, end: int) -> tuple[str, str]:
    name = value = ""
    for field, wire, a, b in _fields(buf, start, end):
        if wire != 2:
            continue
        try:
            text = buf[a:b].decode("utf-8")
        except UnicodeDecodeError:
            raise DecodeError("bad_utf8", "label") from None
        if field == 1:
            name = text
        elif field == 2:
            value = text
    return name, value


def _sample(buf: bytes, start: int, end: int) -> tuple[float, float]:
    value = 0.0
    ts_ms = 0
    for field, wire, a, _ in _fields(buf, start, end):
        if field == 1 and wire == 1:
            value = _DOUBLE.unpack_from(buf, a)[0]
        elif field == 2 and wire == 0:
            ts_ms = _varint(buf, a, end)[0]
            if ts_ms >= 1 << 63:  # int64 two's complement
                ts_ms -= 1 << 64
    return value, ts_ms / 1000.0


def decode_write_request(body: bytes) -> list[MetricSample]:
    """Decode an uncompressed ``WriteRequest`` into samples (``__name__`` becomes the name)."""
    out: list[MetricSample] = []
    end = len(body)
    for field, wire, a, b in _fields(body, 0, end):
        if field != 1 or wire != 2:
            continue  # metadata and anything newer
        labels: list[tuple[str, str]] = []
        samples: list[tuple[float, float]] = []
        for f2, w2, c, d in _fields(body, a, b):
            if w2 != 2:
                continue
            if f2 == 1:
                labels.append(_label(body, c, d))
            elif f2 == 2:
                samples.append(_sample(body, c, d))
        name = ""
        rest = []
        for k, v in labels:
            if k == "__name__":
                name = v
            else:
                rest.append((k, v))
        if not name:
            raise DecodeError("bad_name", "series without __name__")
        rest.sort()
        frozen = tuple(rest)
        for value, ts in samples:
            if ts < 0:
                raise DecodeError("bad_ts", str(ts))
            out.append(MetricSample(ts=ts, name=name, labels=frozen, value=value))
    return out


def decompress(body: bytes) -> bytes:
    """Snappy block-format decompression, as remote-write uses."""
    try:
        return bytes(cramjam.snappy.decompress_raw(body))
    except Exception as exc:  # noqa: BLE001 - cramjam raises its own DecompressionError (not exported stably)
        raise DecodeError("bad_snappy", str(exc)[:120]) from None


def encode_write_request(series: list[tuple[dict[str, str], list[tuple[float, float]]]]) -> bytes:
    """Encode a ``WriteRequest`` (uncompressed); for tests and tools that push to the receiver.

    >>> s = decode_write_request(encode_write_request([({"__name__": "up", "job": "a"}, [(1.5, 10.0)])]))
    >>> s[0].name, s[0].labels, s[0].value, s[0].ts
    ('up', (('job', 'a'),), 1.5, 10.0)
    """

    def varint(n: int) -> bytes:
        n &= (1 << 64) - 1
        out = bytearray()
        while True:
            b = n & 0x7F
            n >>= 7
            if n:
                out.append(b | 0x80)
            else:
                out.append(b)
                return bytes(out)

    def ld(field: int, payload: bytes) -> bytes:
        return varint(field << 3 | 2) + varint(len(payload)) + payload

    body = bytearray()
    for labels, samples in series:
        ts_msg = bytearray()
        for k, v in sorted(labels.items()):
            ts_msg += ld(1, ld(1, k.encode()) + ld(2, v.encode()))
        for value, ts in samples:
            ts_msg += ld(2, bytes([0x09]) + _DOUBLE.pack(value) + bytes([0x10]) + varint(round(ts * 1000)))
        body += ld(1, bytes(ts_msg))
    return bytes(body)


Deliver = Callable[[list[MetricSample]], Awaitable[None]]


class RemoteWriteReceiver:
    """aiohttp handler for ``POST /api/v1/write``.

    Decoded samples are handed to ``deliver`` (the live shell puts them on its bounded queue,
    so a full pipeline slows the HTTP response and Prometheus backs off). A body that cannot
    be decoded is answered 400, which Prometheus does not retry, and counted as rejected.
    """

    def __init__(self, deliver: Deliver, rejects: Rejects, metrics: SelfMetrics | None = None,
                 max_body_bytes: int = 32 * 1024 * 1024) -> None:
        self.deliver = deliver
        self.rejects = rejects
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes
        self.accepting = True

    async def handle(self, request: web.Request) -> web.Response:
        if not self.accepting:
            # Shutting down: 503 makes Prometheus keep the samples and retry elsewhere/later.
            return web.Response(status=503, text="shutting down")
        if request.content_length is not None and request.content_length > self.max_body_bytes:
            self.rejects.reject("remote_write", "too_large", detail=str(request.content_length))
            return web.Response(status=413, text="body too large")
        body = await request.read()
        if self.metrics is not None:
            self.metrics.messages_in.labels("remote_write").inc()
        try:
            encoding = request.headers.get("Content-Encoding", "snappy")
            raw = decompress(body) if encoding == "snappy" else body
            samples = decode_write_request(raw)
        except DecodeError as exc:
            self.rejects.reject("remote_write", exc.reason, where=request.remote or "", detail=exc.detail)
            return web.Response(status=400, text=str(exc))
        if samples:
            await self.deliver(samples)
            if self.metrics is not None:
                self.metrics.records_in.labels("remote_write", "metric").inc(len(samples))
        return web.Response(status=204)


__all__ = ["RemoteWriteReceiver", "decode_write_request", "decompress", "encode_write_request"]
