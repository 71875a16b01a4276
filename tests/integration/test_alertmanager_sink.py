"""Alertmanager sink against a real Alertmanager 0.25."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import datetime

import pytest
from prometheus_client import CollectorRegistry

from aiops.config import AlertmanagerSettings
from aiops.notify.alertmanager import ENDS_AT_RESENDS, AlertmanagerSink
from aiops.observe.metrics import SelfMetrics
from aiops.records import Alert, AlertStatus

from .conftest import Alertmanager, free_port

pytestmark = pytest.mark.integration


def _alert(incident: str, ts: float, status: AlertStatus = AlertStatus.FIRING) -> Alert:
    return Alert(ts=ts, incident_id=incident, status=status,
                 labels=(("severity", "page"), ("service", "checkout")),
                 annotations=(("summary", "checkout error ratio up"),
                              ("root_causes", "checkout (score 0.91): deploy v2.4.0 preceded onset")))


async def _until(cond, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = await asyncio.to_thread(cond)
        if got:
            return got
        await asyncio.sleep(0.2)
    raise AssertionError("condition not met in time")


async def test_firing_then_resolved_with_a_dead_ha_peer(alertmanager: Alertmanager) -> None:
    incident = f"inc-{uuid.uuid4().hex[:8]}"
    dead = f"http://127.0.0.1:{free_port()}"
    metrics = SelfMetrics(CollectorRegistry())
    settings = AlertmanagerSettings(urls=[alertmanager.url, dead], resend_s=0.5, timeout_s=1.0,
                                    generator_url="http://aiops.example/incidents/{incident_id}")
    sink = AlertmanagerSink(settings, metrics)
    await sink.start()
    runner = asyncio.create_task(sink.run())
    try:
        now = time.time()
        sink.send(_alert(incident, now - 120))
        (got,) = await _until(lambda: alertmanager.alerts(incident_id=incident))
        assert got["labels"]["alertname"] == "AiopsIncident" and got["labels"]["service"] == "checkout"
        assert "deploy v2.4.0" in got["annotations"]["root_causes"]
        assert got["generatorURL"] == f"http://aiops.example/incidents/{incident}"
        assert got["status"]["state"] == "active"
        first_update = got["updatedAt"]
        # Re-sent every resend interval while firing.
        await _until(lambda: alertmanager.alerts(incident_id=incident)[0]["updatedAt"] != first_update)
        sink.send(_alert(incident, now - 10, AlertStatus.RESOLVED))
        await _until(lambda: not alertmanager.alerts(incident_id=incident))
        # The dead peer never accepts: the resolution stays pending for it, the live one is done.
        await _until(lambda: [t.unacked for t in sink._tracked.values()] == [{dead + "/api/v2/alerts"}])
        assert metrics.registry.get_sample_value(
            "aiops_sink_sent_total", {"sink": "alertmanager", "outcome": "error"}) >= 1
    finally:
        runner.cancel()
        await sink.close(2.0)


async def test_two_incidents_stay_two_alerts(alertmanager: Alertmanager) -> None:
    a, b = f"inc-{uuid.uuid4().hex[:8]}", f"inc-{uuid.uuid4().hex[:8]}"
    sink = AlertmanagerSink(AlertmanagerSettings(urls=[alertmanager.url], resend_s=60))
    await sink.start()
    now = time.time()
    sink.send(_alert(a, now))
    sink.send(_alert(b, now))
    await sink.flush()
    await sink.close(2.0)
    assert len(alertmanager.alerts(incident_id=a)) == 1 and len(alertmanager.alerts(incident_id=b)) == 1


def _labelled(incident: str, ts: float, labels: dict[str, str], status: AlertStatus = AlertStatus.FIRING) -> Alert:
    return Alert(ts=ts, incident_id=incident, status=status, labels=tuple(sorted(labels.items())),
                 annotations=(("summary", "checkout error ratio up"),))


def _active(alertmanager: Alertmanager, incident: str) -> list[tuple[str, str]]:
    """(alertname, severity) of the incident's active alerts in Alertmanager."""
    return sorted((a["labels"]["alertname"], a["labels"]["severity"]) for a in alertmanager.alerts(incident_id=incident)
                  if a["status"]["state"] == "active")


async def test_escalation_severity_rise_and_resolution(alertmanager: Alertmanager) -> None:
    """One incident, three label sets over its life, as ``GET /api/v2/alerts`` shows them."""
    incident = f"inc-{uuid.uuid4().hex[:8]}"
    own = {"alertname": "AiopsIncident", "incident_id": incident, "service": "checkout", "severity": "warning"}
    escalation = {"alertname": "AiopsRemediationFailed", "action": "scale_up", "service": "checkout",
                  "severity": "critical"}
    resend_s = 2.0  # endsAt 8 s ahead: long enough to tell a resolution from an expiry, short enough to outwait
    sink = AlertmanagerSink(AlertmanagerSettings(urls=[alertmanager.url], resend_s=resend_s, timeout_s=2.0))
    await sink.start()
    runner = asyncio.create_task(sink.run())
    try:
        now = time.time()
        sink.send(_labelled(incident, now - 120, own))
        await _until(lambda: _active(alertmanager, incident) == [("AiopsIncident", "warning")])
        sink.send(_labelled(incident, now - 60, escalation))
        both = [("AiopsIncident", "warning"), ("AiopsRemediationFailed", "critical")]
        await _until(lambda: _active(alertmanager, incident) == both)
        # Past the endsAt of every post made so far: both are still active, so both are being re-sent.
        await asyncio.sleep(ENDS_AT_RESENDS * resend_s + 1.0)
        assert _active(alertmanager, incident) == both

        # Severity rises: a new label set for Alertmanager; the old one is resolved, not left to expire.
        (old,) = alertmanager.alerts(incident_id=incident, severity="warning")
        expires = datetime.fromisoformat(old["endsAt"]).timestamp()
        sink.send(_labelled(incident, now - 30, {**own, "severity": "critical", "receiver": "pager"}))
        risen = [("AiopsIncident", "critical"), ("AiopsRemediationFailed", "critical")]
        await _until(lambda: _active(alertmanager, incident) == risen)
        assert not alertmanager.alerts(incident_id=incident, severity="warning")
        assert time.time() < expires - resend_s, "the old label set went before it could have expired"

        # The incident resolves: every alert about it ends (the escalation too).
        sink.send(_labelled(incident, now - 5, {**own, "severity": "critical", "receiver": "pager"},
                            AlertStatus.RESOLVED))
        await _until(lambda: not alertmanager.alerts(incident_id=incident), timeout=resend_s * 2)
        await _until(lambda: not sink._tracked)
    finally:
        runner.cancel()
        await sink.close(2.0)
