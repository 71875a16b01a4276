"""Prediction logs from a scenario file and from a real Kafka broker; bad input is counted, not fatal."""

from __future__ import annotations

import asyncio
import gzip
import json
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from aiops.config import DriftSettings, KafkaSettings
from aiops.drift.source import decode_message, kafka_predictions, read_predictions
from aiops.observe.rejects import Rejects
from tests.integration.conftest import kafka_bootstrap  # noqa: F401  (the broker fixture)

GOOD = {"ts": 1.0, "model": "ranker", "id": "p1", "features": {"x": 0.5}, "prediction": 1}


def test_file_reader_counts_bad_lines(tmp_path: Path) -> None:
    lines = [json.dumps(GOOD), "{not json", json.dumps({"ts": 2, "features": {}}), "", json.dumps(
        {"ts": 3.0, "model": "ranker", "id": "p1", "label": 0})]
    with gzip.open(tmp_path / "predictions.jsonl.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    rejects = Rejects(log_examples=False)
    recs = list(read_predictions(tmp_path, rejects))
    assert [r.ts for r in recs] == [1.0, 3.0] and recs[1].is_label_only
    assert rejects.by_reason() == {("drift", "bad_json"): 1, ("drift", "missing_model"): 1}
    assert list(read_predictions(tmp_path / "absent", rejects)) == []


def test_decode_message() -> None:
    rejects = Rejects(log_examples=False)
    assert decode_message(json.dumps(GOOD).encode(), rejects) is not None
    assert decode_message(None, rejects) is None and decode_message(b"\xff", rejects) is None
    assert rejects.by_reason() == {("drift", "empty_message"): 1, ("drift", "bad_json"): 1}


@pytest.mark.integration
async def test_kafka_predictions_from_a_real_broker(kafka_bootstrap: str) -> None:  # noqa: F811
    topic = f"predictions-{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for i in range(5):
            await producer.send_and_wait(topic, json.dumps({**GOOD, "ts": float(i), "id": f"p{i}"}).encode())
        await producer.send_and_wait(topic, b"garbage")
    finally:
        await producer.stop()
    rejects = Rejects(log_examples=False)
    got = []
    stream = kafka_predictions(KafkaSettings(bootstrap=kafka_bootstrap, group_id=f"g-{uuid.uuid4().hex[:6]}"),
                               DriftSettings(predictions_topic=topic), rejects, offset_reset="earliest")
    async with asyncio.timeout(60):
        async for batch in stream:
            got += batch
            if len(got) >= 5 and rejects.total >= 1:
                break
    await stream.aclose()
    assert sorted(r.id or "" for r in got) == [f"p{i}" for i in range(5)]  # several partitions: any order
    assert rejects.by_reason() == {("drift", "bad_json"): 1}
