"""Kafka source against a real broker: decoding, bad messages, dead letters, committed offsets."""

from __future__ import annotations

import json
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry, generate_latest

from aiops.config import KafkaSettings
from aiops.observe.metrics import SelfMetrics
from aiops.observe.rejects import Rejects
from aiops.records import ChangeEvent, LogRecord, MetricSample
from aiops.sources.kafka import REASON_HEADER, KafkaSource

pytestmark = pytest.mark.integration


def _settings(bootstrap: str, **kw: object) -> KafkaSettings:
    tag = uuid.uuid4().hex[:8]
    base = dict(bootstrap=bootstrap, group_id=f"g-{tag}", metrics_topic=f"m-{tag}", logs_topic=f"l-{tag}",
                events_topic=f"e-{tag}", auto_offset_reset="earliest", commit_interval_s=0.0)
    base.update(kw)
    return KafkaSettings(**base)  # type: ignore[arg-type]


async def _produce(bootstrap: str, messages: list[tuple[str, bytes, bytes | None, list[tuple[str, bytes]]]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        for topic, value, key, headers in messages:
            await producer.send(topic, value=value, key=key, headers=headers or None)
        await producer.flush()
    finally:
        await producer.stop()


async def _consume_all(source: KafkaSource, expected_messages: int, max_batches: int = 200) -> list:
    records = []
    seen = 0
    n = 0
    async for batch in source.batches():
        records.extend(batch.records)
        seen += batch.messages
        source.mark_processed(batch)
        await source.maybe_commit()
        n += 1
        if seen >= expected_messages or n >= max_batches:
            break
    return records


async def test_good_and_malformed_messages(kafka_bootstrap: str) -> None:
    s = _settings(kafka_bootstrap, dead_letter_topic=f"dlq-{uuid.uuid4().hex[:8]}")
    good_metric = json.dumps({"ts": 100.0, "name": "up", "labels": {"service": "api"}, "value": 1}).encode()
    adapter = json.dumps({"timestamp": "1970-01-01T00:01:41Z", "value": "2", "name": "up",
                          "labels": {"__name__": "up", "service": "api"}}).encode()
    batch_lines = b"\n".join(
        json.dumps({"ts": 102.0 + i, "name": "rps", "labels": {"service": "api"}, "value": i}).encode()
        for i in range(3))
    bad = [
        b"{not json",                                                   # bad JSON
        json.dumps({"ts": 1, "name": "x", "labels": {"a": 1}, "value": 1}).encode(),  # wrong types
        json.dumps({"ts": "yesterday", "name": "x", "value": 1}).encode(),
        b"[1, 2, 3]",
        b'{"ts": 1, "name": "\xff\xfe", "value": 1}',                    # invalid UTF-8
        b'{"ts": 1, "name": "big", "value": 1, "pad": "' + b"x" * (1024 * 1024 + 10) + b'"}',  # > 1 MB
    ]
    msgs = [(s.metrics_topic, good_metric, None, []), (s.metrics_topic, adapter, None, [])]
    msgs += [(s.metrics_topic, b, b"k", [("trace", b"t1")]) for b in bad]
    msgs += [(s.metrics_topic, batch_lines, None, [])]
    msgs += [(s.logs_topic, json.dumps({"ts": 105.0, "service": "api", "level": "error",
                                        "message": "db timeout"}).encode(), None, [])]
    msgs += [(s.events_topic, json.dumps({"ts": 99.0, "type": "deploy", "service": "api",
                                          "version": "v2"}).encode(), None, [])]
    await _produce(kafka_bootstrap, msgs)

    registry = CollectorRegistry()
    rejects = Rejects(registry=registry, log_examples=False)
    source = KafkaSource(s, rejects, SelfMetrics(registry))
    await source.start()
    try:
        records = await _consume_all(source, len(msgs))
    finally:
        await source.stop()

    metrics = [r for r in records if isinstance(r, MetricSample)]
    assert sorted((m.ts, m.name, m.value) for m in metrics) == [
        (100.0, "up", 1.0), (101.0, "up", 2.0), (102.0, "rps", 0.0), (103.0, "rps", 1.0), (104.0, "rps", 2.0)]
    assert [r.message for r in records if isinstance(r, LogRecord)] == ["db timeout"]
    assert [r.attr("version") for r in records if isinstance(r, ChangeEvent)] == ["v2"]
    assert rejects.by_reason() == {("kafka", "bad_json"): 1, ("kafka", "bad_labels"): 1, ("kafka", "bad_ts"): 1,
                                   ("kafka", "not_an_object"): 1, ("kafka", "bad_utf8"): 1, ("kafka", "too_large"): 1}
    exposition = generate_latest(registry).decode()
    assert 'aiops_records_rejected_total{reason="too_large",stage="kafka"} 1.0' in exposition
    assert 'aiops_records_in_total{kind="metric",source="kafka"} 5.0' in exposition

    # Dead letters: original value and headers, plus the reason and where it came from.
    consumer = AIOKafkaConsumer(s.dead_letter_topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                                group_id=None, max_partition_fetch_bytes=4 * 1024 * 1024,
                                fetch_max_bytes=8 * 1024 * 1024)
    await consumer.start()
    try:
        dead = []
        for _ in range(40):
            got = await consumer.getmany(timeout_ms=500)
            dead.extend(m for ms in got.values() for m in ms)
            if len(dead) >= len(bad):
                break
    finally:
        await consumer.stop()
    reasons = sorted(dict(m.headers)[REASON_HEADER].decode() for m in dead)
    assert reasons == ["bad_json", "bad_labels", "bad_ts", "bad_utf8", "not_an_object", "too_large"]
    for m in dead:
        h = dict(m.headers)
        assert h["trace"] == b"t1" and h["aiops-source-topic"] == s.metrics_topic.encode() and m.key == b"k"
        assert m.value in bad


async def test_offsets_are_committed_only_when_processed(kafka_bootstrap: str) -> None:
    s = _settings(kafka_bootstrap)
    line = json.dumps({"ts": 1.0, "name": "up", "labels": {"service": "a"}, "value": 1}).encode()
    await _produce(kafka_bootstrap, [(s.metrics_topic, line, None, [])] * 20)

    source = KafkaSource(s, Rejects(log_examples=False))
    await source.start()
    got = 0
    async for batch in source.batches():  # consumed, but never marked processed
        got += batch.messages
        if got >= 20:
            break
    await source.stop()
    assert got == 20

    # Nothing was processed, so a restart in the same group sees everything again.
    source = KafkaSource(s, Rejects(log_examples=False))
    await source.start()
    records = await _consume_all(source, 20)
    assert len(records) == 20
    await source.stop()

    consumer = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=s.group_id, enable_auto_commit=False)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(s.metrics_topic) or set()
        committed = 0
        for p in parts:
            committed += await consumer.committed(TopicPartition(s.metrics_topic, p)) or 0
    finally:
        await consumer.stop()
    assert committed == 20


async def test_partitions_and_topics_are_aligned_in_event_time(kafka_bootstrap: str) -> None:
    """A backlog arrives partition by partition; released records must still fit a 60 s reorder buffer."""
    s = _settings(kafka_bootstrap, max_batch=200)
    msgs = []
    for i in range(3000):
        svc = f"svc{i % 5}"
        msgs.append((s.metrics_topic, json.dumps({"ts": 1000.0 + i, "name": "up", "labels": {"service": svc},
                                                  "value": 1}).encode(), svc.encode(), []))
        msgs.append((s.logs_topic, json.dumps({"ts": 1000.5 + i, "service": svc, "message": "hello"}).encode(),
                     svc.encode(), []))
    await _produce(kafka_bootstrap, msgs)
    source = KafkaSource(s, Rejects(log_examples=False), align_slack_s=30.0)
    await source.start()
    newest = -1.0
    late = 0
    total = 0
    try:
        async for batch in source.batches():
            late += sum(r.ts < newest - 60 for r in batch.records)
            if batch.records:
                newest = max(newest, batch.records[-1].ts)
            total += len(batch.records)
            source.mark_processed(batch)
            if total >= len(msgs):
                break
    finally:
        await source.stop()
    assert total == len(msgs)
    assert late == 0
