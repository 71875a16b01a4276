"""``aiops replay DIR``: run a scenario directory through the pipeline as fast as the CPU allows."""

from __future__ import annotations

import heapq
import json
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from aiops.config import Settings
from aiops.correlate.topology import Topology
from aiops.decide.rules import Rules, RulesError, load_rules
from aiops.drift.records import PredictionRecord
from aiops.drift.source import read_predictions
from aiops.observe.rejects import Rejects
from aiops.records import Action, Alert, Decision, Incident, Record, to_output
from aiops.runtime.pipeline import Pipeline, PipelineStats
from aiops.scenario.check import CheckResult
from aiops.scenario.check import check as check_expect
from aiops.sources.scenario import Scenario, ScenarioError, load_scenario, read_records


@dataclass
class ReplayResult:
    scenario: Scenario
    decisions: list[Decision]
    stats: PipelineStats
    rejects: Rejects
    wall_s: float

    def records(self) -> list[dict[str, Any]]:
        """Decisions in the replay output form of SCENARIO_FORMAT.md."""
        return [to_output(d) for d in self.decisions]


def replay(scenario: Scenario, settings: Settings, rules: Rules, rejects: Rejects | None = None) -> ReplayResult:
    """Replay one loaded scenario; deterministic for the same files, settings and rules."""
    rejects = rejects if rejects is not None else Rejects()
    # rules/topology.yaml is the operator's word; the scenario's own topology adds to it.
    topology = Topology.from_mapping(scenario.topology)
    topology.merge(Topology.from_mapping(rules.topology_mapping()))
    pipeline = Pipeline(settings, rules, topology, rejects, step_s=scenario.step)
    started = time.perf_counter()
    # A model's prediction log (predictions.jsonl, an extension of the format) feeds the drift monitor.
    records = heapq.merge(read_records(scenario, rejects), read_predictions(scenario.path, rejects), key=_ts)
    decisions = pipeline.feed_many(records)
    decisions.extend(pipeline.finish())
    return ReplayResult(scenario, decisions, pipeline.stats, rejects, time.perf_counter() - started)


def _ts(record: Record | PredictionRecord) -> float:
    return record.ts


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


def print_summary(result: ReplayResult, stream: TextIO) -> None:
    st = result.stats
    hours = (st.last_ts - st.first_ts) / 3600 if st.last_ts >= st.first_ts else 0.0
    print(
        f"replayed {result.scenario.name}: {st.metric_samples:,} samples, {st.log_lines:,} log lines, "
        f"{st.change_events:,} change events, {st.predictions:,} predictions, "
        f"{hours:.1f} h of event time in {result.wall_s:.1f} s",
        file=stream,
    )
    signals = ", ".join(f"{n} {k}" for k, n in sorted(st.signals_by_kind.items())) or "none"
    print(f"signals: {signals}; incidents: {st.incidents} records, alerts: {st.alerts}, actions: {st.actions}",
          file=stream)
    if result.rejects.total:
        print(f"bad records skipped: {result.rejects.total}", file=stream)
        for line in result.rejects.report():
            print(f"  {line}", file=stream)
    for d in result.decisions:
        if isinstance(d, Incident):
            head = f"{_when(d.ts)}  incident {d.id} {d.status.value.upper()}"
            if d.status.value == "resolved":
                print(head, file=stream)
                continue
            print(f"{head} severity={d.severity} services={','.join(d.services)}", file=stream)
            for i, rc in enumerate(d.root_causes[:3], 1):
                why = "; ".join(rc.evidence[:3])
                print(f"    root cause #{i}: {rc.service} (score {rc.score:.2f}){': ' + why if why else ''}",
                      file=stream)
        elif isinstance(d, Action):
            mode = "dry run" if d.dry_run else "live"
            print(f"{_when(d.ts)}    action {d.type} -> {dict(d.target).get('service')} ({mode}, "
                  f"{d.outcome.value}): {d.reason}", file=stream)
        elif isinstance(d, Alert):
            print(f"{_when(d.ts)}    alert {d.status.value}: {dict(d.annotations).get('summary', '')}", file=stream)


def replay_command(path: Path, settings: Settings, *, out: Path | None, check: bool, quiet: bool) -> int:
    """The CLI entry: exit 0 on success, 1 when ``--check`` finds problems, 2 on unusable input."""
    try:
        scenario = load_scenario(path)
        rules = load_rules(settings.rules_dir)
    except (ScenarioError, RulesError) as exc:
        print(f"aiops replay: {exc}", file=sys.stderr)
        return 2
    result = replay(scenario, settings, rules)
    records = result.records()
    if out is not None:
        with out.open("w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, separators=(",", ":")) + "\n")
    if not quiet:
        print_summary(result, sys.stdout)
    if check:
        return _check(result, records)
    return 0


def _check(result: ReplayResult, records: list[dict[str, Any]]) -> int:
    expect = result.scenario.expect
    if expect is None:
        print("check: the scenario has no 'expect'; nothing to compare", file=sys.stdout)
        return 0
    outcome: CheckResult = check_expect(records, expect)
    print(outcome.report(), file=sys.stdout)
    return 0 if outcome.ok else 1
