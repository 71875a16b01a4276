"""Loghub 2k benchmark of the template miner, with Drain3 measured in the same run.

For every ``DIR/<Name>/<Name>_2k.log_structured.csv`` (discovered by listing, so unseen data
sets run too) the ``Content`` column is mined by :class:`aiops.logs.miner.TemplateMiner` in its
DEFAULT configuration (fresh miner per data set) and by Drain3 0.9.11 in its documented default
configuration plus the SAME masking patterns (given to Drain3 as one masking instruction that
writes ``<*>``, which Drain3 treats as a parameter). Both are scored with the loghub
``evaluate.py`` (GA, PA, FGA, FTA; its docstring has the definitions).

Timing: each data set is mined ``--timing-runs`` times with a fresh miner; the median is reported.
``--repeat N`` also times one miner over all data sets concatenated N times (the large-stream
mode); since our miner caches line shapes, that stream mostly hits the cache, so the cold
per-data-set figure is printed beside it. ``--stream N`` mines a generated stream of N lines with
high-cardinality variable tokens and reports templates kept (capped) and memory growth.

    python bench/loghub.py --data /work/shared/data/loghub [--datasets A,B] [--repeat N]

The last line is ``summary: GA=.. PA=.. FGA=.. FTA=.. lines_per_s=.. drain3_GA=.. drain3_lines_per_s=..
speedup=..`` (averages over the data sets run; the lines/s figures are those of the large stream when
``--repeat`` > 1, else of the per-data-set runs).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import random
import resource
import statistics
import string
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiops.logs.masking import DEFAULT_PATTERNS  # noqa: E402
from aiops.logs.miner import TemplateMiner  # noqa: E402

METRICS = ("GA", "PA", "FGA", "FTA")
CPU: dict[str, float] = {}  # CPU seconds of the last run of each miner (the box may be shared)


def discover(data: Path) -> list[str]:
    return sorted(p.name for p in data.iterdir() if (p / f"{p.name}_2k.log_structured.csv").is_file())


def load_evaluate(data: Path) -> Any:
    path = data / "evaluate.py"
    spec = importlib.util.spec_from_file_location("loghub_evaluate", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    mod: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.evaluate


def read_dataset(data: Path, name: str) -> tuple[list[str], list[str], dict[str, tuple[str, str]]]:
    ids, lines, truth = [], [], {}
    with (data / name / f"{name}_2k.log_structured.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            ids.append(row["LineId"])
            lines.append(row["Content"])
            truth[row["LineId"]] = (row["EventId"], row["EventTemplate"])
    return ids, lines, truth


# -- the two miners --------------------------------------------------------------------------

def run_ours(lines: list[str]) -> tuple[list[str], dict[str, str], float]:
    miner = TemplateMiner()
    add = miner.add
    t0, c0 = time.perf_counter(), time.process_time()
    assigned = [add(line).id for line in lines]
    elapsed = time.perf_counter() - t0
    CPU["ours"] = time.process_time() - c0
    final = {tid: miner.final(tid) for tid in set(assigned)}
    groups = [final[t].id for t in assigned]
    texts = {final[t].id: final[t].text for t in assigned}
    return groups, texts, elapsed


def drain3_miner() -> Any:
    from drain3 import TemplateMiner as Drain3Miner
    from drain3.masking import MaskingInstruction
    from drain3.template_miner_config import TemplateMinerConfig

    config = TemplateMinerConfig()  # the documented defaults (depth 4, sim_th 0.4, ...)
    combined = "|".join(f"(?:{rx})" for _name, rx in DEFAULT_PATTERNS)
    config.masking_instructions = [MaskingInstruction(combined, "*")]
    return Drain3Miner(config=config)


def run_drain3(lines: list[str]) -> tuple[list[str], dict[str, str], float]:
    miner = drain3_miner()
    add = miner.add_log_message
    t0, c0 = time.perf_counter(), time.process_time()
    assigned = [add(line)["cluster_id"] for line in lines]
    elapsed = time.perf_counter() - t0
    CPU["drain3"] = time.process_time() - c0
    clusters = {c.cluster_id: c for c in miner.drain.clusters}
    texts = {str(cid): clusters[cid].get_template() for cid in set(assigned)}
    return [str(c) for c in assigned], texts, elapsed


def generated_stream(n: int, seed: int = 0) -> list[str]:
    """A service-log-like stream with high-cardinality variable tokens: numbers, hex ids, user and
    host names, paths, and 10 % free-text lines that never repeat (each one a new template)."""
    rng = random.Random(seed)
    letters = string.ascii_lowercase

    def word(k: int = 8) -> str:
        return "".join(rng.choice(letters) for _ in range(rng.randint(3, k)))

    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.5:
            out.append(f"GET /api/v1/orders/{rng.getrandbits(30)} 200 in {rng.randint(1, 999)}ms "
                       f"from 10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}")
        elif r < 0.6:
            out.append(f"user {word()} logged in from host {word()}.example.com session {rng.getrandbits(64):x}")
        elif r < 0.7:
            out.append(f"cache miss for key {word()}:{word()} in region {word()} took {rng.random():.3f}s")
        elif r < 0.8:
            out.append(f"request id={rng.getrandbits(128):032x} trace {word(12)} span {word(12)} status ok")
        elif r < 0.9:
            out.append(f"processing file /data/{word()}/{word()}.csv for tenant {word()} "
                       f"with {rng.randint(1, 10**6)} rows")
        else:
            out.append(" ".join(word() for _ in range(rng.randint(2, 12))))
    return out


def stream_run(n: int, with_drain3: bool) -> None:
    """Mine a generated high-cardinality stream; report lines/s, templates kept and memory."""
    lines = generated_stream(n)
    miner = TemplateMiner()
    add = miner.add
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    for line in lines:
        add(line)
    el = time.perf_counter() - t0
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    caches = sum(len(c) for c in miner._cache.values()) + sum(len(c) for c in miner._masked_cache.values())
    print(f"generated stream ({n:,} lines, high-cardinality tokens): ours {n / el:,.0f} lines/s, "
          f"templates kept {len(miner)} (cap {miner.max_templates}), evicted {miner.evicted}, cache entries "
          f"{caches}, peak RSS growth {(rss1 - rss0) / 1024:.0f} MiB")
    if with_drain3:
        d3 = drain3_miner()
        t0 = time.perf_counter()
        for line in lines:
            d3.add_log_message(line)
        el3 = time.perf_counter() - t0
        print(f"generated stream: Drain3 {n / el3:,.0f} lines/s, {len(d3.drain.clusters)} clusters "
              f"(no cap in its default configuration); speedup {el3 / el:.2f}x")


def score(evaluate: Any, ids: list[str], truth: dict[str, tuple[str, str]], groups: list[str],
          texts: dict[str, str]) -> dict[str, float]:
    pred = {lid: (g, texts[g]) for lid, g in zip(ids, groups, strict=False)}
    return {k: float(v) for k, v in evaluate(truth, pred).items() if k in METRICS}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("/work/shared/data/loghub"))
    ap.add_argument("--datasets", default="", help="comma-separated names (default: every data set found)")
    ap.add_argument("--repeat", type=int, default=1, help="also time one stream of all data sets N times")
    ap.add_argument("--timing-runs", type=int, default=3, help="timed runs per data set; the median is shown")
    ap.add_argument("--stream", type=int, default=0,
                    help="also mine a generated high-cardinality stream of N lines (memory bound check)")
    ap.add_argument("--stream-drain3", action="store_true", help="run Drain3 on the generated stream too")
    args = ap.parse_args(argv)

    names = [n for n in args.datasets.split(",") if n] or discover(args.data)
    if not names:
        raise SystemExit(f"no <Name>/<Name>_2k.log_structured.csv under {args.data}")
    evaluate = load_evaluate(args.data)

    rows: list[tuple[str, dict[str, float], float, dict[str, float], float]] = []
    all_lines: list[str] = []
    tot_ours = tot_drain = 0.0
    tot_lines = 0
    header = f"{'data set':<12}" + "".join(f"{m:>7}" for m in METRICS) + f"{'lines/s':>10}   |" + \
        "".join(f"{'d3 ' + m:>8}" for m in METRICS) + f"{'d3 l/s':>10}"
    print(header)
    for name in names:
        ids, lines, truth = read_dataset(args.data, name)
        all_lines.extend(lines)
        ours_t, d3_t = [], []
        for _ in range(max(1, args.timing_runs)):
            groups, texts, el = run_ours(lines)
            ours_t.append(el)
            d3_groups, d3_texts, el = run_drain3(lines)
            d3_t.append(el)
        ours = score(evaluate, ids, truth, groups, texts)
        d3 = score(evaluate, ids, truth, d3_groups, d3_texts)
        t_ours, t_d3 = statistics.median(ours_t), statistics.median(d3_t)
        tot_ours += t_ours
        tot_drain += t_d3
        tot_lines += len(lines)
        rows.append((name, ours, len(lines) / t_ours, d3, len(lines) / t_d3))
        print(f"{name:<12}" + "".join(f"{ours[m]:>7.3f}" for m in METRICS) + f"{len(lines) / t_ours:>10.0f}   |"
              + "".join(f"{d3[m]:>8.3f}" for m in METRICS) + f"{len(lines) / t_d3:>10.0f}", flush=True)
    avg = {m: statistics.fmean(r[1][m] for r in rows) for m in METRICS}
    d3avg = {m: statistics.fmean(r[3][m] for r in rows) for m in METRICS}
    cold_ours, cold_d3 = tot_lines / tot_ours, tot_lines / tot_drain
    print(f"{'average':<12}" + "".join(f"{avg[m]:>7.3f}" for m in METRICS) + f"{cold_ours:>10.0f}   |"
          + "".join(f"{d3avg[m]:>8.3f}" for m in METRICS) + f"{cold_d3:>10.0f}")
    print(f"per-data-set runs (fresh miner, median of {args.timing_runs}): ours {cold_ours:,.0f} lines/s, "
          f"Drain3 {cold_d3:,.0f} lines/s, speedup {cold_ours / cold_d3:.2f}x")

    lps, d3lps = cold_ours, cold_d3
    cpu_lps = cpu_d3lps = float("nan")
    if args.repeat > 1:
        stream = all_lines * args.repeat
        _g, _t, el = run_ours(stream)
        cpu = CPU["ours"]
        _g3, _t3, el3 = run_drain3(stream)
        cpu3 = CPU["drain3"]
        lps, d3lps = len(stream) / el, len(stream) / el3
        cpu_lps, cpu_d3lps = len(stream) / cpu, len(stream) / cpu3
        print(f"large stream ({len(stream):,} lines = {len(names)} data sets x {args.repeat}, one miner): "
              f"ours {lps:,.0f} lines/s, Drain3 {d3lps:,.0f} lines/s, speedup {lps / d3lps:.2f}x")
        print(f"large stream by CPU time (what a shared box does not distort): ours {cpu_lps:,.0f} lines/s, "
              f"Drain3 {cpu_d3lps:,.0f} lines/s")
    if args.stream:
        stream_run(args.stream, args.stream_drain3)
    print(f"summary: GA={avg['GA']:.4f} PA={avg['PA']:.4f} FGA={avg['FGA']:.4f} FTA={avg['FTA']:.4f} "
          f"lines_per_s={lps:.0f} drain3_GA={d3avg['GA']:.4f} drain3_FGA={d3avg['FGA']:.4f} "
          f"drain3_lines_per_s={d3lps:.0f} speedup={lps / d3lps:.3f} cold_speedup={cold_ours / cold_d3:.3f}"
          + (f" cpu_lines_per_s={cpu_lps:.0f} drain3_cpu_lines_per_s={cpu_d3lps:.0f}" if args.repeat > 1 else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
