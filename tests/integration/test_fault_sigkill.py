"""SIGKILL mid-stream: `aiops run` (a real process) is killed after a checkpoint with its incident
open, restarted with the same state directory and consumer group, and finishes the stream.

A bundled scenario (checkout-bad-deploy) goes through a real broker; alerts go to a real
Alertmanager; the rollback goes through the real Kubernetes client to the API double. What must
hold: the incident reaches Alertmanager as exactly one alert (no second id, no cold-start burst
after the restart), it resolves there, the rollback request is made once, and the incidents are
those of an uninterrupted run of the same records.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from aiops.config import load_settings
from aiops.correlate.topology import Topology
from aiops.decide.rules import load_rules
from aiops.observe.rejects import Rejects
from aiops.records import Alert, AlertStatus, ChangeEvent, Decision, Incident, LogRecord, MetricSample, Record
from aiops.runtime.pipeline import Pipeline
from aiops.sources.scenario import load_scenario, read_records

from ..act.kube_double import KubeDouble, deployment, write_kubeconfig
from .conftest import Alertmanager, free_port
from .test_live_e2e import create_topics

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
SCENARIO = REPO / "scenarios" / "checkout-bad-deploy"
ROLLBACK = ("PATCH", "/apis/apps/v1/namespaces/default/deployments/checkout")


async def _produce(bootstrap: str, topics: dict[str, str], records: list[Record], step: float) -> None:
    """Records as JSON lines, one message per topic and step (as a batching shipper sends them)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        buckets: dict[tuple[str, int], list[bytes]] = defaultdict(list)
        for r in records:
            if isinstance(r, MetricSample):
                doc: dict[str, Any] = {"ts": r.ts, "name": r.name, "labels": dict(r.labels),
                                       "value": None if math.isnan(r.value) else r.value}
                topic = topics["metrics"]
            elif isinstance(r, LogRecord):
                doc = {"ts": r.ts, "service": r.service, "level": r.level, "message": r.message}
                topic = topics["logs"]
            else:
                assert isinstance(r, ChangeEvent)
                doc = {"ts": r.ts, "type": r.type, "service": r.service, **dict(r.attrs)}
                topic = topics["events"]
            buckets[(topic, math.floor(r.ts / step))].append(json.dumps(doc).encode())
        for (topic, _), lines in sorted(buckets.items(), key=lambda kv: kv[0][1]):
            await producer.send(topic, b"\n".join(lines))
        await producer.flush()
    finally:
        await producer.stop()


async def _committed(bootstrap: str, group: str, topics: list[str]) -> dict[str, int]:
    # A consumer that never subscribes does not join the group, so it leaves the daemon's membership alone.
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        got = {t: await consumer.committed(TopicPartition(t, 0)) for t in topics}
    finally:
        await consumer.stop()
    return {f"{t}/0": off for t, off in got.items() if off is not None}


class _KubeThread:
    """The Kubernetes API double on its own event loop, beside the synchronous test."""

    def __init__(self, services: set[str]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.double = asyncio.run_coroutine_threadsafe(KubeDouble().start(), self.loop).result(30)
        for svc in sorted(services):
            self.double.add_deployment(deployment(svc, image="v2", revision=2), history=("v1", "v2"))

    def writes(self) -> list[tuple[str, str]]:
        return [c for c in list(self.double.calls()) if c[0] != "GET"]

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.double.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=3) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)
    except OSError:
        return 0


def _lines(path: Path) -> list[dict]:
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by SIGKILL
                pass
    return out


def _events(log: Path, name: str) -> list[dict]:
    out = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            doc = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(doc, dict) and doc.get("event") == name:
            out.append(doc)
    return out


class _Watch:
    """Polls Alertmanager throughout: every AiopsIncident alert identity (its label set) seen."""

    def __init__(self, am: Alertmanager, ignore: set[str]) -> None:
        self.am = am
        self.ignore = ignore
        self.seen: set[tuple[tuple[str, str], ...]] = set()

    @property
    def ids(self) -> set[str]:
        return {dict(labels)["incident_id"] for labels in self.seen}

    def poll(self) -> list[dict]:
        alerts = [a for a in self.am.alerts(alertname="AiopsIncident")
                  if a["labels"]["incident_id"] not in self.ignore]
        self.seen.update(tuple(sorted(a["labels"].items())) for a in alerts)
        return alerts


def _wait(cond: Any, timeout: float, what: str, watch: _Watch, proc: subprocess.Popen[bytes] | None = None,
          log: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        watch.poll()
        got = cond()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"daemon exited {proc.returncode} waiting for {what}: "
                                 f"{log.read_text()[-3000:] if log else ''}")
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}: {log.read_text()[-3000:] if log else ''}")


def _start(cfg: Path, out: Path, log: Path, step: float) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOPS_")}
    env["PYTHONPATH"] = str(REPO)
    with log.open("wb") as err:
        return subprocess.Popen([sys.executable, "-m", "aiops", "--config", str(cfg), "run", "--out", str(out),
                                 "--step", str(step)], cwd=REPO, env=env, stdout=err, stderr=subprocess.STDOUT)


def _baseline(records: list[Record], cfg: dict[str, Any], step: float) -> list[Decision]:
    """The decisions of an uninterrupted run: the same records through one pipeline (what replay runs)."""
    settings = load_settings(env={"AIOPS_RULES_DIR": cfg["rules_dir"],
                                  "AIOPS_RUNTIME__LATENESS_S": str(cfg["runtime"]["lateness_s"])})
    rules = load_rules(settings.rules_dir)
    pipeline = Pipeline(settings, rules, Topology.from_mapping(rules.topology_mapping()),
                        Rejects(log_examples=False), step_s=step)
    return pipeline.feed_many(records)


@pytest.fixture
def kube() -> Iterator[_KubeThread]:
    scenario = load_scenario(SCENARIO)
    services = set(scenario.topology) | {c for cs in scenario.topology.values() for c in cs}
    k = _KubeThread(services)
    try:
        yield k
    finally:
        k.close()


def test_sigkill_after_a_checkpoint_then_restart(
    kafka_bootstrap: str, alertmanager: Alertmanager, kube: _KubeThread, tmp_path: Path,
) -> None:
    scenario = load_scenario(SCENARIO)
    assert scenario.expect is not None
    (expected,) = scenario.expect.incidents
    records = list(read_records(scenario, Rejects(log_examples=False)))
    tag = uuid.uuid4().hex[:8]
    topics = {"metrics": f"kill-m-{tag}", "logs": f"kill-l-{tag}", "events": f"kill-e-{tag}"}
    rules_dir = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules_dir)
    text = (REPO / "rules" / "actions.yaml").read_text()
    assert "  dry_run: true" in text
    (rules_dir / "actions.yaml").write_text(text.replace("  dry_run: true", "  dry_run: false"))
    port = free_port()
    config: dict[str, Any] = {
        "rules_dir": str(rules_dir),
        "state_dir": str(tmp_path / "state"),
        "log_format": "json",
        "runtime": {"lateness_s": 300},
        "act": {"dry_run": False, "kubeconfig": str(write_kubeconfig(tmp_path / "kubeconfig", kube.double.port)),
                "tick_s": 15},
        "kafka": {"bootstrap": kafka_bootstrap, "group_id": f"kill-{tag}", "auto_offset_reset": "earliest",
                  "metrics_topic": topics["metrics"], "logs_topic": topics["logs"], "events_topic": topics["events"]},
        "http": {"host": "127.0.0.1", "port": port},
        "alertmanager": {"urls": [alertmanager.url], "resend_s": 5},
        "live": {"idle_advance_s": 1.0, "shutdown_timeout_s": 30, "checkpoint_interval_s": 2},
    }
    cfg = tmp_path / "aiops.yaml"
    cfg.write_text(yaml.safe_dump(config))
    base = f"http://127.0.0.1:{port}"
    asyncio.run(create_topics(kafka_bootstrap, list(topics.values())))
    # Far enough past the fault for the incident to open and its rollback to be decided (lateness included).
    cut = expected.fault_start + 15 * 60
    first = [r for r in records if r.ts < cut]
    rest = [r for r in records if r.ts >= cut]
    watch = _Watch(alertmanager, ignore={a["labels"]["incident_id"]
                                         for a in alertmanager.alerts(alertname="AiopsIncident")})

    out1, log1 = tmp_path / "run1.jsonl", tmp_path / "run1.log"
    out2, log2 = tmp_path / "run2.jsonl", tmp_path / "run2.log"
    proc = _start(cfg, out1, log1, scenario.step)
    try:
        _wait(lambda: _get(f"{base}/readyz") == 200, 90, "readyz", watch, proc, log1)
        asyncio.run(_produce(kafka_bootstrap, topics, first, scenario.step))
        opened = _wait(lambda: [d for d in _lines(out1) if d["kind"] == "incident" and d["status"] == "open"],
                       300, "the incident to open", watch, proc, log1)[0]
        iid = opened["id"]
        assert opened["root_causes"][0]["service"] == expected.service
        _wait(lambda: any(a["labels"]["incident_id"] == iid for a in watch.poll()), 60, "the alert", watch,
              proc, log1)
        _wait(lambda: _events(log1, "checkpoint_taken"), 60, "a checkpoint", watch, proc, log1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    run1 = _lines(out1)
    assert not any(d["kind"] == "incident" and d["status"] == "resolved" for d in run1), "killed too late"
    checkpoints = _events(log1, "checkpoint_taken")
    assert checkpoints, "the kill must come after at least one checkpoint"

    proc = _start(cfg, out2, log2, scenario.step)
    try:
        _wait(lambda: _get(f"{base}/readyz") == 200, 90, "readyz after the restart", watch, proc, log2)
        (restored,) = _events(log2, "checkpoint_restored")
        assert restored["offsets"], restored
        assert _events(log2, "kafka_seek_to_checkpoint")
        # Commit after checkpoint: the group never committed past the state the kill left (committing
        # as records were processed would be ahead here), and the restart re-commits the checkpoint's
        # offsets in case the kill fell between a checkpoint and its commit.
        committed = asyncio.run(_committed(kafka_bootstrap, config["kafka"]["group_id"], list(topics.values())))
        assert committed == restored["offsets"], (committed, restored)
        asyncio.run(_produce(kafka_bootstrap, topics, rest, scenario.step))
        _wait(lambda: any(d["kind"] == "incident" and d["id"] == iid and d["status"] == "resolved"
                          for d in _lines(out2)), 300, "the incident to resolve", watch, proc, log2)
        _wait(lambda: not any(a["labels"]["incident_id"] == iid for a in watch.poll()), 60,
              "Alertmanager to resolve it", watch, proc, log2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log2.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    run2 = _lines(out2)

    # Alertmanager saw this incident only, and only alert identities an uninterrupted run sends: the
    # restart added none. (Its labels change when the severity rises; whether that state was ever
    # active in Alertmanager depends on how fast the backlog went, since a sink posts only the newest.)
    decisions = _baseline(records, config, scenario.step)
    assert watch.ids == {iid}, watch.ids
    assert watch.seen <= {tuple(sorted(d.labels)) for d in decisions
                          if isinstance(d, Alert) and d.status is AlertStatus.FIRING}, watch.seen
    # One rollback request in all, although the restart replayed the decisions after the last checkpoint.
    acted = [(d["type"], d["outcome"], d["reason"]) for d in run1 + run2
             if d["kind"] == "action" and d["outcome"] != "planned"]
    if any(reason.startswith("in doubt") for _, _, reason in acted):
        # Killed between the ledger's "executing" and the result: failed, never run again.
        assert [o for _, o, _ in acted] == ["failed"] and len(kube.writes()) <= 1, (acted, kube.writes())
    else:
        # Recorded data cannot react to our rollback, so its verification fails and escalates: never a retry.
        assert [(t, o) for t, o, _ in acted][:1] == [("rollback", "done")], acted
        assert all(o == "failed" and r.startswith("verification failed") for _, o, r in acted[1:]), acted
        assert kube.writes() == [ROLLBACK], kube.writes()
    # The restart starts warm: its decisions are the uninterrupted run's, none new (no cold-start burst).
    baseline = {(d.id, d.status.value, d.ts) for d in decisions if isinstance(d, Incident)}
    live = {(d["id"], d["status"], d["ts"]) for d in run1 + run2 if d["kind"] == "incident"}
    assert live == baseline, (live, baseline)
    replayed = {(d["id"], d["status"], d["ts"]) for d in run2 if d["kind"] == "incident"} & \
        {(d["id"], d["status"], d["ts"]) for d in run1 if d["kind"] == "incident"}
    # Whether the open was replayed depends on where the last checkpoint fell; say which case ran.
    print(f"checkpoints before the kill: {len(checkpoints)}; incident records replayed after restart: "
          f"{sorted(replayed)}; restored at event time {restored.get('event_ts')}")
