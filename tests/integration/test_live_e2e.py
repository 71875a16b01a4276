"""End to end: telemetry into Kafka -> `aiops run` (a real subprocess) -> Alertmanager; then
`aiops record` from Kafka and `aiops replay --check` on the recording give the live run's incidents.
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
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from aiops.records import ChangeEvent, LogRecord, MetricSample, Record

from .conftest import Alertmanager, free_port
from .telemetry import STEP, build

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _metric_json(s: MetricSample, adapter: bool) -> dict:
    value = None if math.isnan(s.value) else s.value
    if adapter:  # prometheus-kafka-adapter's form: RFC 3339 time, value as a string
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(s.ts)) + f".{int(round(s.ts % 1 * 1000)):03d}Z"
        labels = {"__name__": s.name, **dict(s.labels)}
        return {"timestamp": stamp, "value": str(value), "name": s.name, "labels": labels}
    return {"ts": s.ts, "name": s.name, "labels": dict(s.labels), "value": value}


async def create_topics(bootstrap: str, topics: list[str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        # One partition per topic: order within a topic is then the produce order, as in a
        # well-keyed production topic; skew between topics is the reorder buffer's job.
        await admin.create_topics([NewTopic(t, 1, 1) for t in topics])
    finally:
        await admin.close()


async def produce(bootstrap: str, topics: dict[str, str], records: list[Record], bad: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        step_lines: list[bytes] = []
        step_ts = None
        for i, r in enumerate(records):
            if i == len(records) // 2:
                for value in bad:  # malformed messages in the middle of the stream
                    await producer.send(topics["metrics"], value)
            if isinstance(r, MetricSample):
                if r.service == "db":
                    await producer.send(topics["metrics"], json.dumps(_metric_json(r, True)).encode())
                    continue
                bucket = math.floor(r.ts / STEP)
                if step_ts is not None and bucket != step_ts and step_lines:
                    # Several samples per message, newline separated, as batching producers do.
                    await producer.send(topics["metrics"], b"\n".join(step_lines))
                    step_lines = []
                step_ts = bucket
                step_lines.append(json.dumps(_metric_json(r, False)).encode())
            elif isinstance(r, LogRecord):
                doc = {"@timestamp": r.ts, "log": r.message, "level": r.level,
                       "kubernetes": {"labels": {"app": r.service}, "pod_name": f"{r.service}-0"}}
                await producer.send(topics["logs"], json.dumps(doc).encode())
            elif isinstance(r, ChangeEvent):
                await producer.send(topics["events"], json.dumps(
                    {"ts": r.ts, "type": r.type, "service": r.service, **dict(r.attrs)}).encode())
        if step_lines:
            await producer.send(topics["metrics"], b"\n".join(step_lines))
        await producer.flush()
    finally:
        await producer.stop()


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, ""
    except OSError:
        return 0, ""


def _decisions(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _wait(cond, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"daemon exited {proc.returncode} while waiting for {what}: "
                                 f"{log.read_text()[-3000:] if log else ''}")
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}: {log.read_text()[-3000:] if log else ''}")


def _incidents(decisions: list[dict]) -> list[tuple]:
    return [(d["id"], d["status"], d["ts"], tuple(rc["service"] for rc in d["root_causes"]))
            for d in decisions if d["kind"] == "incident"]


def test_kafka_to_alertmanager_then_record_and_replay(
    kafka_bootstrap: str, alertmanager: Alertmanager, tmp_path: Path,
) -> None:
    tag = uuid.uuid4().hex[:8]
    # Event time close to now, as a live system sees it; unique per run so incident ids never collide.
    span_s = (60 + 20 + 25) * 60
    t0 = math.floor((time.time() - span_s - 120) / 900) * 900
    records, truth = build(seed=11, t0=t0)
    topics = {"metrics": f"metrics-{tag}", "logs": f"logs-{tag}", "events": f"events-{tag}"}
    bad = [b"{not json", b'{"ts": 1, "name": "x", "labels": {"a": 1}}', b"\xff\xfe\x00",
           b'{"ts": 5, "name": "big", "pad": "' + b"x" * (1024 * 1024 + 16) + b'"}']
    port = free_port()
    config = {
        "rules_dir": str(REPO / "rules"),
        "state_dir": str(tmp_path / "state"),
        "log_format": "json",
        "runtime": {"lateness_s": 300},
        "kafka": {"bootstrap": kafka_bootstrap, "group_id": f"aiops-{tag}", "auto_offset_reset": "earliest",
                  "metrics_topic": topics["metrics"], "logs_topic": topics["logs"], "events_topic": topics["events"],
                  "dead_letter_topic": f"dlq-{tag}", "commit_interval_s": 0.5},
        "http": {"host": "127.0.0.1", "port": port},
        "alertmanager": {"urls": [alertmanager.url], "resend_s": 2,
                         "generator_url": "http://aiops.test/incidents/{incident_id}"},
        "live": {"idle_advance_s": 1.0, "shutdown_timeout_s": 20},
    }
    cfg = tmp_path / "aiops.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out = tmp_path / "live.jsonl"
    log = tmp_path / "daemon.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOPS_")}
    env["PYTHONPATH"] = str(REPO)
    asyncio.run(create_topics(kafka_bootstrap, list(topics.values())))
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "aiops", "--config", str(cfg), "run", "--out", str(out),
                                 "--step", str(STEP)], cwd=REPO, env=env, stdout=err, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    # The fault arrives first, as it would live; the recovery only once the alert is out.
    cut = truth.fault_start + 8 * 60
    first = [r for r in records if r.ts < cut]
    rest = [r for r in records if r.ts >= cut]
    try:
        _wait(lambda: _get(f"{base}/healthz")[0] == 200, 30, "healthz", proc, log)
        _wait(lambda: _get(f"{base}/readyz")[0] == 200, 60, "readyz", proc, log)
        asyncio.run(produce(kafka_bootstrap, topics, first, bad))

        # The incident opens with api as root cause, and reaches Alertmanager with it in an annotation.
        opened = _wait(lambda: [d for d in _decisions(out) if d["kind"] == "incident" and d["status"] == "open"],
                       120, "an incident", proc, log)[0]
        assert opened["root_causes"][0]["service"] == truth.root_cause
        iid = opened["id"]
        (alert,) = _wait(lambda: alertmanager.alerts(incident_id=iid), 30, "the alert in Alertmanager", proc, log)
        assert alert["status"]["state"] == "active"
        assert truth.root_cause in alert["annotations"]["description"]
        assert alert["labels"]["service"] == truth.root_cause
        assert alert["generatorURL"] == f"http://aiops.test/incidents/{iid}"
        asyncio.run(produce(kafka_bootstrap, topics, rest, []))

        # All records consumed; the malformed ones counted in /metrics and dead-lettered.
        def consumed() -> bool:
            status, text = _get(f"{base}/metrics")
            return status == 200 and f"aiops_records_in_total{{kind=\"metric\",source=\"kafka\"}} " \
                f"{float(sum(isinstance(r, MetricSample) for r in records))}" in text
        _wait(consumed, 120, "every sample consumed", proc, log)
        _, metrics_text = _get(f"{base}/metrics")
        for reason in ("bad_json", "bad_labels", "bad_utf8", "too_large"):
            assert f'aiops_records_rejected_total{{reason="{reason}",stage="kafka"}} 1.0' in metrics_text, reason
        assert 'aiops_dead_lettered_total{topic="dlq-' in metrics_text

        # Recovery: the incident resolves in the data, and Alertmanager no longer lists it as active.
        _wait(lambda: any(d["kind"] == "incident" and d["id"] == iid and d["status"] == "resolved"
                          for d in _decisions(out)), 120, "the incident to resolve", proc, log)
        _wait(lambda: not alertmanager.alerts(incident_id=iid), 30, "Alertmanager to resolve it", proc, log)

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    logtext = log.read_text()
    assert '"event": "shutdown_drained"' in logtext and '"event": "daemon_stopped"' in logtext

    # Record the same window from Kafka, with the live incidents as the expectation, and replay it.
    scenario = tmp_path / "recorded"
    rec = subprocess.run(
        [sys.executable, "-m", "aiops", "--config", str(cfg), "record", "--from", "kafka",
         "--start", str(t0), "--end", str(truth.end + 3600), "--out", str(scenario), "--step", str(STEP),
         "--expect-from", str(out)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert rec.returncode == 0, rec.stdout + rec.stderr
    assert f"{sum(isinstance(r, MetricSample) for r in records)} samples" in rec.stdout
    replay_out = tmp_path / "replay.jsonl"
    rep = subprocess.run(
        [sys.executable, "-m", "aiops", "--config", str(cfg), "replay", str(scenario), "--check",
         "--out", str(replay_out)], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert rep.returncode == 0, rep.stdout + rep.stderr
    assert _incidents(_decisions(replay_out)) == _incidents(_decisions(out))
