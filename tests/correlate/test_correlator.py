"""Correlator: grouping, lifecycle, flap control, ranking evidence, snapshot."""

from __future__ import annotations

import json

import pytest
import structlog

from aiops.config import CorrelateSettings
from aiops.correlate.correlator import Correlator
from aiops.correlate.topology import Topology
from aiops.records import ChangeEvent, Incident, IncidentStatus, Signal, SignalKind

T0 = 1_767_225_600.0
STEP = 15.0
QUIET = structlog.wrap_logger(structlog.ReturnLogger())
TOPO = {"frontend": ["checkout", "catalog"], "checkout": ["payments", "postgres"], "catalog": ["postgres"],
        "mail": ["smtp"]}


def sig(sid: str, svc: str, ts: float, name: str = "http_requests_total:error_ratio", score: float = 0.8,
        end: float | None = None, kind: SignalKind = SignalKind.METRIC, direction: str = "up") -> Signal:
    return Signal(id=sid, ts=ts, kind=kind, service=svc, name=name, score=score, direction=direction, end_ts=end)


def make(topology: dict[str, list[str]] | None = None, **kw: float) -> Correlator:
    # Timings the tests are written against, independent of the defaults' tuning.
    kw = {"open_hold_s": 60.0, "persist_s": 120.0} | kw
    return Correlator(CorrelateSettings(**kw), Topology.from_mapping(topology if topology is not None else TOPO),
                      logger=QUIET)


def run(c: Correlator, start: float, end: float) -> list[Incident]:
    out = []
    ts = start
    while ts <= end:
        out.extend(c.tick(ts))
        ts += STEP
    return out


def opens(records: list[Incident]) -> list[Incident]:
    return [r for r in records if r.status is IncidentStatus.OPEN]


def test_connected_services_join_one_incident() -> None:
    c = make()
    c.on_signal(sig("a", "payments", T0))
    c.on_signal(sig("b", "payments", T0, name="http_request_duration_seconds:p99"))
    c.on_signal(sig("c", "checkout", T0 + 30))
    c.on_signal(sig("d", "frontend", T0 + 60))
    out = run(c, T0, T0 + 120)
    assert len(opens(out)) == 1
    assert set(out[-1].services) == {"payments", "checkout", "frontend"}


def test_unrelated_services_open_separate_incidents() -> None:
    c = make()
    for i, svc in enumerate(["payments", "smtp"]):
        c.on_signal(sig(f"{svc}1", svc, T0 + i))
        c.on_signal(sig(f"{svc}2", svc, T0 + i, name="http_request_duration_seconds:p99"))
    out = run(c, T0, T0 + 150)
    assert sorted(o.services for o in opens(out)) == [("payments",), ("smtp",)]


def test_a_storm_of_series_in_one_service_is_one_incident() -> None:
    c = make()
    for i in range(200):
        c.on_signal(sig(f"s{i}", "checkout", T0 + (i % 60), name=f"m{i}:p99", score=0.5 + (i % 7) / 20))
    out = run(c, T0, T0 + 75)
    out += run(c, T0 + 90, T0 + 300)
    assert len(opens(out)) == 1
    assert len({o.id for o in out}) == 1


def test_one_weak_short_signal_opens_nothing() -> None:
    c = make(persist_s=120.0)
    c.on_signal(sig("a", "checkout", T0, score=0.6))
    c.on_signal(sig("a", "checkout", T0, score=0.6, end=T0 + 45))
    assert run(c, T0, T0 + 1200) == []


def test_blips_in_neighbours_open_nothing() -> None:
    # detector blips: onset confirmed, over after the recovery steps; never lasts the hold
    c = make()
    for i, svc in enumerate(["checkout", "payments", "frontend", "postgres"]):
        c.on_signal(sig(f"b{i}", svc, T0 + 10 * i, score=0.99))
        c.on_signal(sig(f"b{i}", svc, T0 + 10 * i, score=0.99, end=T0 + 10 * i + 75))
    assert run(c, T0, T0 + 1200) == []


def test_one_lasting_signal_opens_after_persist() -> None:
    c = make(persist_s=120.0)
    c.on_signal(sig("a", "checkout", T0, score=0.6))
    out = run(c, T0, T0 + 300)
    assert len(opens(out)) == 1 and opens(out)[0].ts >= T0 + 120


def test_resolves_after_calm_and_flap_reopens_same_id() -> None:
    c = make(resolve_after_s=300.0, flap_window_s=1800.0)
    c.on_signal(sig("a", "checkout", T0))
    c.on_signal(sig("b", "checkout", T0, name="http_request_duration_seconds:p99"))
    out = run(c, T0, T0 + 120)
    c.on_signal(sig("a", "checkout", T0, end=T0 + 130))
    c.on_signal(sig("b", "checkout", T0, name="http_request_duration_seconds:p99", end=T0 + 130))
    out += run(c, T0 + 135, T0 + 600)
    resolved = [r for r in out if r.status is IncidentStatus.RESOLVED]
    assert len(resolved) == 1 and resolved[0].ts >= T0 + 130 + 300
    # the same problem fires again 10 minutes later: same incident, no second 'open'
    c.on_signal(sig("c", "checkout", T0 + 1000))
    c.on_signal(sig("d", "checkout", T0 + 1000, name="http_request_duration_seconds:p99"))
    again = run(c, T0 + 1005, T0 + 1200)
    assert opens(again) == []
    assert [r.status for r in again][:1] == [IncidentStatus.UPDATE]
    assert again[0].id == out[0].id
    assert again[0].explain is not None and "reopened" in again[0].explain.opened[-1]


def test_refire_after_the_flap_window_is_a_new_incident() -> None:
    c = make(resolve_after_s=300.0, flap_window_s=600.0)
    c.on_signal(sig("a", "checkout", T0, end=T0 + 100))
    c.on_signal(sig("b", "checkout", T0, name="http_request_duration_seconds:p99"))
    first = run(c, T0, T0 + 120)
    c.on_signal(sig("b", "checkout", T0, name="http_request_duration_seconds:p99", end=T0 + 120))
    first += run(c, T0 + 135, T0 + 600)
    c.on_signal(sig("c", "checkout", T0 + 2000))
    c.on_signal(sig("d", "checkout", T0 + 2000, name="http_request_duration_seconds:p99"))
    later = run(c, T0 + 2010, T0 + 2200)
    assert len(opens(later)) == 1 and opens(later)[0].id != first[0].id


def test_update_only_when_conclusion_changes() -> None:
    c = make()
    c.on_signal(sig("a", "checkout", T0))
    c.on_signal(sig("b", "checkout", T0, name="http_request_duration_seconds:p99"))
    out = run(c, T0, T0 + 300)
    assert [r.status for r in out] == [IncidentStatus.OPEN]
    c.on_signal(sig("c", "checkout", T0 + 310, name="y:rate"))  # same service, same ranking
    assert run(c, T0 + 315, T0 + 400) == []
    c.on_signal(sig("d", "frontend", T0 + 410))
    upd = run(c, T0 + 415, T0 + 430)
    assert [r.status for r in upd] == [IncidentStatus.UPDATE] and "frontend" in upd[0].services


def test_callee_first_beats_caller() -> None:
    c = make()
    c.on_signal(sig("f", "frontend", T0 + 30, score=0.99))
    c.on_signal(sig("f2", "frontend", T0 + 30, name="http_request_duration_seconds:p99", score=0.99))
    c.on_signal(sig("p", "postgres", T0, score=0.6))
    c.on_signal(sig("k", "checkout", T0 + 15, score=0.7))
    out = run(c, T0, T0 + 150)
    ranking = [rc.service for rc in out[-1].root_causes]
    assert ranking[0] == "postgres"
    assert ranking.index("checkout") < ranking.index("frontend")
    ev = " | ".join(out[-1].root_causes[0].evidence)
    assert "first anomalous service" in ev and "callers" in ev


def test_deploy_before_onset_boosts_the_changed_service() -> None:
    # two services anomalous at the same step, neither calls the other: the deployed one wins
    c = make({"frontend": ["checkout", "catalog"]})
    c.on_change(ChangeEvent(ts=T0 - 75, type="deploy", service="catalog",
                            attrs=(("previous_version", "v1.0"), ("version", "v1.1"))))
    for svc in ("checkout", "catalog"):
        c.on_signal(sig(f"{svc}a", svc, T0, score=0.9 if svc == "checkout" else 0.7))
        c.on_signal(sig(f"{svc}b", svc, T0, name="http_request_duration_seconds:p99"))
    c.on_signal(sig("f", "frontend", T0 + 30))
    out = run(c, T0, T0 + 150)
    top = out[-1].root_causes[0]
    assert top.service == "catalog"
    assert any("deploy v1.1 (from v1.0)" in e and "75 s before first anomaly" in e for e in top.evidence)


def test_unobserved_common_callee_is_a_candidate() -> None:
    c = make()
    c.on_signal(sig("k", "checkout", T0))
    c.on_signal(sig("c", "catalog", T0))
    c.on_signal(sig("f", "frontend", T0 + 30))
    out = run(c, T0, T0 + 150)
    assert "postgres" in [rc.service for rc in out[-1].root_causes][:3]


def test_severity_critical_when_entry_errors() -> None:
    c = make()
    c.on_signal(sig("a", "checkout", T0, name="http_request_duration_seconds:p99"))
    c.on_signal(sig("b", "checkout", T0, name="process_cpu_seconds_total:rate"))
    first = run(c, T0, T0 + 90)
    assert first[0].severity == "warning"
    c.on_signal(sig("f", "frontend", T0 + 100))
    upd = run(c, T0 + 105, T0 + 120)
    assert upd[-1].severity == "critical"


def test_left_out_signals_are_explained() -> None:
    c = make()
    c.on_signal(sig("a", "checkout", T0))
    c.on_signal(sig("b", "checkout", T0, name="http_request_duration_seconds:p99"))
    c.on_signal(sig("m", "smtp", T0 + 20, score=0.5, end=T0 + 95))  # unrelated blip
    out = run(c, T0, T0 + 120)
    c.on_signal(sig("k", "frontend", T0 + 130))
    out += run(c, T0 + 135, T0 + 150)
    assert {r.id for r in out} == {out[0].id}
    ex = out[-1].explain
    assert ex is not None and ex.opened and ex.ranking
    assert any(note.startswith("smtp:") for note in ex.left_out)


def test_labels_teach_topology() -> None:
    c = make({})
    s = Signal(id="x", ts=T0, kind=SignalKind.METRIC, service="api", name="m", score=0.5,
               labels=(("destination_workload", "db"), ("source_workload", "api")))
    c.on_signal(s)
    assert c.topology.callees("api") == ["db"]


def test_snapshot_roundtrip_gives_the_same_output() -> None:
    def feed(c: Correlator, phase: int) -> list[Incident]:
        if phase == 0:
            c.on_signal(sig("a", "payments", T0))
            c.on_signal(sig("b", "checkout", T0 + 15))
            return run(c, T0, T0 + 60)
        c.on_signal(sig("c", "frontend", T0 + 70))
        c.on_signal(sig("a", "payments", T0, end=T0 + 100))
        c.on_signal(sig("b", "checkout", T0 + 15, end=T0 + 100))
        c.on_signal(sig("c", "frontend", T0 + 70, end=T0 + 100))
        return run(c, T0 + 75, T0 + 1000)

    a = make()
    feed(a, 0)
    snap = json.loads(json.dumps(a.snapshot()))
    b = Correlator.from_snapshot(snap, CorrelateSettings(), logger=QUIET)
    assert feed(a, 1) == feed(b, 1)


def test_bad_snapshot_version_is_refused() -> None:
    with pytest.raises(ValueError, match="version"):
        Correlator.from_snapshot({"version": 99}, CorrelateSettings())


def test_a_storm_across_many_services_stays_fast() -> None:
    import time

    topo = {f"svc{i}": [f"svc{i + 1}"] for i in range(59)}
    c = make(topo)
    for i in range(3000):
        c.on_signal(sig(f"s{i}", f"svc{i % 60}", T0 + (i % 45), name=f"m{i}:p99"))
    started = time.perf_counter()
    out = run(c, T0, T0 + 300)
    assert time.perf_counter() - started < 5.0
    assert len(opens(out)) == 1 and len(out[0].services) == 60


def test_causes_without_a_symptom_open_nothing() -> None:
    # a traffic burst: rates and CPU up everywhere for minutes, nobody hurt
    c = make()
    for i, svc in enumerate(["frontend", "checkout", "postgres"]):
        for name in ("http_requests_total:rate", "process_cpu_seconds_total:rate"):
            c.on_signal(sig(f"{svc}{name}", svc, T0 + i, name=name, score=0.99))
    assert run(c, T0, T0 + 900) == []


def test_a_symptom_must_last_the_hold() -> None:
    c = make(open_hold_s=180.0)
    c.on_signal(sig("a", "checkout", T0))
    c.on_signal(sig("b", "checkout", T0, name="http_request_duration_seconds:p99"))
    c.on_signal(sig("a", "checkout", T0, end=T0 + 150))
    c.on_signal(sig("b", "checkout", T0, name="http_request_duration_seconds:p99", end=T0 + 150))
    assert run(c, T0, T0 + 900) == []
    c.on_signal(sig("c", "checkout", T0 + 1000))
    c.on_signal(sig("d", "checkout", T0 + 1000, name="http_request_duration_seconds:p99"))
    out = run(c, T0 + 1000, T0 + 1300)
    assert len(opens(out)) == 1 and opens(out)[0].ts >= T0 + 1180


def test_logs_alone_never_open() -> None:
    c = make()
    for i in range(3):
        c.on_signal(Signal(id=f"l{i}", ts=T0, kind=SignalKind.LOG, service="checkout", name=f"t{i}", score=0.9,
                           direction="up", evidence=(f'new ERROR template "boom {i}"',)))
    assert run(c, T0, T0 + 900) == []


def test_a_long_incident_keeps_citing_its_deploy() -> None:
    c = make(change_lookback_s=600.0, window_s=300.0)
    c.on_change(ChangeEvent(ts=T0 - 60, type="deploy", service="checkout", attrs=(("version", "v9"),)))
    c.on_signal(sig("a", "checkout", T0))
    c.on_signal(sig("b", "checkout", T0, name="http_request_duration_seconds:p99"))
    out = run(c, T0, T0 + 3000)
    c.on_signal(sig("a", "checkout", T0, end=T0 + 3000))
    c.on_signal(sig("b", "checkout", T0, name="http_request_duration_seconds:p99", end=T0 + 3000))
    out += run(c, T0 + 3015, T0 + 4000)
    assert [r.status for r in out] == [IncidentStatus.OPEN, IncidentStatus.RESOLVED]
    assert all(any("deploy v9" in e for e in r.root_causes[0].evidence) for r in out)


def test_quantiles_of_one_histogram_are_one_piece_of_evidence() -> None:
    # a rolling deploy's slow fresh pods: p90 and p99 up for a few minutes, nothing else
    c = make(persist_s=300.0)
    c.on_signal(sig("a", "cart", T0, name="http_request_duration_seconds:p90"))
    c.on_signal(sig("b", "cart", T0, name="http_request_duration_seconds:p99"))
    c.on_signal(sig("a", "cart", T0, name="http_request_duration_seconds:p90", end=T0 + 200))
    c.on_signal(sig("b", "cart", T0, name="http_request_duration_seconds:p99", end=T0 + 230))
    assert run(c, T0, T0 + 900) == []


def test_sustained_memory_growth_is_a_saturation_symptom_but_cpu_is_not() -> None:
    # Saturation is one of the four golden signals: memory climbing toward its limit pages before the
    # OOM kill; a CPU rise alone is how a healthy service meets more traffic.
    c = make()
    c.on_signal(sig("cpu", "catalog", T0, name="process_cpu_seconds_total:rate"))
    c.on_signal(sig("mem", "payments", T0, name="container_memory_working_set_bytes"))
    out = run(c, T0, T0 + 400)
    assert [r.services for r in opens(out)] == [("payments",)]


def test_late_signal_of_a_service_in_a_live_incident_joins_it() -> None:
    # A leak opens on memory, and twenty minutes later the same service's latency breaks:
    # one problem, one page.
    c = make(window_s=600.0)
    c.on_signal(sig("mem", "payments", T0, name="container_memory_working_set_bytes"))
    first = run(c, T0, T0 + 1200)
    c.on_signal(sig("lat", "payments", T0 + 1200, name="http_request_duration_seconds:p99"))
    c.on_signal(sig("err", "checkout", T0 + 1230))
    later = run(c, T0 + 1215, T0 + 1500)
    assert len(opens(first)) == 1 and opens(later) == []
    assert {r.id for r in first + later} == {opens(first)[0].id}
    assert set(later[-1].services) == {"payments", "checkout"}


def test_evidence_that_stops_resolves_despite_a_much_later_anomaly_of_an_earlier_victim() -> None:
    # checkout's bad release lasts an hour (its signal ends with the rollback at T0+3600); frontend,
    # its caller, was hit at the start and recovered at T0+400. Almost an hour after the last onset,
    # frontend's memory and its other callee catalog turn anomalous (T0+3500 .. T0+4200): a new,
    # unrelated problem. The incident must resolve resolve_after_s after the rollback, with only the
    # services of its own problem, and the later anomaly is judged on its own.
    c = make(window_s=600.0, resolve_after_s=600.0, flap_window_s=1800.0)
    c.on_signal(sig("co", "checkout", T0))
    c.on_signal(sig("co99", "checkout", T0, name="http_request_duration_seconds:p99"))
    c.on_signal(sig("fe", "frontend", T0 + 60))
    out = run(c, T0, T0 + 390)
    c.on_signal(sig("fe", "frontend", T0 + 60, end=T0 + 400))
    out += run(c, T0 + 405, T0 + 3495)
    c.on_signal(sig("mem", "frontend", T0 + 3500, name="container_memory_working_set_bytes"))
    c.on_signal(sig("cat", "catalog", T0 + 3510, name="http_request_duration_seconds:p99"))
    out += run(c, T0 + 3510, T0 + 3600)
    c.on_signal(sig("co", "checkout", T0, end=T0 + 3600))
    c.on_signal(sig("co99", "checkout", T0, name="http_request_duration_seconds:p99", end=T0 + 3600))
    out += run(c, T0 + 3615, T0 + 4200)
    c.on_signal(sig("mem", "frontend", T0 + 3500, name="container_memory_working_set_bytes", end=T0 + 4200))
    c.on_signal(sig("cat", "catalog", T0 + 3510, name="http_request_duration_seconds:p99", end=T0 + 4200))
    out += run(c, T0 + 4215, T0 + 6000)

    first = opens(out)[0]
    mine = [r for r in out if r.id == first.id]
    resolved = [r for r in mine if r.status is IncidentStatus.RESOLVED]
    assert [r.ts for r in resolved] == [T0 + 3600 + 600]
    assert all(set(r.services) == {"checkout", "frontend"} for r in mine)
    assert {s.id for s in resolved[0].signals} == {"co", "co99", "fe"}
    # The later anomaly held long enough to be real: it is an incident of its own, not a re-fire.
    later = [r for r in opens(out) if r.id != first.id]
    assert len(later) == 1 and set(later[0].services) == {"catalog", "frontend"}
    assert later[0].ts < resolved[0].ts


def test_a_victim_firing_again_soon_after_its_recovery_stays_in_the_incident() -> None:
    # An intermittent fault: frontend's errors stop for a few minutes and come back while the
    # cause is still active, long after the incident's latest onset. Same problem, same incident.
    c = make(window_s=600.0)
    c.on_signal(sig("co", "checkout", T0))
    c.on_signal(sig("co99", "checkout", T0, name="http_request_duration_seconds:p99"))
    c.on_signal(sig("fe", "frontend", T0 + 60))
    out = run(c, T0, T0 + 1200)
    c.on_signal(sig("fe", "frontend", T0 + 60, end=T0 + 1200))
    out += run(c, T0 + 1215, T0 + 1500)
    c.on_signal(sig("fe2", "frontend", T0 + 1500, name="http_request_duration_seconds:p99"))
    out += run(c, T0 + 1515, T0 + 1800)
    assert len(opens(out)) == 1
    assert c.snapshot()["owner"].get("fe2") == opens(out)[0].id


def test_the_root_cause_recovering_while_its_victims_still_complain_stays_in_the_incident() -> None:
    # postgres fails (its own signals end within minutes: it is down, nothing left to measure), its
    # callers keep logging connection errors for 25 minutes; when it is fixed, its restart shows
    # as CPU and memory, long after the incident's latest onset. That is the incident's own story.
    c = make(window_s=600.0, resolve_after_s=600.0)
    c.on_signal(sig("pg", "postgres", T0, end=T0 + 300))
    c.on_signal(sig("co", "checkout", T0 + 30, name="conn_refused", kind=SignalKind.LOG))
    c.on_signal(sig("ca", "catalog", T0 + 30))
    c.on_signal(sig("ca99", "catalog", T0 + 30, name="http_request_duration_seconds:p99"))
    out = run(c, T0, T0 + 1500)
    assert opens(out) and opens(out)[0].root_causes[0].service == "postgres"
    c.on_signal(sig("ca", "catalog", T0 + 30, end=T0 + 900))
    c.on_signal(sig("ca99", "catalog", T0 + 30, name="http_request_duration_seconds:p99", end=T0 + 900))
    c.on_signal(sig("cpu", "postgres", T0 + 1500, name="process_cpu_seconds_total:rate"))
    c.on_signal(sig("mem", "postgres", T0 + 1500, name="container_memory_working_set_bytes"))
    out += run(c, T0 + 1515, T0 + 1800)
    assert len(opens(out)) == 1
    owner = c.snapshot()["owner"]
    assert owner.get("cpu") == owner.get("mem") == opens(out)[0].id
