"""Replay speed: the largest bundled scenario through the whole pipeline, on one core.

    python bench/replay_speed.py [--scenarios DIR | --scenario DIR] [--runs 3]

Prints wall time and samples/s of the full replay (median of --runs), beside the time to only
read and decode the same files (the floor set by the scenario reader), measured in the same run.
Bar (spine issue): a 6-hour scenario of ~300 series and ~100k log lines in <= 30 s.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiops.config import load_settings  # noqa: E402
from aiops.decide.rules import load_rules  # noqa: E402
from aiops.observe.rejects import Rejects  # noqa: E402
from aiops.records import MetricSample  # noqa: E402
from aiops.scenario.replay import replay  # noqa: E402
from aiops.sources.scenario import load_scenario, read_records  # noqa: E402


def _size(d: Path) -> int:
    return sum(f.stat().st_size for pattern in ("metrics.jsonl*", "logs.jsonl*") for f in d.glob(pattern))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", type=Path, default=Path(__file__).resolve().parents[1] / "scenarios")
    ap.add_argument("--scenario", type=Path, default=None, help="replay this one instead of the largest")
    ap.add_argument("--rules", type=Path, default=Path(__file__).resolve().parents[1] / "rules")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()

    target = args.scenario or max((d for d in args.scenarios.iterdir() if (d / "scenario.yaml").is_file()), key=_size)
    scenario = load_scenario(target)
    settings = load_settings()
    rules = load_rules(args.rules)

    read_times, replay_times = [], []
    result = None
    for _ in range(args.runs):
        t0 = time.perf_counter()
        n, keys = 0, set()
        for r in read_records(scenario, Rejects(log_examples=False)):
            n += 1
            if isinstance(r, MetricSample):
                keys.add((r.name, r.labels))
        read_times.append(time.perf_counter() - t0)
        result = replay(scenario, settings, rules, Rejects(log_examples=False))
        replay_times.append(result.wall_s)
    assert result is not None
    st = result.stats
    wall = statistics.median(replay_times)
    read = statistics.median(read_times)
    hours = (st.last_ts - st.first_ts) / 3600
    print(f"scenario: {scenario.name} ({target})")
    print(f"records: {n:,} ({len(keys)} raw series, {st.metric_samples:,} samples, {st.log_lines:,} log lines, "
          f"{st.change_events} events) "
          f"over {hours:.1f} h of event time; {st.points:,} derived points in {st.steps:,} steps")
    print(f"full replay: median {wall:.2f} s over {args.runs} runs ({', '.join(f'{t:.2f}' for t in replay_times)}); "
          f"{st.metric_samples / wall:,.0f} samples/s, {(st.metric_samples + st.log_lines) / wall:,.0f} records/s")
    print(f"read + decode only: median {read:.2f} s; the pipeline stages take {wall - read:.2f} s "
          f"({wall / read:.1f}x the reader)")
    print(f"bar: <= 30 s for a 6 h scenario -> {'met' if wall <= 30 else 'NOT met'}")
    print(f"summary: series={len(keys)} samples={st.metric_samples} log_lines={st.log_lines} wall_s={wall:.3f} "
          f"samples_per_s={st.metric_samples / wall:.0f} read_only_s={read:.3f} event_hours={hours:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
