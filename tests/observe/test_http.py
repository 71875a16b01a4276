"""The daemon's HTTP endpoint over a real socket."""

from __future__ import annotations

import aiohttp
from prometheus_client import CollectorRegistry

from aiops.observe.http import HttpServer
from aiops.observe.metrics import SelfMetrics


async def test_health_readiness_and_metrics() -> None:
    registry = CollectorRegistry()
    metrics = SelfMetrics(registry)
    metrics.open_incidents.set(2)
    ready = False
    server = HttpServer("127.0.0.1", 0, registry, lambda: ready)
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/healthz") as r:
                assert r.status == 200
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 503
            ready = True
            async with http.get(f"{base}/readyz") as r:
                assert r.status == 200
            async with http.get(f"{base}/metrics") as r:
                text = await r.text()
                assert r.status == 200 and "aiops_open_incidents 2.0" in text
    finally:
        await server.stop()
