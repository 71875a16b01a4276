"""Alertmanager sink against a real HTTP server standing in for Alertmanager's API: outages, a
state change while a post is in flight, retries sooner than the resend interval."""

from __future__ import annotations

import asyncio
import json
import time

from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from aiops.config import AlertmanagerSettings
from aiops.notify.alertmanager import ENDS_AT_RESENDS, AlertmanagerSink
from aiops.notify.base import rfc3339
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


def _labelled(incident: str, ts: float, labels: dict[str, str], status: AlertStatus = AlertStatus.FIRING) -> Alert:
    return Alert(ts=ts, incident_id=incident, status=status, labels=tuple(sorted(labels.items())),
                 annotations=(("summary", "checkout 5xx"),))


INCIDENT = {"alertname": "AiopsIncident", "incident_id": "inc-1", "service": "checkout", "severity": "warning"}
ESCALATION = {"alertname": "AiopsRemediationFailed", "action": "scale_up", "service": "checkout",
              "severity": "critical"}


def _firing(posted: list[dict], now_iso: str) -> list[dict[str, str]]:
    """Label sets whose last posted state is active at ``now_iso`` (endsAt after it), as Alertmanager sees them."""
    last = {tuple(sorted(a["labels"].items())): a for a in posted}
    return [dict(k) for k, a in sorted(last.items()) if a["endsAt"] > now_iso]


async def test_an_escalation_of_an_incident_does_not_replace_its_alert() -> None:
    async with FakeAM() as am:
        sink = AlertmanagerSink(AlertmanagerSettings(urls=[am.url], resend_s=60), clock=lambda: 200.0)
        await sink.start()
        try:
            sink.send(_labelled("inc-1", 100.0, INCIDENT))
            await sink.flush()
            sink.send(_labelled("inc-1", 190.0, ESCALATION))
            await sink.flush()
            am.accepted.clear()
            # The resend keeps both alive: each is an alert of its own in Alertmanager.
            await sink.flush(resend_all=True)
            assert len(am.accepted) == 2 and _firing(am.accepted, "1970-01-01T00:03:20.000Z") == [
                {**ESCALATION, "incident_id": "inc-1"}, INCIDENT]
            assert sink.firing == ["inc-1"]
            # The incident's resolution ends every alert about it, the escalation too.
            am.accepted.clear()
            sink.send(_labelled("inc-1", 195.0, INCIDENT, AlertStatus.RESOLVED))
            await sink.flush()
            assert len(am.accepted) == 2 and _firing(am.accepted, "1970-01-01T00:03:20.000Z") == []
            assert {a["endsAt"] for a in am.accepted} == {"1970-01-01T00:03:15.000Z"}
            assert not sink._tracked and sink.firing == []
        finally:
            await sink.close(2.0)


async def test_a_label_change_resolves_the_old_label_set() -> None:
    async with FakeAM() as am:
        sink = AlertmanagerSink(AlertmanagerSettings(urls=[am.url], resend_s=60), clock=lambda: 200.0)
        await sink.start()
        try:
            sink.send(_labelled("inc-1", 100.0, INCIDENT))
            await sink.flush()
            critical = {**INCIDENT, "severity": "critical", "receiver": "pager"}
            am.accepted.clear()
            sink.send(_labelled("inc-1", 150.0, critical))
            await sink.flush()
            # One post: the new label set firing, the old one resolved when the new one took over.
            old = [a for a in am.accepted if a["labels"] == INCIDENT]
            assert len(am.accepted) == 2 and len(old) == 1
            assert old[0]["endsAt"] == "1970-01-01T00:02:30.000Z" and old[0]["startsAt"] == "1970-01-01T00:01:40.000Z"
            assert _firing(am.accepted, "1970-01-01T00:03:20.000Z") == [critical]
            am.accepted.clear()
            await sink.flush(resend_all=True)
            assert [a["labels"] for a in am.accepted] == [critical]
            # Back to the first label set: it fires again and the second one is resolved.
            am.accepted.clear()
            sink.send(_labelled("inc-1", 170.0, INCIDENT))
            await sink.flush()
            assert _firing(am.accepted, "1970-01-01T00:03:20.000Z") == [INCIDENT]
            assert [a["labels"] for a in am.accepted if a["endsAt"] == "1970-01-01T00:02:50.000Z"] == [critical]
        finally:
            await sink.close(2.0)


async def test_a_resolution_with_other_labels_still_ends_the_firing_label_set() -> None:
    async with FakeAM() as am:
        sink = AlertmanagerSink(AlertmanagerSettings(urls=[am.url], resend_s=60), clock=lambda: 200.0)
        await sink.start()
        try:
            sink.send(_labelled("inc-1", 100.0, {**INCIDENT, "severity": "critical"}))
            await sink.flush()
            # The resolved incident record may carry a lower severity than the last firing one.
            sink.send(_labelled("inc-1", 180.0, INCIDENT, AlertStatus.RESOLVED))
            await sink.flush()
            assert _firing(am.accepted, "1970-01-01T00:03:20.000Z") == []
            assert not sink._tracked
        finally:
            await sink.close(2.0)


async def test_a_label_change_during_an_outage_reaches_alertmanager_as_both_states() -> None:
    async with FakeAM() as am:
        am.up = False
        sink = AlertmanagerSink(AlertmanagerSettings(urls=[am.url], resend_s=60), clock=lambda: 200.0)
        await sink.start()
        try:
            sink.send(_labelled("inc-1", 100.0, INCIDENT))
            await sink.flush()
            critical = {**INCIDENT, "severity": "critical"}
            sink.send(_labelled("inc-1", 150.0, critical))
            await sink.flush()
            assert sink.pending == 2 and not am.accepted
            am.up = True
            await sink.flush()
            assert sink.pending == 0
            assert _firing(am.accepted, "1970-01-01T00:03:20.000Z") == [critical]
            # The resolved old label set is acknowledged and forgotten; only the firing one is kept.
            assert [dict(t.alert.labels)["severity"] for t in sink._tracked.values()] == ["critical"]
        finally:
            await sink.close(2.0)


async def test_a_label_change_during_a_post_still_resolves_the_old_label_set() -> None:
    async with FakeAM() as am:
        sink = AlertmanagerSink(AlertmanagerSettings(urls=[am.url], resend_s=3600), retry_min_s=0.05,
                                clock=lambda: 200.0)
        await sink.start()
        runner = asyncio.create_task(sink.run())
        try:
            am.hold = release = asyncio.Event()
            sink.send(_labelled("inc-1", 100.0, INCIDENT))
            await _until(lambda: am.hold is None)  # the first label set's firing post is in flight
            critical = {**INCIDENT, "severity": "critical"}
            sink.send(_labelled("inc-1", 150.0, critical))
            release.set()
            # The in-flight post acknowledged the old label set firing, not its resolution: that still goes out.
            await _until(lambda: sink.pending == 0 and len(am.accepted) >= 3)
            assert _firing(am.accepted, "1970-01-01T00:03:20.000Z") == [critical]
            assert [dict(t.alert.labels)["severity"] for t in sink._tracked.values()] == ["critical"]
        finally:
            runner.cancel()
            await sink.close(2.0)


_OPS = st.lists(st.one_of(
    st.tuples(st.just("own"), st.integers(0, 2), st.sampled_from(["warning", "critical"]), st.sampled_from("ab")),
    st.tuples(st.just("escalate"), st.integers(0, 2), st.sampled_from(["scale_up", "rollback"])),
    st.tuples(st.just("resolve"), st.integers(0, 2), st.sampled_from(["warning", "critical"])),
    st.tuples(st.just("flush")),
    st.tuples(st.just("down")),
    st.tuples(st.just("up")),
), max_size=30)


@settings(max_examples=60, deadline=None)
@given(_OPS)
def test_alertmanager_ends_up_with_what_is_firing(ops: list[tuple]) -> None:  # type: ignore[type-arg]
    """Any story of incidents (label changes, escalations, resolutions, outages): after every resend
    Alertmanager holds exactly the firing label sets, each incident's newest one and its escalations.
    Each step is longer than a post's ``endsAt`` horizon, so what is not re-sent has expired."""
    asyncio.run(_story(ops))


async def _story(ops: list[tuple]) -> None:  # type: ignore[type-arg]
    own: dict[str, dict[str, str]] = {}  # incident -> labels of its firing own alert
    escalations: dict[str, list[dict[str, str]]] = {}
    async with FakeAM() as am:
        now = [0.0]
        sink = AlertmanagerSink(AlertmanagerSettings(urls=[am.url], resend_s=60), clock=lambda: now[0])
        await sink.start()
        try:
            for i, op in enumerate(ops):
                now[0] = 10_000.0 + i * (ENDS_AT_RESENDS + 1) * 60
                ts = now[0] - 1.0
                if op[0] == "own":
                    inc = f"inc-{op[1]}"
                    own[inc] = {**INCIDENT, "incident_id": inc, "severity": op[2], "service": op[3]}
                    sink.send(_labelled(inc, ts, own[inc]))
                elif op[0] == "escalate" and f"inc-{op[1]}" in own:  # only an open incident escalates
                    inc = f"inc-{op[1]}"
                    labels = {**ESCALATION, "action": op[2]}
                    escalations.setdefault(inc, []).append({**labels, "incident_id": inc})
                    sink.send(_labelled(inc, ts, labels))
                elif op[0] == "resolve" and f"inc-{op[1]}" in own:
                    inc = f"inc-{op[1]}"
                    sink.send(_labelled(inc, ts, {**own.pop(inc), "severity": op[2]}, AlertStatus.RESOLVED))
                    escalations.pop(inc, None)
                elif op[0] in ("down", "up"):
                    am.up = op[0] == "up"
                elif op[0] == "flush":
                    await sink.flush(resend_all=True)
                if op[0] == "flush" and am.up:
                    expected = list(own.values()) + [e for es in escalations.values() for e in es]
                    unique = {tuple(sorted(e.items())): e for e in expected}
                    assert _firing(am.accepted, rfc3339(now[0])) == [unique[k] for k in sorted(unique)]
                    assert sink.pending == 0 and len(sink._tracked) == len(unique)
                    assert sorted(sink.firing) == sorted({e["incident_id"] for e in expected})
        finally:
            await sink.close(2.0)
