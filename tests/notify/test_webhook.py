"""Webhook sink against a real HTTP server that fails, refuses and checks signatures."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json

from aiohttp import web
from prometheus_client import CollectorRegistry

from aiops.config import WebhookSettings
from aiops.notify.base import alert_key
from aiops.notify.webhook import SIGNATURE_HEADER, WebhookSink
from aiops.observe.metrics import SelfMetrics
from aiops.records import Alert, AlertStatus


def _alert(i: int, status: AlertStatus = AlertStatus.FIRING) -> Alert:
    return Alert(ts=1000.0 + i, incident_id=f"inc-{i}", status=status, labels=(("severity", "page"),),
                 annotations=(("summary", f"incident {i}"),))


class Receiver:
    """A webhook receiver that answers with the queued statuses, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((dict(request.headers), body))
        status = self.statuses.pop(0) if self.statuses else 200
        return web.Response(status=status)

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


async def _run(sink: WebhookSink, alerts: list[Alert], timeout: float = 10.0) -> None:
    await sink.start()
    task = asyncio.create_task(sink.run())
    for a in alerts:
        sink.send(a)
    await sink.close(timeout)
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass


async def test_retries_with_backoff_then_delivers_with_same_key_and_valid_signature() -> None:
    async with Receiver([503, 500, 429]) as rx:
        metrics = SelfMetrics(CollectorRegistry())
        sink = WebhookSink(WebhookSettings(url=rx.url, secret="s3cret", backoff_base_s=0.01, max_attempts=5), metrics)
        await _run(sink, [_alert(1)])
        assert len(rx.requests) == 4
        keys = {h["Idempotency-Key"] for h, _ in rx.requests}
        assert keys == {alert_key(_alert(1))}
        headers, body = rx.requests[-1]
        expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
        assert headers[SIGNATURE_HEADER] == expected
        doc = json.loads(body)
        assert doc["incident_id"] == "inc-1" and doc["status"] == "firing" and doc["annotations"]["summary"]
        assert sink.delivered == 1
        assert metrics.registry.get_sample_value("aiops_sink_sent_total", {"sink": "webhook", "outcome": "ok"}) == 1


async def test_client_error_is_not_retried_and_order_is_kept() -> None:
    async with Receiver([400]) as rx:
        sink = WebhookSink(WebhookSettings(url=rx.url, backoff_base_s=0.01))
        await _run(sink, [_alert(1), _alert(2), _alert(2, AlertStatus.RESOLVED)])
        assert [json.loads(b)["incident_id"] for _, b in rx.requests] == ["inc-1", "inc-2", "inc-2"]
        assert [json.loads(b)["status"] for _, b in rx.requests][1:] == ["firing", "resolved"]
        assert (sink.failed, sink.delivered) == (1, 2)
        assert "X-Aiops-Signature" not in rx.requests[0][0]


async def test_bounded_buffer_drops_oldest_while_receiver_is_down() -> None:
    sink = WebhookSink(WebhookSettings(url="http://127.0.0.1:9/unreachable", buffer_size=3, max_attempts=1,
                                       timeout_s=0.5))
    await sink.start()
    for i in range(10):
        sink.send(_alert(i))
    assert [a.incident_id for a in sink.buffer] == ["inc-7", "inc-8", "inc-9"]
    assert sink.dropped == 7
    await sink.close(5.0)
    assert sink.failed == 3


async def test_gives_up_after_max_attempts() -> None:
    async with Receiver([502] * 10) as rx:
        sink = WebhookSink(WebhookSettings(url=rx.url, backoff_base_s=0.001, max_attempts=3))
        await _run(sink, [_alert(1)])
        assert len(rx.requests) == 3 and sink.failed == 1


async def test_an_escalation_and_the_incident_alert_at_the_same_time_have_their_own_keys() -> None:
    own = Alert(ts=1000.0, incident_id="inc-1", status=AlertStatus.FIRING,
                labels=(("alertname", "AiopsIncident"), ("severity", "warning")), annotations=())
    escalation = Alert(ts=1000.0, incident_id="inc-1", status=AlertStatus.FIRING,
                       labels=(("action", "scale_up"), ("alertname", "AiopsRemediationFailed")), annotations=())
    async with Receiver() as rx:
        sink = WebhookSink(WebhookSettings(url=rx.url))
        await _run(sink, [own, escalation, own])
        keys = [h["Idempotency-Key"] for h, _ in rx.requests]
        # A receiver dropping repeats drops the repeated incident alert, never the escalation.
        assert len(keys) == 3 and keys[0] == keys[2] != keys[1]
        assert [json.loads(b)["idempotency_key"] for _, b in rx.requests] == keys
