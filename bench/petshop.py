"""Root-cause ranking on the PetShop dataset (Hardt et al., CLeaR 2024, arXiv:2311.04806).

Each issue directory holds the 25 minutes around an injected performance issue (5 rows of
5-minute statistics per node: latency Average/p50/p90/p95/p99, requests Sum, availability
Average) and the true root-cause node. The normal-operation file gives each series' baseline.

This feeds the correlator's ranking stage (:func:`aiops.correlate.rank.rank_causes`) the way
the daemon would: every series that deviates from its baseline in its bad direction becomes a
metric signal with an onset (the first anomalous row) and a score, the call graph comes from
``graph.csv``; no change events, no logs. Nothing is trained: train and test issues are
pooled. A peer ranking measured in the same run (nodes by their strongest deviation alone) shows
what the topology and onset reasoning add.

    python bench/petshop.py --data /work/shared/data/petshop/dataset/low_traffic
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiops.correlate.rank import rank_causes  # noqa: E402
from aiops.correlate.topology import Topology  # noqa: E402
from aiops.records import Signal, SignalKind  # noqa: E402

BAD_DIRECTION = {"latency": "up", "availability": "down", "requests": "both"}
"""Which way a PetShop metric hurts users; requests may surge (overload) or collapse (errors)."""


@dataclass
class Table:
    columns: list[tuple[str, str, str]]  # node, metric, statistic
    times: list[float]
    rows: list[list[float]]  # NaN for empty cells


def read_table(path: Path) -> Table:
    with path.open(newline="", encoding="utf-8") as f:
        raw = list(csv.reader(f))
    nodes, metrics, stats = raw[0][1:], raw[1][1:], raw[2][1:]
    data = [r for r in raw[3:] if r and r[0] and r[0] != "unix_timestamp"]

    def num(x: str) -> float:
        try:
            return float(x)
        except ValueError:
            return math.nan

    return Table(columns=list(zip(nodes, metrics, stats, strict=True)), times=[num(r[0]) for r in data],
                 rows=[[num(x) for x in r[1:]] for r in data])


def read_graph(path: Path) -> Topology:
    with path.open(newline="", encoding="utf-8") as f:
        raw = list(csv.reader(f))
    callees = raw[0][1:]
    mapping: dict[str, list[str]] = {}
    for row in raw[1:]:
        mapping[row[0]] = [callees[j] for j, v in enumerate(row[1:]) if v.strip() not in ("", "0", "0.0")]
    return Topology.from_mapping(mapping)


@dataclass
class Baseline:
    median: float
    scale: float


def baselines(table: Table) -> dict[tuple[str, str, str], Baseline]:
    out = {}
    for j, col in enumerate(table.columns):
        vals = [r[j] for r in table.rows if not math.isnan(r[j])]
        if len(vals) < 10:
            continue
        med = statistics.median(vals)
        mad = statistics.median(abs(v - med) for v in vals) * 1.4826
        # A flat series (MAD 0) still has a scale: a small share of its level, so one odd
        # value is not infinitely anomalous.
        out[col] = Baseline(med, max(mad, 0.05 * abs(med), 1e-9))
    return out


def issue_signals(table: Table, base: dict[tuple[str, str, str], Baseline], threshold: float,
                  symptom_ts: float) -> list[Signal]:
    """Series deviating in their bad direction; the level is the issue's own rows before the symptom.

    The normal-operation file was recorded weeks apart from the issues, so its levels drift; an
    online detector compares with the recent past, so the rows before the symptom give the level
    and the normal-operation file only the spread.
    """
    signals = []
    step = min((b - a for a, b in zip(table.times, table.times[1:], strict=False)), default=300.0)
    # Rows well before the symptom are the recent past; the issue starts within a step of it.
    before = [i for i, ts in enumerate(table.times) if ts < symptom_ts - step]
    if not before:
        before = [i for i, ts in enumerate(table.times) if ts < symptom_ts]
    for j, col in enumerate(table.columns):
        b = base.get(col)
        if b is None:
            continue
        local = [table.rows[i][j] for i in before if not math.isnan(table.rows[i][j])]
        if local:
            b = Baseline(statistics.median(local), b.scale)
        node, metric, stat = col
        bad = BAD_DIRECTION.get(metric, "both")
        onset, peak, direction = None, 0.0, ""
        for i, (ts, row) in enumerate(zip(table.times, table.rows, strict=True)):
            v = row[j]
            if math.isnan(v) or i in before:
                continue
            z = (v - b.median) / b.scale
            d = "up" if z > 0 else "down"
            if bad != "both" and d != bad:
                continue
            if abs(z) >= threshold:
                onset = ts if onset is None else onset
                if abs(z) > peak:
                    peak, direction = abs(z), d
        if onset is not None:
            signals.append(Signal(
                id=f"{node}|{metric}|{stat}", ts=onset, kind=SignalKind.METRIC, service=node,
                name=f"{metric}:{stat}", score=min(peak, 50.0) / 50.0, direction=direction,
                evidence=(f"{metric} {stat} {direction} {peak:.1f} robust sd from baseline",),
            ))
    return signals


def incident_of(signals: list[Signal], topo: Topology, symptom: str) -> list[Signal]:
    """The signals the correlator would group with the symptom: its anomalous, connected neighbourhood.

    Signals join an incident when their service is adjacent to one already in it, so the incident
    around the symptom is the connected component of anomalous nodes that contains it.
    """
    anomalous = {s.service for s in signals if s.service}
    component = {symptom}
    frontier = [symptom]
    while frontier:
        node = frontier.pop()
        for other in sorted(anomalous - component):
            if topo.adjacent(node, other):
                component.add(other)
                frontier.append(other)
    return [s for s in signals if s.service in component]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/petshop/dataset/low_traffic"))
    ap.add_argument("--threshold", type=float, default=5.0, help="robust z a series must reach to be a signal")
    ap.add_argument("-v", "--verbose", action="store_true")
    ap.add_argument("--all-signals", action="store_true",
                    help="rank every anomalous node, not only those connected to the symptom (as grouped)")
    args = ap.parse_args()

    topo = read_graph(args.data / "graph.csv")
    base = baselines(read_table(args.data / "noissue" / "metrics.csv"))
    issues = sorted(p for p in args.data.glob("*/issue_*") if (p / "target.json").is_file())
    if not issues:
        print(f"no issues under {args.data}", file=sys.stderr)
        return 2
    ours = {1: 0, 3: 0}
    peer = {1: 0, 3: 0}
    print(f"{'issue':16} {'root cause':42} {'ours':>5} {'peer':>5}  top-3 (ours)")
    for d in issues:
        target = json.loads((d / "target.json").read_text())
        truth = target["root_cause"]["node"]
        table = read_table(d / "metrics.csv")
        step = min((b - a for a, b in zip(table.times, table.times[1:], strict=False)), default=300.0)
        sigs = issue_signals(table, base, args.threshold, float(target["target"]["timestamp"]))
        if not args.all_signals:
            sigs = incident_of(sigs, topo, target["target"]["node"])
        causes, lines = rank_causes(sigs, [], topo, tolerance_s=step / 2, max_causes=10)
        ranking = [c.service for c in causes]
        strongest: dict[str, float] = {}
        for s in sigs:
            strongest[s.service or ""] = max(strongest.get(s.service or "", 0.0), s.score)
        peer_ranking = sorted(strongest, key=lambda n: (-strongest[n], n))
        r_ours = ranking.index(truth) + 1 if truth in ranking else None
        r_peer = peer_ranking.index(truth) + 1 if truth in peer_ranking else None
        for k in (1, 3):
            ours[k] += r_ours is not None and r_ours <= k
            peer[k] += r_peer is not None and r_peer <= k
        name = f"{d.parent.name}/{d.name}"
        top3 = ", ".join(x[:28] for x in ranking[:3])
        print(f"{name:16} {truth[:42]:42} {r_ours or '-':>5} {r_peer or '-':>5}  {top3}")
        if args.verbose:
            print("    " + "\n    ".join(lines[:5]))
    n = len(issues)
    print()
    print(f"issues: {n} (train and test pooled; nothing is trained)")
    print(f"ours  (onset + topology + strength ranking): top-1 {ours[1] / n:.3f}  top-3 {ours[3] / n:.3f}")
    print(f"peer  (strongest deviation alone, same run): top-1 {peer[1] / n:.3f}  top-3 {peer[3] / n:.3f}")
    print("paper baselines: the dataset folder's docs (README.md, USE.md, SOURCE.md) give no figures; "
          "see Hardt et al., arXiv:2311.04806, for its top-k table")
    print(f"summary: issues={n} top1={ours[1] / n:.3f} top3={ours[3] / n:.3f} "
          f"peer_top1={peer[1] / n:.3f} peer_top3={peer[3] / n:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
