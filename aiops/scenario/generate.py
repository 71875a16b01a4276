"""Seeded generator of realistic incident scenarios (SCENARIO_FORMAT.md directories).

``aiops scenario generate KIND --out DIR [--seed N] [--services N] [--hours H] [--step S]
[--start TS] [--target SVC]`` writes ``scenario.yaml`` plus gzip-compressed ``metrics.jsonl.gz``,
``logs.jsonl.gz`` and ``events.jsonl.gz``. The same arguments always give the same bytes
(numpy ``Generator`` streams spawned from one ``SeedSequence``; gzip header without time or name).

Kinds (the root cause service in brackets, ``--target`` changes it):

=================== ===================================================== =================
kind                story                                                 expected actions
=================== ===================================================== =================
bad-deploy          [checkout] a release raises 5xx and p99 1-2 min after  rollback
                    its deploy event; callers log upstream 500/503
traffic-surge       [search] requests via the frontend jump 3-5x (enough   scale_up
                    to pass capacity at that hour); CPU saturates, latency
                    climbs, 503s are shed
datastore-down      [postgres] crash loop (disk full): every query is      (none)
                    refused; callers log ``connection refused``
latency-injection   [payments] a slow acquirer adds ~1 s to 35 % of calls; (none)
                    p90/p99 jump, callers follow, timeouts after 10 min
memory-leak         [cart] working set grows ~9 MiB/min to the limit, the  (none)
                    container is OOM-killed, restarts, leaks again
model-drift         [ranker] input feature means shift, prediction mean    retrain
                    moves, online accuracy decays; little else changes;
                    45 min in, the retrained model version is deployed
                    and its scores and accuracy recover
quiet-seasonal      no fault: the noon peak, harmless deploys, config      (none)
quiet-bursts        no fault: 1-2 min traffic bursts, single-scrape CPU /  (none)
                    latency spikes, benign WARN bursts, harmless deploys
=================== ===================================================== =================

The model
---------
*Topology* (:mod:`aiops.scenario.gen_topology`): ``--services`` (2-15) services of a shop —
``frontend`` -> application services -> ``postgres`` / ``redis`` / ``kafka`` — each with 1-3
instances (label ``instance``, e.g. ``checkout-1``). An edge has ``ratio`` (calls per request)
and ``crit`` (share of the callee's failures its caller cannot absorb).

*Traffic*: users hit the frontend at ``peak_rps`` (220/s) times a day curve (two humps at 11:30
and 20:00 UTC, a lunch shoulder, ~20 % at night) times slow AR(1) noise (3.5 %, ~8 min memory)
and fast noise (1.5 %). Each callee receives its callers' served rate times the edge ratio with
its own 2 % noise. Faulty kinds start at 06:00 UTC by default, so the window climbs the morning
ramp; ``quiet-seasonal`` starts at 09:00 and crosses the noon peak. Requests per scrape are
Poisson draws split by instance (4 % imbalance).

*Capacity*: per-request CPU cost is calibrated so a service runs at its ``rho`` (25-50 %) at the
daily peak. Own latency is log-normal (service median, shape ``sigma``) slowed by
``1 + 0.6 rho^3 / (1 - rho)``; above 95 % utilisation the excess is shed as 503. A 1 % slow tail
(8x median) is always present; fresh processes are slower and hungrier for two minutes.

*Propagation*: a caller's latency adds its callees' medians and inherits their slow tails;
callee failures (errors plus calls slower than the 2 s client timeout) fail the caller's request
with probability ``1 - (1 - crit * fail)^ratio``, 75 % of them as 503 and 25 % as 500, all seen
``LAG_S`` (30 s) later. Effects therefore start in the root cause, then appear weaker upstream.

*Raw series* per instance (Prometheus exposition, counters cumulative from the process start,
so a rollout or an OOM kill resets every counter of that instance to 0):
``http_requests_total{code=200|404|500|503}``, ``http_request_duration_seconds_bucket{le}``
(9 bounds 5 ms-2.5 s and ``+Inf``), ``_sum``, ``_count``, ``process_cpu_seconds_total`` (rate =
cores, capped at the limit), ``container_memory_working_set_bytes`` (load-dependent, JVM
services saw-tooth), ``kube_pod_container_status_restarts_total`` (kube-state-metrics: it counts
OOM kills and crash loops and never resets) and ``up``. Datastores are measured by a proxy
sidecar that stays up when the datastore dies: it answers refused connections as 503 at once.
The ML service also exports ``model_prediction_mean``, ``model_online_accuracy`` and
``model_feature_mean{feature}`` in ``model-drift``, which also writes ``predictions.jsonl.gz``
(a sampled prediction log with late labels, the form of :mod:`aiops.drift.records`). Samples
carry the target's scrape offset (fixed, ms precision, 0-2 ms jitter).

*Bad input*, on purpose: each scrape fails with probability 0.15 % (``up`` 0, the target's other
samples absent), 30 % of rollouts miss a scrape, OOM kills lose two; three memory samples are
``NaN`` and three samples are written twice.

*Logs* (:mod:`aiops.scenario.gen_logs`): per-service templates with ids, durations, IPs,
volume following traffic (``log_rate`` x ``--log-scale``); faults add ERROR/WARN templates at
the rate the simulated failures occur (rate-limited like production loggers), in the root cause
and, with the propagation lag, in its callers; restarts log SIGTERM / OOM / start-up lines.

*Events*: rolling deploys of healthy versions of application services (``deploys_per_6h``,
default 3) and config changes (feature flags), kept 30 min away from the fault, in every
scenario; the bad deploy and its rollback 40 min later; the retrained model version 45 min
after a drift (a ``deploy`` of the ML service with ``model``, ``version``, ``previous_version``
and ``reason: retrain``; the model server switches versions without a restart); nothing else
changes near other faults.

*The retrain* (``model-drift``): the recording is of production, where the planned retrain ran.
From the switch every logged prediction carries the new version, trained on the shifted
inputs: the inputs (and ``model_feature_mean``) stay shifted, the scores are calibrated again
(``model_prediction_mean`` back to its old level), the out-of-range WARN lines stop, and
``model_online_accuracy``, measured on labels 5-10 min late, recovers over the next 15 min.
The drift monitor closes the old version's drift signals and judges the new one against its own
reference, so the incident resolves once the correlator's hold time has passed. A run too short
to reach the switch keeps the drift to its end.

*Expectations*: ``fault_start`` is the deploy / onset time, ``detect_within`` 300-600 s, quiet
spans from one hour in (a quarter of the run for short runs) to 60 s before the fault, or the
whole run for quiet kinds; after a retrain, also from the new version's deploy to the end (the
format has no field for a resolution: the recovery must join the open incident, nothing new may
open). ``generator.fault_end`` (extra, ignored by readers) is when the fault ended.
"""

from __future__ import annotations

import argparse
import bisect
import gzip
import io
import json
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from aiops.scenario.gen_logs import BENIGN_BURSTS, ROUTINE, Tokens, fault_line, lifecycle_lines, model_swap_lines
from aiops.scenario.gen_model import (
    CODES,
    LAG_S,
    LE,
    Burst,
    Deploy,
    Fault,
    Plan,
    ServiceSim,
    Spike,
    day_curve,
    simulate,
)
from aiops.scenario.gen_topology import ServiceSpec, select, topology_map

DAY0 = 1767571200  # Monday 2026-01-05 00:00 UTC


@dataclass(frozen=True, slots=True)
class KindSpec:
    """Defaults and ground truth of one scenario kind."""

    fault: str | None  # Fault.kind, None for quiet kinds
    target: str | None
    services: int
    start_hour: float
    actions: tuple[str, ...]
    metric: str | None
    detect_within: float
    duration_s: float  # how long the fault lasts (inf: to the end)
    log_scale: float
    bursts_per_6h: int
    spikes_per_6h: int
    warn_bursts_per_6h: int


KINDS: dict[str, KindSpec] = {
    "bad-deploy": KindSpec("bad_deploy", "checkout", 12, 6.0, ("rollback",), "http_requests_total", 420,
                           2400, 1.2, 1, 2, 1),
    "traffic-surge": KindSpec("surge", "search", 6, 6.0, ("scale_up",), "process_cpu_seconds_total", 420,
                              2700, 1.0, 1, 2, 1),
    "datastore-down": KindSpec("down", "postgres", 6, 6.0, (), "http_requests_total", 300, 1500, 1.0, 1, 2, 1),
    "latency-injection": KindSpec("latency", "payments", 6, 6.0, (), "http_request_duration_seconds", 420,
                                  3000, 1.0, 1, 2, 1),
    "memory-leak": KindSpec("leak", "cart", 6, 6.0, (), "container_memory_working_set_bytes", 600, math.inf,
                            1.0, 1, 2, 1),
    # the drift lasts until the retrained model version is live: training on fresh data and rollout
    "model-drift": KindSpec("drift", "ranker", 6, 6.0, ("retrain",), "model_online_accuracy", 600, 2700.0,
                            1.0, 1, 2, 1),
    "quiet-seasonal": KindSpec(None, None, 6, 9.0, (), None, 0, 0, 1.0, 2, 2, 2),
    "quiet-bursts": KindSpec(None, None, 6, 6.0, (), None, 0, 0, 1.0, 6, 8, 4),
}

_ROLE_OK = {"down": ("datastore",), "drift": ("ml",)}
_LE_TEXT = tuple(f"{b:g}" for b in LE) + ("+Inf",)
_FEATURES = (("price_bucket", 0.42, 0.012, 0.09), ("session_depth", 3.1, 0.08, -0.55),
             ("query_len", 2.7, 0.05, 0.4), ("user_tenure_days", 410.0, 9.0, 0.0), ("ctr_7d", 0.034, 0.0015, 0.0))
MODEL = "search-ranker"
MODEL_VERSION, RETRAINED_VERSION = "v7", "v8"
"""The drifting model's version before and after the retrain (``model-drift``)."""


@dataclass(frozen=True, slots=True)
class Generated:
    """What :func:`generate` wrote: paths and counts for the caller to report."""

    path: Path
    series: int
    metric_lines: int
    log_lines: int
    event_lines: int
    fault_start: float | None


def generate(kind: str, out: Path, seed: int = 1, services: int | None = None, hours: float = 6.0,
             step: float = 15.0, start: float | None = None, target: str | None = None,
             name: str | None = None, log_scale: float | None = None, deploys_per_6h: int = 3) -> Generated:
    """Generate scenario ``kind`` into directory ``out`` (created; files in it are replaced)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    ks = KINDS[kind]
    if hours * 3600 < 20 * step or step <= 0:
        raise ValueError("a scenario needs at least 20 steps")
    target = target or ks.target
    required = (target,) if target else ()
    if kind == "model-drift" and target:
        required = ("search", target)
    svcs = select(services or ks.services, required)
    if target and ks.fault in _ROLE_OK and svcs[target].role not in _ROLE_OK[ks.fault]:
        raise ValueError(f"{kind} needs a {'/'.join(_ROLE_OK[ks.fault])} target, {target} is {svcs[target].role}")
    if start is None:
        start = DAY0 + ks.start_hour * 3600.0
    n = int(round(hours * 3600.0 / step))
    ts = start + step * np.arange(n)
    end = float(ts[-1]) + step
    root = np.random.SeedSequence([seed, _kind_id(kind)])
    r_plan, r_sim, r_metrics, r_logs, r_ml = (np.random.default_rng(s) for s in root.spawn(5))

    plan, fault, events = _plan(kind, ks, svcs, target, start, end, hours, step, r_plan, deploys_per_6h)
    sims = simulate(svcs, plan, ts, r_sim)

    out.mkdir(parents=True, exist_ok=True)
    for stale in ("metrics.jsonl", "logs.jsonl", "events.jsonl"):
        (out / stale).unlink(missing_ok=True)
    ml: dict[str, list[tuple[str, dict[str, str], np.ndarray]]] = {}
    (out / "predictions.jsonl.gz").unlink(missing_ok=True)
    if fault is not None and fault.kind == "drift":
        ml = _ml_gauges(sims, fault, ts, r_ml)
        _write_predictions(out / "predictions.jsonl.gz", sims, fault, ts, step, r_ml)
    metric_lines, series = _write_metrics(out / "metrics.jsonl.gz", sims, ts, step, r_metrics, ml)
    log_lines = _write_logs(out / "logs.jsonl.gz", sims, plan, fault, ts, step, r_logs,
                            ks.log_scale if log_scale is None else log_scale)
    _write_gz(out / "events.jsonl.gz", (_compact(e) for e in events))
    spec = _spec(name or out.name, kind, ks, svcs, target, fault, plan, events, start, end, step)
    (out / "scenario.yaml").write_text(spec, encoding="utf-8")
    return Generated(out, series, metric_lines, log_lines, len(events), fault.start if fault else None)


def _kind_id(kind: str) -> int:
    return sum((i + 1) * ord(c) for i, c in enumerate(kind))


def _round_step(t: float, start: float, step: float) -> float:
    return start + round((t - start) / step) * step


def _plan(kind: str, ks: KindSpec, svcs: dict[str, ServiceSpec], target: str | None, start: float, end: float,
          hours: float, step: float, rng: np.random.Generator, deploys_per_6h: int
          ) -> tuple[Plan, Fault | None, list[dict[str, Any]]]:
    dur = end - start
    plan = Plan()
    events: list[dict[str, Any]] = []
    fault: Fault | None = None
    if ks.fault is not None and target is not None:
        t0 = _round_step(start + dur * float(rng.uniform(0.42, 0.48)), start, step) + float(rng.integers(1, 14))
        t1 = min(end, t0 + ks.duration_s)
        params: dict[str, float] = {}
        if ks.fault == "surge":
            # enough to push the target well past its capacity at this hour, within 3-5x
            hour = np.array([(t0 % 86400.0) / 3600.0])
            rho = svcs[target].rho * float(day_curve(hour)[0])
            params = {"factor": float(np.clip(1.4 / rho * rng.uniform(0.95, 1.1), 3.0, 5.0)), "ramp": 90.0}
        fault = Fault(ks.fault, target, t0, t1, tuple(sorted(params.items())))
        plan.faults.append(fault)
        if ks.fault == "bad_deploy":
            spec = svcs[target]
            new = _bump(spec.version, 1)
            plan.deploys.append(Deploy(t0, target, new, spec.version, bad=True))
            events.append({"ts": t0, "type": "deploy", "service": target, "version": new,
                           "previous_version": spec.version})
            if t1 < end:
                plan.deploys.append(Deploy(t1, target, spec.version, new))
                events.append({"ts": t1, "type": "deploy", "service": target, "version": spec.version,
                               "previous_version": new, "reason": "rollback"})
        if ks.fault == "drift" and t1 < end:
            # The retrain the incident asked for: trained on the shifted data, switched blue/green
            # (the model server loads it without a restart, so no counters reset).
            events.append({"ts": t1, "type": "deploy", "service": target, "model": MODEL,
                           "version": RETRAINED_VERSION, "previous_version": MODEL_VERSION, "reason": "retrain"})

    def far_from_fault(t: float) -> bool:
        return fault is None or abs(t - fault.start) > min(1800.0, 0.2 * dur)

    def times(count: int, margin: float) -> list[float]:
        out: list[float] = []
        tries = 0
        while len(out) < count and tries < 200:
            tries += 1
            t = float(rng.uniform(start + margin, end - margin))
            if far_from_fault(t) and all(abs(t - o) > 600 for o in out):
                out.append(round(t, 3))
        return sorted(out)

    scale = dur / 21600.0
    # datastores are upgraded in maintenance windows, not in the middle of the day
    others = [s for s in svcs if s != target and svcs[s].role != "datastore"]
    n_deploys = max(1, int(round(deploys_per_6h * scale)))
    for t in times(n_deploys, min(900.0, dur / 8)):
        svc = others[int(rng.integers(len(others)))]
        prev = next((d.version for d in reversed(plan.deploys) if d.service == svc), svcs[svc].version)
        new = _bump(prev, 0)
        plan.deploys.append(Deploy(t, svc, new, prev))
        events.append({"ts": t, "type": "deploy", "service": svc, "version": new, "previous_version": prev})
    flags = {("frontend", "new_checkout_ui_rollout_percent"): ["5", "10", "25", "50", "100"],
             ("catalog", "cache_ttl_seconds"): ["300", "600", "900", "1200"],
             ("search", "spellcheck_max_edits"): ["1", "2", "1", "2"]}
    keys = [k for k in flags if k[0] in svcs and k[0] != target]
    for t in times(max(1, int(round(1.5 * scale))), min(900.0, dur / 8)) if keys else []:
        svc, key = keys[int(rng.integers(len(keys)))]
        values = flags[(svc, key)]
        if len(values) > 1:
            events.append({"ts": t, "type": "config", "service": svc, "key": key, "value": values[1],
                           "previous_value": values[0]})
            values.pop(0)
    for t in times(max(0, int(round(ks.bursts_per_6h * scale))), 300.0):
        plan.bursts.append(Burst(t, float(rng.uniform(60, 120)), float(rng.uniform(1.3, 1.7))))
    names = list(svcs)
    for t in times(max(0, int(round(ks.spikes_per_6h * scale))), 300.0):
        svc = names[int(rng.integers(len(names)))]
        plan.spikes.append(Spike(t, svc, int(rng.integers(svcs[svc].instances)),
                                 "cpu" if rng.random() < 0.5 else "latency"))
    callers = [s for s in names if svcs[s].calls and svcs[s].role != "datastore"]
    for t in times(max(0, int(round(ks.warn_bursts_per_6h * scale))), 300.0):
        svc = callers[int(rng.integers(len(callers)))]
        calls = svcs[svc].calls
        callee = calls[int(rng.integers(len(calls)))].callee
        plan.warn_bursts.append((t, svc, "retry" if rng.random() < 0.5 else "slow", int(rng.integers(8, 25)),
                                 callee))
    plan.deploys.sort(key=lambda d: d.ts)
    events.sort(key=lambda e: e["ts"])
    return plan, fault, events


def _bump(version: str, part: int) -> str:
    """Next patch (part 0) or minor (part 1) version: v2.3.9 -> v2.3.10 / v2.4.0."""
    prefix = "v" if version.startswith("v") else ""
    nums = [int(x) for x in version.lstrip("v").split(".")]
    if len(nums) < 3:  # "15.6": major.minor, the minor is the patch level
        nums[-1] += 1
        return prefix + ".".join(str(x) for x in nums)
    if part == 1:
        nums = [nums[0], nums[1] + 1, 0]
    else:
        nums[2] += 1
    return prefix + ".".join(str(x) for x in nums)


# ---------------------------------------------------------------- metrics


def _cumulative(inc: np.ndarray, reset: np.ndarray, init: float) -> np.ndarray:
    """Counter values from per-step increments: restart from 0 at every reset, ``init`` before the first."""
    c = np.cumsum(inc, dtype=float)
    idx = np.where(reset, np.arange(len(inc)), -1)
    last = np.maximum.accumulate(idx)
    base = np.where(last >= 0, np.concatenate([[0.0], c])[np.maximum(last, 0)], -init)
    return np.asarray(c - base)


def _gauge(v: float) -> str:
    if not math.isfinite(v):
        return "NaN"
    if abs(v) >= 1e4:
        return str(int(float(f"{v:.4g}")))
    return f"{v:.4g}"


def _ml_gauges(sims: dict[str, ServiceSim], fault: Fault, ts: np.ndarray, rng: np.random.Generator
               ) -> dict[str, list[tuple[str, dict[str, str], np.ndarray]]]:
    """model_* gauges of the drifting ML service: (name, extra labels, values).

    The input features stay shifted after the retrain (the world changed, the model followed);
    the retrained version's scores are calibrated again and its accuracy recovers as its labels
    come in.
    """
    n = len(ts)
    load = sims[fault.service].drivers["load"]
    ramp, _, decay = _drift_curves(ts, fault)
    out: list[tuple[str, dict[str, str], np.ndarray]] = []
    for feat, mean, sd, shift in _FEATURES:
        v = mean + sd * rng.normal(0, 1, n) + 0.3 * sd * (load - 0.5) + shift * ramp
        out.append(("model_feature_mean", {"model": MODEL, "feature": feat}, v))
    out.append(("model_prediction_mean", {"model": MODEL},
                0.31 + 0.01 * (load - 0.5) + rng.normal(0, 0.004, n) + 0.075 * ramp * (ts < fault.end)))
    out.append(("model_online_accuracy", {"model": MODEL}, 0.912 - 0.12 * decay + rng.normal(0, 0.005, n)))
    return {f"{fault.service}-0": out}


def _drift_curves(t: np.ndarray, fault: Fault) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(input shift 0-1, accuracy lost 0-1 by the serving version, accuracy lost 0-1 as measured) at ``t``.

    The inputs shift over 20 min (smooth step) and stay shifted. The old version loses accuracy
    slowly from ~5 min in; the retrained one, live from ``fault.end``, has none to lose. Online
    accuracy is measured on labels that arrive 5-10 min late over a window of about 10 min, so
    the measured loss follows the serving version's with that lag.
    """
    ramp = np.clip((t - fault.start) / 1200.0, 0, 1)
    ramp = ramp * ramp * (3 - 2 * ramp)
    served = (1 - np.exp(-np.clip(t - fault.start - 300.0, 0, None) / 1500.0)) * (t < fault.end)
    at_switch = 1 - math.exp(-max(fault.end - fault.start - 300.0, 0.0) / 1500.0)
    measured = 1 - np.exp(-np.clip(t - fault.start - 300.0, 0, None) / 1500.0)
    recovered = np.clip((t - fault.end - 300.0) / 600.0, 0, 1)
    measured = np.where(t < fault.end + 300.0, measured, at_switch * (1 - recovered))
    return ramp, served, measured


def _write_predictions(path: Path, sims: dict[str, ServiceSim], fault: Fault, ts: np.ndarray, step: float,
                       rng: np.random.Generator) -> int:
    """The drifting model's sampled prediction log (aiops.drift.records form): features, score, late labels.

    About 0.5 predictions/s are sampled (following traffic); the click label of each arrives 5-10 min
    later. Feature and prediction shifts are those of the ``model_*`` gauges; labels agree with the
    thresholded score with the gauge's online accuracy, so the error grows as accuracy decays.
    From ``fault.end`` every prediction comes from the retrained version (a blue/green switch: a
    canary would interleave versions), whose scores and accuracy are as before the drift while the
    inputs stay shifted; labels of the old version's last predictions still arrive after it.
    """
    load = sims[fault.service].drivers["load"]
    ref = max(float(np.percentile(load, 95)), 1e-9)
    counts = rng.poisson(np.clip(0.8 * load / ref, 0.3, 1.2) * step)
    t = np.concatenate([ts[k] + rng.random(int(c)) * step for k, c in enumerate(counts)])
    n = len(t)
    ramp, decay, _ = _drift_curves(t, fault)
    acc = 0.912 - 0.12 * decay
    retrained = t >= fault.end
    spread = {"price_bucket": 0.12, "session_depth": 1.4, "query_len": 1.1, "user_tenure_days": 240.0,
              "ctr_7d": 0.02}
    cols = {}
    for feat, mean, _, shift in _FEATURES:
        v = mean + shift * ramp + spread[feat] * rng.normal(0, 1, n)
        cols[feat] = np.maximum(v, 0.0)
    country = rng.choice(np.array(["DE", "FR", "NL", "PL", "ES"]), n, p=[0.35, 0.25, 0.15, 0.15, 0.1])
    mean_p = 0.31 + 0.075 * ramp * ~retrained  # the retrained version is calibrated on the shifted inputs
    k = 6.0
    score = rng.beta(mean_p * k, (1 - mean_p) * k)
    right = rng.random(n) < acc
    label = np.where(right, score >= 0.5, score < 0.5).astype(int)
    delay = rng.uniform(300, 600, n)
    ids = rng.integers(0, 16 ** 10, n)
    rows: list[tuple[float, str]] = []
    for i in range(n):
        rid = f"{int(ids[i]):010x}"
        feats = ",".join(f'"{f}":{_gauge(float(cols[f][i]))}' for f in cols) + f',"country":"{country[i]}"'
        version = RETRAINED_VERSION if retrained[i] else MODEL_VERSION
        rows.append((float(t[i]), f'{{"ts":{t[i]:.3f},"model":"{MODEL}","version":"{version}","id":"{rid}",'
                                  f'"service":"{fault.service}","features":{{{feats}}},'
                                  f'"prediction":{score[i]:.4f}}}'))
        lt = float(t[i] + delay[i])
        if lt < ts[-1] + step:
            rows.append((lt, f'{{"ts":{lt:.3f},"model":"{MODEL}","id":"{rid}","label":{int(label[i])}}}'))
    rows.sort(key=lambda r: r[0])
    _write_gz(path, (line for _, line in rows))
    return len(rows)


Row = tuple[str, np.ndarray, bool]
"""One series of a target: (JSON line prefix with name and labels, values per step, integer-valued)."""


@dataclass(frozen=True, slots=True)
class _Target:
    """One scrape target (an instance): its scrape offset and series."""

    offset: float
    rows: list[Row]  # present only when the scrape succeeds
    scraped: np.ndarray
    always: list[Row]  # from kube-state-metrics: present even when the target is down
    up: tuple[str, np.ndarray]


def _write_metrics(path: Path, sims: dict[str, ServiceSim], ts: np.ndarray, step: float,
                   rng: np.random.Generator, ml: dict[str, list[tuple[str, dict[str, str], np.ndarray]]]
                   ) -> tuple[int, int]:
    """Render every target's scrapes in time order; return (lines, series)."""
    n = len(ts)
    targets: list[_Target] = []
    series = 0
    for sim in sims.values():
        svc = sim.spec.name
        for inst in sim.instances:
            lab = f'"service":"{svc}","instance":"{inst.name}"'
            uptime = float(rng.uniform(1, 12)) * 3600.0 / (n * step)  # the process started hours ago
            rows: list[Row] = []
            for j, code in enumerate(CODES):
                rows.append((f'"name":"http_requests_total","labels":{{{lab},"code":"{code}"}}',
                             _cumulative(inst.codes[j], inst.reset, round(uptime * inst.codes[j].sum())), True))
            cells = inst.buckets
            init_cells = np.round(uptime * cells.sum(axis=1))
            cum_cells = np.cumsum(cells, axis=0)
            cum_init = np.cumsum(init_cells)
            for j, le in enumerate(_LE_TEXT):
                rows.append((f'"name":"http_request_duration_seconds_bucket","labels":{{{lab},"le":"{le}"}}',
                             _cumulative(cum_cells[j], inst.reset, cum_init[j]), True))
            rows.append((f'"name":"http_request_duration_seconds_sum","labels":{{{lab}}}',
                         _cumulative(inst.lat_sum, inst.reset, uptime * inst.lat_sum.sum()), False))
            rows.append((f'"name":"http_request_duration_seconds_count","labels":{{{lab}}}',
                         _cumulative(cum_cells[-1], inst.reset, cum_init[-1]), True))
            rows.append((f'"name":"process_cpu_seconds_total","labels":{{{lab}}}',
                         _cumulative(inst.cpu, inst.reset, uptime * inst.cpu.sum()), False))
            mem = inst.memory.copy()
            rows.append((f'"name":"container_memory_working_set_bytes","labels":{{{lab}}}', mem, False))
            for name, extra, values in ml.get(inst.name, []):
                extra_txt = "".join(f',"{k}":"{v}"' for k, v in extra.items())
                rows.append((f'"name":"{name}","labels":{{"service":"{svc}"{extra_txt}}}', values, False))
            always: list[Row] = [(f'"name":"kube_pod_container_status_restarts_total","labels":{{{lab}}}',
                       inst.restarts + int(rng.integers(0, 3)), True)]
            up = (f'"name":"up","labels":{{{lab}}}', inst.scraped.astype(int), True)
            series += len(rows) + 2
            offset = round(float(rng.uniform(0.5, step - 0.5)), 3)
            targets.append(_Target(offset, rows, inst.scraped, always, up))
    # bad input on purpose: a few NaN memory samples and duplicated lines
    nan_at = {(int(rng.integers(len(targets))), int(rng.integers(n))) for _ in range(3)}
    dup_at = {(int(rng.integers(len(targets))), int(rng.integers(n))) for _ in range(3)}
    jitter = rng.integers(0, 3, (len(targets), n)) / 1000.0
    order = sorted(range(len(targets)), key=lambda i: targets[i].offset)
    lines: list[str] = []
    for k in range(n):
        for i in order:
            tg = targets[i]
            t = f"{ts[k] + tg.offset + jitter[i, k]:.3f}"
            block: list[str] = []
            if tg.scraped[k]:
                for prefix, values, is_int in tg.rows:
                    v = values[k]
                    if is_int:
                        txt = str(int(v))
                    elif "memory" in prefix or "model_" in prefix:
                        txt = "NaN" if (i, k) in nan_at and "memory" in prefix else _gauge(float(v))
                    else:
                        txt = repr(round(float(v), 2))
                    block.append(f'{{"ts":{t},{prefix},"value":{txt}}}')
            for prefix, values, _ in tg.always:
                block.append(f'{{"ts":{t},{prefix},"value":{int(values[k])}}}')
            block.append(f'{{"ts":{t},{tg.up[0]},"value":{int(tg.up[1][k])}}}')
            if (i, k) in dup_at:
                block.append(block[-1])
            lines.extend(block)
    _write_gz(path, lines)
    return len(lines), series


# ---------------------------------------------------------------- logs


def _limited(rate: np.ndarray) -> np.ndarray:
    """Lines/s a rate-limited error logger writes for ``rate`` failures/s."""
    return np.asarray(np.minimum(np.where(rate <= 2.0, rate, 2.0 + 0.15 * (rate - 2.0)), 10.0))


def _write_logs(path: Path, sims: dict[str, ServiceSim], plan: Plan, fault: Fault | None, ts: np.ndarray,
                step: float, rng: np.random.Generator, log_scale: float) -> int:
    n = len(ts)
    lag = max(1, int(round(LAG_S / step)))
    tok = Tokens(rng)
    out: list[tuple[float, str, str, str]] = []
    for svc, sim in sims.items():
        templates = ROUTINE.get(svc, ROUTINE["frontend"])
        weights = np.array([w for _, w, _ in templates])
        cum = [float(x) for x in np.cumsum(weights / weights.sum())]
        ref = max(float(np.percentile(sim.served, 95)), 1e-9)
        load = np.clip(sim.served / ref, 0, 4)
        routine = rng.poisson(sim.spec.log_rate * log_scale * (0.25 + 0.75 * load) * step)
        causes: list[tuple[str, np.ndarray]] = []
        for key, rate in sim.drivers.items():
            if key in ("bad_deploy", "shed", "latency") or key.startswith("upstream:"):
                causes.append((key, rng.poisson(_limited(rate) * step)))
            elif key == "gc_pressure":
                causes.append((key, rng.poisson(rate * step)))
        if fault is not None and fault.kind == "drift" and fault.service == svc:
            # the server checks inputs against the serving version's training range
            warn = (ts >= fault.start + 600) & (ts < fault.end)
            causes.append(("drift", rng.poisson(np.where(warn, 1 / 60, 0.0) * step)))
            if fault.end < ts[-1] + step:
                out += [(fault.end + dt, svc, "INFO", msg) for dt, msg in model_swap_lines(MODEL, MODEL_VERSION,
                                                                                           RETRAINED_VERSION)]
        for k in range(n):
            for _ in range(int(routine[k])):
                j = bisect.bisect_right(cum, tok.u())
                level, _, render = templates[min(j, len(templates) - 1)]
                out.append((ts[k] + tok.u() * step, svc, level, render(tok)))
            for cause, counts in causes:
                for _ in range(int(counts[k])):
                    level, msg = fault_line(cause, svc, tok, sims, k, lag)
                    out.append((ts[k] + tok.u() * step, svc, level, msg))
        version_at = sorted(sim.versions)
        restart_count = dict.fromkeys(range(len(sim.instances)), 0)
        for when, inst, reason in sim.restarts_at:
            if reason != "rollout":
                restart_count[inst] += 1
            version = [v for t, v in version_at if t <= when][-1]
            for dt, level, msg in lifecycle_lines(svc, reason, version, restart_count[inst], tok):
                out.append((when + dt, svc, level, f"[{svc}-{inst}] {msg}" if len(sim.instances) > 1 else msg))
    for t0, svc, kind, count, callee in plan.warn_bursts:
        for _ in range(count):
            out.append((t0 + tok.u() * 30.0, svc, "WARN", BENIGN_BURSTS[kind](tok, callee)))
    lo, hi = float(ts[0]), float(ts[-1]) + step
    out = [r for r in out if lo <= r[0] < hi]
    out.sort(key=lambda r: r[0])
    _write_gz(path, (f'{{"ts":{t:.3f},"service":"{s}","level":"{lv}","message":{json.dumps(m)}}}'
                     for t, s, lv, m in out))
    return len(out)


# ---------------------------------------------------------------- files


def _compact(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _write_gz(path: Path, lines: Iterable[str]) -> None:
    """gzip with a fixed header (no name, mtime 0) so equal content gives equal bytes."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as gz:
        chunk: list[str] = []
        for line in lines:
            chunk.append(line)
            if len(chunk) >= 4096:
                gz.write(("\n".join(chunk) + "\n").encode())
                chunk = []
        if chunk:
            gz.write(("\n".join(chunk) + "\n").encode())
    path.write_bytes(buf.getvalue())


def _hhmm(t: float) -> str:
    return datetime.fromtimestamp(t, tz=UTC).strftime("%H:%M UTC")


def _spec(name: str, kind: str, ks: KindSpec, svcs: dict[str, ServiceSpec], target: str | None,
          fault: Fault | None, plan: Plan, events: list[dict[str, Any]], start: float, end: float, step: float
          ) -> str:
    dur_h = (end - start) / 3600.0
    routine = sum(1 for e in events if e["type"] == "deploy" and e.get("service") != target)
    common = (f"{len(svcs)} services over {dur_h:g} h from {datetime.fromtimestamp(start, tz=UTC):%Y-%m-%d %H:%M} "
              f"UTC at {step:g} s; {routine} routine deploys and "
              f"{sum(1 for e in events if e['type'] == 'config')} config changes are harmless.")
    quiet_from = start + min(3600.0, (end - start) / 4)
    expect: dict[str, Any]
    if fault is None:
        story = {
            "quiet-seasonal": "No incident: traffic climbs to the noon peak and eases through the lunch shoulder.",
            "quiet-bursts": "No incident: short traffic bursts, single-scrape CPU and latency spikes and benign "
                            "WARN bursts that an on-call engineer would not want to be paged for.",
        }[kind]
        expect = {"incidents": [], "quiet": [[round(start), round(end)]]}
    else:
        assert target is not None
        t0 = _hhmm(fault.start)
        story = {
            "bad_deploy": f"At {t0} {target} {_deploy_of(plan, target)} is rolled out; within a minute or two "
                          f"the new pods throw NullPointerExceptions (~11 % 5xx) and p99 rises; callers log upstream "
                          f"500/503. The release is rolled back 40 minutes later.",
            "surge": f"At {t0} requests to {target} through the frontend jump about "
                     f"{fault.param('factor', 4.0):.1f}x (a crawler); {target}'s CPU saturates, latency climbs and "
                     f"excess requests are shed as 503. No deploy of {target} is near the onset.",
            "down": f"At {t0} {target} runs out of disk and crash-loops for "
                    f"{(fault.end - fault.start) / 60:.0f} minutes: every query is refused, callers log connection "
                    f"refused and return 5xx. The root cause is the datastore, not its callers.",
            "latency": f"At {t0} a slow acquirer adds about a second to 35 % of {target}'s requests: its p90/p99 "
                       f"jump without errors, callers' latency follows; after 10 minutes the delay grows and "
                       f"callers start to time out.",
            "leak": f"From {t0} {target} leaks memory (~9 MiB/min) until the kernel OOM-kills it; it restarts "
                    f"(counters reset, restart count rises), errors spike around each kill, and it leaks again.",
            "drift": f"From {t0} the input distribution of {target} shifts (price_bucket, session_depth, query_len "
                     f"feature means), its prediction mean moves and online accuracy decays from 0.91 towards 0.79; "
                     f"requests, errors and latency barely change." + (
                         f" At {_hhmm(fault.end)} the retrained {MODEL} {RETRAINED_VERSION} (trained on the shifted "
                         f"inputs) replaces {MODEL_VERSION}: its scores and accuracy are back to normal while the "
                         f"inputs stay shifted." if fault.end < end else ""),
        }[fault.kind]
        rc: dict[str, Any] = {"service": target}
        if ks.metric:
            rc["metric"] = ks.metric
        expect = {
            "incidents": [{"root_cause": rc, "fault_start": round(fault.start, 3),
                           "detect_within": int(ks.detect_within), "actions": list(ks.actions)}],
            "quiet": [[round(quiet_from), round(fault.start - 60)]] if fault.start - 60 > quiet_from else [],
        }
        if fault.kind == "drift" and fault.end < end:
            # The format has no field for a resolution; what it can say is that once the retrained
            # version is live nothing new may open (the recovery belongs to the incident it ends).
            expect["quiet"].append([round(fault.end), round(end)])
    doc = {
        "name": name,
        "description": f"{story} {common}",
        "step": int(step) if float(step).is_integer() else step,
        "topology": topology_map(svcs),
        "expect": expect,
        "generator": {"kind": kind, "fault_end": round(fault.end, 3) if fault else None},
    }
    return yaml.safe_dump(doc, sort_keys=False, width=100, default_flow_style=None)


def _deploy_of(plan: Plan, service: str) -> str:
    d = next((d for d in plan.deploys if d.service == service and d.bad), None)
    return f"{d.version} (from {d.previous_version})" if d else ""


# ---------------------------------------------------------------- CLI


def generate_command(args: argparse.Namespace) -> int:
    """Run the generator from parsed CLI arguments and print what was written."""
    try:
        g = generate(args.kind, args.out, seed=args.seed, services=args.services, hours=args.hours,
                     step=args.step, start=args.start, target=args.target, name=args.name,
                     log_scale=args.log_scale)
    except ValueError as exc:
        print(f"aiops scenario generate: {exc}", file=sys.stderr)
        return 2
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.2f} MB" for p in sorted(g.path.iterdir()) if p.is_file())
    print(f"wrote {g.path}: {g.series} series, {g.metric_lines} samples, {g.log_lines} log lines, "
          f"{g.event_lines} events ({sizes})")
    return 0
