"""Throughput of the batched metric detector against river's HalfSpaceTrees, in one run.

Synthetic series (noise, daily-ish waves, level shifts, spikes, gaps) go through
:class:`aiops.detect.BatchScorer` -- the core :class:`aiops.detect.MetricDetectStage` runs --
one aligned step at a time (all series per numpy batch), and optionally through the whole
stage (SeriesPoint objects in, Signals out). River's ``anomaly.HalfSpaceTrees`` (on min-max
scaled values, one model per series, ``score_one`` then ``learn_one``) is timed on a
subsample of series in the same run, since it is orders of magnitude slower.

    python bench/detect_throughput.py --series 10000 --steps 1000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiops.config import DetectSettings  # noqa: E402
from aiops.detect import BatchScorer, MetricDetectStage, ScorerParams  # noqa: E402
from aiops.records import PointKind, SeriesPoint  # noqa: E402


def synth(n_series: int, n_steps: int, seed: int) -> np.ndarray:
    """A (steps, series) matrix of realistic-looking values with faults and NaN gaps."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_steps)[:, None]
    level = rng.uniform(1, 1000, n_series)[None, :]
    wave = 1 + 0.3 * np.sin(2 * np.pi * t / rng.uniform(200, 2000, n_series)[None, :])
    vals = level * wave * (1 + 0.05 * rng.standard_normal((n_steps, n_series)))
    shift_at = rng.integers(n_steps // 2, n_steps, n_series)
    vals += np.where(t >= shift_at[None, :], level * rng.choice([0.0, 0.0, 1.0, -0.5], n_series)[None, :], 0.0)
    spikes = rng.random((n_steps, n_series)) < 0.002
    vals[spikes] *= 5
    vals[rng.random((n_steps, n_series)) < 0.005] = np.nan
    return vals


def time_core(vals: np.ndarray, step_s: float) -> tuple[float, int]:
    scorer = BatchScorer(ScorerParams(warmup=DetectSettings().warmup))
    idx = scorer.add_series(vals.shape[1])
    t0 = time.perf_counter()
    for k in range(vals.shape[0]):
        scorer.update(idx, vals[k], k * step_s)
    return time.perf_counter() - t0, scorer.bytes_per_series


def time_stage(vals: np.ndarray, step_s: float) -> tuple[float, int]:
    stage = MetricDetectStage(DetectSettings())
    keys = [f"svc{j % 50}/m{j}" for j in range(vals.shape[1])]
    signals = 0
    elapsed = 0.0
    for k in range(vals.shape[0]):
        ts = k * step_s
        row = vals[k].tolist()
        pts = [SeriesPoint(ts, key, key.split("/")[0], "m", PointKind.GAUGE, v)
               for key, v in zip(keys, row, strict=True)]
        t0 = time.perf_counter()  # building the points is the decoder's cost, not the detector's
        signals += len(stage.process(ts, pts))
        elapsed += time.perf_counter() - t0
    return elapsed, signals


def time_hst(vals: np.ndarray) -> float:
    from river import anomaly, compose, preprocessing

    models = [compose.Pipeline(preprocessing.MinMaxScaler(), anomaly.HalfSpaceTrees(seed=42))
              for _ in range(vals.shape[1])]
    count = 0
    t0 = time.perf_counter()
    for k in range(vals.shape[0]):
        for j, m in enumerate(models):
            v = vals[k, j]
            if v != v:
                continue
            x = {"v": float(v)}
            m.score_one(x)
            m.learn_one(x)
            count += 1
    return count / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--series", type=int, default=10_000)
    ap.add_argument("--steps", type=int, default=1_000)
    ap.add_argument("--repeats", type=int, default=3, help="core timings to take the median of")
    ap.add_argument("--stage-series", type=int, default=2_000, help="series for the whole-stage timing (0: skip)")
    ap.add_argument("--hst-series", type=int, default=20, help="series for the HalfSpaceTrees peer")
    ap.add_argument("--hst-steps", type=int, default=500)
    ap.add_argument("--step", type=float, default=15.0)
    args = ap.parse_args(argv)

    vals = synth(args.series, args.steps, seed=7)
    n_samples = int(np.isfinite(vals).sum())
    rates = []
    bytes_per_series = 0
    for r in range(args.repeats):
        elapsed, bytes_per_series = time_core(vals, args.step)
        rates.append(n_samples / elapsed)
        print(f"core run {r + 1}: {args.series} series x {args.steps} steps, {n_samples} samples in {elapsed:.2f} s "
              f"= {rates[-1]:,.0f} samples/s")
    core_rate = statistics.median(rates)
    print(f"core median: {core_rate:,.0f} samples/s; state {bytes_per_series} bytes per series")

    if args.stage_series:
        sub = vals[:, : args.stage_series]
        elapsed, signals = time_stage(sub, args.step)
        stage_rate = int(np.isfinite(sub).sum()) / elapsed
        print(f"whole stage (SeriesPoint in, Signal out): {args.stage_series} series, {stage_rate:,.0f} samples/s, "
              f"{signals} signals")

    hst_rate = time_hst(vals[: args.hst_steps, : args.hst_series])
    print(f"river HalfSpaceTrees: {args.hst_series} series x {args.hst_steps} steps, {hst_rate:,.0f} samples/s")
    ratio = core_rate / hst_rate
    print(f"ratio core / HalfSpaceTrees: {ratio:,.1f}x")
    print(f"summary: samples_per_s={core_rate:.0f} bytes_per_series={bytes_per_series} "
          f"river_hst_samples_per_s={hst_rate:.0f} ratio={ratio:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
