"""Topology: trust levels, merge, learning, snapshot."""

from __future__ import annotations

from aiops.correlate.topology import CO_ANOMALY, DECLARED, LABELS, Topology
from aiops.records import Signal, SignalKind


def test_merge_keeps_highest_trust_and_accepts_rule_pairs() -> None:
    t = Topology()
    t.add_edge("a", "b", CO_ANOMALY)
    t.merge(Topology.from_mapping({"a": ["b"]}))
    assert t.trust("a", "b") == DECLARED
    t.merge((("x", ("y",)), ("x", ("z",))))
    assert t.callees("x") == ["y", "z"]
    t.merge({"y": ["z"]})
    assert t.downstream("x") == {"y", "z"}


def test_label_edges_do_not_override_declared() -> None:
    t = Topology.from_mapping({"a": ["b"]})
    s = Signal(id="1", ts=0.0, kind=SignalKind.METRIC, service="b", name="m", score=1.0,
               labels=(("destination_workload", "b"), ("source_workload", "a")))
    assert not t.learn_from_signal(s)
    s2 = Signal(id="2", ts=0.0, kind=SignalKind.METRIC, service="c", name="m", score=1.0,
                labels=(("destination_workload", "d"), ("source_workload", "c")))
    assert t.learn_from_signal(s2) and t.trust("c", "d") == LABELS


def test_co_anomaly_links_after_repeats_without_direction() -> None:
    t = Topology.from_mapping({"a": ["b"], "c": ["d"]})
    assert not t.related("a", "c")
    for _ in range(t.co_anomaly_min):
        t.observe_co_anomaly("a", "c")
    assert t.related("a", "c") and t.callees("a") == ["b"]


def test_unknown_services_group_by_time_only() -> None:
    t = Topology.from_mapping({"a": ["b"]})
    assert t.related("x", "y") and not t.related("a", "x")


def test_snapshot_roundtrip() -> None:
    t = Topology.from_mapping({"a": ["b"], "lonely": []})
    t.observe_co_anomaly("a", "q")
    u = Topology.from_snapshot(t.snapshot())
    assert u.snapshot() == t.snapshot()
