"""The live shell without Kafka: remote-write over real HTTP into the same Pipeline replay runs."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path

import aiohttp
import cramjam

from aiops.config import load_settings
from aiops.correlate.topology import Topology
from aiops.decide.rules import load_rules
from aiops.observe.rejects import Rejects
from aiops.records import MetricSample, to_output
from aiops.runtime.live import LiveDaemon
from aiops.runtime.pipeline import Pipeline
from aiops.sources.remote_write import encode_write_request

from ..integration.telemetry import STEP, build

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_remote_write_feeds_the_pipeline_like_replay_and_shuts_down_cleanly(tmp_path: Path) -> None:
    records, truth = build(seed=5)
    samples = [r for r in records if isinstance(r, MetricSample)]
    port = _free_port()
    settings = load_settings(env={"AIOPS_RULES_DIR": str(REPO / "rules"), "AIOPS_HTTP__PORT": str(port),
                                  "AIOPS_LIVE__IDLE_ADVANCE_S": "30", "AIOPS_LIVE__QUEUE_SIZE": "600",
                                  "AIOPS_STATE_DIR": str(tmp_path)})
    rules = load_rules(settings.rules_dir)
    out = io.StringIO()
    daemon = LiveDaemon(settings, rules, Topology(), out=out, kafka=False, step_s=STEP)
    stop = asyncio.Event()
    runner = asyncio.create_task(daemon.run(stop))
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        for _ in range(100):
            try:
                async with http.get(f"{base}/readyz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
        # Push in remote-write requests of ~500 samples, as Prometheus batches them.
        for i in range(0, len(samples), 500):
            chunk = samples[i:i + 500]
            body = encode_write_request([({"__name__": s.name, **dict(s.labels)}, [(s.value, s.ts)]) for s in chunk])
            async with http.post(f"{base}/api/v1/write", data=bytes(cramjam.snappy.compress_raw(body)),
                                 headers={"Content-Encoding": "snappy",
                                          "Content-Type": "application/x-protobuf"}) as r:
                assert r.status == 204
        async with http.post(f"{base}/api/v1/write", data=b"definitely not snappy") as r:
            assert r.status == 400
        stop.set()
        assert await asyncio.wait_for(runner, 30) == 0
    assert daemon.rejects.by_reason().get(("remote_write", "bad_snappy")) == 1
    assert daemon.processed_records == len(samples)
    stage_in = daemon.registry.get_sample_value("aiops_stage_records_total", {"stage": "derive", "direction": "in"})
    # The newest lateness_s of samples wait in the reorder buffer (and in the shutdown checkpoint).
    assert stage_in + len(daemon.pipeline.reorder) == len(samples) and len(daemon.pipeline.reorder) > 0

    # The same samples through a fresh Pipeline (replay's path) decide the same things.
    pipeline = Pipeline(settings, rules, Topology(), Rejects(log_examples=False), step_s=STEP)
    # Remote write carries milliseconds: round as the wire does.
    wire = [MetricSample(ts=round(s.ts * 1000) / 1000, name=s.name, labels=s.labels, value=s.value) for s in samples]
    # A live shutdown does not finish the pipeline: the tail inside the lateness bound waits in the checkpoint.
    expected = pipeline.feed_many(wire)
    live = [json.loads(line) for line in out.getvalue().splitlines()]
    want = [json.loads(json.dumps(to_output(d))) for d in expected]
    # In order, with the act stage's outcomes (actions only) in between.
    rest = iter(want)
    nxt = next(rest, None)
    for d in live:
        if d == nxt:
            nxt = next(rest, None)
        else:
            assert d["kind"] == "action", d
    assert nxt is None, f"missing from the live output: {nxt}"
    assert any(d["kind"] == "incident" for d in live), "the fault should open an incident from metrics alone"
    assert truth.root_cause in {rc["service"] for d in live if d["kind"] == "incident" for rc in d["root_causes"]}


class _BrokenSink:
    name = "broken"

    async def start(self) -> None:
        pass

    def send(self, alert: object) -> None:
        pass

    async def run(self) -> None:
        await asyncio.sleep(0.05)
        raise RuntimeError("sink crashed")

    async def close(self, timeout: float) -> None:
        self.closed = True


async def test_a_dying_task_takes_the_daemon_down_with_exit_code_1(tmp_path: Path) -> None:
    settings = load_settings(env={"AIOPS_RULES_DIR": str(REPO / "rules"), "AIOPS_HTTP__PORT": str(_free_port()),
                                  "AIOPS_STATE_DIR": str(tmp_path)})
    daemon = LiveDaemon(settings, load_rules(settings.rules_dir), Topology(), kafka=False, step_s=STEP)
    sink = _BrokenSink()
    daemon.sinks.append(sink)  # type: ignore[arg-type]
    code = await asyncio.wait_for(daemon.run(asyncio.Event()), 10)
    assert code == 1
    assert daemon.registry.get_sample_value("aiops_task_failures_total", {"task": "sink_broken"}) == 1
    assert getattr(sink, "closed", False), "sinks are still closed on the way down"


async def test_the_act_stage_serves_its_approval_routes_on_the_daemon_port(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    port = _free_port()
    settings = load_settings(env={"AIOPS_RULES_DIR": str(REPO / "rules"), "AIOPS_HTTP__PORT": str(port),
                                  "AIOPS_STATE_DIR": str(tmp_path), "AIOPS_ACT__APPROVE_TOKEN_FILE": str(token)})
    daemon = LiveDaemon(settings, load_rules(settings.rules_dir), Topology(), kafka=False, step_s=STEP)
    stop = asyncio.Event()
    runner = asyncio.create_task(daemon.run(stop))
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            try:
                async with http.get(f"{base}/readyz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
        async with http.get(f"{base}/actions") as r:
            assert r.status == 401
        async with http.get(f"{base}/actions", headers={"Authorization": "Bearer s3cret"}) as r:
            assert r.status == 200 and await r.json() == []
        async with http.post(f"{base}/actions/act-unknown/approve", headers={"Authorization": "Bearer s3cret"}) as r:
            assert r.status == 409
    stop.set()
    assert await asyncio.wait_for(runner, 30) == 0
    assert (tmp_path / "actions.jsonl").exists(), "the ledger lives in the state directory"
