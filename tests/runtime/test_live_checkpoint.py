"""Checkpoints in the live shell without a broker: remote write in, a state directory on disk.

A stopped daemon leaves a checkpoint; the next one restores it and continues as if never stopped
(the same decisions as one uninterrupted pipeline, nothing decided twice, nothing cold), says what
was firing to its sinks again, is not ready before the restore, and survives a corrupt checkpoint.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from pathlib import Path
from typing import Any

import aiohttp
import cramjam
import structlog
from prometheus_client import CollectorRegistry

from aiops.config import Settings, load_settings
from aiops.correlate.topology import Topology
from aiops.decide.rules import load_rules
from aiops.observe.rejects import Rejects
from aiops.records import Alert, AlertStatus, MetricSample, to_output
from aiops.runtime.checkpointing import Checkpointer
from aiops.runtime.live import LiveDaemon
from aiops.runtime.pipeline import Pipeline
from aiops.sources.remote_write import encode_write_request
from aiops.state.envelope import Checkpoint
from aiops.state.memory import MemoryCheckpointStore

from ..integration.telemetry import STEP, build

REPO = Path(__file__).resolve().parents[2]
QUIET = structlog.wrap_logger(structlog.ReturnLogger())


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _settings(state: Path) -> Settings:
    return load_settings(env={"AIOPS_RULES_DIR": str(REPO / "rules"), "AIOPS_HTTP__PORT": str(_free_port()),
                              "AIOPS_STATE_DIR": str(state), "AIOPS_LIVE__IDLE_ADVANCE_S": "600",
                              "AIOPS_LIVE__QUEUE_SIZE": "600"})


class _Recorder:
    """A sink that keeps what it is sent."""

    name = "recorder"

    def __init__(self) -> None:
        self.sent: list[Alert] = []

    async def start(self) -> None:
        pass

    def send(self, alert: Alert) -> None:
        self.sent.append(alert)

    async def run(self) -> None:
        await asyncio.Event().wait()

    async def close(self, timeout: float) -> None:
        pass


def _wire(samples: list[MetricSample]) -> list[MetricSample]:
    # Remote write carries milliseconds: round as the wire does.
    return [MetricSample(ts=round(s.ts * 1000) / 1000, name=s.name, labels=s.labels, value=s.value) for s in samples]


class _Run:
    """One daemon on remote write: start, push, stop."""

    def __init__(self, settings: Settings, **kwargs: Any) -> None:
        rules = load_rules(settings.rules_dir)
        self.out = io.StringIO()
        self.daemon = LiveDaemon(settings, rules, Topology(), out=self.out, kafka=False, step_s=STEP, **kwargs)
        self.sink = _Recorder()
        self.daemon.sinks.append(self.sink)  # type: ignore[arg-type]
        self.base = f"http://127.0.0.1:{settings.http.port}"
        self.stop = asyncio.Event()
        self.task: asyncio.Task[int] | None = None

    async def start(self, http: aiohttp.ClientSession, wait_ready: bool = True) -> None:
        self.task = asyncio.create_task(self.daemon.run(self.stop))
        if wait_ready:
            await _until(lambda: self.status(http, "/readyz"), 200)

    async def status(self, http: aiohttp.ClientSession, path: str) -> int:
        try:
            async with http.get(self.base + path) as r:
                return r.status
        except aiohttp.ClientConnectionError:
            return 0

    async def push(self, http: aiohttp.ClientSession, samples: list[MetricSample]) -> None:
        for i in range(0, len(samples), 500):
            chunk = samples[i:i + 500]
            body = encode_write_request([({"__name__": s.name, **dict(s.labels)}, [(s.value, s.ts)]) for s in chunk])
            async with http.post(self.base + "/api/v1/write", data=bytes(cramjam.snappy.compress_raw(body)),
                                 headers={"Content-Encoding": "snappy"}) as r:
                assert r.status == 204

    async def finish(self) -> list[dict[str, Any]]:
        assert self.task is not None
        self.stop.set()
        assert await asyncio.wait_for(self.task, 30) == 0
        return [json.loads(line) for line in self.out.getvalue().splitlines()]


async def _until(probe: Any, want: int, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await probe() == want:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never got {want}")


def _pipeline_decisions(settings: Settings, samples: list[MetricSample]) -> list[dict[str, Any]]:
    pipeline = Pipeline(settings, load_rules(settings.rules_dir), Topology(), Rejects(log_examples=False),
                        step_s=STEP)
    return [json.loads(json.dumps(to_output(d))) for d in pipeline.feed_many(_wire(samples))]


def _without_act(decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The pipeline's own decisions: the act stage's outcomes (dry run here) left out."""
    return [d for d in decisions if not (d["kind"] == "action" and d["reason"].startswith("dry run"))]


async def test_a_restarted_daemon_continues_where_the_checkpoint_left_off(tmp_path: Path) -> None:
    records, truth = build(seed=5)
    samples = [r for r in records if isinstance(r, MetricSample)]
    cut = truth.fault_start + 10 * 60  # the incident is open, not resolved, when the first daemon stops
    first, rest = [s for s in samples if s.ts < cut], [s for s in samples if s.ts >= cut]
    async with aiohttp.ClientSession() as http:
        one = _Run(_settings(tmp_path))
        await one.start(http)
        await one.push(http, first)
        out1 = await one.finish()
        opened = [d for d in out1 if d["kind"] == "alert" and d["status"] == "firing"]
        assert opened and not [d for d in out1 if d["kind"] == "alert" and d["status"] == "resolved"]
        assert list((tmp_path).glob("live-*.ckpt")), "a checkpoint at shutdown"

        two = _Run(_settings(tmp_path))
        await two.start(http)
        # Sinks remember nothing across a restart: the firing alert is said again, as it was.
        assert [to_output(a) for a in two.sink.sent] == opened
        assert two.daemon.registry.get_sample_value("aiops_open_incidents") == 1
        await two.push(http, rest)
        out2 = await two.finish()

    registry = two.daemon.registry
    assert registry.get_sample_value("aiops_checkpoint_saves_total", {"backend": "file"}) == 1
    assert registry.get_sample_value("aiops_checkpoint_duration_seconds_count") == 1
    assert registry.get_sample_value("aiops_checkpoint_age_seconds") < 30
    # Together, the two runs decided exactly what one uninterrupted pipeline decides: no repeats, no cold start.
    expected = _pipeline_decisions(_settings(tmp_path), samples)
    assert _without_act(out1) + _without_act(out2) == expected
    assert any(d["kind"] == "incident" and d["status"] == "resolved" for d in out2)
    assert two.daemon.processed_records == len(rest)


class _SlowStore(MemoryCheckpointStore):
    """A store whose load waits for the test's go-ahead, as a large state takes seconds to load."""

    def __init__(self) -> None:
        super().__init__(logger=QUIET)
        self.go = threading.Event()

    def load_checkpoint(self) -> Checkpoint | None:
        assert self.go.wait(30)
        return super().load_checkpoint()


async def test_not_ready_until_the_state_is_restored(tmp_path: Path) -> None:
    store = _SlowStore()
    run = _Run(_settings(tmp_path), store=store)
    async with aiohttp.ClientSession() as http:
        await run.start(http, wait_ready=False)
        await _until(lambda: run.status(http, "/healthz"), 200)
        for _ in range(5):
            assert await run.status(http, "/readyz") == 503
            await asyncio.sleep(0.05)
        store.go.set()
        await _until(lambda: run.status(http, "/readyz"), 200)
        await run.finish()


async def test_a_corrupt_checkpoint_is_set_aside_and_the_previous_one_restored(tmp_path: Path) -> None:
    records, _ = build(seed=5, warmup_min=30, fault_min=0, recover_min=0)
    samples = [r for r in records if isinstance(r, MetricSample)]
    async with aiohttp.ClientSession() as http:
        one = _Run(_settings(tmp_path))
        await one.start(http)
        await one.push(http, samples)
        await one.finish()
        (good,) = tmp_path.glob("live-*.ckpt")
        (tmp_path / "live-9999999999.ckpt").write_bytes(b"not a checkpoint at all")

        two = _Run(_settings(tmp_path))
        await two.start(http)
        await two.finish()
    unusable = [s for m in two.daemon.registry.collect() if m.name == "aiops_checkpoint_unusable"
                for s in m.samples if s.name.endswith("_total")]
    assert sum(s.value for s in unusable) == 1, unusable
    assert list(tmp_path.glob("live-9999999999.ckpt.corrupt-*")), "set aside with the evidence kept"
    assert two.daemon.pipeline.reorder.watermark == one.daemon.pipeline.reorder.watermark
    assert two.daemon.pipeline.stats == one.daemon.pipeline.stats
    assert good.name != "live-9999999999.ckpt"


class _BrokenStore(MemoryCheckpointStore):
    def save(self, snapshot: dict[str, Any], **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")


def test_a_failed_checkpoint_is_counted_and_reported_to_the_caller(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    pipeline = Pipeline(settings, load_rules(settings.rules_dir), Topology(), Rejects(log_examples=False),
                        step_s=STEP)
    registry = CollectorRegistry()
    now = [100.0]
    cp = Checkpointer(_BrokenStore(logger=QUIET), registry, 30.0, clock=lambda: now[0], logger=QUIET)
    assert not cp.due()
    now[0] += 30
    assert cp.due()
    assert cp.save(pipeline, {("m", 0): 5}) is False  # the caller must not commit offsets now
    assert registry.get_sample_value("aiops_checkpoint_failures_total", {"op": "save"}) == 1
    assert registry.get_sample_value("aiops_checkpoint_age_seconds") == 30.0  # no success since start
    assert not cp.due()  # the next attempt waits a full interval, not every batch

    good = Checkpointer(MemoryCheckpointStore(logger=QUIET), CollectorRegistry(), 30.0, clock=lambda: now[0],
                        logger=QUIET)
    firing = Alert(ts=1.0, incident_id="inc-1", status=AlertStatus.FIRING, labels=(("severity", "page"),),
                   annotations=(("summary", "s"),))
    assert good.save(pipeline, {("m", 0): 5}, [firing])
    restored = good.restore(Pipeline(settings, load_rules(settings.rules_dir), Topology(),
                                     Rejects(log_examples=False), step_s=STEP))
    assert restored is not None and restored.firing == (firing,) and restored.offsets == {("m", 0): 5}
