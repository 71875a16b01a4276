"""Alertmanager sink: incidents as alerts through the API v2 (``POST /api/v2/alerts``).

It behaves like Prometheus does towards Alertmanager: every firing alert is re-posted every
``resend_s`` with ``endsAt`` a few resend intervals ahead (so alerts of a daemon that died
resolve on their own), a resolved alert is posted once with ``endsAt`` set to when the
incident resolved, and every configured URL gets every post (Alertmanager HA peers dedupe).
A URL that failed is retried with exponential backoff (``retry_min_s`` doubling up to
``retry_max_s``, or ``resend_s`` if shorter) until it accepts the latest state of every alert:
a firing alert or a resolution decided while Alertmanager is down is delivered once it is back,
with the same labels and ``startsAt`` as it would have had, so Alertmanager sees one alert per
incident, never a second one. Only the newest state of an incident is kept: an incident that
fires and resolves within an outage reaches Alertmanager as resolved (as with Prometheus).

Labels come from the Alert record (the rules), plus ``alertname`` (unless the rules set it) and
``incident_id`` so two incidents never merge into one Alertmanager alert; annotations are the
Alert's annotations (summary, root causes with evidence, runbook and dashboard URLs).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from aiops.config import AlertmanagerSettings
from aiops.notify.base import rfc3339
from aiops.observe.metrics import SelfMetrics
from aiops.records import Alert, AlertStatus

log = structlog.get_logger(__name__)

ENDS_AT_RESENDS = 4
"""A firing alert's ``endsAt`` is this many resend intervals ahead (Prometheus uses 4 too)."""


@dataclass
class _Tracked:
    alert: Alert
    starts: float
    resolved_at: float | None = None
    unacked: set[str] = field(default_factory=set)  # URLs that have not accepted the latest state
    version: int = 0  # bumped on every new state: a post acknowledges only the state it carried


def to_am_alert(alert: Alert, starts: float, now: float, settings: AlertmanagerSettings,
                resolved_at: float | None = None) -> dict[str, Any]:
    """The API v2 ``postableAlert`` for an Alert record.

    >>> from aiops.records import AlertStatus
    >>> a = Alert(ts=100.0, incident_id="inc-1", status=AlertStatus.FIRING, labels=(("severity", "page"),),
    ...           annotations=(("summary", "checkout 5xx"),))
    >>> out = to_am_alert(a, starts=100.0, now=100.0, settings=AlertmanagerSettings(resend_s=60))
    >>> out["labels"], out["endsAt"]
    ({'alertname': 'AiopsIncident', 'severity': 'page', 'incident_id': 'inc-1'}, '1970-01-01T00:05:40.000Z')
    """
    labels = {"alertname": settings.alertname, **dict(alert.labels)}
    labels.setdefault("incident_id", alert.incident_id)
    if resolved_at is not None:
        # Resolution is event time; never in the future (it would keep the alert active) nor before the start.
        ends = max(starts, min(resolved_at, now))
    else:
        ends = max(now, starts) + ENDS_AT_RESENDS * settings.resend_s
    out: dict[str, Any] = {
        "labels": labels,
        "annotations": dict(alert.annotations),
        "startsAt": rfc3339(starts),
        "endsAt": rfc3339(ends),
    }
    if settings.generator_url:
        out["generatorURL"] = settings.generator_url.replace("{incident_id}", alert.incident_id)
    return out


class AlertmanagerSink:
    """Posts firing and resolved alerts to one or more Alertmanagers; resends while firing."""

    name = "alertmanager"

    def __init__(
        self, settings: AlertmanagerSettings, metrics: SelfMetrics | None = None,
        clock: Callable[[], float] = time.time, retry_min_s: float = 1.0, retry_max_s: float = 10.0,
    ) -> None:
        self.settings = settings
        self.retry_min_s = retry_min_s
        self.retry_max_s = retry_max_s
        self.metrics = metrics
        self.clock = clock
        self.urls = [u.rstrip("/") + "/api/v2/alerts" for u in settings.urls]
        self._tracked: dict[str, _Tracked] = {}
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._retry_delay = retry_min_s

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s))

    def send(self, alert: Alert) -> None:
        """Track the alert's new state; the run loop posts it right away."""
        tracked = self._tracked.get(alert.incident_id)
        if tracked is None:
            tracked = self._tracked[alert.incident_id] = _Tracked(alert=alert, starts=alert.ts)
        tracked.alert = alert
        tracked.resolved_at = alert.ts if alert.status is AlertStatus.RESOLVED else None
        tracked.unacked = set(self.urls)
        tracked.version += 1
        self._wake.set()

    @property
    def firing(self) -> list[str]:
        """Incident ids currently firing."""
        return [k for k, t in self._tracked.items() if t.resolved_at is None]

    @property
    def pending(self) -> int:
        """Alert states some URL has not accepted yet (waiting for a retry)."""
        return sum(1 for t in self._tracked.values() if t.unacked)

    async def run(self) -> None:
        """Post changes as they come, retry what failed with backoff, resend all firing every ``resend_s``."""
        loop = asyncio.get_running_loop()
        next_resend = loop.time() + self.settings.resend_s
        while not self._closed:
            wake_at = next_resend
            if self.pending:
                wake_at = min(wake_at, loop.time() + self._retry_delay)
            timeout = max(0.0, wake_at - loop.time())
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
            self._wake.clear()
            resend = loop.time() >= next_resend
            if resend:
                next_resend = loop.time() + self.settings.resend_s
            await self.flush(resend_all=resend)
            if self.pending:
                # Down or refusing: back off, but not so far that alerts wait long once it is back.
                cap = max(self.retry_min_s, min(self.retry_max_s, self.settings.resend_s))
                self._retry_delay = min(self._retry_delay * 2, cap)
            else:
                self._retry_delay = self.retry_min_s

    async def flush(self, resend_all: bool = False) -> None:
        """Post every alert some URL has not accepted yet (all firing ones too if ``resend_all``)."""
        if not self.urls or self._session is None:
            return
        now = self.clock()
        per_url: dict[str, list[tuple[str, int, dict[str, Any]]]] = {u: [] for u in self.urls}
        for incident_id, t in self._tracked.items():
            payload = to_am_alert(t.alert, t.starts, now, self.settings, t.resolved_at)
            for url in self.urls:
                if url in t.unacked or (resend_all and t.resolved_at is None):
                    per_url[url].append((incident_id, t.version, payload))
        await asyncio.gather(*(self._post(url, items) for url, items in per_url.items() if items))
        # Resolved and accepted everywhere: nothing left to say about it.
        for incident_id in [k for k, t in self._tracked.items() if t.resolved_at is not None and not t.unacked]:
            del self._tracked[incident_id]

    async def _post(self, url: str, items: list[tuple[str, int, dict[str, Any]]]) -> None:
        assert self._session is not None
        try:
            async with self._session.post(url, json=[p for _, _, p in items]) as resp:
                ok = resp.status == 200
                body = "" if ok else (await resp.text())[:300]
        except (aiohttp.ClientError, TimeoutError) as exc:
            ok, body = False, repr(exc)
        if self.metrics is not None:
            self.metrics.sink_sent.labels(self.name, "ok" if ok else "error").inc(len(items))
        if not ok:
            log.warning("alertmanager_post_failed", url=url, alerts=len(items), error=body)
            return
        for incident_id, version, _ in items:
            tracked = self._tracked.get(incident_id)
            # A newer state sent while this post was in flight still has to go out.
            if tracked is not None and tracked.version == version:
                tracked.unacked.discard(url)
        log.debug("alertmanager_posted", url=url, alerts=len(items))

    async def close(self, timeout: float) -> None:
        """One last post of pending changes (resolutions above all), then close the HTTP session."""
        self._closed = True
        self._wake.set()
        try:
            await asyncio.wait_for(self.flush(), timeout)
        except TimeoutError:
            log.warning("alertmanager_flush_timeout", pending=len(self._tracked))
        if self._session is not None:
            await self._session.close()
