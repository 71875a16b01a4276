"""Webhook sink: each alert as one JSON POST, retried with exponential backoff.

* **Bounded buffer** — alerts wait in a buffer of ``buffer_size``; when the receiver is down
  long enough to fill it, the oldest are dropped (counted as ``aiops_sink_sent_total{outcome="dropped"}``)
  so memory stays bounded and the newest state wins.
* **Retries** — connection errors, timeouts, 429 and 5xx are retried after
  ``min(backoff_max_s, backoff_base_s * 2**attempt)`` up to ``max_attempts``; any other 4xx is
  a permanent refusal and is not retried.
* **Idempotency** — every request carries ``Idempotency-Key`` (:func:`~aiops.notify.base.alert_key`),
  the same for every retry and restart, so receivers can drop duplicates; it covers the alert's
  labels, so an incident's escalation is never taken for a repeat of the incident's own alert.
* **Signature** — with a secret, ``X-Aiops-Signature: sha256=<hex HMAC-SHA256 of the body>``
  (the scheme GitHub webhooks use), so receivers can check the sender.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from collections import deque
from typing import Any

import aiohttp
import structlog

from aiops.config import WebhookSettings
from aiops.notify.base import alert_key
from aiops.observe.metrics import SelfMetrics
from aiops.records import Alert, to_output

log = structlog.get_logger(__name__)

SIGNATURE_HEADER = "X-Aiops-Signature"


def sign(secret: str, body: bytes) -> str:
    """The signature header value for ``body``.

    >>> sign("k", b"{}")
    'sha256=add853b103fbcc936a194f9eb15e29c4ff08af6e47d5d1bca4f20218e31e4fff'
    """
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def webhook_body(alert: Alert) -> bytes:
    """The JSON body: the alert in the replay output form plus its idempotency key."""
    doc: dict[str, Any] = {"version": 1, "idempotency_key": alert_key(alert), **to_output(alert)}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


class WebhookSink:
    """POSTs alerts to one URL, in order, with retries, a bounded buffer and optional signatures."""

    name = "webhook"

    def __init__(self, settings: WebhookSettings, metrics: SelfMetrics | None = None) -> None:
        if not settings.url:
            raise ValueError("webhook.url is required for the webhook sink")
        self.settings = settings
        self.url = settings.url
        self.metrics = metrics
        self.buffer: deque[Alert] = deque()
        self._ready = asyncio.Event()
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._closing = False
        self.delivered = 0
        self.dropped = 0
        self.failed = 0

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s))

    def send(self, alert: Alert) -> None:
        if len(self.buffer) >= self.settings.buffer_size:
            lost = self.buffer.popleft()
            self.dropped += 1
            self._count("dropped")
            log.warning("webhook_buffer_full", dropped_incident=lost.incident_id, buffer=len(self.buffer))
        self.buffer.append(alert)
        self._ready.set()

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.sink_sent.labels(self.name, outcome).inc()

    async def run(self) -> None:
        """Deliver buffered alerts one at a time, oldest first, until closed and empty."""
        while True:
            if not self.buffer:
                if self._closing:
                    return
                self._ready.clear()
                await self._ready.wait()
                continue
            await self._step()

    async def _step(self) -> None:
        # One delivery at a time: run() and close() may both be draining the same buffer.
        async with self._lock:
            if self.buffer:
                alert = self.buffer[0]
                await self._deliver(alert)
                if self.buffer and self.buffer[0] is alert:
                    self.buffer.popleft()

    async def _deliver(self, alert: Alert) -> bool:
        assert self._session is not None, "start() first"
        body = webhook_body(alert)
        headers = {"Content-Type": "application/json", "Idempotency-Key": alert_key(alert)}
        if self.settings.secret:
            headers[SIGNATURE_HEADER] = sign(self.settings.secret, body)
        s = self.settings
        for attempt in range(s.max_attempts):
            try:
                async with self._session.post(self.url, data=body, headers=headers) as resp:
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                status, error = 0, repr(exc)
            else:
                error = f"HTTP {status}"
            if 200 <= status < 300:
                self.delivered += 1
                self._count("ok")
                return True
            if status and status < 500 and status != 429:
                log.error("webhook_refused", url=self.url, status=status, incident_id=alert.incident_id)
                break
            if attempt + 1 < s.max_attempts:
                delay = min(s.backoff_max_s, s.backoff_base_s * 2**attempt)
                log.warning("webhook_retry", url=self.url, error=error, attempt=attempt + 1, delay_s=delay)
                await asyncio.sleep(delay)
        self.failed += 1
        self._count("error")
        log.error("webhook_gave_up", url=self.url, incident_id=alert.incident_id)
        return False

    async def close(self, timeout: float) -> None:
        """Deliver what is buffered within ``timeout``; what is left is logged as lost."""
        self._closing = True
        self._ready.set()
        try:
            await asyncio.wait_for(self._drain(), timeout)
        except TimeoutError:
            log.warning("webhook_flush_timeout", lost=len(self.buffer))
        if self._session is not None:
            await self._session.close()

    async def _drain(self) -> None:
        while self.buffer:
            await self._step()
