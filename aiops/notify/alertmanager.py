"""Alertmanager sink: incidents as alerts through the API v2 (``POST /api/v2/alerts``).

It behaves like Prometheus does towards Alertmanager: every firing alert is re-posted every
``resend_s`` with ``endsAt`` a few resend intervals ahead (so alerts of a daemon that died
resolve on their own), a resolved alert is posted once with ``endsAt`` set to when it
resolved, and every configured URL gets every post (Alertmanager HA peers dedupe).
A URL that failed is retried with exponential backoff (``retry_min_s`` doubling up to
``retry_max_s``, or ``resend_s`` if shorter) until it accepts the latest state of every alert:
a firing alert or a resolution decided while Alertmanager is down is delivered once it is back,
with the same labels and ``startsAt`` as it would have had. Only the newest state of an alert is
kept: an alert that fires and resolves within an outage reaches Alertmanager as resolved (as
with Prometheus).

**Identity.** Alertmanager identifies an alert by its label set (its fingerprint), so the sink
tracks and re-sends by label set too, never by incident: one incident may have several alerts
at once (its own and an ``AiopsRemediationFailed`` escalation, say), each re-sent on its own.
The first alert the sink sees for an incident is the incident's own (the decider announces an
incident before anything can escalate it); a later alert of that incident with the same
``alertname`` but other labels (severity rose, the root cause moved, another route matched)
*replaces* it, and the old label set is posted as resolved (``endsAt`` = the new one's event
time) in the same post, as Prometheus resolves a label set its rule no longer produces. Alerts
with another ``alertname`` stand on their own. A resolved alert ends every alert of its
incident (escalations included): nothing about an incident stays active once it is over.

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


LabelSet = tuple[tuple[str, str], ...]
"""An alert's identity in Alertmanager: its labels (``alertname`` and ``incident_id`` included), sorted."""


@dataclass
class _Tracked:
    alert: Alert  # the newest state of this label set (a replaced or ended one keeps its last firing state)
    starts: float
    resolved_at: float | None = None
    unacked: set[str] = field(default_factory=set)  # URLs that have not accepted the latest state
    version: int = 0  # bumped on every new state: a post acknowledges only the state it carried


def am_labels(alert: Alert, settings: AlertmanagerSettings) -> dict[str, str]:
    """The labels Alertmanager identifies the alert by: the rules' labels plus ``alertname`` and ``incident_id``.

    >>> from aiops.records import AlertStatus
    >>> a = Alert(ts=1.0, incident_id="inc-1", status=AlertStatus.FIRING, labels=(("severity", "page"),),
    ...           annotations=())
    >>> am_labels(a, AlertmanagerSettings())
    {'alertname': 'AiopsIncident', 'severity': 'page', 'incident_id': 'inc-1'}
    """
    labels = {"alertname": settings.alertname, **dict(alert.labels)}
    labels.setdefault("incident_id", alert.incident_id)
    return labels


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
    if resolved_at is not None:
        # Resolution is event time; never in the future (it would keep the alert active) nor before the start.
        ends = max(starts, min(resolved_at, now))
    else:
        ends = max(now, starts) + ENDS_AT_RESENDS * settings.resend_s
    out: dict[str, Any] = {
        "labels": am_labels(alert, settings),
        "annotations": dict(alert.annotations),
        "startsAt": rfc3339(starts),
        "endsAt": rfc3339(ends),
    }
    if settings.generator_url:
        out["generatorURL"] = settings.generator_url.replace("{incident_id}", alert.incident_id)
    return out


class AlertmanagerSink:
    """Posts firing and resolved alerts to one or more Alertmanagers; resends while firing.

    Alerts are tracked by label set (see the module docstring): an incident's escalation is a
    second alert, a change of the incident's labels resolves the label set it replaces.
    """

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
        self._tracked: dict[LabelSet, _Tracked] = {}
        self._own: dict[str, LabelSet] = {}  # incident id -> the label set of the incident's own alert
        self._wake = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._retry_delay = retry_min_s

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.settings.timeout_s))

    def send(self, alert: Alert) -> None:
        """Track the alert's new state (and what it replaces or ends); the run loop posts it right away."""
        key: LabelSet = tuple(sorted(am_labels(alert, self.settings).items()))
        incident = alert.incident_id
        if alert.status is AlertStatus.RESOLVED:
            # The incident is over, so is every alert about it: an escalation, or the label set that
            # fired if the resolution carries other labels (the severity fell before it resolved).
            for other, t in self._tracked.items():
                if other != key and t.alert.incident_id == incident and t.resolved_at is None:
                    self._update(other, t.alert, resolved_at=alert.ts)
            self._update(key, alert, resolved_at=alert.ts)
        else:
            own = self._own.get(incident)
            if own is None or dict(own)["alertname"] == dict(key)["alertname"]:
                replaced = self._tracked.get(own) if own is not None and own != key else None
                if own is not None and replaced is not None and replaced.resolved_at is None:
                    # New labels are a new alert to Alertmanager: end the old one now, not when it expires.
                    self._update(own, replaced.alert, resolved_at=alert.ts)
                self._own[incident] = key
            self._update(key, alert, resolved_at=None)
        self._wake.set()

    def _update(self, key: LabelSet, alert: Alert, resolved_at: float | None) -> None:
        tracked = self._tracked.get(key)
        if tracked is None:
            tracked = self._tracked[key] = _Tracked(alert=alert, starts=alert.ts)
        tracked.alert = alert
        tracked.resolved_at = resolved_at
        tracked.unacked = set(self.urls)
        tracked.version += 1

    @property
    def firing(self) -> list[str]:
        """Incident ids with at least one alert firing."""
        return list(dict.fromkeys(t.alert.incident_id for t in self._tracked.values() if t.resolved_at is None))

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
        per_url: dict[str, list[tuple[LabelSet, int, dict[str, Any]]]] = {u: [] for u in self.urls}
        for key, t in self._tracked.items():
            payload = to_am_alert(t.alert, t.starts, now, self.settings, t.resolved_at)
            for url in self.urls:
                if url in t.unacked or (resend_all and t.resolved_at is None):
                    per_url[url].append((key, t.version, payload))
        await asyncio.gather(*(self._post(url, items) for url, items in per_url.items() if items))
        # Resolved and accepted everywhere: nothing left to say about it.
        for key in [k for k, t in self._tracked.items() if t.resolved_at is not None and not t.unacked]:
            del self._tracked[key]
        live = {t.alert.incident_id for t in self._tracked.values()}
        for incident in [i for i in self._own if i not in live]:
            del self._own[incident]

    async def _post(self, url: str, items: list[tuple[LabelSet, int, dict[str, Any]]]) -> None:
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
        for key, version, _ in items:
            tracked = self._tracked.get(key)
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
