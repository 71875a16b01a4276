"""The live daemon reads a model's prediction log from Kafka with its telemetry: drift in it opens an
incident that plans a retrain, and `aiops record` captures the predictions so a replay decides the same."""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from aiokafka import AIOKafkaProducer

from aiops.config import Settings, load_settings
from aiops.correlate.topology import Topology
from aiops.decide.rules import load_rules
from aiops.drift.records import PredictionRecord, encode_prediction
from aiops.observe.rejects import Rejects
from aiops.runtime.live import LiveDaemon
from aiops.scenario.record import record_kafka, write_scenario
from aiops.scenario.replay import replay
from aiops.sources.scenario import load_scenario

from .conftest import free_port
from .test_live_e2e import create_topics

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
T0 = 1_767_600_000.0
STEP = 15.0
DRIFT_AT = 3600.0  # seconds after T0: the model's inputs shift and stay shifted
END = 2 * 3600.0


def predictions() -> list[PredictionRecord]:
    """Two predictions per second of a ranker, with the label of each arriving a minute later."""
    rng = np.random.default_rng(5)
    out: list[PredictionRecord] = []
    for i in range(int(END * 2)):
        t = T0 + i / 2
        x = rng.normal(1.2 if t - T0 >= DRIFT_AT else 0.0, 1.0, size=2)
        out.append(PredictionRecord(ts=t, model="ranker", service="ranker", version="v1", id=f"p{i}",
                                    features=(("price", float(x[0])), ("session_depth", float(x[1]))),
                                    prediction=float(x.sum() > 1.0)))
    return out


async def produce(bootstrap: str, topic: str, records: list[PredictionRecord], bad: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20)
    await producer.start()
    try:
        # Several predictions per message, newline separated, as a batching producer sends them.
        for i in range(0, len(records), 30):
            if i == len(records) // 2:
                for value in bad:
                    await producer.send(topic, value)
            chunk = records[i:i + 30]
            await producer.send(topic, b"\n".join(json.dumps(encode_prediction(r)).encode() for r in chunk))
        await producer.flush()
    finally:
        await producer.stop()


def _settings(tmp_path: Path, bootstrap: str, topics: dict[str, str]) -> Settings:
    return load_settings(env={
        "AIOPS_STATE_DIR": str(tmp_path / "state"), "AIOPS_ACT__LEDGER_PATH": str(tmp_path / "ledger.jsonl"),
        "AIOPS_DRIFT__PREDICTIONS_TOPIC": topics["predictions"],
        "AIOPS_DRIFT__REFERENCE_SIZE": "1200", "AIOPS_DRIFT__WINDOW_S": "600",
        "AIOPS_KAFKA__BOOTSTRAP": bootstrap, "AIOPS_KAFKA__GROUP_ID": f"drift-{uuid.uuid4().hex[:6]}",
        "AIOPS_KAFKA__AUTO_OFFSET_RESET": "earliest",
        "AIOPS_KAFKA__METRICS_TOPIC": topics["metrics"], "AIOPS_KAFKA__LOGS_TOPIC": topics["logs"],
        "AIOPS_KAFKA__EVENTS_TOPIC": topics["events"],
        "AIOPS_HTTP__PORT": str(free_port()), "AIOPS_LIVE__IDLE_ADVANCE_S": "1",
    })


async def test_drift_from_the_predictions_topic_plans_a_retrain(kafka_bootstrap: str, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    topics = {k: f"drift-{k}-{tag}" for k in ("metrics", "logs", "events", "predictions")}
    await create_topics(kafka_bootstrap, list(topics.values()))
    records = predictions()
    await produce(kafka_bootstrap, topics["predictions"], records, [b"{not json", b'{"ts": 1}', b"\xff\xfe"])
    settings = _settings(tmp_path, kafka_bootstrap, topics)
    rules = load_rules(settings.rules_dir)
    out = io.StringIO()
    daemon = LiveDaemon(settings, rules, Topology.from_mapping(rules.topology_mapping()), out=out, step_s=STEP)
    stop = asyncio.Event()
    runner = asyncio.create_task(daemon.run(stop))

    def decisions() -> list[dict]:
        return [json.loads(line) for line in out.getvalue().splitlines()]

    deadline = time.monotonic() + 120
    while not runner.done() and time.monotonic() < deadline:
        if daemon.processed_records >= len(records) and any(d["kind"] == "action" for d in decisions()):
            break
        await asyncio.sleep(0.2)
    stop.set()
    assert await asyncio.wait_for(runner, 60) == 0
    live = decisions()

    # Every prediction was fed to the pipeline once (the newest, inside the lateness bound, wait in
    # the checkpoint for the next run rather than being decided on a partial step).
    assert daemon.processed_records == len(records)
    assert 0.9 * len(records) < daemon.pipeline.stats.predictions <= len(records)
    assert daemon.rejects.by_reason() == {("kafka", "bad_json"): 1, ("kafka", "missing_model"): 1,
                                          ("kafka", "bad_utf8"): 1}
    opened = [d for d in live if d["kind"] == "incident" and d["status"] == "open"]
    assert opened, live
    first = opened[0]
    assert first["root_causes"][0]["service"] == "ranker"
    assert DRIFT_AT <= float(first["opened_ts"]) - T0 <= DRIFT_AT + 900
    retrains = [d for d in live if d["kind"] == "action" and d["type"] == "retrain"]
    assert retrains and retrains[0]["incident_id"] == first["id"]

    # The recording carries the predictions; its replay opens the same incident and plans the retrain.
    got = await record_kafka(settings, T0, T0 + END, Rejects(log_examples=False))
    assert sum(isinstance(r, PredictionRecord) for r in got) == len(records)
    scenario = tmp_path / "recorded"
    counts = write_scenario(scenario, got, name="recorded-drift", description="drift from Kafka", step=STEP)
    assert counts["predictions"] == len(records)
    replayed = replay(load_scenario(scenario), settings, rules).records()
    again = [d for d in replayed if d["kind"] == "incident" and d["status"] == "open"]
    assert [(d["id"], d["root_causes"][0]["service"]) for d in again][:1] == [(first["id"], "ranker")]
    assert any(d["kind"] == "action" and d["type"] == "retrain" and d["incident_id"] == first["id"]
               for d in replayed)
