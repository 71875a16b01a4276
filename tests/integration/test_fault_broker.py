"""Fault: the Kafka broker stops mid-stream and comes back on the same port.

Tansu keeps its data in memory here (see :class:`~tests.integration.conftest.Broker`): the
restarted broker is empty, as after losing a broker's disk, so the producer creates the topics
again and sends what it had not sent yet. The daemon must notice the outage (``/readyz`` 503),
reconnect by itself, read on from the new topics and decide exactly what an uninterrupted run
over the same records decides.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from prometheus_client import CollectorRegistry

from aiops.config import KafkaSettings
from aiops.observe.rejects import Rejects
from aiops.records import Record
from aiops.sources.kafka import KafkaSource

from .conftest import Broker, free_port
from .telemetry import STEP, build
from .test_live_e2e import _decisions, _get, _wait, create_topics, produce

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


async def _until(cond, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def _produce_up(bootstrap: str, topic: str, start: int, n: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await producer.start()
    try:
        for i in range(start, start + n):
            line = {"ts": 1767225600.0 + 15 * i, "name": "up", "labels": {"service": "api"}, "value": 1}
            await producer.send(topic, json.dumps(line).encode())
        await producer.flush()
    finally:
        await producer.stop()


async def test_source_says_disconnected_while_the_broker_is_down(kafka_broker: Broker) -> None:
    topic = f"m-{uuid.uuid4().hex[:8]}"
    await create_topics(kafka_broker.bootstrap, [topic])
    await _produce_up(kafka_broker.bootstrap, topic, 0, 100)
    settings = KafkaSettings(bootstrap=kafka_broker.bootstrap, group_id="g", metrics_topic=topic, logs_topic="",
                             events_topic="", auto_offset_reset="earliest", commit_interval_s=0.0)
    source = KafkaSource(settings, Rejects(registry=CollectorRegistry()), probe_interval_s=0.2)
    seen: list[float] = []

    async def consume() -> None:
        async for batch in source.batches():
            seen.extend(r.ts for r in batch.records)
            source.mark_processed(batch)

    assert not source.connected
    await source.start()
    reader = asyncio.create_task(consume())
    try:
        await _until(lambda: len(seen) == 100, 60, "the first 100 records")
        assert source.connected
        kafka_broker.stop()
        await _until(lambda: not source.connected, 30, "the source to notice the outage")
        await asyncio.sleep(1.0)
        assert not source.connected, "no broker answers: still disconnected"
        kafka_broker.start()
        await _until(lambda: source.connected, 60, "the source to reconnect")
        # The broker came back empty: the producer re-creates the topic and sends the rest.
        await create_topics(kafka_broker.bootstrap, [topic])
        await _produce_up(kafka_broker.bootstrap, topic, 100, 50)
        await _until(lambda: len(seen) >= 150, 90, "the records sent after the restart")
        await asyncio.sleep(1.0)  # a repeat would show up now
        assert sorted(seen) == [1767225600.0 + 15 * i for i in range(150)], "nothing lost, nothing repeated"
        assert source.connected
    finally:
        source.request_stop()
        await asyncio.wait_for(reader, 30)
        await source.stop()
    assert not source.connected


async def test_a_rebalance_does_not_hand_out_records_twice(kafka_bootstrap: str) -> None:
    """A member joining and leaving the group (as a restarted broker that forgot the group
    forces too) hands the partition back from the committed offset, far behind what was read."""
    tag = uuid.uuid4().hex[:8]
    topic, other_topic = f"m-{tag}", f"o-{tag}"
    await create_topics(kafka_bootstrap, [topic, other_topic])
    await _produce_up(kafka_bootstrap, topic, 0, 100)
    settings = KafkaSettings(bootstrap=kafka_bootstrap, group_id=f"g-{tag}", metrics_topic=topic, logs_topic="",
                             events_topic="", auto_offset_reset="earliest",
                             commit_interval_s=3600)  # as between checkpoints: nothing committed yet
    source = KafkaSource(settings, Rejects(registry=CollectorRegistry()))
    seen: list[float] = []

    async def consume() -> None:
        async for batch in source.batches():
            seen.extend(r.ts for r in batch.records)
            source.mark_processed(batch)

    await source.start()
    reader = asyncio.create_task(consume())
    try:
        await _until(lambda: len(seen) == 100, 60, "the first 100 records")
        other = AIOKafkaConsumer(other_topic, bootstrap_servers=kafka_bootstrap, group_id=f"g-{tag}")
        await other.start()  # joins: the group rebalances
        await other.stop()  # leaves: it rebalances again
        await _produce_up(kafka_bootstrap, topic, 100, 10)
        await _until(lambda: len(seen) >= 110, 60, "the records sent after the rebalances")
        await asyncio.sleep(2.0)  # a repeat would show up now
        assert sorted(seen) == [1767225600.0 + 15 * i for i in range(110)], "nothing lost, nothing repeated"
    finally:
        source.request_stop()
        await asyncio.wait_for(reader, 30)
        await source.stop()


def _config(tmp_path: Path, name: str, bootstrap: str, topics: dict[str, str], port: int) -> Path:
    config = {
        "rules_dir": str(REPO / "rules"),
        "state_dir": str(tmp_path / f"state-{name}"),
        "log_format": "json",
        "runtime": {"lateness_s": 300},
        "kafka": {"bootstrap": bootstrap, "group_id": f"aiops-{name}-{uuid.uuid4().hex[:6]}",
                  "auto_offset_reset": "earliest", "metrics_topic": topics["metrics"], "logs_topic": topics["logs"],
                  "events_topic": topics["events"], "commit_interval_s": 0.5},
        "http": {"host": "127.0.0.1", "port": port},
        # Event time moves with the records only, so both runs decide on exactly the same input
        # whatever the wall clock did meanwhile (the broker outage included).
        "live": {"idle_advance_s": 3600, "shutdown_timeout_s": 30},
    }
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(config))
    return cfg


def _start(cfg: Path, out: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOPS_")}
    env["PYTHONPATH"] = str(REPO)
    with log.open("wb") as err:
        return subprocess.Popen([sys.executable, "-m", "aiops", "--config", str(cfg), "run", "--out", str(out),
                                 "--step", str(STEP)], cwd=REPO, env=env, stdout=err, stderr=subprocess.STDOUT)


def _records_in(base: str) -> float:
    status, text = _get(f"{base}/metrics")
    if status != 200:
        return -1.0
    total = 0.0
    for line in text.splitlines():
        if line.startswith("aiops_records_in_total{") and 'source="kafka"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def _stop(proc: subprocess.Popen[bytes], log: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]


def _stage_counts(base: str) -> dict[str, float]:
    """What every pipeline stage took in and gave out, and every rejection (late records among them)."""
    _, text = _get(f"{base}/metrics")
    counts = {}
    for line in text.splitlines():
        if line.startswith(("aiops_stage_records_total{", "aiops_records_rejected_total{")):
            name, value = line.rsplit(" ", 1)
            counts[name] = float(value)
    return counts


def _run_to_end(proc: subprocess.Popen[bytes], base: str, log: Path, total: int) -> dict[str, float]:
    """Wait until every record was read and the pipeline stopped moving; return its stage counts."""
    _wait(lambda: _records_in(base) == float(total), 180, f"all {total} records read", proc, log)
    last: dict[str, float] | None = None
    while True:  # the pipeline lags the reader by at most a few batches
        counts = _stage_counts(base)
        if counts == last:
            return counts
        last = counts
        time.sleep(2.0)


def test_daemon_rides_out_a_broker_restart(kafka_broker: Broker, tmp_path: Path) -> None:
    span_s = (60 + 20 + 25) * 60
    t0 = math.floor((time.time() - span_s - 120) / 900) * 900
    records, truth = build(seed=5, t0=t0)
    total = len(records)
    # The incident opens before the outage and resolves in what is sent after it.
    cut = truth.fault_start + 14 * 60  # lateness_s (5 min) behind it, the incident is open
    first: list[Record] = [r for r in records if r.ts < cut]
    rest: list[Record] = [r for r in records if r.ts >= cut]
    bootstrap = kafka_broker.bootstrap
    tag = uuid.uuid4().hex[:8]
    topics = {"metrics": f"metrics-{tag}", "logs": f"logs-{tag}", "events": f"events-{tag}"}

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    out, log = tmp_path / "fault.jsonl", tmp_path / "fault.log"
    asyncio.run(create_topics(bootstrap, list(topics.values())))
    proc = _start(_config(tmp_path, "fault", bootstrap, topics, port), out, log)
    try:
        _wait(lambda: _get(f"{base}/readyz")[0] == 200, 60, "readyz", proc, log)
        asyncio.run(produce(bootstrap, topics, first, []))
        _wait(lambda: _records_in(base) == float(len(first)), 120, "the first part read", proc, log)
        _wait(lambda: any(d["kind"] == "incident" for d in _decisions(out)), 60, "the incident to open", proc, log)

        kafka_broker.stop()
        _wait(lambda: _get(f"{base}/readyz")[0] == 503, 30, "readyz to say not ready", proc, log)
        time.sleep(3.0)
        assert _get(f"{base}/readyz")[0] == 503, "still not ready while the broker is down"
        assert _get(f"{base}/healthz")[0] == 200, "alive all the same"

        kafka_broker.start()
        _wait(lambda: _get(f"{base}/readyz")[0] == 200, 60, "readyz to be ready again", proc, log)
        asyncio.run(create_topics(bootstrap, list(topics.values())))
        asyncio.run(produce(bootstrap, topics, rest, []))
        counts = _run_to_end(proc, base, log, total)
        _stop(proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert '"event": "kafka_disconnected"' in text and '"event": "kafka_reconnected"' in text

    # The same records, never interrupted, through a fresh daemon.
    ref_topics = {k: f"ref-{v}" for k, v in topics.items()}
    asyncio.run(create_topics(bootstrap, list(ref_topics.values())))
    asyncio.run(produce(bootstrap, ref_topics, records, []))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    ref_out, ref_log = tmp_path / "reference.jsonl", tmp_path / "reference.log"
    ref = _start(_config(tmp_path, "reference", bootstrap, ref_topics, port), ref_out, ref_log)
    try:
        _wait(lambda: _get(f"{base}/readyz")[0] == 200, 60, "readyz", ref, ref_log)
        ref_counts = _run_to_end(ref, base, ref_log, total)
        _stop(ref, ref_log)
    finally:
        if ref.poll() is None:
            ref.kill()
            ref.wait()

    got, want = _decisions(out), _decisions(ref_out)
    opened = [d for d in want if d["kind"] == "incident" and d["status"] == "open"]
    assert opened and opened[0]["root_causes"][0]["service"] == truth.root_cause
    assert any(d["kind"] == "incident" and d["status"] == "resolved" for d in want)
    assert got == want, "the interrupted run must decide exactly what the uninterrupted one does"
    # Not one record lost, late or repeated on the way: every stage saw the same numbers.
    assert counts['aiops_stage_records_total{direction="in",stage="derive"}'] > 0
    assert counts == ref_counts


def test_event_time_waits_for_the_broker(kafka_broker: Broker, tmp_path: Path) -> None:
    """With idle sources event time follows the wall clock (``live.idle_advance_s``); a broker
    outage is not an idle source: had event time moved on meanwhile, what is produced once the
    broker is back (buffered by producers, older than the outage's end) would all be late."""
    # Longer than the lateness bound, as outages are; the idle time around it (before the outage is
    # noticed, while the group re-forms) still counts, and stays well inside the bound.
    lateness_s, outage_s = 30.0, 75.0
    tag = uuid.uuid4().hex[:8]
    topic = f"up-{tag}"
    bootstrap = kafka_broker.bootstrap
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = {
        "rules_dir": str(REPO / "rules"), "state_dir": str(tmp_path / "state"), "log_format": "json",
        # One in-order partition: a short lateness bound is enough.
        "runtime": {"lateness_s": lateness_s},
        "kafka": {"bootstrap": bootstrap, "group_id": f"aiops-{tag}", "auto_offset_reset": "earliest",
                  "metrics_topic": topic, "logs_topic": "", "events_topic": "", "commit_interval_s": 0.5},
        "http": {"host": "127.0.0.1", "port": port},
        "live": {"idle_advance_s": 1.0, "shutdown_timeout_s": 30},
    }
    cfg = tmp_path / "aiops.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out, log = tmp_path / "out.jsonl", tmp_path / "daemon.log"
    asyncio.run(create_topics(bootstrap, [topic]))
    proc = _start(cfg, out, log)
    try:
        _wait(lambda: _get(f"{base}/readyz")[0] == 200, 60, "readyz", proc, log)
        asyncio.run(_produce_up(bootstrap, topic, 0, 200))
        _wait(lambda: _records_in(base) == 200.0, 60, "the first part read", proc, log)
        kafka_broker.stop()
        down = time.monotonic()
        _wait(lambda: _get(f"{base}/readyz")[0] == 503, 30, "readyz to say not ready", proc, log)
        time.sleep(max(0.0, outage_s - (time.monotonic() - down)))
        kafka_broker.start()
        asyncio.run(create_topics(bootstrap, [topic]))
        asyncio.run(_produce_up(bootstrap, topic, 200, 100))
        _wait(lambda: _records_in(base) == 300.0, 90, "the rest read", proc, log)
        _wait(lambda: _stage_counts(base).get(
            'aiops_stage_records_total{direction="in",stage="derive"}', 0) >= 300 - lateness_s / 15 - 1,
            30, "the records released", proc, log)
        counts = _stage_counts(base)
        _stop(proc, log)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    late = {k: v for k, v in counts.items() if "late_record" in k}
    assert not any(late.values()), f"records dropped as late after the outage: {late}"
