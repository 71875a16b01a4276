"""NAB benchmark of the metric detector core, streaming, one configuration for every file.

Every CSV under ``--data`` (found recursively) is one series; all of them are fed through
one :class:`aiops.detect.BatchScorer` in lock-step (row i of every file is one batch), which
is the code path and default configuration of :class:`aiops.detect.MetricDetectStage`.
The score of row i uses rows <= i only. A NAB results tree (``timestamp,value,anomaly_score``
at the same relative paths) is written to ``--out`` and scored with the independent NAB
scorer, with the threshold swept (as NAB does) and at ``DetectSettings().threshold``.

    python bench/nab.py --data /work/shared/data/nab/data --out /tmp/nab_results
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiops.config import DetectSettings  # noqa: E402
from aiops.detect.core import BatchScorer, ScorerParams  # noqa: E402

DEFAULT_SCORER = Path("/work/shared/data/nab/nab_score.py")


def discover(data: Path) -> list[str]:
    """Relative paths of every data CSV under ``data`` (sorted, so runs are reproducible)."""
    return sorted(str(p.relative_to(data)) for p in data.rglob("*.csv"))


def read_series(path: Path) -> tuple[list[str], np.ndarray]:
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        ts, vals = [], []
        for row in reader:
            ts.append(row["timestamp"])
            try:
                vals.append(float(row["value"]))
            except (TypeError, ValueError):
                vals.append(float("nan"))  # a gap, as in the daemon
    return ts, np.asarray(vals, dtype=np.float64)


def epoch_seconds(stamps: list[str]) -> np.ndarray:
    return np.array([s.strip().replace(" ", "T") for s in stamps], dtype="datetime64[s]").astype(np.float64)


def detect(series: list[np.ndarray], times: list[np.ndarray], params: ScorerParams) -> list[np.ndarray]:
    """Stream all series through one batched scorer in lock-step; returns per-row scores."""
    scorer = BatchScorer(params)
    idx = scorer.add_series(len(series))
    longest = max((len(s) for s in series), default=0)
    vals = np.full((len(series), longest), np.nan)
    ts = np.full((len(series), longest), np.nan)
    for k, (s, t) in enumerate(zip(series, times, strict=True)):
        vals[k, : len(s)] = s
        ts[k, : len(t)] = t
    out = np.zeros((len(series), longest))
    for i in range(longest):
        out[:, i] = scorer.update(idx, vals[:, i], ts[:, i]).score
    return [out[k, : len(s)] for k, s in enumerate(series)]


def write_results(out_dir: Path, rel: str, stamps: list[str], values: np.ndarray, scores: np.ndarray) -> None:
    target = out_dir / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["timestamp", "value", "anomaly_score"])
        for t, v, s in zip(stamps, values, scores, strict=True):
            w.writerow([t, repr(float(v)), repr(float(s))])


def load_scorer(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("nab_score", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load the NAB scorer from {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="NAB data dir (category/file.csv + combined_windows.json)")
    ap.add_argument("--out", type=Path, required=True, help="results tree to write")
    ap.add_argument("--scorer", type=Path, default=None, help="nab_score.py (default: next to --data, else shared)")
    ap.add_argument("--labels", type=Path, default=None, help="windows JSON (default DATA/combined_windows.json)")
    ap.add_argument("--per-file", action="store_true",
                    help="also print each file's standard raw score, windows found and FPs at the swept threshold")
    args = ap.parse_args(argv)

    rels = discover(args.data)
    if not rels:
        raise SystemExit(f"no CSV files under {args.data}")
    stamps, values, times = [], [], []
    for rel in rels:
        ts, vals = read_series(args.data / rel)
        stamps.append(ts)
        values.append(vals)
        times.append(epoch_seconds(ts))
    settings = DetectSettings()
    params = ScorerParams(warmup=settings.warmup)
    t0 = time.perf_counter()
    scores = detect(values, times, params)
    elapsed = time.perf_counter() - t0
    rows = sum(len(v) for v in values)
    for rel, ts, vals, sc in zip(rels, stamps, values, scores, strict=True):
        write_results(args.out, rel, ts, vals, sc)
    print(f"detector: {len(rels)} files, {rows} rows in {elapsed:.2f} s ({rows / elapsed:,.0f} rows/s)")
    print(f"params: {params}")

    scorer_path = args.scorer or (args.data.parent / "nab_score.py")
    if not scorer_path.is_file():
        scorer_path = DEFAULT_SCORER
    nab = load_scorer(scorer_path)
    labels = args.labels or (args.data / "combined_windows.json")
    if not labels.is_file():
        print(f"no labels at {labels}: results written to {args.out}, nothing scored")
        return 0
    with labels.open() as fh:
        windows = json.load(fh)
    unlabelled = [r for r in rels if r not in windows]
    if unlabelled:
        print(f"note: {len(unlabelled)} CSV file(s) have no labels and are not scored, e.g. {unlabelled[:2]}")
    profiles_path = args.data / "profiles.json"
    if not profiles_path.is_file():
        profiles_path = scorer_path.parent / "data" / "profiles.json"
    profiles = nab.load_profiles(str(profiles_path))
    # the corpus is exactly the labelled files found, so any subset of files or categories works
    corpus = {rel: nab.FileGeometry(rel, ts, windows[rel], 0.15)
              for rel, ts in zip(rels, stamps, strict=True) if rel in windows}
    if not corpus:
        print("no labelled files found: nothing scored")
        return 0
    results = nab.load_results(str(args.out), corpus)
    swept = nab.score(corpus, results, profiles)
    fixed = nab.score(corpus, results, profiles, {p: settings.threshold for p in profiles})
    print(f"{'profile':<20} {'swept':>8} {'thr':>9} {'fixed':>8} {'thr':>6}  tp/fn/fp (swept)")
    for prof in profiles:
        s, f = swept[prof], fixed[prof]
        print(f"{prof:<20} {s['score']:8.2f} {s['threshold']:9.4g} {f['score']:8.2f} {f['threshold']:6.3g}  "
              f"{s['tp_windows']}/{s['fn_windows']}/{s['fp_points']}")
    # per category, at the corpus-wide thresholds: does one configuration carry across kinds of data?
    cats = sorted({rel.split("/")[0] for rel in corpus})
    if len(cats) > 1:
        print(f"{'category':<24} {'files':>5} {'standard@swept':>15} {'standard@fixed':>15}")
        for cat in cats:
            sub = {rel: g for rel, g in corpus.items() if rel.startswith(cat + "/")}
            if not any(g.n_windows for g in sub.values()):
                fps = sum(int(((results[r] >= settings.threshold) & g.scored).sum()) for r, g in sub.items())
                print(f"{cat:<24} {len(sub):>5} {'(no windows)':>15} {f'{fps} FP rows':>15}")
                continue
            res = {r: results[r] for r in sub}
            at_swept = nab.score(sub, res, {"standard": profiles["standard"]},
                                 {"standard": swept["standard"]["threshold"]})["standard"]["score"]
            at_fixed = nab.score(sub, res, {"standard": profiles["standard"]},
                                 {"standard": settings.threshold})["standard"]["score"]
            print(f"{cat:<24} {len(sub):>5} {at_swept:15.2f} {at_fixed:15.2f}")
    if args.per_file:
        # where points are won and lost: the raw standard score per file (a window found at its
        # start is worth 1, a missed one -1, a false positive up to -0.11)
        thr = swept["standard"]["threshold"]
        print(f"per file at the swept standard threshold {thr:.4g}:")
        print(f"{'file':<60} {'raw':>7} {'windows':>8} {'FP':>4}")
        for rel, geo in corpus.items():
            d = nab.file_detail(geo, results[rel], profiles["standard"], thr)
            print(f"{rel:<60} {d['raw']:7.3f} {d['tp_windows']:>3}/{d['windows']:<4} {d['fp_points']:>4}")
    print("summary: " + " ".join([
        f"files={len(rels)}", f"rows={rows}",
        f"standard={swept['standard']['score']:.2f}",
        f"reward_low_fp={swept['reward_low_FP_rate']['score']:.2f}",
        f"reward_low_fn={swept['reward_low_FN_rate']['score']:.2f}",
        f"standard_fixed={fixed['standard']['score']:.2f}",
        f"reward_low_fp_fixed={fixed['reward_low_FP_rate']['score']:.2f}",
        f"reward_low_fn_fixed={fixed['reward_low_FN_rate']['score']:.2f}",
        f"threshold={settings.threshold}",
    ]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
