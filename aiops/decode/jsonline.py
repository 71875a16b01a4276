"""Decoders for the project's JSON-line forms (SCENARIO_FORMAT.md) into typed records.

Each decoder takes one already-parsed JSON value and returns a record or raises
:class:`DecodeError` with a short machine-readable reason. Unknown fields are ignored.

>>> decode_metric({"ts": 10, "name": "up", "labels": {"service": "a"}, "value": "1"}).value
1.0
>>> decode_metric({"ts": 10, "name": "up"}).value  # a missing value is a gap
nan
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any, TypeVar

import orjson

from aiops.records import ChangeEvent, Labels, LogRecord, MetricSample

_NAN = float("nan")
_T = TypeVar("_T")


def slot_constructor(cls: type[_T], names: tuple[str, ...]) -> Callable[..., _T]:
    """A positional constructor for a frozen, slotted dataclass that fills its slots directly.

    A frozen dataclass's ``__init__`` assigns each field through ``object.__setattr__`` (its
    own ``__setattr__`` refuses); calling the slot descriptors instead makes the same object
    about twice as fast, which counts for records built once per sample. The result is an
    ordinary ``cls`` instance (same class, equality, hash, repr). ``names`` must be the class's
    fields in order; if they are not, or ``__init__`` does more (``__post_init__``), ``cls``
    itself is returned, so a changed record costs speed, never correctness. A msgspec ``Struct``
    (the hottest records are) is returned as it is: its own constructor is faster still.

    >>> from aiops.records import ChangeEvent, MetricSample
    >>> new = slot_constructor(ChangeEvent, ("ts", "type", "service", "attrs"))
    >>> new(1.0, "deploy", "api", ()) == ChangeEvent(1.0, "deploy", "api")
    True
    >>> slot_constructor(ChangeEvent, ("ts", "type")) is ChangeEvent
    True
    >>> slot_constructor(MetricSample, ("ts", "name", "labels", "value")) is MetricSample
    True
    """
    if not dataclasses.is_dataclass(cls):
        return cls
    fields = dataclasses.fields(cls)
    if (tuple(f.name for f in fields) != names or hasattr(cls, "__post_init__")
            or not all(f.init for f in fields) or "__slots__" not in cls.__dict__):
        return cls
    args = ", ".join(f"a{i}" for i in range(len(names)))
    body = "".join(f"    s{i}(o, a{i})\n" for i in range(len(names)))
    namespace: dict[str, Any] = {"new": object.__new__, "cls": cls}
    namespace.update({f"s{i}": cls.__dict__[n].__set__ for i, n in enumerate(names)})
    exec(f"def make({args}):\n    o = new(cls)\n{body}    return o\n", namespace)  # as dataclasses builds __init__
    make: Callable[..., _T] = namespace["make"]
    make.__qualname__ = make.__name__ = f"new_{cls.__name__}"
    return make


new_metric_sample = slot_constructor(MetricSample, ("ts", "name", "labels", "value"))
"""``MetricSample(ts, name, labels, value)``, built about twice as fast (:func:`slot_constructor`)."""


class DecodeError(ValueError):
    """A record that cannot be decoded; ``reason`` is a stable, countable word."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


def parse_json(line: str | bytes) -> Any:
    """Parse one JSON line; NaN/Infinity literals are accepted (Python's json writes them).

    orjson parses the common case several times faster than the standard library; it refuses
    the non-standard NaN literal, so such lines take the slower, permissive path.
    """
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(line)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        # RecursionError: thousands of nested brackets, where json's C scanner gives up.
        raise DecodeError("bad_json", str(exc)[:120]) from None


def _ts(obj: dict[str, Any]) -> float:
    raw = obj.get("ts")
    if type(raw) is float and 0 <= raw < math.inf:  # the common case, checked cheaply
        return raw
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise DecodeError("bad_ts", repr(raw)[:60])
    try:
        ts = float(raw)
    except (ValueError, OverflowError):  # OverflowError: an integer beyond float range
        raise DecodeError("bad_ts", repr(raw)[:60]) from None
    if not math.isfinite(ts) or ts < 0:
        raise DecodeError("bad_ts", repr(raw)[:60])
    return ts


def _value(raw: Any) -> float:
    if raw is None:
        return _NAN
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise DecodeError("bad_value", repr(raw)[:60])
    try:
        return float(raw)
    except OverflowError:  # an integer beyond float range is as infinite as "1e999"
        return math.inf if raw > 0 else -math.inf
    except ValueError:
        raise DecodeError("bad_value", repr(raw)[:60]) from None


def _require_object(obj: Any) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DecodeError("not_an_object", type(obj).__name__)
    return obj


def decode_metric(obj: Any, max_labels: int = 64, max_label_len: int = 1024) -> MetricSample:
    obj = _require_object(obj)
    ts = _ts(obj)
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        raise DecodeError("bad_name", repr(name)[:60])
    labels = obj.get("labels") or {}
    if not isinstance(labels, dict):
        raise DecodeError("bad_labels", type(labels).__name__)
    if len(labels) > max_labels:
        raise DecodeError("too_many_labels", str(len(labels)))
    try:
        canonical = _canonical_labels(tuple(labels.items()), max_label_len)
    except TypeError:  # an unhashable value (list, object) cannot be a label
        raise DecodeError("bad_labels", repr(labels)[:60]) from None
    value = _value(obj.get("value"))
    if math.isinf(value):
        raise DecodeError("infinite_value", name)
    return new_metric_sample(ts, name, canonical, value)


@lru_cache(maxsize=1 << 16)
def _canonical_labels(items: tuple[tuple[str, Any], ...], max_label_len: int) -> Labels:
    """Validate and sort a label set once per distinct set: a stream repeats the same few thousand."""
    for k, v in items:
        if not isinstance(v, str):
            raise DecodeError("bad_labels", f"{k}={v!r}"[:60])
        if len(k) > max_label_len or len(v) > max_label_len:
            raise DecodeError("label_too_long", k[:60])
    return tuple(sorted(items))


def decode_log(obj: Any, max_message_bytes: int = 64 * 1024) -> LogRecord:
    obj = _require_object(obj)
    ts = _ts(obj)
    service = obj.get("service")
    message = obj.get("message")
    if not isinstance(service, str) or not service:
        raise DecodeError("bad_service", repr(service)[:60])
    if not isinstance(message, str):
        raise DecodeError("bad_message", type(message).__name__)
    if len(message) > max_message_bytes:
        # Keep the head: the template is in the first words; the tail of a 1 MB line is payload.
        message = message[:max_message_bytes]
    level = obj.get("level")
    if level is not None and not isinstance(level, str):
        level = str(level)
    return LogRecord(ts=ts, service=service, message=message, level=level.upper() if level else None)


def decode_event(obj: Any) -> ChangeEvent:
    obj = _require_object(obj)
    ts = _ts(obj)
    kind = obj.get("type")
    if not isinstance(kind, str) or not kind:
        raise DecodeError("bad_type", repr(kind)[:60])
    service = obj.get("service")
    if service is not None and not isinstance(service, str):
        raise DecodeError("bad_service", repr(service)[:60])
    attrs = tuple(
        sorted((k, str(v)) for k, v in obj.items()
               if k not in ("ts", "type", "service") and isinstance(v, (str, int, float)) and not isinstance(v, bool))
    )
    return ChangeEvent(ts=ts, type=kind, service=service, attrs=attrs)
