"""Alertmanager sink against a real HTTP server standing in for Alertmanager's API: outages, a
state change while a post is in flight, retries sooner than the resend interval."""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web

from aiops.config import AlertmanagerSettings
from aiops.notify.alertmanager import AlertmanagerSink
from aiops.records import Alert, AlertStatus


def _alert(incident: str, ts: float, status: AlertStatus = AlertStatus.FIRING) -> Alert:
    return Alert(ts=ts, incident_id=incident, status=status, labels=(("severity", "page"),),
                 annotations=(("summary", "api 5xx"),))


class FakeAM:
    """Accepts ``POST /api/v2/alerts`` while ``up``, answers 503 otherwise; can hold a post open."""

    def __init__(self) -> None:
        self.up = True
        self.hold: asyncio.Event | None = None
        self.accepted: list[dict] = []  # every alert of every accepted post, in order
        self.refused = 0
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        if self.hold is not None:
            hold, self.hold = self.hold, None
            await hold.wait()
        if not self.up:
            self.refused += 1
            return web.Response(status=503, text="down")
        self.accepted.extend(body)
        return web.Response(status=200)

    async def __aenter__(self) -> FakeAM:
        app = web.Application()
        app.router.add_post("/api/v2/alerts", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def _until(cond, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_a_state_changed_during_a_post_is_still_sent() -> None:
    async with FakeAM() as am:
        sink = AlertmanagerSink(AlertmanagerSettings(urls=[am.url], resend_s=3600), retry_min_s=0.05)
        await sink.start()
        runner = asyncio.create_task(sink.run())
        try:
            am.hold = release = asyncio.Event()
            sink.send(_alert("inc-1", 100.0))
            await _until(lambda: am.hold is None)  # the firing post is in flight, held open
            sink.send(_alert("inc-1", 160.0, AlertStatus.RESOLVED))
            release.set()
            await _until(lambda: len(am.accepted) >= 2)
            firing, resolved = am.accepted[:2]
            assert firing["endsAt"] > resolved["endsAt"] == "1970-01-01T00:02:40.000Z"
            await _until(lambda: not sink._tracked)
        finally:
            runner.cancel()
            await sink.close(2.0)


async def test_an_outage_is_retried_with_backoff_and_delivered_once_back() -> None:
    async with FakeAM() as am:
        am.up = False
        sink = AlertmanagerSink(AlertmanagerSettings(urls=[am.url], resend_s=3600), retry_min_s=0.05)
        await sink.start()
        runner = asyncio.create_task(sink.run())
        try:
            sink.send(_alert("inc-1", 100.0))
            sink.send(_alert("inc-2", 100.0))
            sink.send(_alert("inc-2", 130.0, AlertStatus.RESOLVED))
            await _until(lambda: am.refused >= 4)
            assert sink.pending == 2 and not am.accepted
            # Backing off: far fewer posts than a retry every retry_min_s would make.
            await asyncio.sleep(1.0)
            assert am.refused <= 8
            am.up = True
            # Retried long before the hour-long resend interval.
            await _until(lambda: sink.pending == 0, timeout=30)
            by_incident = {a["labels"]["incident_id"]: a for a in am.accepted}
            assert len(am.accepted) == 2 and set(by_incident) == {"inc-1", "inc-2"}
            assert by_incident["inc-1"]["startsAt"] == "1970-01-01T00:01:40.000Z"
            assert by_incident["inc-2"]["endsAt"] == "1970-01-01T00:02:10.000Z"
            assert sink.firing == ["inc-1"]
        finally:
            runner.cancel()
            await sink.close(2.0)
