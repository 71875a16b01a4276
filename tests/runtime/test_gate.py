"""The progress gate and the signals-topic wire format: pure, no broker.

The central property: per-partition detect halves whose steps go through the wire format and the
gate — in any interleaving of partitions, with repeats after a restore — give the correlator
exactly the decisions one pipeline over all records gives.
"""

from __future__ import annotations

import asyncio
import json
import random
import zlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiops.config import Settings, load_settings
from aiops.correlate.topology import Topology
from aiops.decide.rules import load_rules
from aiops.observe.rejects import Rejects
from aiops.records import ChangeEvent, Record, Signal, SignalKind
from aiops.runtime.gate import ProgressGate, steps_message
from aiops.runtime.pipeline import ClosedStep, CorrelateHalf, DetectHalf, Pipeline
from aiops.runtime.signals_topic import PartitionSteps, WireError, decode_message, encode_message
from aiops.state.pipeline_state import restore_detect, snapshot_detect

from .test_pipeline import STEP, TOPOLOGY, telemetry

RULES = Path(__file__).resolve().parents[2] / "rules"


def _sig(ts: float, service: str = "api", end: float | None = None) -> Signal:
    return Signal(id=f"s-{service}-{ts}", ts=ts, kind=SignalKind.METRIC, service=service, name="x:rate",
                  score=0.9, direction="up", evidence=("a", "b"), end_ts=end, labels=(("k", "v"),))


# -- wire format ---------------------------------------------------------------------------------

def test_messages_round_trip_with_every_field() -> None:
    m = PartitionSteps(2, 15.0, through=11, steps=(
        ClosedStep(10, 15.0, (_sig(150.0), ChangeEvent(151.0, "deploy", "api", (("version", "v2"),)),
                              _sig(140.0, end=152.0))),
        ClosedStep(11, 15.0, (ChangeEvent(160.0, "config", None),))), idle_through=None, empty=False)
    assert decode_message(encode_message(m)) == m
    assert decode_message(encode_message(PartitionSteps(0, 15.0, empty=True))).empty


@pytest.mark.parametrize(("raw", "reason"), [
    (b"", "empty"), (None, "empty"), (b"\xff\xfe", "malformed"), (b"[1, 2]", "malformed"),
    (b'{"v": 2, "partition": 0, "step_s": 15}', "version"),
    (b'{"v": 1, "partition": -1, "step_s": 15}', "invalid"),
    (b'{"v": 1, "partition": 0, "step_s": 0}', "invalid"),
    (b'{"v": 1, "partition": 0, "step_s": 15, "through": 3, "steps": [[4, []]]}', "invalid"),
    (b'{"v": 1, "partition": 0, "step_s": 15, "steps": [[4, [{"k": "signal", "id": "x"}]]]}', "invalid"),
    (b'{"v": 1, "partition": 0, "step_s": 15, "steps": [[4, [{"k": "signal", "id": "x", "ts": 1, '
     b'"kind": "nonsense", "service": null, "name": "n", "score": 1}]]]}', "invalid"),
])
def test_bad_messages_are_a_reason_not_a_crash(raw: bytes | None, reason: str) -> None:
    with pytest.raises(WireError) as err:
        decode_message(raw)
    assert err.value.reason == reason


@given(st.binary(max_size=200))
@settings(max_examples=200, deadline=None)
def test_any_bytes_decode_or_raise_wire_error(raw: bytes) -> None:
    try:
        decode_message(raw)
    except WireError:
        pass


# -- the gate --------------------------------------------------------------------------------------

def test_nothing_is_released_until_every_partition_reported() -> None:
    g = ProgressGate(15.0, partitions=3)
    g.add(PartitionSteps(0, 15.0, through=10, steps=(ClosedStep(5, 15.0, (_sig(75.0),)),)))
    g.add(PartitionSteps(1, 15.0, through=12))
    assert g.close() == [] and g.waiting_for() == [2]
    g.add(PartitionSteps(2, 15.0, idle_through=11))  # its owner vouches: nothing unread there
    out = g.close()
    assert [s.index for s in out] == list(range(5, 11)) and out[0].items == (_sig(75.0),)
    assert g.watermark == 10 * 15.0


def test_an_empty_partition_does_not_hold_back_and_a_slow_one_does() -> None:
    g = ProgressGate(15.0, partitions=2)
    g.add(PartitionSteps(1, 15.0, empty=True))
    g.add(PartitionSteps(0, 15.0, through=3))
    assert [s.index for s in g.close()] == [3]  # releasing starts at the first step any message names
    g.add(PartitionSteps(1, 15.0, through=4))  # it got data after all: now it counts
    g.add(PartitionSteps(0, 15.0, through=9))
    assert [s.index for s in g.close()] == [4]


def test_repeats_after_a_restore_are_dropped_and_late_steps_kept() -> None:
    g = ProgressGate(15.0, partitions=2)
    g.add(PartitionSteps(0, 15.0, through=10, steps=(ClosedStep(9, 15.0, (_sig(135.0),)),)))
    g.add(PartitionSteps(1, 15.0, through=10))
    assert sum(len(s.items) for s in g.close()) == 1
    # Partition 0's new owner restored a checkpoint at step 7 and publishes 8..12 again.
    g.add(PartitionSteps(0, 15.0, through=12, steps=(ClosedStep(9, 15.0, (_sig(135.0),)),
                                                      ClosedStep(12, 15.0, (_sig(180.0),)))))
    assert g.duplicate_steps == 1
    # A step of partition 1 older than what was released (it was not counted then) is late, not lost.
    g2 = ProgressGate(15.0, partitions=None)
    g2.add(PartitionSteps(0, 15.0, through=20))
    g2.close()
    g2.add(PartitionSteps(1, 15.0, through=21, steps=(ClosedStep(15, 15.0, (_sig(225.0, "db"),)),)))
    out = g2.close()
    assert [s.index for s in out] == [] or out[0].items == (_sig(225.0, "db"),)
    g2.add(PartitionSteps(0, 15.0, through=25))
    out += g2.close()
    assert [x for s in out for x in s.items] == [_sig(225.0, "db")] and g2.late_items == 1


def test_the_staleness_cap_is_optional() -> None:
    capped, uncapped = ProgressGate(15.0, stale_steps=5), ProgressGate(15.0)
    for g in (capped, uncapped):
        g.add(PartitionSteps(0, 15.0, through=100))
        g.add(PartitionSteps(1, 15.0, through=110))
    assert capped.frontier == 110 and capped.stale_partitions() == [0]
    assert uncapped.frontier == 100 and uncapped.stale_partitions() == []


def test_other_step_is_rejected_and_counted() -> None:
    rejects = Rejects(log_examples=False)
    g = ProgressGate(15.0, rejects=rejects)
    g.add(PartitionSteps(0, 30.0, through=3))
    assert g.frontier is None and rejects.total == 1


def test_gate_snapshot_round_trips_mid_stream() -> None:
    g = ProgressGate(15.0, partitions=3)
    g.add(PartitionSteps(0, 15.0, through=10, steps=(ClosedStep(9, 15.0, (_sig(135.0),)),)))
    g.add(PartitionSteps(1, 15.0, empty=True))
    g.add(PartitionSteps(2, 15.0, through=8, steps=(ClosedStep(8, 15.0, (ChangeEvent(120.0, "deploy", "a"),)),)))
    first = g.close()
    h = ProgressGate.from_snapshot(json.loads(json.dumps(g.snapshot())), 15.0, partitions=3)
    for x in (g, h):
        x.add(PartitionSteps(2, 15.0, through=12, steps=(ClosedStep(10, 15.0, (_sig(150.0, "b"),)),)))
    assert first and g.close() == h.close()
    with pytest.raises(ValueError):
        ProgressGate.from_snapshot(g.snapshot(), 30.0)


# -- per-partition detection + gate == one pipeline ---------------------------------------------------

def _publish(gate: ProgressGate, p: int, half: DetectHalf, steps: list[ClosedStep]) -> None:
    nxt = half.next_step
    gate.add(decode_message(encode_message(steps_message(p, STEP, steps, None if nxt is None else nxt - 1))))


def _partition(record: Record, n: int) -> int:
    service = getattr(record, "service", None) or record.label("service")  # type: ignore[union-attr]
    return zlib.crc32((service or "").encode()) % n


def _settings() -> Settings:
    return load_settings(env={"AIOPS_RULES_DIR": str(RULES)})


@pytest.fixture(scope="module")
def records() -> list[Record]:
    return telemetry(seed=4, hours=3.0)


@pytest.fixture(scope="module")
def single(records: list[Record]) -> list[str]:
    s = _settings()
    rules = load_rules(RULES)
    p = Pipeline(s, rules, Topology.from_mapping(TOPOLOGY), Rejects(log_examples=False), step_s=STEP)
    return [repr(d) for d in p.feed_many(records)]


@pytest.mark.parametrize("seed", [1])
def test_partitioned_detection_through_the_gate_decides_like_one_pipeline(
    records: list[Record], single: list[str], seed: int,
) -> None:
    """Three partitions, batches interleaved at random, one partition's half restored from an older
    checkpoint mid-stream (it publishes some steps again): the same decisions as one pipeline."""
    s, rules, n = _settings(), load_rules(RULES), 3
    rng = random.Random(seed)
    rejects = Rejects(log_examples=False)
    halves = [DetectHalf(s, rules, rejects, step_s=STEP) for _ in range(n)]
    parts: list[list[Record]] = [[] for _ in range(n)]
    for r in records:
        parts[_partition(r, n)].append(r)
    assert all(parts), "every partition must get some services"
    gate = ProgressGate(STEP, partitions=n, rejects=rejects)
    correlate = CorrelateHalf(s, rules, Topology.from_mapping(TOPOLOGY))
    decisions: list[str] = []
    pos = [0] * n
    saved: dict[int, tuple[dict, int]] = {}
    restored = False
    head_start = True  # one instance starts long before the others (or reads much faster)
    while any(pos[p] < len(parts[p]) for p in range(n)):
        p = rng.choice([q for q in range(n) if pos[q] < len(parts[q])])
        if head_start:
            p = 0
            head_start = pos[0] < 0.8 * len(parts[0])
        # A partition never runs more than ~lateness/2 ahead of the others in one instance; across
        # instances the gate alone keeps order, so batches here are arbitrary in size.
        k = rng.randint(1, 4000)
        steps = halves[p].feed_many(parts[p][pos[p]:pos[p] + k])
        pos[p] += k
        _publish(gate, p, halves[p], steps)
        decisions += [repr(d) for d in correlate.on_steps(gate.close())]
        if p == 1 and 1 not in saved and pos[1] > len(parts[1]) // 3:
            saved[1] = (json.loads(json.dumps(snapshot_detect(halves[1]), default=lambda a: a.tolist())), pos[1])
        elif p == 1 and not restored and pos[1] > 2 * len(parts[1]) // 3:
            # The owner dies after publishing; a new owner restores the older checkpoint and reads on
            # from its position: it publishes the steps since the checkpoint again.
            state, at = saved[1]
            halves[1] = DetectHalf(s, rules, rejects, step_s=STEP)
            restore_detect(halves[1], state)
            _publish(gate, 1, halves[1], halves[1].feed_many(parts[1][at:pos[1]]))
            decisions += [repr(d) for d in correlate.on_steps(gate.close())]
            restored = True
    assert restored and gate.duplicate_steps > 0 and gate.late_items == 0
    assert decisions == single


# -- scale-out: records fetched while a newly assigned partition is restored ----------------------------


class _FetchingConsumer:
    """An aiokafka consumer double: what the daemon asks of it when partitions are assigned."""

    def __init__(self) -> None:
        self.sought: dict[Any, int] = {}

    def seek(self, tp: Any, offset: int) -> None:
        self.sought[tp] = offset

    async def committed(self, tp: Any) -> int | None:
        return 7

    def assignment(self) -> set[Any]:
        return set()


class _Producer:
    """Acknowledges every message at once."""

    async def send(self, topic: str, value: bytes, key: bytes | None = None) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class _SlowChangelog:
    """Loading a checkpoint takes a while; meanwhile the source hands over a batch of the new partition."""

    def __init__(self, during: Any) -> None:
        self.during = during

    async def load_checkpoint(self, partition: int, key: str) -> None:
        await self.during()
        return None  # cold: the partition starts at the group's committed offset


def test_a_batch_fetched_while_a_partition_is_restored_is_dropped_and_read_again() -> None:
    """Regression (scale-out fault test under load): the new owner of a killed instance's partition fed the
    records it fetched from the committed offsets during the restore, then read them again after seeking to
    the restored state's offsets: log lines counted twice, duplicate samples, a spurious incident update."""
    from aiokafka import TopicPartition

    from aiops.records import LogRecord
    from aiops.runtime.scaleout import ScaleOutDaemon, _Epoch
    from aiops.sources.kafka import KafkaBatch

    settings = load_settings(env={"AIOPS_RULES_DIR": "rules", "AIOPS_LIVE__MODE": "scale_out"})
    rules = load_rules(settings.rules_dir)
    d = ScaleOutDaemon(settings, rules, Topology.from_mapping(rules.topology_mapping()), step_s=15.0)
    consumer = _FetchingConsumer()
    assert d.kafka is not None
    d.kafka.consumer = consumer  # type: ignore[assignment]
    d._producer = _Producer()  # type: ignore[assignment]
    tp = TopicPartition("logs", 3)
    record = LogRecord(1500.0, "frontend", "upstream 500", level="ERROR")
    batch = KafkaBatch(records=[record], offsets={tp: 8}, messages=1, by_partition={3: [record]})
    queued: list[_Epoch] = []

    async def fetched_meanwhile() -> None:  # what _consume_kafka does with a batch the source yields now
        queued.append(_Epoch(batch.records, "kafka", 0.0, batch, epoch=d._epoch))

    d.changelog = _SlowChangelog(fetched_meanwhile)  # type: ignore[assignment]

    async def run() -> None:
        await d._on_assigned({tp})
        for item in queued:
            await d._handle(item)

    asyncio.run(run())
    assert consumer.sought == {tp: 7}  # read again from where the (cold) state starts
    assert d._parts[3].half.stats.log_lines == 0  # not fed now: it comes again after the seek
    assert d.m_dropped._value.get() == 1
