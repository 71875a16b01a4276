"""The whole synchronous pipeline on a small synthetic incident: detect, correlate, decide, deterministically."""

from __future__ import annotations

import math
import random
from pathlib import Path

from aiops.config import load_settings
from aiops.correlate.topology import Topology
from aiops.decide.rules import load_rules
from aiops.observe.rejects import Rejects
from aiops.records import ChangeEvent, LogRecord, MetricSample, Record, make_labels, to_output
from aiops.runtime.pipeline import Pipeline

RULES = Path(__file__).resolve().parents[2] / "rules"
STEP = 15.0
T0 = 1_767_225_600.0
FAULT = T0 + 2 * 3600
TOPOLOGY = {"frontend": ["checkout", "catalog"], "checkout": ["postgres"], "catalog": ["postgres"]}


def telemetry(seed: int = 1, hours: float = 3.0, fault: bool = True) -> list[Record]:
    """Requests, 5xx and latency for four services; checkout's bad deploy breaks it at FAULT."""
    rng = random.Random(seed)
    out: list[Record] = []
    counts: dict[tuple[str, str], float] = {}
    buckets = (0.05, 0.1, 0.25, 0.5, 1.0, math.inf)
    hist: dict[tuple[str, float], float] = {}
    steps = int(hours * 3600 / STEP)
    for i in range(steps):
        ts = T0 + i * STEP
        for svc, rps in (("frontend", 50.0), ("checkout", 20.0), ("catalog", 30.0), ("postgres", 60.0)):
            broken = fault and ts >= FAULT and svc == "checkout"
            echo = fault and ts >= FAULT + 45 and svc == "frontend"
            err = 0.25 if broken else 0.08 if echo else 0.002
            n = rps * STEP * rng.uniform(0.9, 1.1)
            bad = n * err * rng.uniform(0.8, 1.2)
            for code, inc in (("200", n - bad), ("500", bad)):
                key = (svc, code)
                counts[key] = counts.get(key, 0.0) + round(inc)
                out.append(MetricSample(ts + rng.uniform(0, 2), "http_requests_total",
                                        make_labels({"service": svc, "code": code}), counts[key]))
            slow = 4.0 if broken else 1.5 if echo else 1.0
            for le in buckets:
                frac = 1.0 if math.isinf(le) else min(1.0, 1 - math.exp(-le / (0.06 * slow)))
                hist[(svc, le)] = hist.get((svc, le), 0.0) + round(n * frac)
                out.append(MetricSample(ts + 1, "http_request_duration_seconds_bucket",
                                        make_labels({"service": svc, "le": "+Inf" if math.isinf(le) else str(le)}),
                                        hist[(svc, le)]))
            out.append(LogRecord(ts + 3, svc, f"GET /api/{svc}/items/{rng.randint(1, 9999)} 200 "
                                 f"{rng.randint(3, 90)}ms", "INFO"))
            if broken:
                for _ in range(3):
                    out.append(LogRecord(ts + 4, svc, f"NullPointerException in CartHandler.apply for order "
                                         f"{rng.randint(1000, 9999)}", "ERROR"))
    if fault:
        out.append(ChangeEvent(FAULT - 60, "deploy", "checkout", (("previous_version", "v1.9"), ("version", "v2.0"))))
    out.append(ChangeEvent(T0 + 3600, "deploy", "catalog", (("previous_version", "v3.1"), ("version", "v3.2"))))
    out.sort(key=lambda r: r.ts)
    return out


def run(records: list[Record]) -> list[dict[str, object]]:
    settings = load_settings()
    rules = load_rules(RULES)
    pipeline = Pipeline(settings, rules, Topology.from_mapping(TOPOLOGY), Rejects(log_examples=False), step_s=STEP)
    decisions = pipeline.feed_many(records)
    decisions.extend(pipeline.finish())
    return [to_output(d) for d in decisions]


def test_bad_deploy_is_detected_ranked_and_rollback_planned() -> None:
    out = run(telemetry())
    opens = [r for r in out if r["kind"] == "incident" and r["status"] == "open"]
    assert opens, "no incident opened"
    first = opens[0]
    assert FAULT - 60 <= first["ts"] <= FAULT + 300
    assert first["root_causes"][0]["service"] == "checkout"
    actions = [r for r in out if r["kind"] == "action" and r["incident_id"] == first["id"]]
    assert [a["type"] for a in actions] == ["rollback"]
    assert actions[0]["dry_run"] is True and actions[0]["target"]["service"] == "checkout"
    assert all(r["ts"] >= FAULT - 60 for r in opens), "incident before the fault"


def test_quiet_telemetry_opens_no_incident() -> None:
    out = run(telemetry(seed=2, fault=False))
    assert [r for r in out if r["kind"] == "incident"] == []


def test_replay_is_deterministic_and_tolerates_bounded_disorder() -> None:
    records = telemetry(seed=3)
    shuffled = list(records)
    # swap neighbours a few seconds apart: within the runtime's lateness bound
    for i in range(0, len(shuffled) - 1, 7):
        if abs(shuffled[i].ts - shuffled[i + 1].ts) < 10:
            shuffled[i], shuffled[i + 1] = shuffled[i + 1], shuffled[i]
    assert shuffled != records
    assert run(records) == run(records) == run(shuffled)


def test_decisions_come_out_in_event_time_order() -> None:
    out = run(telemetry(seed=4))
    stamps = [r["ts"] for r in out]
    assert stamps == sorted(stamps)
    assert {r["kind"] for r in out} == {"incident", "alert", "action"}
