"""Root-cause ranking rules, each on the smallest incident that shows it."""

from __future__ import annotations

from aiops.correlate.rank import rank_causes
from aiops.correlate.topology import Topology
from aiops.records import Signal, SignalKind


def sig(svc: str, name: str, ts: float, score: float, direction: str = "up") -> Signal:
    return Signal(id=f"{svc}|{name}", ts=ts, kind=SignalKind.METRIC, service=svc, name=name, score=score,
                  direction=direction)


def ranking(signals: list[Signal], topo: Topology, tol: float = 30.0) -> list[str]:
    causes, _ = rank_causes(signals, [], topo, tolerance_s=tol)
    return [c.service for c in causes]


def test_faint_callee_blip_does_not_explain_a_loud_caller_failure() -> None:
    # web -> api -> db: api fails loudly; db shows a faint p99 blip at the same time
    topo = Topology.from_mapping({"web": ["api"], "api": ["db"]})
    signals = [
        sig("web", "http_requests_total:error_ratio", 0.0, 0.3),
        sig("api", "http_requests_total:error_ratio", 0.0, 1.0),
        sig("db", "query_duration_seconds:p99", 0.0, 0.12),
    ]
    assert ranking(signals, topo)[0] == "api"


def test_loud_callee_still_explains_its_callers() -> None:
    topo = Topology.from_mapping({"web": ["api"], "api": ["db"]})
    signals = [
        sig("web", "http_requests_total:error_ratio", 0.0, 0.5),
        sig("api", "http_requests_total:error_ratio", 0.0, 0.6),
        sig("db", "query_duration_seconds:p99", 0.0, 1.0),
    ]
    assert ranking(signals, topo)[0] == "db"


def test_faint_early_blip_elsewhere_does_not_make_the_loud_failure_late() -> None:
    # a cache blips faintly five minutes before api fails loudly; web follows api
    topo = Topology.from_mapping({"web": ["api", "cache"]})
    signals = [
        sig("cache", "cache_latency_seconds:p99", 0.0, 0.25),
        sig("api", "http_requests_total:error_ratio", 300.0, 1.0),
        sig("web", "http_requests_total:error_ratio", 300.0, 0.6),
    ]
    assert ranking(signals, topo)[0] == "api"
