"""A restart in the middle of a model's prediction log resumes the drift monitor's reference and window."""

from __future__ import annotations

import heapq
from pathlib import Path

from aiops.config import Settings
from aiops.correlate.topology import Topology
from aiops.decide.rules import load_rules
from aiops.drift.source import read_predictions
from aiops.observe.rejects import Rejects
from aiops.runtime.pipeline import Pipeline
from aiops.scenario.generate import generate
from aiops.sources.scenario import load_scenario, read_records
from aiops.state.pipeline_state import restore_pipeline, snapshot_pipeline

RULES_DIR = Path(__file__).resolve().parents[2] / "rules"


def test_restart_mid_prediction_log_gives_the_same_decisions(tmp_path: Path) -> None:
    out = tmp_path / "drift"
    generate("model-drift", out, seed=4, services=6, hours=3.0)
    scenario = load_scenario(out)
    rules = load_rules(RULES_DIR)
    rejects = Rejects(log_examples=False)
    records = list(heapq.merge(read_records(scenario, rejects), read_predictions(out, rejects), key=lambda r: r.ts))
    assert any(type(r).__name__ == "PredictionRecord" for r in records)

    def pipeline() -> Pipeline:
        return Pipeline(Settings(), rules, Topology.from_mapping(scenario.topology), Rejects(log_examples=False),
                        step_s=scenario.step)

    whole = pipeline()
    expected = whole.feed_many(records) + whole.finish()
    assert whole.stats.signals_by_kind.get("drift", 0) > 0, "the scenario should make the monitor fire"

    cut = len(records) * 2 // 3
    first = pipeline()
    got = first.feed_many(records[:cut])
    state = snapshot_pipeline(first)
    assert state["drift"]["models"], "the drift monitor's learned state is part of the checkpoint"
    second = pipeline()
    restore_pipeline(second, state)
    got += second.feed_many(records[cut:]) + second.finish()
    assert [repr(d) for d in got] == [repr(d) for d in expected]
