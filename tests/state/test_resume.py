"""Checkpoint, restart, resume: the same decisions as a run that never stopped.

A generated bad-deploy scenario is replayed once without interruption. Then the same records
are fed to a pipeline that is checkpointed to a state directory part-way, thrown away, and
replaced by a *new* pipeline restored from the file; the decisions before the cut plus the
decisions after it must be exactly the uninterrupted ones, and the final state identical.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import structlog

from aiops.config import Settings
from aiops.correlate.topology import Topology
from aiops.decide.rules import Rules, load_rules
from aiops.observe.rejects import Rejects
from aiops.records import Action, Alert, Decision, Incident, IncidentStatus, Record
from aiops.runtime.pipeline import Pipeline
from aiops.scenario.generate import generate
from aiops.sources.scenario import Scenario, load_scenario, read_records
from aiops.state import FileCheckpointStore, MemoryCheckpointStore
from aiops.state.pipeline_state import (
    CORRELATE_COVERED,
    COVERED,
    DETECT_COVERED,
    IncompatibleState,
    checkpoint,
    restore_correlate,
    restore_detect,
    restore_pipeline,
    resume,
    snapshot_correlate,
    snapshot_detect,
    snapshot_pipeline,
)

QUIET = structlog.wrap_logger(structlog.ReturnLogger())
RULES_DIR = Path(__file__).resolve().parents[2] / "rules"


@dataclass
class Run:
    scenario: Scenario
    rules: Rules
    records: list[Record]
    decisions: list[Decision]
    final_state: str
    fault_start: float


def _pipeline(run_or_scenario: Run | Scenario, rules: Rules | None = None) -> Pipeline:
    scenario = run_or_scenario.scenario if isinstance(run_or_scenario, Run) else run_or_scenario
    rules = rules if rules is not None else run_or_scenario.rules  # type: ignore[union-attr]
    topology = Topology.from_mapping(scenario.topology)
    topology.merge(Topology.from_mapping(rules.topology_mapping()))
    return Pipeline(Settings(), rules, topology, Rejects(log_examples=False), step_s=scenario.step)


def _fingerprint(decisions: list[Decision]) -> list[str]:
    # repr, not ==: a NaN inside a record must compare equal to itself.
    return [repr(d) for d in decisions]


def _state(p: Pipeline) -> str:
    return _plain(snapshot_pipeline(p))


def _plain(state: dict) -> str:
    # Numbers compared as floats: a baseline that starts as the int 6 comes back as 6.0 (same value).
    text = json.dumps(state, default=lambda a: a.tolist())  # numpy arrays as lists
    return json.dumps(json.loads(text, parse_int=float), sort_keys=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    out = tmp_path_factory.mktemp("scenario") / "bad-deploy"
    gen = generate("bad-deploy", out, seed=3, services=6, hours=2.0)
    assert gen.fault_start is not None
    scenario = load_scenario(out)
    rules = load_rules(RULES_DIR)
    records = list(read_records(scenario, Rejects(log_examples=False)))
    p = _pipeline(scenario, rules)
    decisions = p.feed_many(records)
    decisions += p.finish()
    yield Run(scenario, rules, records, decisions, _state(p), gen.fault_start)


def _cut_at(run: Run, ts: float) -> int:
    return next(i for i, r in enumerate(run.records) if r.ts >= ts)


def _resumed(run: Run, cuts: list[int], directory: Path) -> tuple[list[Decision], Pipeline]:
    """Feed the records with a checkpoint / brand-new pipeline / restore at each cut."""
    store = FileCheckpointStore(directory, logger=QUIET)
    p = _pipeline(run)
    decisions: list[Decision] = []
    start = 0
    for cut in [*cuts, len(run.records)]:
        decisions += p.feed_many(run.records[start:cut])
        start = cut
        if cut < len(run.records):
            checkpoint(p, store, offsets={("aiops.metrics", 0): cut})
            del p  # the old process is gone; only the state directory survives
            p = _pipeline(run)
            cp = resume(p, FileCheckpointStore(directory, logger=QUIET))
            assert cp is not None and cp.offsets == {("aiops.metrics", 0): cut}
    decisions += p.finish()
    return decisions, p


def test_uninterrupted_run_is_worth_resuming(run: Run) -> None:
    """The reference run must contain what a restart could break: an incident, alerts, an action."""
    kinds = {(type(d).__name__, getattr(d, "status", None)) for d in run.decisions}
    assert ("Incident", IncidentStatus.OPEN) in kinds and ("Incident", IncidentStatus.RESOLVED) in kinds
    assert any(isinstance(d, Alert) for d in run.decisions) and any(isinstance(d, Action) for d in run.decisions)
    opened = next(d for d in run.decisions if isinstance(d, Incident))
    assert opened.ts > run.fault_start  # so a cut before the fault restarts before the incident


def test_restart_before_the_fault_gives_the_same_decisions(run: Run, tmp_path: Path) -> None:
    # The detectors' baselines must survive: the incident is found only after the restart.
    cut = _cut_at(run, run.fault_start - 600)
    decisions, p = _resumed(run, [cut], tmp_path)
    assert _fingerprint(decisions) == _fingerprint(run.decisions)
    assert _state(p) == run.final_state


def test_restart_during_the_incident_gives_the_same_decisions(run: Run, tmp_path: Path) -> None:
    # The open incident, its alert and its planned action must survive: no second page, no second action.
    opened = next(d for d in run.decisions if isinstance(d, Incident))
    cut = _cut_at(run, opened.ts + 120)
    decisions, p = _resumed(run, [cut], tmp_path)
    assert _fingerprint(decisions) == _fingerprint(run.decisions)
    assert _state(p) == run.final_state


def test_many_restarts_give_the_same_decisions(run: Run, tmp_path: Path) -> None:
    n = len(run.records)
    cuts = [n // 7, n // 3 + 1, n // 2 + 13, (4 * n) // 5]
    decisions, p = _resumed(run, cuts, tmp_path)
    assert _fingerprint(decisions) == _fingerprint(run.decisions)
    assert _state(p) == run.final_state


def test_cold_restart_would_differ(run: Run) -> None:
    """Guards the tests above: without the checkpoint the second half decides differently."""
    cut = _cut_at(run, run.fault_start - 600)
    first = _pipeline(run)
    before = first.feed_many(run.records[:cut])
    cold = _pipeline(run)
    after = cold.feed_many(run.records[cut:]) + cold.finish()
    assert _fingerprint(before + after) != _fingerprint(run.decisions)


def test_every_moving_part_of_the_pipeline_is_covered(run: Run) -> None:
    p = _pipeline(run)
    p.feed_many(run.records[:1000])
    configuration = {"settings", "step_s", "rejects", "registry"}
    assert set(vars(p)) - configuration == COVERED, "a Pipeline attribute is neither state nor configuration"
    assert set(vars(p.detect_half)) - configuration == DETECT_COVERED, "a DetectHalf attribute is not covered"
    assert set(vars(p.correlate_half)) - configuration == CORRELATE_COVERED, "a CorrelateHalf attribute is not covered"


def test_incompatible_state_is_refused_and_leaves_pipeline_untouched(run: Run) -> None:
    p = _pipeline(run)
    p.feed_many(run.records[:5000])
    good = snapshot_pipeline(p)
    target = _pipeline(run)
    target.feed_many(run.records[:100])
    before = _state(target)
    for broken in [{**good, "version": 99}, {**good, "step_s": 60.0}, {**good, "detect": {"version": 0}},
                   {k: v for k, v in good.items() if k != "logs"},
                   {**good, "reorder": {**good["reorder"], "records": [["x", 1.0]]}}]:
        with pytest.raises(IncompatibleState):
            restore_pipeline(target, broken)
        assert _state(target) == before


def test_resume_sets_aside_a_refused_checkpoint_and_uses_the_previous_one(run: Run, tmp_path: Path) -> None:
    store = FileCheckpointStore(tmp_path, keep=1, logger=QUIET)
    p = _pipeline(run)
    p.feed_many(run.records[:3000])
    checkpoint(p, store)
    older = _state(p)
    store.save({**snapshot_pipeline(p), "version": 99})  # as if written by a newer build
    q = _pipeline(run)
    cp = resume(q, store)
    assert cp is not None and _state(q) == older
    assert store.failures == {"incompatible_state": 1}
    assert len(list(tmp_path.glob("*.corrupt-1"))) == 1
    # Nothing usable left: a cold start, not a crash.
    empty = MemoryCheckpointStore(logger=QUIET)
    empty.save({"version": 99})
    assert resume(_pipeline(run), empty) is None and empty.failures == {"incompatible_state": 1}


def test_each_half_restores_on_its_own(run: Run) -> None:
    """Halves checkpointed separately (as scale-out does) and restored into new halves continue exactly."""
    cut = _cut_at(run, run.fault_start + 300)  # mid-incident: open signals, an open incident, a pending step
    p = _pipeline(run)
    before = p.feed_many(run.records[:cut])
    detect_state = json.loads(json.dumps(snapshot_detect(p.detect_half), default=lambda a: a.tolist()))
    correlate_state = json.loads(json.dumps(snapshot_correlate(p.correlate_half)))
    q = _pipeline(run)
    restore_detect(q.detect_half, detect_state)
    restore_correlate(q.correlate_half, correlate_state)
    q.stats = q.detect_half.stats  # one set of counters, as restore_pipeline does
    after = q.feed_many(run.records[cut:]) + q.finish()
    assert _fingerprint(before + after) == _fingerprint(run.decisions)
    assert _state(q) == run.final_state


def test_a_half_restores_from_a_whole_pipeline_snapshot_and_refuses_bad_state(run: Run) -> None:
    p = _pipeline(run)
    p.feed_many(run.records[:4000])
    whole = snapshot_pipeline(p)
    q = _pipeline(run)
    restore_detect(q.detect_half, whole)
    assert _plain(snapshot_detect(q.detect_half)) == _plain(snapshot_detect(p.detect_half))
    fresh = _pipeline(run)
    for broken in [{**whole, "pending": [["nonsense"]]}, {**whole, "version": 2}]:
        with pytest.raises(IncompatibleState):
            restore_detect(fresh.detect_half, broken)
    with pytest.raises(IncompatibleState):
        restore_correlate(fresh.correlate_half, {**whole, "decider": None})
    assert fresh.detect_half.next_step is None and fresh.stats.incidents == 0
