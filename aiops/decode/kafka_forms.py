"""Decoders for the message forms found on real Kafka telemetry topics.

One Kafka message becomes zero or more typed records. Supported forms:

* **metrics** — the project's JSON-line form (SCENARIO_FORMAT.md; several lines per message
  allowed, which is how high-volume producers batch) and the JSON that
  `prometheus-kafka-adapter <https://github.com/Telefonica/prometheus-kafka-adapter>`_ emits:
  ``{"timestamp": "2024-01-01T00:00:00Z", "value": "1.5", "name": "up", "labels": {"__name__": "up", ...}}``
  (value as a string, timestamp RFC 3339). ``auto`` tells them apart per line by the ``ts`` key.
* **logs** — JSON with a configurable field mapping (:class:`LogFields`): each field is a list
  of dotted paths tried in order, so the shapes Fluent Bit (``log``, ``date``,
  ``kubernetes.labels.app``) and Vector (``message``, ``timestamp``, ``kubernetes.pod_labels.app``)
  emit for Kubernetes logs decode with the defaults; or raw text lines, the service taken
  from a header or the message key and the time from the Kafka message timestamp.
* **events** — change events in the events.jsonl form.

Every decoder returns ``(records, errors)``: a message with one bad line out of many keeps the
good ones, and each error is a :class:`~aiops.decode.jsonline.DecodeError` with a countable reason.

>>> d = KafkaDecoder()
>>> msg = b'{"timestamp":"1970-01-01T00:00:10Z","value":"2","name":"up","labels":{"__name__":"up","job":"a"}}'
>>> recs, errs = d.metrics(msg)
>>> recs[0].ts, recs[0].name, recs[0].labels, recs[0].value
(10.0, 'up', (('job', 'a'),), 2.0)
>>> recs, errs = d.logs(b'{"date": 12.5, "log": "boom", "kubernetes": {"labels": {"app": "api"}}}')
>>> recs[0].service, recs[0].message, recs[0].ts
('api', 'boom', 12.5)
>>> d.metrics(b'\\xff')[1][0].reason
'bad_utf8'
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec

from aiops.decode.jsonline import DecodeError, decode_event, decode_metric, new_metric_sample
from aiops.records import ChangeEvent, LogRecord, MetricSample, make_labels

MetricsFormat = Literal["auto", "jsonline", "prometheus_kafka_adapter"]
LogsFormat = Literal["json", "raw"]

_NAN = float("nan")
_INF = float("inf")


@dataclass(frozen=True, slots=True)
class LogFields:
    """Where each log field lives in a JSON log message: dotted paths, first match wins.

    A path segment may itself contain dots (``kubernetes.labels.app.kubernetes.io/name``
    finds the label ``app.kubernetes.io/name``): the longest key that exists wins.
    """

    ts: tuple[str, ...] = ("ts", "timestamp", "@timestamp", "time", "date")
    service: tuple[str, ...] = (
        "service", "service.name", "kubernetes.labels.app.kubernetes.io/name", "kubernetes.labels.app",
        "kubernetes.pod_labels.app.kubernetes.io/name", "kubernetes.pod_labels.app",
        "kubernetes.container_name", "kubernetes.container.name",
    )
    level: tuple[str, ...] = ("level", "severity", "log.level", "lvl", "levelname")
    message: tuple[str, ...] = ("message", "log", "msg")


def lookup(obj: Any, path: str) -> Any:
    """Value at a dotted ``path`` in nested mappings, or ``None``.

    >>> lookup({"a": {"b.c": {"d": 1}}}, "a.b.c.d")
    1
    >>> lookup({"a": 1}, "a.b") is None
    True
    """
    if not isinstance(obj, dict):
        return None
    if path in obj:
        return obj[path]
    parts = path.split(".")
    # Longest existing prefix first, so keys with dots in them (Kubernetes labels) resolve.
    for cut in range(len(parts) - 1, 0, -1):
        head = ".".join(parts[:cut])
        if head in obj:
            found = lookup(obj[head], ".".join(parts[cut:]))
            if found is not None:
                return found
    return None


def _message_time(kafka_ts: float | None) -> float | None:
    """A Kafka message timestamp usable as event time, or None when there is none.

    A producer can stamp anything; an infinite, NaN or pre-1970 stamp counts as absent, so a
    line that needs it is refused as ``bad_ts`` instead of sorting before or after everything.

    >>> _message_time(float("inf")) is None, _message_time(-1.0) is None, _message_time(10.0)
    (True, True, 10.0)
    """
    if kafka_ts is None or not math.isfinite(kafka_ts) or kafka_ts < 0:
        return None
    return float(kafka_ts)


def parse_time(raw: Any) -> float:
    """Unix seconds from a number (s, ms, µs or ns since the epoch) or an ISO 8601 string.

    >>> parse_time(1700000000123), parse_time("2024-01-01T00:00:00Z"), parse_time("1.5")
    (1700000000.123, 1704067200.0, 1.5)
    """
    if isinstance(raw, bool):
        raise DecodeError("bad_ts", repr(raw)[:60])
    if isinstance(raw, str):
        try:
            value = float(raw)
        except ValueError:
            try:
                dt = datetime.fromisoformat(raw.strip())
            except ValueError:
                raise DecodeError("bad_ts", raw[:60]) from None
            if dt.tzinfo is None:  # log shippers without a zone mean UTC
                dt = dt.replace(tzinfo=UTC)
            try:
                ts = dt.timestamp()
            except (OverflowError, ValueError):
                raise DecodeError("bad_ts", raw[:60]) from None
            if ts < 0:  # before 1970: not telemetry, and it would sort before everything
                raise DecodeError("bad_ts", raw[:60]) from None
            return ts
    elif isinstance(raw, (int, float)):
        try:
            value = float(raw)
        except OverflowError:  # an integer beyond float range
            raise DecodeError("bad_ts", repr(raw)[:60]) from None
    else:
        raise DecodeError("bad_ts", repr(raw)[:60])
    if not math.isfinite(value) or value < 0:
        raise DecodeError("bad_ts", repr(raw)[:60])
    # Epoch seconds stay below 1e11 until the year 5138; larger numbers are finer units.
    if value >= 1e17:
        value /= 1e9
    elif value >= 1e14:
        value /= 1e6
    elif value >= 1e11:
        value /= 1e3
    return value


def _lines(value: bytes) -> list[str]:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError("bad_utf8", str(exc)[:120]) from None
    return [line for line in text.split("\n") if line.strip()]


def _json(line: str) -> Any:
    try:
        return json.loads(line)
    except (ValueError, RecursionError) as exc:  # RecursionError: thousands of nested brackets
        raise DecodeError("bad_json", str(exc)[:120]) from None


def decode_adapter_metric(obj: Any, max_labels: int = 64, max_label_len: int = 1024) -> MetricSample:
    """One sample in prometheus-kafka-adapter's JSON form (label limits as :func:`decode_metric`'s)."""
    if not isinstance(obj, dict):
        raise DecodeError("not_an_object", type(obj).__name__)
    labels = obj.get("labels") or {}
    if not isinstance(labels, dict):
        raise DecodeError("bad_labels", type(labels).__name__)
    name = obj.get("name") or labels.get("__name__")
    if not isinstance(name, str) or not name:
        raise DecodeError("bad_name", repr(name)[:60])
    if len(labels) - ("__name__" in labels) > max_labels:
        raise DecodeError("too_many_labels", str(len(labels)))
    clean: dict[str, str] = {}
    for k, v in labels.items():
        if k == "__name__":
            continue
        if not isinstance(v, str):
            raise DecodeError("bad_labels", f"{k}={v!r}"[:60])
        if len(k) > max_label_len or len(v) > max_label_len:
            raise DecodeError("label_too_long", k[:60])
        clean[k] = v
    if "timestamp" not in obj:
        raise DecodeError("bad_ts", "missing")
    ts = parse_time(obj["timestamp"])
    raw = obj.get("value")
    if raw is None:
        value = _NAN
    elif isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise DecodeError("bad_value", repr(raw)[:60])
    else:
        try:
            value = float(raw)
        except OverflowError:  # an integer beyond float range is as infinite as "1e999"
            value = _INF
        except ValueError:
            raise DecodeError("bad_value", repr(raw)[:60]) from None
    if math.isinf(value):
        raise DecodeError("infinite_value", name)
    return MetricSample(ts=ts, name=name, labels=make_labels(clean), value=value)


_MAX = 1.7976931348623157e308  # the largest float: a bound excludes infinities (JSON has no NaN)


class _Line(msgspec.Struct, gc=False):
    """A metric line in the project's JSON form; unknown fields are ignored, as the contract says.

    The checks every sample needs (a finite, non-negative time; a name; a finite value) are
    constraints msgspec applies in C while parsing; a line failing one fails the fast path and
    the general path names the problem. A missing value is a gap (NaN); an explicit ``null``
    takes the general path, which reads it the same way.
    """

    ts: Annotated[float, msgspec.Meta(ge=0, le=_MAX)]
    name: Annotated[str, msgspec.Meta(min_length=1)]
    labels: msgspec.Raw = msgspec.Raw(b"null")
    value: Annotated[float, msgspec.Meta(ge=-_MAX, le=_MAX)] = _NAN


_TYPED_DECODER = msgspec.json.Decoder(list[_Line])
_LABELS_DECODER = msgspec.json.Decoder(dict[str, str] | None)


def _header(headers: Sequence[tuple[str, bytes]], name: str) -> str | None:
    for k, v in headers:
        if k == name and v:
            try:
                return v.decode("utf-8")
            except UnicodeDecodeError:
                return None
    return None


@dataclass
class KafkaDecoder:
    """Turns Kafka message values into records according to the configured forms.

    ``kafka_ts`` (unix seconds of the Kafka message timestamp) stands in for a missing
    timestamp in logs and events, never in metrics (a metric without its time is useless).
    ``max_labels`` / ``max_label_len`` (``limits.*`` in the settings) refuse a sample with more
    labels, or a longer label name or value, as ``too_many_labels`` / ``label_too_long``.
    """

    metrics_format: MetricsFormat = "auto"
    logs_format: LogsFormat = "json"
    log_fields: LogFields = field(default_factory=LogFields)
    service_header: str = "service"
    max_line_bytes: int = 64 * 1024
    max_labels: int = 64
    max_label_len: int = 1024
    _labels: dict[tuple[tuple[str, Any], ...], tuple[tuple[str, str], ...]] = field(
        default_factory=dict, repr=False, compare=False)
    _raw_labels: dict[Any, tuple[tuple[str, str], ...]] = field(default_factory=dict, repr=False, compare=False)

    def metrics(self, value: bytes) -> tuple[list[MetricSample], list[DecodeError]]:
        fmt = self.metrics_format
        if fmt != "prometheus_kafka_adapter":
            typed = self._typed_metrics(value)
            if typed is not None:
                return typed, []
        out: list[MetricSample] = []
        errors: list[DecodeError] = []
        try:
            lines = _lines(value)
        except DecodeError as exc:
            return out, [exc]
        objs: list[Any] | None = None
        if len(lines) > 1:
            # One parser call for the whole message is much cheaper than one per line; any
            # bad line makes it fail, and the per-line path below then says which.
            try:
                objs = json.loads("[" + ",".join(lines) + "]")
            except (ValueError, RecursionError):
                objs = None
            if objs is not None and len(objs) != len(lines):
                objs = None  # a line holding two values: let the per-line path reject it
        fast = self._fast_metric
        for i, line in enumerate(lines):
            try:
                obj = objs[i] if objs is not None else _json(line)
                if fmt == "jsonline" or (fmt == "auto" and isinstance(obj, dict) and "ts" in obj):
                    out.append(fast(obj) or decode_metric(obj, self.max_labels, self.max_label_len))
                else:
                    out.append(decode_adapter_metric(obj, self.max_labels, self.max_label_len))
            except DecodeError as exc:
                errors.append(exc)
        return out, errors

    def _typed_metrics(self, value: bytes) -> list[MetricSample] | None:
        """Every line in the project's form, parsed and type-checked in C by msgspec; ``None``
        as soon as anything is unusual (a bad line, a string value, NaN literals, the adapter
        form, invalid UTF-8), and the general path then decodes the message and names each problem.

        Label sets repeat every scrape, so they are kept as raw JSON bytes and their canonical
        (sorted, validated) form is looked up by those bytes: no dict is built per sample.
        """
        body = value.strip()
        try:
            rows = _TYPED_DECODER.decode(b"[" + body.replace(b"\n", b",") + b"]")
        except (msgspec.MsgspecError, ValueError, RecursionError, OverflowError):
            # ValueError covers invalid UTF-8; RecursionError thousands of nested brackets.
            return None
        if len(rows) != len(body) - len(body.replace(b"\n", b"")) + 1:  # lines; faster than bytes.count
            return None  # a line holding two values, or an empty one
        cache = self._raw_labels
        labels = [cache.get(bytes(row.labels)) for row in rows]
        if None in labels:
            for i, row in enumerate(rows):
                if labels[i] is None:
                    canon = self._canon_raw(bytes(row.labels))
                    if canon is None:
                        return None
                    labels[i] = canon
        return list(map(MetricSample, [row.ts for row in rows], [row.name for row in rows], labels,
                        [row.value for row in rows]))

    def _canon_raw(self, raw: bytes) -> tuple[tuple[str, str], ...] | None:
        try:
            labels = _LABELS_DECODER.decode(raw)
        except (msgspec.MsgspecError, ValueError, RecursionError, OverflowError):
            return None
        labels = labels or {}
        limit = self.max_label_len
        if len(labels) > self.max_labels or any(len(k) > limit or len(v) > limit for k, v in labels.items()):
            return None  # the general path rejects it with a reason
        if len(self._raw_labels) >= 200_000:  # bounded: a label explosion must not eat memory
            self._raw_labels.clear()
        canon = self._raw_labels[raw] = make_labels(labels)
        return canon

    def _fast_metric(self, obj: dict[str, Any]) -> MetricSample | None:
        """The common well-formed sample without the general validator, or ``None`` to use it.

        Label sets repeat every scrape, so their canonical (sorted, validated) form is cached
        by their order as received; a hit skips sorting and checking.
        """
        if type(obj) is not dict:  # a JSON array or scalar line: the validator rejects it with a reason
            return None
        ts = obj.get("ts")
        name = obj.get("name")
        value = obj.get("value")
        labels = obj.get("labels")
        if (type(ts) is not float and type(ts) is not int) or not 0 <= ts < _INF:
            return None
        if type(name) is not str or not name:
            return None
        if type(value) is float:
            if value in (_INF, -_INF):
                return None
        elif type(value) is not int:
            return None
        if labels is None:
            key: tuple[tuple[str, Any], ...] = ()
        elif type(labels) is dict:
            key = tuple(labels.items())
        else:
            return None
        try:
            canon = self._labels.get(key)
        except TypeError:  # a list or object as a label value: the validator says which
            return None
        if canon is None:
            limit = self.max_label_len
            if len(key) > self.max_labels or any(type(v) is not str or len(k) > limit or len(v) > limit
                                                 for k, v in key):
                return None
            if len(self._labels) >= 200_000:  # bounded: a label explosion must not eat memory
                self._labels.clear()
            canon = self._labels[key] = make_labels(dict(key))
        try:
            return new_metric_sample(float(ts), name, canon, float(value))
        except OverflowError:  # an integer beyond float range: the validator names the problem
            return None

    def logs(
        self, value: bytes, key: bytes | None = None, headers: Sequence[tuple[str, bytes]] = (),
        kafka_ts: float | None = None,
    ) -> tuple[list[LogRecord], list[DecodeError]]:
        kafka_ts = _message_time(kafka_ts)
        if self.logs_format == "raw":
            try:
                return [self._raw_log(value, key, headers, kafka_ts)], []
            except DecodeError as exc:
                return [], [exc]
        out: list[LogRecord] = []
        errors: list[DecodeError] = []
        try:
            lines = _lines(value)
        except DecodeError as exc:
            return out, [exc]
        for line in lines:
            try:
                out.append(self._json_log(_json(line), key, headers, kafka_ts))
            except DecodeError as exc:
                errors.append(exc)
        return out, errors

    def events(self, value: bytes, kafka_ts: float | None = None) -> tuple[list[ChangeEvent], list[DecodeError]]:
        kafka_ts = _message_time(kafka_ts)
        out: list[ChangeEvent] = []
        errors: list[DecodeError] = []
        try:
            lines = _lines(value)
        except DecodeError as exc:
            return out, [exc]
        for line in lines:
            try:
                obj = _json(line)
                if isinstance(obj, dict) and "ts" not in obj:
                    ts = next((obj[k] for k in ("timestamp", "time", "@timestamp") if k in obj), None)
                    obj = {**obj, "ts": parse_time(ts) if ts is not None else kafka_ts}
                out.append(decode_event(obj))
            except DecodeError as exc:
                errors.append(exc)
        return out, errors

    def _service(self, key: bytes | None, headers: Sequence[tuple[str, bytes]]) -> str | None:
        service = _header(headers, self.service_header)
        if service is None and key:
            try:
                service = key.decode("utf-8")
            except UnicodeDecodeError:
                service = None
        return service or None

    def _raw_log(
        self, value: bytes, key: bytes | None, headers: Sequence[tuple[str, bytes]], kafka_ts: float | None,
    ) -> LogRecord:
        try:
            text = value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError("bad_utf8", str(exc)[:120]) from None
        service = self._service(key, headers)
        if service is None:
            raise DecodeError("bad_service", "no service header or key")
        if kafka_ts is None:
            raise DecodeError("bad_ts", "no message timestamp")
        return LogRecord(ts=kafka_ts, service=service, message=text.rstrip("\r\n")[: self.max_line_bytes])

    def _json_log(
        self, obj: Any, key: bytes | None, headers: Sequence[tuple[str, bytes]], kafka_ts: float | None,
    ) -> LogRecord:
        if not isinstance(obj, dict):
            raise DecodeError("not_an_object", type(obj).__name__)
        f = self.log_fields
        raw_ts = _first(obj, f.ts)
        if raw_ts is not None:
            ts = parse_time(raw_ts)
        elif kafka_ts is not None:
            ts = kafka_ts
        else:
            raise DecodeError("bad_ts", "missing")
        service = _first(obj, f.service)
        if service is None:
            service = self._service(key, headers)
        if not isinstance(service, str) or not service:
            raise DecodeError("bad_service", repr(service)[:60])
        message = _first(obj, f.message)
        if not isinstance(message, str):
            raise DecodeError("bad_message", type(message).__name__)
        level = _first(obj, f.level)
        if level is not None and not isinstance(level, str):
            level = str(level)
        return LogRecord(
            ts=ts, service=service, message=message.rstrip("\r\n")[: self.max_line_bytes],
            level=level.upper() if level else None,
        )


def _first(obj: dict[str, Any], paths: Sequence[str]) -> Any:
    for path in paths:
        found = lookup(obj, path)
        if found is not None:
            return found
    return None


__all__ = [
    "KafkaDecoder", "LogFields", "LogsFormat", "MetricsFormat", "decode_adapter_metric", "lookup", "parse_time",
]
