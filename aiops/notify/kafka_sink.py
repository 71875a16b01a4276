"""Kafka alerts topic sink: each alert as a JSON message keyed by incident id.

Keying by incident keeps every state of one incident in one partition, in order (its escalations
too). The idempotency key (one per alert: labels, status, event time) travels in a header so
consumers can drop the repeats a restart produces.
"""

from __future__ import annotations

import asyncio

import structlog
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from aiops.config import KafkaSettings
from aiops.notify.base import alert_key
from aiops.notify.webhook import webhook_body
from aiops.observe.metrics import SelfMetrics
from aiops.records import Alert
from aiops.sources.kafka import kafka_client_kwargs

log = structlog.get_logger(__name__)


class KafkaAlertSink:
    """Produces alerts to ``kafka.alerts_topic`` (acks=all); ``close`` flushes the producer."""

    name = "kafka"

    def __init__(self, settings: KafkaSettings, metrics: SelfMetrics | None = None, buffer_size: int = 10000) -> None:
        if not settings.alerts_topic:
            raise ValueError("kafka.alerts_topic is required for the Kafka alert sink")
        self.settings = settings
        self.topic = settings.alerts_topic
        self.metrics = metrics
        self._queue: asyncio.Queue[Alert] = asyncio.Queue(maxsize=buffer_size)
        self._producer: AIOKafkaProducer | None = None

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(acks="all", linger_ms=10, **kafka_client_kwargs(self.settings))
        await self._producer.start()

    def send(self, alert: Alert) -> None:
        try:
            self._queue.put_nowait(alert)
        except asyncio.QueueFull:
            log.warning("kafka_sink_buffer_full", incident_id=alert.incident_id)
            if self.metrics is not None:
                self.metrics.sink_sent.labels(self.name, "dropped").inc()

    async def run(self) -> None:
        while True:
            alert = await self._queue.get()
            await self._produce(alert)

    async def _produce(self, alert: Alert) -> None:
        assert self._producer is not None, "start() first"
        try:
            await self._producer.send_and_wait(
                self.topic, value=webhook_body(alert), key=alert.incident_id.encode(),
                headers=[("Idempotency-Key", alert_key(alert).encode())])
            outcome = "ok"
        except KafkaError as exc:
            log.error("kafka_sink_failed", topic=self.topic, error=repr(exc), incident_id=alert.incident_id)
            outcome = "error"
        if self.metrics is not None:
            self.metrics.sink_sent.labels(self.name, outcome).inc()

    async def close(self, timeout: float) -> None:
        async def drain() -> None:
            while not self._queue.empty():
                await self._produce(self._queue.get_nowait())

        try:
            await asyncio.wait_for(drain(), timeout)
        except TimeoutError:
            log.warning("kafka_sink_flush_timeout", lost=self._queue.qsize())
        if self._producer is not None:
            await self._producer.stop()
