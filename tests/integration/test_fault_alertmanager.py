"""Fault: Alertmanager is down for a minute (the issue's figure) while incidents fire and resolve.

A real Alertmanager, stopped and started again on the same port and storage directory, notifies
a webhook receiver of the test's own; what reaches that receiver is what an on-call engineer
would see. The outage length is ``FAULT_AM_OUTAGE_S`` (default 60 s, the CI value).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from aiohttp import web
from prometheus_client import CollectorRegistry

from aiops.config import AlertmanagerSettings
from aiops.notify.alertmanager import AlertmanagerSink
from aiops.observe.metrics import SelfMetrics
from aiops.records import Alert, AlertStatus

from .conftest import _stop, _wait_http, free_port, missing

pytestmark = pytest.mark.integration

OUTAGE_S = float(os.environ.get("FAULT_AM_OUTAGE_S", "60"))


@dataclass
class Receiver:
    """Alertmanager's webhook receiver: every notification, as (incident_id, status, alert)."""

    got: list[tuple[str, str, dict]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        for a in body["alerts"]:
            self.got.append((a["labels"]["incident_id"], a["status"], a))
        return web.Response(status=200)

    def statuses(self, incident: str, **labels: str) -> list[str]:
        return [status for i, status, a in self.got
                if i == incident and all(a["labels"].get(k) == v for k, v in labels.items())]


@dataclass
class RestartableAM:
    binary: str
    dir: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        log = self.dir / "am.log"
        with log.open("ab") as out:
            self.proc = subprocess.Popen(
                [self.binary, f"--config.file={self.dir / 'am.yml'}", f"--storage.path={self.dir / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--cluster.listen-address=", "--log.level=warn"],
                stdout=out, stderr=subprocess.STDOUT)
        _wait_http(f"{self.url}/-/ready", self.proc, 30, "alertmanager", log)

    def stop(self) -> None:
        # SIGTERM: Alertmanager writes its notification log to disk, so it knows after the restart
        # which alerts it already announced as firing (and announces their resolution).
        assert self.proc is not None
        _stop(self.proc)


async def _until(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


def _alert(incident: str, ts: float, status: AlertStatus = AlertStatus.FIRING, severity: str = "page") -> Alert:
    return Alert(ts=ts, incident_id=incident, status=status, labels=(("severity", severity), ("service", "api")),
                 annotations=(("summary", "api error ratio up"),))


async def test_alerts_decided_while_alertmanager_is_down_arrive_once_it_is_back(tmp_path: Path) -> None:
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    if binary is None:
        missing("prometheus-alertmanager")
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hook_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    cfg = {"route": {"receiver": "hook", "group_by": ["incident_id"], "group_wait": "1s", "group_interval": "1s",
                     "repeat_interval": "1h"},
           "receivers": [{"name": "hook", "webhook_configs": [
               {"url": f"http://127.0.0.1:{hook_port}/hook", "send_resolved": True}]}]}
    (tmp_path / "am.yml").write_text(yaml.safe_dump(cfg))
    am = RestartableAM(str(binary), tmp_path, free_port())
    am.start()

    metrics = SelfMetrics(CollectorRegistry())
    # The production resend interval (60 s): what is delivered after the outage comes from the
    # sink's retries (backoff 1 s doubling to 10 s), not from a resend that happened to fall after it.
    sink = AlertmanagerSink(AlertmanagerSettings(urls=[am.url], resend_s=60, timeout_s=2), metrics)
    await sink.start()
    sending = asyncio.create_task(sink.run())
    tag = uuid.uuid4().hex[:6]
    before, during, risen = f"inc-{tag}-before", f"inc-{tag}-during", f"inc-{tag}-risen"
    now = time.time()
    try:
        sink.send(_alert(before, now - 300))
        sink.send(_alert(risen, now - 300, severity="ticket"))
        await _until(lambda: receiver.statuses(before) == ["firing"], 30, "the first alert's notification")
        await _until(lambda: receiver.statuses(risen) == ["firing"], 30, "the second alert's notification")

        am.stop()
        down = time.monotonic()
        # Decided during the outage: a new incident fires, the first one resolves.
        sink.send(_alert(during, now - 60))
        sink.send(_alert(before, now - 30, AlertStatus.RESOLVED))
        # ... and one rises from ticket to page: a new label set, the old one to be resolved.
        sink.send(_alert(risen, now - 20, severity="page"))
        await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - down)))
        assert sink.pending == 4, "every change (both of the risen incident's label sets) waits for Alertmanager"
        assert metrics.registry.get_sample_value(
            "aiops_sink_sent_total", {"sink": "alertmanager", "outcome": "error"}) >= 2
        am.start()

        await _until(lambda: receiver.statuses(during) == ["firing"], 90, "the alert fired during the outage")
        await _until(lambda: receiver.statuses(before) == ["firing", "resolved"], 90,
                     "the resolution decided during the outage")
        # The on-call engineer sees the ticket resolved, not left firing until it expires (4 resends later).
        await _until(lambda: receiver.statuses(risen, severity="ticket")[-1:] == ["resolved"]
                     and receiver.statuses(risen, severity="page")[-1:] == ["firing"], 90, "the severity rise")
        sink.send(_alert(risen, time.time(), AlertStatus.RESOLVED, severity="page"))
        await _until(lambda: receiver.statuses(risen, severity="page")[-1:] == ["resolved"], 30,
                     "the risen incident's resolution")
        sink.send(_alert(during, time.time(), AlertStatus.RESOLVED))
        await _until(lambda: receiver.statuses(during) == ["firing", "resolved"], 30, "the last resolution")
        await asyncio.sleep(3.0)  # a duplicate notification would arrive now (group_interval 1 s)
    finally:
        sending.cancel()
        await sink.close(2.0)
        am.stop()
        await runner.cleanup()

    # Nothing lost, nothing twice, and one identity per incident: same labels, same start.
    assert receiver.statuses(before) == ["firing", "resolved"]
    assert receiver.statuses(during) == ["firing", "resolved"]
    for incident in (before, during):
        alerts = [a for i, _, a in receiver.got if i == incident]
        assert len({a["fingerprint"] for a in alerts}) == 1
        assert len({a["startsAt"] for a in alerts}) == 1
        assert alerts[0]["labels"] == {"alertname": "AiopsIncident", "incident_id": incident,
                                       "service": "api", "severity": "page"}
    # The risen incident: two label sets, each announced once and resolved once; never both firing after the rise.
    assert receiver.statuses(risen, severity="ticket") == ["firing", "resolved"]
    assert receiver.statuses(risen, severity="page") == ["firing", "resolved"]
