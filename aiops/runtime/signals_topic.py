"""Wire format of the internal signals topic (scale-out, docs/scale-out.md).

Each detect half (one per input partition) publishes, after a batch of records, one
:class:`PartitionSteps` message: the steps it closed since its previous message, each with the
signals and change events the correlator must take before ticking at that step, plus its
progress (``through``: every step up to this one is closed on that partition). Steps with
nothing in them are not listed; ``through`` says they are closed all the same.

``idle_through`` is the progress of a partition whose half has not started yet (no record so
far, e.g. a partition no service hashes to) while its owner has read everything the partition
holds: the owner vouches that nothing older than its own progress is waiting there, so the
partition does not hold the correlator back. ``empty`` says the same from an owner that has no
progress of its own to vouch with. Neither deduplicates anything: records that arrive later are
the partition's first real steps.

The bytes are versioned JSON (msgspec: typed, validated decoding in C). A message this build
cannot read raises :class:`WireError` with a reason the consumer counts in
:class:`~aiops.observe.rejects.Rejects`, never a crash.

>>> from aiops.records import ChangeEvent
>>> m = PartitionSteps(partition=3, step_s=15.0, through=7, steps=(ClosedStep(6, 15.0, (
...     ChangeEvent(90.0, "deploy", "api", (("version", "v2"),)),)),))
>>> decode_message(encode_message(m)) == m
True
>>> decode_message(b'{"v": 99}')
Traceback (most recent call last):
...
aiops.runtime.signals_topic.WireError: version: message version 99, this build reads 1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from aiops.records import ChangeEvent, Signal, SignalKind
from aiops.runtime.pipeline import ClosedStep, StepItem

WIRE_VERSION = 1
DEFAULT_TOPIC = "aiops.signals"


class WireError(ValueError):
    """A signals-topic message this build cannot use; ``reason`` is a short stable word for counting."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class _Signal(msgspec.Struct, tag_field="k", tag="signal", forbid_unknown_fields=False):
    id: str
    ts: float
    kind: str
    service: str | None
    name: str
    score: float
    direction: str = ""
    evidence: list[str] = msgspec.field(default_factory=list)
    end_ts: float | None = None
    labels: list[tuple[str, str]] = msgspec.field(default_factory=list)


class _Change(msgspec.Struct, tag_field="k", tag="change", forbid_unknown_fields=False):
    ts: float
    type: str
    service: str | None
    attrs: list[tuple[str, str]] = msgspec.field(default_factory=list)


_Item = _Signal | _Change


class _Step(msgspec.Struct, array_like=True):
    index: int
    items: list[_Item]


class _Message(msgspec.Struct, forbid_unknown_fields=False):
    v: int
    partition: int
    step_s: float
    through: int | None = None
    idle_through: int | None = None
    steps: list[_Step] = msgspec.field(default_factory=list)
    empty: bool = False


class _Version(msgspec.Struct, forbid_unknown_fields=False):
    v: int


@dataclass(frozen=True, slots=True)
class PartitionSteps:
    """What one input partition's detect half closed since its previous message (see the module docstring)."""

    partition: int
    step_s: float
    through: int | None = None
    steps: tuple[ClosedStep, ...] = ()
    idle_through: int | None = None
    empty: bool = False


def _item_out(x: StepItem) -> _Item:
    if isinstance(x, Signal):
        return _Signal(x.id, x.ts, x.kind.value, x.service, x.name, x.score, x.direction, list(x.evidence),
                       x.end_ts, [(k, v) for k, v in x.labels])
    return _Change(x.ts, x.type, x.service, [(k, v) for k, v in x.attrs])


def _item_in(x: _Item) -> StepItem:
    if isinstance(x, _Signal):
        return Signal(id=x.id, ts=x.ts, kind=SignalKind(x.kind), service=x.service, name=x.name, score=x.score,
                      direction=x.direction, evidence=tuple(x.evidence), end_ts=x.end_ts,
                      labels=tuple((str(k), str(v)) for k, v in x.labels))
    return ChangeEvent(x.ts, x.type, x.service, tuple((str(k), str(v)) for k, v in x.attrs))


def item_to_plain(x: StepItem) -> Any:
    """A signal or change event as plain JSON-able data (also used in snapshots)."""
    return msgspec.to_builtins(_item_out(x))


def item_from_plain(data: Any) -> StepItem:
    """Inverse of :func:`item_to_plain`; raises ``ValueError`` for data it cannot read."""
    try:
        return _item_in(msgspec.convert(data, _Item))  # type: ignore[arg-type]
    except msgspec.ValidationError as exc:
        raise ValueError(str(exc)) from exc


def encode_message(m: PartitionSteps) -> bytes:
    """The bytes of one message (compact JSON)."""
    return msgspec.json.encode(_Message(
        WIRE_VERSION, m.partition, m.step_s, m.through, m.idle_through,
        [_Step(s.index, [_item_out(x) for x in s.items]) for s in m.steps], m.empty))


_decode_version = msgspec.json.Decoder(_Version)
_decode = msgspec.json.Decoder(_Message)


def decode_message(data: bytes | None) -> PartitionSteps:
    """Read one message; :class:`WireError` (reason ``empty``, ``malformed``, ``version``, ``invalid``) if unusable."""
    if not data:
        raise WireError("empty", "no value")
    try:
        version = _decode_version.decode(data).v
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise WireError("malformed", str(exc)[:200]) from exc
    if version != WIRE_VERSION:
        raise WireError("version", f"message version {version}, this build reads {WIRE_VERSION}")
    try:
        m = _decode.decode(data)
        if m.partition < 0 or not m.step_s > 0:
            raise ValueError(f"partition {m.partition}, step {m.step_s}")
        steps = tuple(ClosedStep(s.index, m.step_s, tuple(_item_in(x) for x in s.items)) for s in m.steps)
        if m.through is not None and any(s.index > m.through for s in steps):
            raise ValueError("a step after 'through'")
    except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
        raise WireError("invalid", str(exc)[:200]) from exc
    return PartitionSteps(m.partition, m.step_s, m.through, steps, m.idle_through, m.empty)


__all__ = ["DEFAULT_TOPIC", "WIRE_VERSION", "PartitionSteps", "WireError", "decode_message", "encode_message",
           "item_from_plain", "item_to_plain"]
