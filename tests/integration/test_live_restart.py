"""Stop (as on SIGTERM) commits what was processed; a restart in the same group resumes there."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from aiops.config import load_settings
from aiops.correlate.topology import Topology
from aiops.decide.rules import load_rules
from aiops.runtime.live import LiveDaemon

from .conftest import free_port
from .test_live_e2e import create_topics

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


async def _produce(bootstrap: str, topic: str, start: int, n: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        for i in range(start, start + n):
            line = {"ts": 1767225600.0 + 15 * i, "name": "up", "labels": {"service": "api"}, "value": 1}
            await producer.send(topic, json.dumps(line).encode())
        await producer.flush()
    finally:
        await producer.stop()


async def _run_until(daemon: LiveDaemon, records: int, timeout: float = 60) -> int:
    stop = asyncio.Event()
    runner = asyncio.create_task(daemon.run(stop))
    deadline = time.monotonic() + timeout
    while daemon.processed_records < records and time.monotonic() < deadline and not runner.done():
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # anything beyond `records` would show up now
    stop.set()
    return await asyncio.wait_for(runner, 30)


async def test_restart_resumes_after_the_last_processed_offset(kafka_bootstrap: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    topic = f"restart-{tag}"
    await create_topics(kafka_bootstrap, [topic])
    settings = load_settings(env={
        "AIOPS_RULES_DIR": str(REPO / "rules"), "AIOPS_STATE_DIR": str(tmp_path / "state"),
        "AIOPS_KAFKA__BOOTSTRAP": kafka_bootstrap,
        "AIOPS_KAFKA__METRICS_TOPIC": topic, "AIOPS_KAFKA__LOGS_TOPIC": "", "AIOPS_KAFKA__EVENTS_TOPIC": "",
        "AIOPS_KAFKA__GROUP_ID": f"g-{tag}", "AIOPS_KAFKA__AUTO_OFFSET_RESET": "earliest",
        "AIOPS_KAFKA__COMMIT_INTERVAL_S": "3600",  # only the shutdown commit can save the position
        "AIOPS_HTTP__PORT": str(free_port()),
    })
    rules = load_rules(settings.rules_dir)

    await _produce(kafka_bootstrap, topic, 0, 300)
    first = LiveDaemon(settings, rules, Topology(), step_s=15)
    assert await _run_until(first, 300) == 0
    assert first.processed_records == 300

    await _produce(kafka_bootstrap, topic, 300, 120)
    second = LiveDaemon(settings.model_copy(update={"http": settings.http.model_copy(update={"port": free_port()})}),
                        rules, Topology(), step_s=15)
    assert await _run_until(second, 120) == 0
    assert second.processed_records == 120, "a restart must neither lose nor repeat processed records"
