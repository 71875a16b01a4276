"""Kafka alerts topic sink against a real broker."""

from __future__ import annotations

import json
import uuid

import pytest
from aiokafka import AIOKafkaConsumer

from aiops.config import KafkaSettings
from aiops.notify.base import alert_key
from aiops.notify.kafka_sink import KafkaAlertSink
from aiops.records import Alert, AlertStatus

pytestmark = pytest.mark.integration


async def test_alerts_keyed_by_incident_in_order(kafka_bootstrap: str) -> None:
    topic = f"alerts-{uuid.uuid4().hex[:8]}"
    sink = KafkaAlertSink(KafkaSettings(bootstrap=kafka_bootstrap, alerts_topic=topic))
    await sink.start()
    alerts = [Alert(ts=10.0 + i, incident_id=f"inc-{i % 2}",
                    status=AlertStatus.FIRING if i < 2 else AlertStatus.RESOLVED,
                    labels=(("severity", "page"),), annotations=(("summary", f"s{i}"),)) for i in range(4)]
    for a in alerts:
        sink.send(a)
    await sink.close(10.0)

    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, group_id=None, auto_offset_reset="earliest")
    await consumer.start()
    try:
        got = []
        for _ in range(40):
            batch = await consumer.getmany(timeout_ms=500)
            got.extend(m for ms in batch.values() for m in ms)
            if len(got) >= 4:
                break
    finally:
        await consumer.stop()
    by_incident: dict[bytes, list[dict]] = {}
    for m in got:
        doc = json.loads(m.value)
        assert dict(m.headers)["Idempotency-Key"].decode() == doc["idempotency_key"]
        by_incident.setdefault(m.key, []).append(doc)
    assert sorted(by_incident) == [b"inc-0", b"inc-1"]
    for key, docs in by_incident.items():
        assert [d["status"] for d in docs] == ["firing", "resolved"]  # one partition per key keeps order
        assert all(d["incident_id"] == key.decode() for d in docs)
    assert {d["idempotency_key"] for docs in by_incident.values() for d in docs} == {alert_key(a) for a in alerts}
