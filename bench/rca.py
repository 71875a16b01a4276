"""Incident detection and root-cause accuracy over a directory of scenarios.

Replays every scenario under ``--scenarios`` (any directory holding a ``scenario.yaml``, at
any depth, foreign ones included) through the project's own pipeline in-process and scores
the decisions against each scenario's ``expect`` with the same matching as ``--check``:

- **recall**: expected incidents for which an incident opened within
  ``[fault_start - 60, fault_start + detect_within]``;
- **delay**: open time minus fault start, median and p90 over the matched ones;
- **AC@1 / AC@3**: the true root-cause service ranked first / in the top 3 of the incident's
  latest ranking by the deadline (a missed incident counts as wrong);
- **false incidents per day of quiet time**: incidents opening in no expected window, per 24 h
  of replayed event time outside the expected windows;
- **action problems**: matched incidents whose planned actions differ from the expected set,
  and actions on unexpected incidents;
- **open after the fault**: how long a matched incident stayed open after the fault ended
  (its resolution, or the end of the replay if it never resolved, minus the fault's end), for
  scenarios that record when it ended (``generator.fault_end`` in ``scenario.yaml``, written by
  ``aiops scenario generate``; others are left out). An incident that lingers on the recovery's
  aftermath or absorbs later, unrelated anomalies shows here; one that resolved while the fault
  went on is negative. Printed as the column ``after_s`` (``+`` marks one that never resolved)
  and as median / max in the summary; a fault lasting to the end of the recording is left out.

``--cache DIR`` stores what the correlator was fed (signals, changes, ticks) per scenario;
``--from-cache`` re-runs only correlation and decision from it, which takes a second instead
of a full replay: the loop for working on ranking and rules. Without these flags nothing is
cached and every number comes from a full replay.

    python bench/rca.py --scenarios scenarios/
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import structlog  # noqa: E402
import yaml  # noqa: E402

from aiops.config import Settings, load_settings  # noqa: E402
from aiops.correlate.correlator import Correlator, _signal_in, _signal_out  # noqa: E402
from aiops.correlate.topology import Topology  # noqa: E402
from aiops.decide.engine import Decider  # noqa: E402
from aiops.decide.rules import Rules, load_rules  # noqa: E402
from aiops.records import ChangeEvent, Decision, Incident, Signal, to_output  # noqa: E402
from aiops.scenario.check import OPEN_SLACK_S, check  # noqa: E402
from aiops.sources.scenario import Scenario, ScenarioError, load_scenario  # noqa: E402

DAY_S = 86400.0


class Recorder:
    """Stands in for the pipeline's correlator: forwards every call and records it in order."""

    def __init__(self, inner: Correlator) -> None:
        self.inner = inner
        self.calls: list[list[Any]] = []

    def on_signal(self, signal: Signal) -> None:
        self.calls.append(["s", _signal_out(signal)])
        self.inner.on_signal(signal)

    def on_change(self, event: ChangeEvent) -> None:
        self.calls.append(["c", {"ts": event.ts, "type": event.type, "service": event.service,
                                 "attrs": [list(a) for a in event.attrs]}])
        self.inner.on_change(event)

    def tick(self, ts: float) -> list[Incident]:
        self.calls.append(["t", ts])
        return self.inner.tick(ts)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def rerun(calls: Iterable[Sequence[Any]], correlator: Correlator, decider: Decider) -> list[Decision]:
    """Correlation and decision only, from a recording: the same calls in the same order."""
    out: list[Decision] = []
    for kind, arg in calls:
        if kind == "s":
            correlator.on_signal(_signal_in(arg))
        elif kind == "c":
            correlator.on_change(ChangeEvent(ts=arg["ts"], type=arg["type"], service=arg["service"],
                                             attrs=tuple((a, b) for a, b in arg["attrs"])))
        else:
            for incident in correlator.tick(arg):
                out.append(incident)
                out.extend(decider.on_incident(incident))
    return out


@dataclass
class Result:
    name: str
    expected: int = 0
    matched: int = 0
    ranks: list[int | None] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)
    late: list[float] = field(default_factory=list)
    false_incidents: int = 0
    quiet_s: float = 0.0
    problems: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    open_after: list[tuple[float, bool]] = field(default_factory=list)  # (seconds, resolved)


def _union_length(spans: list[tuple[float, float]]) -> float:
    total, cur_lo, cur_hi = 0.0, None, None
    for lo, hi in sorted(spans):
        if cur_hi is None or lo > cur_hi:
            if cur_hi is not None and cur_lo is not None:
                total += cur_hi - cur_lo
            cur_lo, cur_hi = lo, hi
        else:
            cur_hi = max(cur_hi, hi)
    if cur_hi is not None and cur_lo is not None:
        total += cur_hi - cur_lo
    return total


def score(sc: Scenario, records: list[dict[str, Any]], first_ts: float, last_ts: float) -> Result:
    res = Result(sc.name)
    expect = sc.expect
    windows = [(e.fault_start - OPEN_SLACK_S, e.fault_start + e.detect_within) for e in
               (expect.incidents if expect else ())]
    opens = {}
    for r in records:
        if r.get("kind") == "incident" and r.get("status") == "open" and r["id"] not in opens:
            opens[r["id"]] = r["ts"]
    res.false_incidents = sum(1 for ts in opens.values() if not any(lo <= ts <= hi for lo, hi in windows))
    clipped = [(max(lo, first_ts), min(hi, last_ts)) for lo, hi in windows if hi > first_ts and lo < last_ts]
    res.quiet_s = max(0.0, (last_ts - first_ts) - _union_length(clipped))
    if expect is None:
        return res
    result = check(records, expect)
    res.expected = len(result.matches)
    for m in result.matches:
        if m.incident_id is not None:
            res.matched += 1
            res.delays.append(float(m.delay or 0.0))
        res.ranks.append(m.rank)
    res.problems = [p for p in result.problems]
    fault_end = _fault_end(sc)
    # A fault that lasts to the end of the recording (a leak never fixed) has no recovery to measure.
    if fault_end is not None and fault_end < last_ts - 60.0:
        for m in result.matches:
            if m.incident_id is None:
                continue
            resolved = [r["ts"] for r in records if r.get("kind") == "incident" and r.get("id") == m.incident_id
                        and r.get("status") == "resolved"]
            # the last resolution: a flap re-opens the same id, and it is over only at its last one
            res.open_after.append((resolved[-1] - fault_end, True) if resolved else (last_ts - fault_end, False))
    return res


def _fault_end(sc: Scenario) -> float | None:
    """When the scenario's (single) fault ended, if its generator recorded it; else None."""
    try:
        doc = yaml.safe_load((sc.path / "scenario.yaml").read_text(encoding="utf-8"))
        value = doc["generator"]["fault_end"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    if sc.expect is None or len(sc.expect.incidents) != 1 or not isinstance(value, (int, float)):
        return None
    return float(value)


def replay_one(sc: Scenario, settings: Settings, rules: Rules) -> tuple[list[dict[str, Any]], float, float,
                                                                      list[list[Any]]]:
    import heapq

    from aiops.drift.source import read_predictions
    from aiops.observe.rejects import Rejects
    from aiops.runtime.pipeline import Pipeline
    from aiops.sources.scenario import read_records

    rejects = Rejects(log_examples=False)
    topology = Topology.from_mapping(sc.topology)
    topology.merge(Topology.from_mapping(rules.topology_mapping()))
    pipeline = Pipeline(settings, rules, topology, rejects, step_s=sc.step)
    recorder = Recorder(pipeline.correlator)
    pipeline.correlator = recorder  # type: ignore[assignment]
    # As `aiops replay` does: a model's prediction log (predictions.jsonl) feeds the drift monitor,
    # without which a model-drift incident is judged on its metrics alone and resolves too early.
    records = heapq.merge(read_records(sc, rejects), read_predictions(sc.path, rejects), key=lambda r: r.ts)
    decisions = pipeline.feed_many(records)
    decisions.extend(pipeline.finish())
    st = pipeline.stats
    return [to_output(d) for d in decisions], st.first_ts, st.last_ts, recorder.calls


def from_cache(sc: Scenario, settings: Settings, rules: Rules, cached: dict[str, Any]) -> list[dict[str, Any]]:
    topology = Topology.from_mapping(sc.topology)
    topology.merge(Topology.from_mapping(rules.topology_mapping()))
    quiet = structlog.wrap_logger(structlog.ReturnLogger())
    correlator = Correlator(settings.correlate, topology, logger=quiet)
    decider = Decider(rules, settings.act, logger=quiet)
    return [to_output(d) for d in rerun(cached["calls"], correlator, decider)]


def find_scenarios(root: Path) -> list[Path]:
    if (root / "scenario.yaml").is_file():
        return [root]
    return sorted(p.parent for p in root.rglob("scenario.yaml"))


def _pct(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", type=Path, default=Path("scenarios"))
    ap.add_argument("--rules", type=Path, default=None, help="rules directory (default: settings rules_dir)")
    ap.add_argument("--config", type=Path, default=None, help="settings YAML (as `aiops --config`)")
    ap.add_argument("--cache", type=Path, default=None, help="store / read correlator input recordings here")
    ap.add_argument("--from-cache", action="store_true", help="re-run correlate+decide from --cache only")
    ap.add_argument("-v", "--verbose", action="store_true", help="print each scenario's check problems")
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))  # errors only

    settings = load_settings(args.config)
    rules = load_rules(args.rules if args.rules is not None else settings.rules_dir)
    dirs = find_scenarios(args.scenarios)
    if not dirs:
        print(f"no scenarios under {args.scenarios}", file=sys.stderr)
        return 2
    results: list[Result] = []
    print(f"{'scenario':28} {'exp':>3} {'hit':>3} {'ranks':>10} {'delay_s':>10} {'false':>5} {'quiet_h':>7} "
          f"{'problems':>8} {'after_s':>8} {'wall_s':>6}")
    for d in dirs:
        try:
            sc = load_scenario(d)
        except ScenarioError as exc:
            print(f"skip {d}: {exc}", file=sys.stderr)
            continue
        started = time.perf_counter()
        cache_file = args.cache / f"{d.resolve().as_posix().strip('/').replace('/', '__')}.json.gz" \
            if args.cache else None
        if args.from_cache:
            if cache_file is None or not cache_file.is_file():
                print(f"skip {d}: not in the cache", file=sys.stderr)
                continue
            with gzip.open(cache_file, "rt", encoding="utf-8") as f:
                cached = json.load(f)
            records = from_cache(sc, settings, rules, cached)
            first_ts, last_ts = cached["first_ts"], cached["last_ts"]
        else:
            records, first_ts, last_ts, calls = replay_one(sc, settings, rules)
            if cache_file is not None:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
                with gzip.open(cache_file, "wt", encoding="utf-8") as f:
                    json.dump({"calls": calls, "first_ts": first_ts, "last_ts": last_ts}, f)
        res = score(sc, records, first_ts, last_ts)
        res.wall_s = time.perf_counter() - started
        results.append(res)
        ranks = ",".join(str(r) if r is not None else "-" for r in res.ranks) or "."
        delays = ",".join(f"{x:.0f}" for x in res.delays) or "."
        after = ",".join(f"{x:.0f}{'' if ok else '+'}" for x, ok in res.open_after) or "."
        print(f"{sc.name[:28]:28} {res.expected:>3} {res.matched:>3} {ranks:>10} {delays:>10} "
              f"{res.false_incidents:>5} {res.quiet_s / 3600:>7.1f} {len(res.problems):>8} {after:>8} "
              f"{res.wall_s:>6.1f}")
        if args.verbose:
            for p in res.problems:
                print(f"    {p}")

    expected = sum(r.expected for r in results)
    matched = sum(r.matched for r in results)
    ranks = [x for r in results for x in r.ranks]
    delays = [x for r in results for x in r.delays]
    false_n = sum(r.false_incidents for r in results)
    quiet_days = sum(r.quiet_s for r in results) / DAY_S
    recall = matched / expected if expected else math.nan
    ac1 = sum(1 for x in ranks if x == 1) / expected if expected else math.nan
    ac3 = sum(1 for x in ranks if x is not None and x <= 3) / expected if expected else math.nan
    false_per_day = false_n / quiet_days if quiet_days > 0 else math.nan
    med = statistics.median(delays) if delays else math.nan
    p90 = _pct(delays, 0.9)
    problems = sum(len(r.problems) for r in results)
    after = [x for r in results for x, _ in r.open_after]
    print()
    print(f"scenarios {len(results)}, expected incidents {expected}, matched {matched}, "
          f"false incidents {false_n} over {quiet_days * 24:.1f} h of quiet time, check problems {problems}")
    if matched:
        hit1 = sum(1 for x in ranks if x == 1) / matched
        hit3 = sum(1 for x in ranks if x is not None and x <= 3) / matched
        print(f"ranking of detected incidents only: AC@1 {hit1:.3f}, AC@3 {hit3:.3f} over {matched}")
    print(f"summary: recall={recall:.3f} ac1={ac1:.3f} ac3={ac3:.3f} false_per_day={false_per_day:.2f} "
          f"median_delay_s={med:.0f} p90_delay_s={p90:.0f} "
          f"median_open_after_fault_s={statistics.median(after) if after else math.nan:.0f} "
          f"max_open_after_fault_s={max(after) if after else math.nan:.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
