"""Alertmanager sink against a real Alertmanager 0.25."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from prometheus_client import CollectorRegistry

from aiops.config import AlertmanagerSettings
from aiops.notify.alertmanager import AlertmanagerSink
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
        await _until(lambda: sink._tracked[incident].unacked == {dead + "/api/v2/alerts"})
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
