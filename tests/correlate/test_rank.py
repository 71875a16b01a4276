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


def test_a_callee_whose_only_change_is_the_traffic_it_receives_is_a_victim() -> None:
    # api fails; the queue it writes to only sees fewer requests (api sends fewer), strongly
    topo = Topology.from_mapping({"web": ["api"], "api": ["queue"]})
    signals = [
        sig("web", "http_requests_total:error_ratio", 0.0, 0.4),
        sig("api", "http_requests_total:error_ratio", 0.0, 0.6),
        sig("queue", "http_requests_total:rate", 0.0, 1.0, direction="down"),
    ]
    causes, _ = rank_causes(signals, [], topo, tolerance_s=30.0)
    assert [c.service for c in causes][:1] == ["api"]
    queue = next(c for c in causes if c.service == "queue")
    assert any("traffic flows from callers" in e for e in queue.evidence)


def test_a_traffic_change_at_an_entry_service_keeps_its_weight() -> None:
    # nobody calls the frontend: a change in its traffic comes from users and may be the cause
    topo = Topology.from_mapping({"frontend": ["search"]})
    signals = [
        sig("frontend", "http_requests_total:rate", 0.0, 1.0),
        sig("search", "http_request_duration_seconds:p99", 60.0, 0.5),
    ]
    causes, _ = rank_causes(signals, [], topo, tolerance_s=30.0)
    assert not any("traffic flows from callers" in e for c in causes for e in c.evidence)


def test_a_service_explains_the_traffic_changes_it_sends_down() -> None:
    # api fails; its callees see fewer calls; one of them also shows a modest p95 rise
    topo = Topology.from_mapping({"web": ["api"], "api": ["ext", "q1", "q2", "q3"]})
    signals = [
        sig("web", "http_requests_total:error_ratio", 0.0, 0.2),
        sig("api", "http_requests_total:error_ratio", 0.0, 1.0),
        sig("api", "http_request_duration_seconds:p90", 0.0, 0.2),
        sig("ext", "http_request_duration_seconds:p95", 0.0, 0.33),
        sig("ext", "http_requests_total:rate", 0.0, 0.16, direction="down"),
        *(sig(q, "http_requests_total:rate", 0.0, 0.16, direction="down") for q in ("q1", "q2", "q3")),
    ]
    assert ranking(signals, topo)[0] == "api"


def test_quantiles_of_one_histogram_are_one_piece_of_evidence() -> None:
    # a exports four quantiles of one latency histogram; b shows latency and errors
    topo = Topology.from_mapping({"web": ["a", "b"]})
    signals = [
        sig("web", "http_request_duration_seconds:p99", 0.0, 0.5),
        *(sig("a", f"http_request_duration_seconds:{q}", 0.0, 0.9) for q in ("p50", "p90", "p95", "p99")),
        sig("b", "http_request_duration_seconds:p99", 0.0, 0.9),
        sig("b", "http_requests_total:error_ratio", 0.0, 0.5),
    ]
    assert ranking(signals, topo)[0] == "b"


def test_an_internal_caller_that_calls_more_without_being_called_more_sent_the_surge() -> None:
    # api (called by web) starts hammering its store: the store's rate and latency jump, api errors
    topo = Topology.from_mapping({"web": ["api"], "api": ["store"]})
    signals = [
        sig("web", "http_requests_total:error_ratio", 0.0, 0.3),
        sig("api", "http_requests_total:error_ratio", 0.0, 0.6),
        sig("store", "http_request_duration_seconds:p99", 0.0, 1.0),
        sig("store", "http_requests_total:rate", 0.0, 1.0),
    ]
    causes, _ = rank_causes(signals, [], topo, tolerance_s=30.0)
    assert causes[0].service == "api"
    store = next(c for c in causes if c.service == "store")
    assert any("extra load came from that caller" in e for e in store.evidence)


def test_a_surge_passed_on_by_an_entry_service_stays_with_the_service_it_overloads() -> None:
    # users' traffic enters through the frontend (whose own rise a detector may miss): the
    # overloaded service is the cause, not the entry that passed the traffic on
    topo = Topology.from_mapping({"frontend": ["search", "cart"]})
    signals = [
        sig("frontend", "http_request_duration_seconds:p99", 30.0, 0.5),
        sig("search", "http_requests_total:rate", 0.0, 1.0),
        sig("search", "process_cpu_seconds_total:rate", 0.0, 1.0),
        sig("search", "http_request_duration_seconds:p99", 30.0, 0.8),
    ]
    assert ranking(signals, topo)[0] == "search"


def test_a_callee_only_busier_with_the_traffic_passed_on_does_not_explain_its_caller() -> None:
    # a surge passes through search to ranker: ranker's rate, CPU and memory climb, but only
    # search shows harm (latency, errors): the overloaded service is search
    topo = Topology.from_mapping({"frontend": ["search"], "search": ["ranker"]})
    signals = [
        sig("frontend", "http_request_duration_seconds:p99", 30.0, 0.9),
        sig("search", "http_requests_total:rate", 0.0, 0.97),
        sig("search", "process_cpu_seconds_total:rate", 0.0, 0.97),
        sig("search", "http_request_duration_seconds:p99", 15.0, 0.99),
        sig("search", "http_requests_total:error_ratio", 30.0, 0.99),
        sig("ranker", "http_requests_total:rate", 0.0, 0.97),
        sig("ranker", "process_cpu_seconds_total:rate", 0.0, 0.98),
        sig("ranker", "container_memory_working_set_bytes", 0.0, 0.97),
    ]
    assert ranking(signals, topo)[0] == "search"
