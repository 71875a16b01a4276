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
from aiops.records import Action, Alert, ChangeEvent, Decision, Incident, Record, to_output
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
    lines: list[tuple[float, str]] = []
    shown: set[tuple[float, str, str | None, tuple[tuple[str, str], ...]]] = set()
    for d in result.decisions:
        if isinstance(d, Incident):
            # Changes to an incident's services while it is open (a rollback, a retrained model) are
            # what usually ends it: show them at their own time, between its open and resolution.
            for c in d.changes:
                key = (c.ts, c.type, c.service, c.attrs)
                if c.ts >= d.opened_ts and c.service in d.services and key not in shown:
                    shown.add(key)
                    lines.append((c.ts, f"{_when(c.ts)}    change {_describe_change(c)} (incident {d.id})"))
            head = f"{_when(d.ts)}  incident {d.id} {d.status.value.upper()}"
            if d.status.value == "resolved":
                lines.append((d.ts, head))
                continue
            lines.append((d.ts, f"{head} severity={d.severity} services={','.join(d.services)}"))
            for i, rc in enumerate(d.root_causes[:3], 1):
                why = "; ".join(rc.evidence[:3])
                lines.append((d.ts, f"    root cause #{i}: {rc.service} (score {rc.score:.2f})"
                                    f"{': ' + why if why else ''}"))
        elif isinstance(d, Action):
            mode = "dry run" if d.dry_run else "live"
            lines.append((d.ts, f"{_when(d.ts)}    action {d.type} -> {dict(d.target).get('service')} ({mode}, "
                                f"{d.outcome.value}): {d.reason}"))
        elif isinstance(d, Alert):
            lines.append((d.ts, f"{_when(d.ts)}    alert {d.status.value}: "
                                f"{dict(d.annotations).get('summary', '')}"))
    # stable: lines of one decision, and decisions of one step, keep their order
    for _, line in sorted(lines, key=lambda x: x[0]):
        print(line, file=stream)


def _describe_change(c: ChangeEvent) -> str:
    """``deploy of ranker: search-ranker v7 -> v8 (reason=retrain)`` from a change event's attributes.

    >>> _describe_change(ChangeEvent(ts=0.0, type="deploy", service="api",
    ...                              attrs=(("previous_version", "v1"), ("reason", "rollback"), ("version", "v0"))))
    'deploy of api: v1 -> v0 (reason=rollback)'
    """
    a = dict(c.attrs)
    text = f"{c.type} of {c.service}:"
    if "model" in a:
        text += f" {a.pop('model')}"
    for old, new in (("previous_version", "version"), ("previous_value", "value")):
        if new in a:
            text += f" {a.pop(old, '?')} -> {a.pop(new)}"
    if "key" in a:
        text += f" {a.pop('key')}"
    extra = ", ".join(f"{k}={v}" for k, v in sorted(a.items()))
    return text + (f" ({extra})" if extra else "")


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
