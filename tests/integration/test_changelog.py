"""Kafka changelog state backend against the real broker (Tansu): what a new partition owner restores."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
import structlog
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from aiops.config import Settings
from aiops.correlate.topology import Topology
from aiops.decide.rules import load_rules
from aiops.observe.rejects import Rejects
from aiops.records import Alert, Incident
from aiops.runtime.pipeline import Pipeline
from aiops.scenario.generate import generate
from aiops.sources.scenario import load_scenario, read_records
from aiops.state.envelope import Checkpoint, encode
from aiops.state.kafka import ASIDE, KafkaChangelogStore, Manifest, chunk_key, plan_records
from aiops.state.pipeline_state import restore_pipeline, snapshot_pipeline

pytestmark = pytest.mark.integration

QUIET = structlog.wrap_logger(structlog.ReturnLogger())
KEY = "aiops/aiops.metrics"


def _store(bootstrap: str, topic: str, **kw: object) -> KafkaChangelogStore:
    return KafkaChangelogStore({"bootstrap_servers": bootstrap}, topic=topic, logger=QUIET, **kw)  # type: ignore[arg-type]


def _topic() -> str:
    return f"state-{uuid.uuid4().hex[:8]}"


async def _produce(bootstrap: str, topic: str, partition: int, records: list[tuple[str, bytes | None]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=8 * 1024 * 1024)
    await producer.start()
    try:
        for k, v in records:
            await producer.send_and_wait(topic, value=v, key=k.encode(), partition=partition)
    finally:
        await producer.stop()


async def _read(bootstrap: str, topic: str, partition: int) -> list[tuple[str, bytes | None]]:
    """Every record of one changelog partition, in offset order (what an uncompacted topic holds)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                max_partition_fetch_bytes=16 * 1024 * 1024)
    await consumer.start()
    out: list[tuple[str, bytes | None]] = []
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        await consumer.seek_to_beginning(tp)
        while await consumer.position(tp) < end:
            for msg in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                out.append((msg.key.decode(), msg.value))
    finally:
        await consumer.stop()
    return out


async def test_round_trip_and_topic_is_created_compacted(kafka_bootstrap: str) -> None:
    topic = _topic()
    state = {"n": 1, "x": [0.5, float("nan")], "a": np.arange(100, dtype=np.float32)}
    async with _store(kafka_bootstrap, topic) as store:
        assert store.cleanup_policy == "compact"  # Tansu stores the config (no compaction seen: module doc)
        await store.save(0, KEY, state, event_ts=600.0, offsets={("aiops.metrics", 0): 1234})
    async with _store(kafka_bootstrap, topic) as owner:  # a new process: nothing in memory
        assert await owner.ensure_topic() is False  # exists already
        cp = await owner.load_checkpoint(0, KEY)
    assert cp is not None
    assert cp.created_event_ts == 600.0 and cp.offsets == {("aiops.metrics", 0): 1234}
    assert cp.state["n"] == 1 and cp.state["x"][0] == 0.5 and np.isnan(cp.state["x"][1])
    assert cp.state["a"].dtype == np.float32 and cp.state["a"].tolist() == list(range(100))
    assert owner.failures == {}


async def test_newest_wins_and_tombstone_deletes(kafka_bootstrap: str) -> None:
    topic = _topic()
    async with _store(kafka_bootstrap, topic) as store:
        for i in range(3):
            await store.save(0, KEY, {"i": i}, event_ts=15.0 * i)
        await store.save(0, "aiops/correlator", {"who": "correlator"})
        restored = await store.restore(0)
        assert {k: cp.state for k, cp in restored.items()} == {KEY: {"i": 2}, "aiops/correlator": {"who": "correlator"}}
        await store.delete(0, "aiops/correlator")
        assert set(await store.restore(0)) == {KEY}
        assert await store.restore(0, keys=["nope"]) == {}


async def test_chunked_large_value(kafka_bootstrap: str) -> None:
    topic = _topic()
    rng = np.random.default_rng(1)
    big = rng.standard_normal(400_000)  # 3.2 MB of incompressible float64: four chunks of 900 KiB
    async with _store(kafka_bootstrap, topic) as store:
        await store.save(0, KEY, {"big": big}, event_ts=1.0)
        records = await _read(kafka_bootstrap, topic, 0)
        assert records[-1][0] == KEY and records[-1][1] is not None
        n = Manifest.parse(records[-1][1]).chunks
        assert n >= 3 and [k.rsplit("#", 1)[-1] for k, _ in records[:-1]] == [str(i) for i in range(n)]
        assert max(len(v or b"") for _, v in records) <= store.max_record_bytes
        # Saving again replaces the generation and deletes the old chunks with tombstones.
        await store.save(0, KEY, {"big": big[::-1].copy()}, event_ts=2.0)
    async with _store(kafka_bootstrap, topic) as owner:
        cp = await owner.load_checkpoint(0, KEY)
    assert cp is not None and cp.created_event_ts == 2.0
    assert np.array_equal(cp.state["big"], big[::-1])
    records = await _read(kafka_bootstrap, topic, 0)
    old_chunks = {k for k, _ in records[:n]}
    assert {k for k, v in records if v is None} == old_chunks


async def test_torn_write_is_never_restored_and_is_cleaned_up(kafka_bootstrap: str) -> None:
    topic = _topic()
    async with _store(kafka_bootstrap, topic, max_record_bytes=4096) as store:
        await store.save(0, KEY, {"good": list(range(5000))}, event_ts=30.0)
    # A writer that died after two chunks of its next generation: no manifest.
    torn = encode(Checkpoint(state={"torn": list(range(9000))}), level=0)
    chunks = plan_records(KEY, torn, 4096, "deadbeef")[:2]
    await _produce(kafka_bootstrap, topic, 0, chunks)
    async with _store(kafka_bootstrap, topic, max_record_bytes=4096) as owner:
        cp = await owner.load_checkpoint(0, KEY)
        assert cp is not None and cp.state == {"good": list(range(5000))}
        assert owner.failures == {}
        await owner.save(0, KEY, {"next": 1})  # the new owner's first save deletes the torn chunks
    records = await _read(kafka_bootstrap, topic, 0)
    tombstoned = {k for k, v in records if v is None}
    assert {k for k, _ in chunks} <= tombstoned
    async with _store(kafka_bootstrap, topic, max_record_bytes=4096) as again:
        cp = await again.load_checkpoint(0, KEY)
    assert cp is not None and cp.state == {"next": 1}


async def test_corrupt_values_are_counted_set_aside_never_a_crash(kafka_bootstrap: str) -> None:
    topic = _topic()
    good = encode(Checkpoint(state={"ok": True}))
    async with _store(kafka_bootstrap, topic, max_record_bytes=4096) as store:
        await store.save(0, "k/fine", {"ok": 1})
        big = {"v": np.random.default_rng(2).standard_normal(2000)}
        await store.save(0, "k/bitflip", big)
        await store.save(0, "k/missing", big)
        await store.save(0, "k/future", {"ok": 3})
    records = await _read(kafka_bootstrap, topic, 0)
    flip_chunk = next(k for k, _ in records if k.startswith("k/bitflip#"))
    value = next(v for k, v in records if k == flip_chunk)
    assert value is not None
    missing_manifest = Manifest.parse(next(v for k, v in records if k == "k/missing" and v is not None))
    await _produce(kafka_bootstrap, topic, 0, [
        ("k/garbage", b"not a checkpoint at all"),
        ("k/truncated", good[:-7]),
        ("k/future", good.replace(b"aiops-checkpoint/1", b"aiops-checkpoint/9", 1)),
        (flip_chunk, value[:100] + bytes([value[100] ^ 0xFF]) + value[101:]),
        (chunk_key("k/missing", missing_manifest.generation, 1), None),
    ])
    async with _store(kafka_bootstrap, topic, max_record_bytes=4096) as owner:
        restored = await owner.restore(0)
        assert {k: cp.state for k, cp in restored.items()} == {"k/fine": {"ok": 1}}
        assert owner.failures == {"bad_header": 1, "corrupt_data": 2, "unsupported_version": 1, "missing_chunks": 1}
        # Set aside: tombstoned, so the next restore does not trip over them again; the bytes kept as evidence.
        assert set(await owner.restore(0)) == {"k/fine"}
        assert sum(owner.failures.values()) == 5
    records = await _read(kafka_bootstrap, topic, 0)
    aside = {k.split("#")[0]: v for k, v in records if f"#{ASIDE}#" in k}
    assert aside["k/garbage"] == b"not a checkpoint at all"
    assert set(aside) == {"k/garbage", "k/truncated", "k/future", "k/bitflip", "k/missing"}


async def test_refused_state_is_set_aside(kafka_bootstrap: str) -> None:
    topic = _topic()
    async with _store(kafka_bootstrap, topic) as store:
        await store.save(0, KEY, {"version": 99})
        assert await store.load_checkpoint(0, KEY) is not None
        await store.set_aside(0, KEY, "incompatible_state", "pipeline snapshot version 99")
        assert await store.load_checkpoint(0, KEY) is None
        assert store.failures == {"incompatible_state": 1}


async def test_two_partitions_states_are_independent(kafka_bootstrap: str) -> None:
    topic = _topic()
    async with _store(kafka_bootstrap, topic, partitions=2, max_record_bytes=4096) as store:
        await store.save(0, KEY, {"p": 0, "fill": list(range(3000))}, offsets={("aiops.metrics", 0): 10})
        await store.save(1, KEY, {"p": 1, "fill": list(range(3000))}, offsets={("aiops.metrics", 1): 20})
        await store.save(0, KEY, {"p": 0, "v": 2}, offsets={("aiops.metrics", 0): 11})
        await store.delete(1, "other")
    async with _store(kafka_bootstrap, topic, partitions=2, max_record_bytes=4096) as owner:
        zero, one = await owner.load_checkpoint(0, KEY), await owner.load_checkpoint(1, KEY)
        assert zero is not None and zero.state == {"p": 0, "v": 2} and zero.offsets == {("aiops.metrics", 0): 11}
        assert one is not None and one.state["p"] == 1 and one.offsets == {("aiops.metrics", 1): 20}
        await owner.delete(0, KEY)
        assert await owner.load_checkpoint(0, KEY) is None
        assert (await owner.load_checkpoint(1, KEY)) is not None
        # A partition the changelog does not have is a clear error, not a restore that waits forever.
        with pytest.raises(ValueError, match="at least as many partitions"):
            await owner.restore(2)
        with pytest.raises(ValueError, match="at least as many partitions"):
            await owner.save(2, KEY, {})


async def test_new_owner_continues_a_scenario_exactly_from_the_changelog(kafka_bootstrap: str, tmp_path: Path) -> None:
    """A whole pipeline checkpointed to the changelog mid-incident (in chunks) and restored by a new
    owner decides exactly like a run that never stopped: same incidents, alerts and actions."""
    out = tmp_path / "bad-deploy"
    generate("bad-deploy", out, seed=5, services=5, hours=1.5)
    scenario = load_scenario(out)
    rules = load_rules(Path(__file__).resolve().parents[2] / "rules")
    records = list(read_records(scenario, Rejects(log_examples=False)))

    def pipeline() -> Pipeline:
        topology = Topology.from_mapping(scenario.topology)
        topology.merge(Topology.from_mapping(rules.topology_mapping()))
        return Pipeline(Settings(), rules, topology, Rejects(log_examples=False), step_s=scenario.step)

    p = pipeline()
    reference = p.feed_many(records) + p.finish()
    assert any(isinstance(d, Alert) for d in reference)
    opened = next(d for d in reference if isinstance(d, Incident))
    cut = next(i for i, r in enumerate(records) if r.ts >= opened.ts + 120)  # the incident is open at the cut

    topic = _topic()
    p = pipeline()
    decisions = p.feed_many(records[:cut])
    async with _store(kafka_bootstrap, topic, partitions=2, max_record_bytes=8 * 1024) as store:
        wm = p.reorder.watermark
        await store.save(1, KEY, snapshot_pipeline(p), event_ts=wm, offsets={("aiops.metrics", 1): cut})
    del p  # the old owner is gone; only the changelog survives
    async with _store(kafka_bootstrap, topic, partitions=2, max_record_bytes=8 * 1024) as owner:
        cp = await owner.load_checkpoint(1, KEY)
        assert owner.last_restore["records"] >= 3  # it really was chunked
    assert cp is not None and cp.offsets == {("aiops.metrics", 1): cut}
    q = pipeline()
    restore_pipeline(q, cp.state)
    decisions += q.feed_many(records[cp.offsets[("aiops.metrics", 1)]:]) + q.finish()
    assert [repr(d) for d in decisions] == [repr(d) for d in reference]
