"""Retrain triggers: HTTP pipeline endpoint, Kafka message, Kubernetes Job; each carries model, evidence, window."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from aiops.act.core import ActionCore, Execution
from aiops.act.executor import Executor
from aiops.act.kube import api_client
from aiops.act.ledger import Ledger
from aiops.act.retrain import RetrainActuator
from aiops.act.rules import load_action_rules, parse_action_rules
from aiops.records import ActionOutcome, Alert, Signal, SignalKind
from tests.integration.conftest import kafka_bootstrap  # noqa: F401  (the broker fixture)

from .kube_double import KubeDouble, serve, write_kubeconfig
from .support import T0, incident, planned, signal

DRIFT = Signal(id="drift:ranker:data", ts=T0 - 300, kind=SignalKind.DRIFT, service="ranker",
               name="ranker:data_drift", score=0.41, evidence=("feature price: PSI 0.41, KS p=3e-12",),
               labels=(("drift", "data"), ("model", "ranker")))


def drift_incident(iid: str = "inc-1"):  # type: ignore[no-untyped-def]
    return incident(iid, "ranker", signals=(DRIFT, signal("ranker", "model_online_accuracy")))


async def run(actuator: RetrainActuator, rules_text: str, tmp_path: Path) -> list[Any]:
    rules = parse_action_rules(rules_text)
    with Ledger(tmp_path / "ledger.jsonl") as ledger:
        ex = Executor(ActionCore(rules, ledger.book, dry_run=False), ledger, {"retrain": actuator})
        outs = await ex.on_incident(drift_incident(), [planned("retrain", "ranker")], T0)
        outs += await ex.on_incident(drift_incident(), [planned("retrain", "ranker")], T0 + 15)  # duplicate
        return outs


HTTP_RULES = """
actions: {retrain: {dry_run: false}}
retrain: {backend: http, url: "http://127.0.0.1:%d/apis/v1beta1/runs", data_window_s: 86400}
"""


async def test_http_pipeline_is_called_once_with_model_evidence_and_window(tmp_path: Path) -> None:
    seen: list[tuple[dict[str, str], dict[str, Any]]] = []

    async def runs(request: web.Request) -> web.Response:
        seen.append((dict(request.headers), await request.json()))
        return web.json_response({"run_id": "run-42"})

    app = web.Application()
    app.router.add_post("/apis/v1beta1/runs", runs)
    runner, port = await serve(app)
    try:
        text = HTTP_RULES % port
        async with aiohttp.ClientSession() as session:
            outs = await run(RetrainActuator(parse_action_rules(text), session=session, token="s3cret"), text, tmp_path)
    finally:
        await runner.cleanup()
    (out,) = outs
    assert out.outcome is ActionOutcome.DONE and "run run-42" in out.reason
    (headers, body), = seen
    assert headers["Authorization"] == "Bearer s3cret" and headers["Idempotency-Key"] == body["action_id"]
    assert body["model"] == "ranker" and body["incident_id"] == "inc-1"
    assert body["drift"]["evidence"] == ["feature price: PSI 0.41, KS p=3e-12"]
    assert body["data_window"] == {"start": T0 - 86400, "end": T0}


async def test_http_error_fails_and_escalates(tmp_path: Path) -> None:
    async def down(request: web.Request) -> web.Response:
        return web.Response(status=503, text="pipeline down")

    app = web.Application()
    app.router.add_post("/apis/v1beta1/runs", down)
    runner, port = await serve(app)
    try:
        text = HTTP_RULES % port
        async with aiohttp.ClientSession() as session:
            out, alert = await run(RetrainActuator(parse_action_rules(text), session=session), text, tmp_path)
    finally:
        await runner.cleanup()
    assert out.outcome is ActionOutcome.FAILED and "answered 503: pipeline down" in out.reason
    assert isinstance(alert, Alert)


class RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []

    async def send_and_wait(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> None:
        assert value is not None and key is not None
        self.sent.append((topic, value, key))


async def test_kafka_message(tmp_path: Path) -> None:
    text = "actions: {retrain: {dry_run: false}}\nretrain: {backend: kafka, topic: ml.retrain}\n"
    producer = RecordingProducer()
    (out,) = await run(RetrainActuator(parse_action_rules(text), producer=producer), text, tmp_path)
    assert out.outcome is ActionOutcome.DONE
    (topic, value, key), = producer.sent
    body = json.loads(value)
    assert topic == "ml.retrain" and key.decode() == body["action_id"] and body["model"] == "ranker"


@pytest.mark.integration
async def test_kafka_message_on_a_real_broker(tmp_path: Path, kafka_bootstrap: str) -> None:  # noqa: F811
    topic = f"retrain-{uuid.uuid4().hex[:8]}"
    text = f"actions: {{retrain: {{dry_run: false}}}}\nretrain: {{backend: kafka, topic: {topic}}}\n"
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    await producer.start()
    try:
        (out,) = await run(RetrainActuator(parse_action_rules(text), producer=producer), text, tmp_path)
    finally:
        await producer.stop()
    assert out.outcome is ActionOutcome.DONE
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        msg = await asyncio.wait_for(consumer.getone(), 30)
    finally:
        await consumer.stop()
    body = json.loads(msg.value)
    assert body["model"] == "ranker" and msg.key.decode() == body["action_id"]
    assert body["drift"]["evidence"] == [DRIFT.evidence[0]]


async def test_kubernetes_job_from_template(tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "retrain-job.yaml").write_text("""
apiVersion: batch/v1
kind: Job
metadata: {generateName: retrain-, namespace: ml}
spec:
  backoffLimit: 1
  template:
    spec:
      restartPolicy: Never
      containers:
        - {name: trainer, image: "registry.example/trainer:1", env: [{name: EPOCHS, value: "3"}]}
""")
    (rules_dir / "actions.yaml").write_text(
        "actions: {retrain: {dry_run: false}}\nretrain: {backend: job, job_template: retrain-job.yaml}\n")
    rules = load_action_rules(rules_dir)
    double = await KubeDouble().start()
    api = await api_client(write_kubeconfig(tmp_path / "kubeconfig", double.port))
    try:
        actuator = RetrainActuator(rules, api=api)
        with Ledger(tmp_path / "ledger.jsonl") as ledger:
            ex = Executor(ActionCore(rules, ledger.book, dry_run=False), ledger, {"retrain": actuator})
            (out,) = await ex.on_incident(drift_incident(), [planned("retrain", "ranker")], T0)
            assert out.outcome is ActionOutcome.DONE, out.reason
            # a second executor that lost its ledger would create the same Job name: a 409, not a second run
            (aid,) = ledger.book.actions
            again = await actuator(Execution(aid, planned("retrain", "ranker"), drift_incident()))
            assert again.outcome is ActionOutcome.DONE
        assert double.calls("POST") == [("POST", "/apis/batch/v1/namespaces/ml/jobs")] * 2
        (job,) = double.jobs
        env = {e["name"]: e["value"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["EPOCHS"] == "3" and env["AIOPS_MODEL"] == "ranker" and env["AIOPS_INCIDENT_ID"] == "inc-1"
        assert json.loads(env["AIOPS_RETRAIN_REQUEST"])["drift"]["evidence"] == [DRIFT.evidence[0]]
        assert job["metadata"]["name"].startswith("retrain-")
    finally:
        await api.close()
        await double.stop()


async def test_retrain_refused_without_drift_signal(tmp_path: Path) -> None:
    text = "actions: {retrain: {dry_run: false}}\nretrain: {backend: kafka, topic: t}\n"
    producer = RecordingProducer()
    rules = parse_action_rules(text)
    with Ledger(tmp_path / "l.jsonl") as ledger:
        ex = Executor(ActionCore(rules, ledger.book, dry_run=False), ledger,
                      {"retrain": RetrainActuator(rules, producer=producer)})
        (out,) = await ex.on_incident(incident(service="ranker"), [planned("retrain", "ranker")], T0)
    assert out.outcome is ActionOutcome.REFUSED
    assert out.reason == "precondition: no active drift/metric signal matching ['_drift$', '^model_'] on ranker"
    assert producer.sent == []
