"""Replay a scenario directory through the real pipeline halves, keeping what lies between them.

`aiops replay` only shows the decisions; lifecycle tests also need the closed steps the detect half
gave the correlator (signal onsets and ends, change events) and the generator's ``fault_end``.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from pathlib import Path

import yaml

from aiops.config import load_settings
from aiops.correlate.topology import Topology
from aiops.decide.rules import load_rules
from aiops.drift.source import read_predictions
from aiops.observe.rejects import Rejects
from aiops.records import Decision
from aiops.runtime.pipeline import ClosedStep, CorrelateHalf, DetectHalf
from aiops.sources.scenario import Scenario, load_scenario, read_records

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Halves:
    scenario: Scenario
    fault_end: float  # the generator's end of the injected fault (scenario.yaml)
    detect: DetectHalf  # after the last record, for its stats and drift state
    steps: list[ClosedStep]
    decisions: list[Decision]


def replay_halves(path: Path) -> Halves:
    """Feed the scenario at ``path`` (with its predictions) through both halves; ~10 s of CPU."""
    sc = load_scenario(path)
    settings = load_settings(None)
    rules = load_rules(REPO / "rules")
    topology = Topology.from_mapping(sc.topology)
    topology.merge(Topology.from_mapping(rules.topology_mapping()))
    rejects = Rejects(log_examples=False)
    detect = DetectHalf(settings, rules, rejects, step_s=sc.step)
    correlate = CorrelateHalf(settings, rules, topology)
    records = heapq.merge(read_records(sc, rejects), read_predictions(path, rejects), key=lambda r: r.ts)
    steps = detect.feed_many(records) + detect.finish()
    fault_end = float(yaml.safe_load((path / "scenario.yaml").read_text())["generator"]["fault_end"])
    return Halves(sc, fault_end, detect, steps, correlate.on_steps(steps))
