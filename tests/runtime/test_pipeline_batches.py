"""Feeding the pipeline in batches of any size gives what feeding it one record at a time gives."""

from __future__ import annotations

import random
from dataclasses import asdict
from pathlib import Path

from aiops.config import load_settings
from aiops.correlate.topology import Topology
from aiops.decide.rules import load_rules
from aiops.observe.rejects import Rejects
from aiops.records import LogRecord, MetricSample, Record, make_labels, to_output
from aiops.runtime.pipeline import Pipeline
from tests.runtime.test_pipeline import STEP, T0, TOPOLOGY, telemetry

RULES = Path(__file__).resolve().parents[2] / "rules"


def _pipeline() -> Pipeline:
    rules = load_rules(RULES)
    return Pipeline(load_settings(), rules, Topology.from_mapping(TOPOLOGY), Rejects(log_examples=False), step_s=STEP)


def _one_by_one(records: list[Record]) -> tuple[list[dict[str, object]], dict[str, object], dict[object, int]]:
    p = _pipeline()
    out = [d for r in records for d in p.feed(r)] + p.finish()
    return [to_output(d) for d in out], asdict(p.stats), p.rejects.by_reason()


def _batched(records: list[Record], seed: int) -> tuple[list[dict[str, object]], dict[str, object], dict[object, int]]:
    rng = random.Random(seed)
    p = _pipeline()
    out, i = [], 0
    while i < len(records):
        n = rng.choice([1, 2, 7, 50, 400, 3000])
        out += p.feed_many(records[i:i + n])
        i += n
    out += p.finish()
    return [to_output(d) for d in out], asdict(p.stats), p.rejects.by_reason()


def test_batches_of_mixed_records_give_the_one_by_one_result() -> None:
    records = telemetry(seed=5, hours=2.25)
    # records exactly on step boundaries belong to the next step (a step is [start, end))
    records += [MetricSample(T0 + (k + 0.5) * STEP, "queue_depth", make_labels({"service": "catalog"}), k % 7)
                for k in range(0, 540, 3)]
    records += [LogRecord(T0 + (k + 0.5) * STEP, "catalog", f"cache miss for key {k}", "INFO") for k in range(1, 540, 5)]
    records.sort(key=lambda r: r.ts)
    # bounded disorder, a duplicate and a late record: the reorder buffer and deriver reject the same
    records[100], records[101] = records[101], records[100]
    records.insert(500, records[499])
    records.insert(2000, MetricSample(records[1999].ts - 600, "up", make_labels({"service": "api"}), 1.0))
    expected = _one_by_one(records)
    assert [r for r in expected[0] if r["kind"] == "incident"], "the fault must open an incident"
    assert sum(expected[2].values()) >= 2
    assert _batched(records, seed=1) == expected


def test_metric_only_batches_give_the_one_by_one_result() -> None:
    records = [r for r in telemetry(seed=6, hours=1.0) if isinstance(r, MetricSample)]
    expected = _one_by_one(records)
    p = _pipeline()
    out = p.feed_many(records[:5000]) + p.feed_many(records[5000:]) + p.finish()
    assert [to_output(d) for d in out] == expected[0]
    assert asdict(p.stats) == expected[1]


def test_a_record_on_a_step_boundary_belongs_to_the_next_step_in_a_batch_too() -> None:
    from aiops.records import ChangeEvent
    from aiops.runtime.pipeline import DetectHalf

    up = make_labels({"service": "api"})
    records: list[Record] = [MetricSample(T0, "up", up, 1.0), ChangeEvent(T0 + 0.5 * STEP, "deploy", "api"),
                             MetricSample(T0 + STEP, "up", up, 1.0), ChangeEvent(T0 + 1.5 * STEP, "deploy", "api"),
                             MetricSample(T0 + 2 * STEP, "up", up, 1.0)]
    settings = load_settings()
    rules = load_rules(RULES)
    single, batched = (DetectHalf(settings, rules, Rejects(log_examples=False), step_s=STEP) for _ in range(2))
    steps_single = [c for r in records for c in single.feed(r)] + single.finish()
    steps_batched = batched.feed_many(records) + batched.finish()
    first = int(T0 / STEP)
    assert [(c.index, len(c.items)) for c in steps_single] == [(first, 0), (first + 1, 1), (first + 2, 1)]
    assert steps_batched == steps_single
