"""A real Prometheus scrapes a test exporter and remote-writes to the daemon, which detects an
injected anomaly; the PromQL poller reads the same Prometheus without gaps or repeats."""

from __future__ import annotations

import asyncio
import io
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from aiops.config import PrometheusPollSettings, load_settings
from aiops.correlate.topology import Topology
from aiops.decide.rules import load_rules
from aiops.observe.rejects import Rejects
from aiops.runtime.live import LiveDaemon
from aiops.sources.prometheus_poll import PrometheusPoller
from aiops.sources.scenario import load_scenario, read_records

from .conftest import Prometheus, free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("AIOPS_")}


class Exporter:
    """A /metrics endpoint whose service ``api`` can be made slow and failing."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("http_requests_total", "requests", ["service", "code"], registry=self.registry)
        self.latency = Gauge("request_latency_seconds", "latency", ["service"], registry=self.registry)
        self.port = free_port()
        self.server, self.thread = start_http_server(self.port, addr="127.0.0.1", registry=self.registry)
        self.faulty = False
        self.rng = random.Random(3)

    def tick(self) -> None:
        for svc in ("api", "web"):
            bad = self.faulty and svc == "api"
            n = self.rng.randint(90, 110)
            errors = int(n * (0.4 if bad else 0.005 * self.rng.random()))
            self.requests.labels(svc, "200").inc(n - errors)
            self.requests.labels(svc, "500").inc(errors)
            self.latency.labels(svc).set((0.6 if bad else 0.05) * (1 + 0.05 * self.rng.gauss(0, 1)))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def exporter():  # type: ignore[no-untyped-def]
    e = Exporter()
    e.tick()
    yield e
    e.close()


async def _ticking(exporter: Exporter, stop: asyncio.Event) -> None:
    while not stop.is_set():
        exporter.tick()
        await asyncio.sleep(0.25)


async def test_remote_write_to_daemon_detects_injected_anomaly(  # type: ignore[no-untyped-def]
    prometheus_factory, exporter: Exporter, tmp_path: Path,
) -> None:
    port = free_port()
    prom: Prometheus = prometheus_factory(targets=[f"127.0.0.1:{exporter.port}"],
                                          remote_write=[f"http://127.0.0.1:{port}/api/v1/write"])
    settings = load_settings(env={
        "AIOPS_RULES_DIR": str(REPO / "rules"), "AIOPS_HTTP__PORT": str(port),
        "AIOPS_RUNTIME__LATENESS_S": "3", "AIOPS_DETECT__WARMUP": "15",
        "AIOPS_CORRELATE__PERSIST_S": "3", "AIOPS_CORRELATE__OPEN_HOLD_S": "3", "AIOPS_LIVE__IDLE_ADVANCE_S": "1",
        # Its own state directory: the daemon restores checkpoints, and one from an earlier run would warm it up.
        "AIOPS_STATE_DIR": str(tmp_path),
    })
    out = io.StringIO()
    daemon = LiveDaemon(settings, load_rules(settings.rules_dir), Topology(), out=out, kafka=False, step_s=1.0)
    stop = asyncio.Event()
    tick_stop = asyncio.Event()
    runner = asyncio.create_task(daemon.run(stop))
    ticker = asyncio.create_task(_ticking(exporter, tick_stop))
    try:
        async with aiohttp.ClientSession() as http:
            deadline = time.monotonic() + 60
            received = 0.0
            # Calm first, long enough for the detectors to warm up on what Prometheus pushes.
            while time.monotonic() < deadline:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
                        text = await r.text()
                except aiohttp.ClientConnectionError:  # not listening yet
                    await asyncio.sleep(0.2)
                    continue
                received = sum(float(line.split()[-1]) for line in text.splitlines()
                               if line.startswith('aiops_records_in_total{kind="metric",source="remote_write"}'))
                if daemon.pipeline.stats.steps >= 25:
                    break
                await asyncio.sleep(0.5)
            assert received > 0, prom.log.read_text()[-2000:]
            assert '"kind":"incident"' not in out.getvalue(), "an incident before the fault"
            exporter.faulty = True
            fault_at = time.time()
            deadline = time.monotonic() + 60
            opened = []
            while time.monotonic() < deadline and not opened:
                opened = [json.loads(line) for line in out.getvalue().splitlines()
                          if '"kind":"incident"' in line and '"status":"open"' in line]
                await asyncio.sleep(0.5)
            assert opened, f"no incident; signals={daemon.pipeline.stats.signals_by_kind}"
            assert opened[0]["root_causes"][0]["service"] == "api"
            assert opened[0]["opened_ts"] >= fault_at - 5
    finally:
        tick_stop.set()
        stop.set()
        assert await asyncio.wait_for(runner, 30) == 0
        await ticker


async def test_poller_reads_query_range_without_gaps_or_repeats(  # type: ignore[no-untyped-def]
    prometheus_factory, exporter: Exporter, tmp_path: Path,
) -> None:
    prom: Prometheus = prometheus_factory(targets=[f"127.0.0.1:{exporter.port}"])
    stop = asyncio.Event()
    ticker = asyncio.create_task(_ticking(exporter, stop))
    try:
        query = 'request_latency_seconds{service="api"}'
        async with aiohttp.ClientSession() as http:
            for _ in range(60):  # until Prometheus has scraped the exporter
                async with http.get(f"{prom.url}/api/v1/query", params={"query": query}) as r:
                    if (await r.json())["data"]["result"]:
                        break
                await asyncio.sleep(0.5)
        settings = PrometheusPollSettings(url=prom.url, queries=['request_latency_seconds{service="api"}'],
                                          interval_s=0.7, delay_s=1.0)
        poller = PrometheusPoller(settings, 1.0, Rejects(log_examples=False), start_ts=time.time() - 1)
        seen: list[float] = []
        polls = 0
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 30
            while polls < 4 and time.monotonic() < deadline:  # a busy machine polls less often
                got = await poller.poll_once(session)
                polls += bool(got)
                seen.extend(s.ts for s in got)
                await asyncio.sleep(0.7)
        assert polls >= 3, f"only {polls} polls returned samples"
        assert len(seen) == len(set(seen)), "a sample was read twice"
        assert seen == sorted(seen) and seen == [seen[0] + i for i in range(len(seen))], "a gap between polls"

        # `aiops record --from prometheus` over the same window writes a replayable scenario.
        out = tmp_path / "recorded"
        rec = subprocess.run(
            [sys.executable, "-m", "aiops", "record", "--from", "prometheus", "--start", str(seen[0]),
             "--end", str(seen[-1] + 1), "--step", "1", "--out", str(out), "--query", query],
            cwd=REPO, env={**_clean_env(), "AIOPS_PROMETHEUS__URL": prom.url, "PYTHONPATH": str(REPO)},
            capture_output=True, text=True, timeout=60)
        assert rec.returncode == 0, rec.stdout + rec.stderr
        scenario = load_scenario(out)
        recorded = [r.ts for r in read_records(scenario, Rejects(log_examples=False))]
        assert recorded == seen and scenario.step == 1.0
    finally:
        stop.set()
        await ticker
