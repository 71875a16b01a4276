"""The simulation behind the scenario generator: traffic, faults, propagation, raw counts.

See :mod:`aiops.scenario.generate` for the model in prose. This module turns a :class:`Plan`
(what happens when) into per-instance, per-step increments (:class:`InstanceSim`) and per-service
log drivers (expected error-line rates by cause); :mod:`aiops.scenario.generate` renders them.

Order of the passes, each vectorised over steps with numpy:

1. process lifetimes: rollouts, OOM kills and crash loops give every instance its epochs
   (counter resets), missed scrapes and restart count;
2. load, top-down: users -> frontend -> callees, each edge scaling its caller's served rate;
   a service sheds what exceeds 95 % of its CPU capacity;
3. quality, bottom-up: own latency (log-normal, slowed by utilisation), a slow tail, own
   errors, then the callees' latency, failures and timeouts seen ``lag`` seconds later,
   weakened by each edge's ``crit``;
4. draws: Poisson request counts split by code, histogram buckets by a multinomial over the
   latency mixture, CPU seconds, memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.special import ndtr

from aiops.scenario.gen_topology import ServiceSpec, topological

LE = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Finite histogram bucket bounds (seconds); ``+Inf`` is added when rendering."""

CODES = ("200", "404", "500", "503")
TIMEOUT_S = 2.0  # client timeout every caller applies to its calls
LAG_S = 30.0  # how long a callee's trouble takes to show in its callers (retries, pools, queues)
SLOW_SIGMA = 0.35  # shape of the slow-tail component


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected fault on ``service`` over ``[start, end)`` (unix seconds)."""

    kind: str  # bad_deploy | surge | down | latency | leak | drift
    service: str
    start: float
    end: float
    params: tuple[tuple[str, float], ...] = ()

    def param(self, key: str, default: float) -> float:
        for k, v in self.params:
            if k == key:
                return v
        return default


@dataclass(frozen=True, slots=True)
class Deploy:
    """A rolling deploy: each instance is replaced (process restart, counters reset) in turn."""

    ts: float
    service: str
    version: str
    previous_version: str
    bad: bool = False  # the new version raises errors and a slow tail


@dataclass(frozen=True, slots=True)
class Burst:
    """A benign traffic burst at the edge (a campaign e-mail, a retrying client)."""

    start: float
    duration: float
    factor: float


@dataclass(frozen=True, slots=True)
class Spike:
    """A single-scrape spike on one instance (a cron job, a GC storm): ``what`` is cpu or latency."""

    ts: float
    service: str
    instance: int
    what: str


@dataclass
class Plan:
    """Everything that happens in a scenario besides the steady daily traffic."""

    faults: list[Fault] = field(default_factory=list)
    deploys: list[Deploy] = field(default_factory=list)
    bursts: list[Burst] = field(default_factory=list)
    spikes: list[Spike] = field(default_factory=list)
    # benign WARN bursts: (ts, service, kind, lines, callee it concerns)
    warn_bursts: list[tuple[float, str, str, int, str]] = field(default_factory=list)
    peak_rps: float = 220.0  # user requests per second at the frontend at the daily peak
    miss_rate: float = 0.0015  # probability a scrape of a target fails (up=0, its samples absent)


@dataclass
class InstanceSim:
    """Per-step increments and gauges of one instance (arrays of length n)."""

    name: str
    codes: np.ndarray  # (4, n) request counts by CODES
    buckets: np.ndarray  # (len(LE)+1, n) counts per bucket cell (last cell: above the last bound)
    lat_sum: np.ndarray  # seconds of latency added per step
    cpu: np.ndarray  # cpu seconds used per step
    memory: np.ndarray  # bytes
    reset: np.ndarray  # bool: the process (re)started just before this step's scrape
    restarts: np.ndarray  # cumulative restart count (kube-state-metrics, never resets)
    scraped: np.ndarray  # bool: the scrape of this target succeeded


@dataclass
class ServiceSim:
    """One service's simulated instances plus what its logs should say."""

    spec: ServiceSpec
    instances: list[InstanceSim]
    served: np.ndarray  # requests/s actually served, all instances
    offered: np.ndarray
    drivers: dict[str, np.ndarray]  # log driver name -> expected lines per second
    versions: list[tuple[float, str]]  # (ts, version) as deployed
    mem_frac: np.ndarray  # (I, n) memory / limit, for GC log lines
    restarts_at: list[tuple[float, int, str]]  # (ts, instance, reason) of process restarts


def day_curve(hours: np.ndarray) -> np.ndarray:
    """Relative user traffic by hour of day (1.0 at the daily peak, ~0.2 at night).

    Two humps (late morning and evening) and a lunch shoulder, like a European shop.
    """
    def bump(mu: float, width: float) -> np.ndarray:
        d = (hours - mu + 12.0) % 24.0 - 12.0
        return np.asarray(np.exp(-0.5 * (d / width) ** 2))

    raw = 0.16 + 0.62 * bump(11.5, 2.6) + 0.25 * bump(14.5, 1.8) + 0.55 * bump(20.0, 2.3)
    grid = np.arange(0, 24, 1 / 60)
    d0 = (grid[:, None] - np.array([11.5, 14.5, 20.0]) + 12.0) % 24.0 - 12.0
    w = np.array([2.6, 1.8, 2.3])
    peak = float(np.max(0.16 + (np.exp(-0.5 * (d0 / w) ** 2) * np.array([0.62, 0.25, 0.55])).sum(axis=1)))
    return np.asarray(raw / peak)


def _ar1(rng: np.random.Generator, n: int, sigma: float, phi: float) -> np.ndarray:
    """Stationary AR(1) noise with marginal standard deviation ``sigma``."""
    e = rng.normal(0.0, sigma * np.sqrt(1 - phi * phi), n)
    out = np.empty(n)
    acc = rng.normal(0.0, sigma)
    for k in range(n):
        acc = phi * acc + e[k]
        out[k] = acc
    return out


def _window(ts: np.ndarray, start: float, end: float, ramp: float = 0.0) -> np.ndarray:
    """1 inside [start, end), linear ramps of ``ramp`` seconds at both ends, 0 elsewhere."""
    if ramp <= 0:
        return ((ts >= start) & (ts < end)).astype(float)
    up = np.clip((ts - start) / ramp, 0, 1)
    down = np.clip((end - ts) / ramp, 0, 1)
    return np.asarray(np.minimum(up, down))


def _lag(a: np.ndarray, k: int) -> np.ndarray:
    if k <= 0:
        return a
    return np.concatenate([np.repeat(a[..., :1], k, axis=-1), a[..., :-k]], axis=-1)


def _call_fail(fail: np.ndarray, ratio: float, crit: float) -> np.ndarray:
    """Probability a caller request fails given the callee's per-call failure probability."""
    p = np.clip(fail * crit, 0.0, 1.0)
    if ratio >= 1.0:
        return np.asarray(1.0 - (1.0 - p) ** ratio)
    return np.asarray(ratio * p)


def _cdf(le: float, med: np.ndarray, sigma: np.ndarray | float) -> np.ndarray:
    return np.asarray(ndtr((np.log(le) - np.log(med)) / sigma))


def simulate(services: dict[str, ServiceSpec], plan: Plan, ts: np.ndarray, rng: np.random.Generator
             ) -> dict[str, ServiceSim]:
    """Run the passes over the step grid ``ts`` (scrape times of the first target)."""
    n = len(ts)
    step = float(ts[1] - ts[0]) if n > 1 else 15.0
    lag = max(1, int(round(LAG_S / step)))
    order = topological(services)
    faults = {f.kind: f for f in plan.faults}

    # 1. process lifetimes
    life = {name: _lifetimes(spec, plan, ts, step, rng) for name, spec in services.items()}

    # 2. load, top-down
    hours = (ts % 86400.0) / 3600.0
    users = plan.peak_rps * day_curve(hours) * np.exp(_ar1(rng, n, 0.035, 0.97) + rng.normal(0, 0.015, n))
    burst = np.ones(n)
    for b in plan.bursts:
        burst = burst * (1.0 + (b.factor - 1.0) * _window(ts, b.start, b.start + b.duration, 20.0))
    users = users * burst
    # burst traffic is mostly cached pages the frontend answers itself: a third reaches the callees
    edge_share = (1.0 + 0.35 * (burst - 1.0)) / burst
    boost: dict[tuple[str, str], np.ndarray] = {}
    surge = faults.get("surge")
    if surge is not None:
        callers = [c for c in services if services[c].role == "edge"
                   and any(e.callee == surge.service for e in services[c].calls)]
        f = 1.0 + (surge.param("factor", 4.0) - 1.0) * _window(ts, surge.start, surge.end, surge.param("ramp", 90.0))
        for c in callers[:1]:
            boost[(c, surge.service)] = f
    ref = _reference_load(services, order)
    offered: dict[str, np.ndarray] = {}
    served: dict[str, np.ndarray] = {}
    shed: dict[str, np.ndarray] = {}
    cap: dict[str, np.ndarray] = {}
    cost: dict[str, float] = {}
    for name in order:
        spec = services[name]
        if spec.role == "edge":
            load = users.copy()
            for (c, callee), f in boost.items():
                if c == name:
                    r = next(e.ratio for e in spec.calls if e.callee == callee)
                    load = load * (1.0 + r * (f - 1.0))
        else:
            load = np.zeros(n)
            for caller in order:
                for e in services[caller].calls:
                    if e.callee != name or caller not in served:
                        continue
                    share = e.ratio * np.exp(_ar1(rng, n, 0.02, 0.9))
                    if services[caller].role == "edge":
                        share = share * edge_share
                    if (caller, name) in boost:
                        f = boost[(caller, name)]
                        share = share * f / (1.0 + e.ratio * (f - 1.0))
                    load = load + served[caller] * share
        cost[name] = spec.rho * (spec.cpu_limit - spec.cpu_idle) * spec.instances / (ref[name] * plan.peak_rps)
        alive = life[name].alive
        cap[name] = alive.sum(axis=0) * (spec.cpu_limit - spec.cpu_idle) / cost[name]
        offered[name] = load
        served[name] = np.minimum(load, 0.95 * cap[name])
        shed[name] = np.where((load > 0) & (cap[name] > 0), 1.0 - served[name] / np.maximum(load, 1e-9), 0.0)
        down = faults.get("down")
        if down is not None and down.service == name:
            served[name] = served[name] * (1.0 - _window(ts, down.start, down.end))

    # 3. quality, bottom-up
    sims: dict[str, ServiceSim] = {}
    agg: dict[str, dict[str, np.ndarray]] = {}
    for name in reversed(order):
        spec = services[name]
        sims[name], agg[name] = _quality_and_draw(
            spec, plan, faults, ts, step, lag, rng, life[name], offered[name], served[name], cap[name],
            cost[name], shed[name], {e.callee: agg[e.callee] for e in spec.calls})
    return {name: sims[name] for name in services}


@dataclass
class _Life:
    alive: np.ndarray  # (I, n) bool: serving traffic
    scraped: np.ndarray  # (I, n) bool
    reset: np.ndarray  # (I, n) bool
    restarts: np.ndarray  # (I, n) int cumulative
    since_start: np.ndarray  # (I, n) seconds since the process started (large before the first restart)
    leak_age: np.ndarray  # (I, n) seconds the leak has accumulated in the current process
    bad: np.ndarray  # (I, n) bool: running a bad version
    versions: list[tuple[float, str]]
    restarts_at: list[tuple[float, int, str]]


def _lifetimes(spec: ServiceSpec, plan: Plan, ts: np.ndarray, step: float, rng: np.random.Generator) -> _Life:
    n, inst = len(ts), spec.instances
    alive = np.ones((inst, n), bool)
    scraped = rng.random((inst, n)) >= plan.miss_rate
    reset = np.zeros((inst, n), bool)
    restarts = np.zeros((inst, n), int)
    bad = np.zeros((inst, n), bool)
    since = np.full((inst, n), 1e6)
    leak_age = np.zeros((inst, n))
    versions: list[tuple[float, str]] = [(float(ts[0]) - 86400.0, spec.version)]
    restarts_at: list[tuple[float, int, str]] = []

    def restart_at(i: int, k: int, counted: bool, down_steps: int, reason: str) -> None:
        if k >= n:
            return
        alive[i, k:k + down_steps] = False
        scraped[i, k:k + down_steps] = False
        if k + down_steps < n:
            reset[i, k + down_steps] = True
        if counted:
            restarts[i, k:] += 1
        restarts_at.append((float(ts[k]), i, reason))

    for d in sorted(plan.deploys, key=lambda d: d.ts):
        if d.service != spec.name:
            continue
        versions.append((d.ts, d.version))
        for i in range(inst):
            t_i = d.ts + 20.0 + 45.0 * i + float(rng.uniform(0, 10))
            k = int(np.searchsorted(ts, t_i))
            if k >= n:
                continue
            # the new pod starts before the old one stops (surge 1): no downtime, new process
            reset[i, k] = True
            if rng.random() < 0.3:
                scraped[i, k] = False
            restarts_at.append((float(ts[k]), i, "rollout"))
            bad[i, k:] = d.bad

    for f in plan.faults:
        if f.service != spec.name:
            continue
        k0, k1 = int(np.searchsorted(ts, f.start)), int(np.searchsorted(ts, f.end))
        if f.kind == "leak":
            slope = f.param("mib_per_min", 9.0) * 1048576.0 / 60.0
            head = spec.mem_limit - spec.mem_base * 1.05
            for i in range(inst):
                rate = slope * float(rng.uniform(0.85, 1.15))
                age = 0.0
                k = k0
                while k < min(k1, n):
                    age += step
                    leak_age[i, k] = age
                    if age * rate >= head * float(rng.uniform(0.97, 1.0)):
                        restart_at(i, k, True, 2, "OOMKilled")
                        age = 0.0
                        k += 2
                    k += 1
                leak_age[i] *= rate  # bytes leaked so far in this process
        if f.kind == "down" and spec.role == "datastore":
            # CrashLoopBackOff: restarts after 10 s, 20 s, 40 s ... capped at 5 min
            t, back = f.start + 10.0, 10.0
            while t < f.end:
                k = int(np.searchsorted(ts, t))
                if k < n:
                    for i in range(inst):
                        restarts[i, k:] += 1
                        restarts_at.append((float(ts[k]), i, "CrashLoopBackOff"))
                back = min(back * 2.0, 300.0)
                t += back

    for i in range(inst):
        last = -1e6
        for k in range(n):
            if reset[i, k] or not alive[i, k]:
                last = float(ts[k])
            since[i, k] = ts[k] - last
    return _Life(alive, scraped, reset, restarts, since, leak_age, bad, versions, restarts_at)


def _reference_load(services: dict[str, ServiceSpec], order: list[str]) -> dict[str, float]:
    """Offered rate of each service at the daily peak with 1 user request/s (calibrates CPU cost)."""
    ref: dict[str, float] = {}
    for name in order:
        if services[name].role == "edge":
            ref[name] = 1.0
        else:
            ref[name] = sum(ref[c] * e.ratio for c in order if c in ref for e in services[c].calls
                            if e.callee == name)
            ref[name] = max(ref[name], 1e-3)
    return ref


def _qmult(rho: np.ndarray) -> np.ndarray:
    """Queueing slowdown of own processing time with utilisation (M/M/1-like knee near 1)."""
    r = np.clip(rho, 0.0, 0.95)
    return np.asarray(1.0 + 0.6 * r ** 3 / (1.0 - r))


def _quality_and_draw(spec: ServiceSpec, plan: Plan, faults: dict[str, Fault], ts: np.ndarray, step: float,
                      lag: int, rng: np.random.Generator, life: _Life, offered: np.ndarray, served: np.ndarray,
                      cap: np.ndarray, cost: float, shed: np.ndarray, callees: dict[str, dict[str, np.ndarray]]
                      ) -> tuple[ServiceSim, dict[str, np.ndarray]]:
    n, inst = len(ts), spec.instances
    drivers: dict[str, np.ndarray] = {}
    rho = np.where(cap > 0, served / np.maximum(cap, 1e-9), 0.0)
    down_f = faults.get("down")
    down = _window(ts, down_f.start, down_f.end) if down_f and down_f.service == spec.name else np.zeros(n)

    # own latency and errors, per instance
    noise = np.exp(rng.normal(0, 0.04, (inst, n)))
    med = spec.latency_s * _qmult(rho)[None, :] * noise
    cold = np.clip(1.0 - life.since_start / 120.0, 0.0, 1.0)  # caches warm up over two minutes
    med = med * (1.0 + 0.4 * cold)
    slow_f = np.full((inst, n), 0.01) + 0.05 * cold + 0.2 * np.clip(rho - 0.85, 0, 1)[None, :]
    slow_med = np.maximum(med * 8.0, 0.05)
    e500 = np.full((inst, n), 0.0003) * np.exp(rng.normal(0, 0.3, (inst, n)))
    e503 = np.full((inst, n), 0.00015) * np.exp(rng.normal(0, 0.3, (inst, n)))
    e503 = e503 + shed[None, :]
    drivers["shed"] = offered * shed
    for sp in plan.spikes:
        if sp.service == spec.name and sp.what == "latency" and sp.instance < inst:
            k = int(np.searchsorted(ts, sp.ts))
            if k < n:
                slow_f[sp.instance, k] += 0.3
    if spec.role == "datastore":
        med = med * (1.0 - down[None, :]) + 0.0008 * down[None, :]  # refused at once
        e503 = e503 + down[None, :]
        drivers["down"] = down

    bad = life.bad.astype(float)
    if bad.any():
        e500 = e500 + bad * 0.11 * np.exp(rng.normal(0, 0.15, (inst, n)))
        slow_f = slow_f + bad * 0.12
        slow_med = slow_med + bad * 0.7
        drivers["bad_deploy"] = served * bad.mean(axis=0) * 0.11

    lat = faults.get("latency")
    if lat is not None and lat.service == spec.name:
        w = _window(ts, lat.start, lat.end, 20.0)
        worse = _window(ts, lat.start + lat.param("escalate_after", 600.0), lat.end, 120.0)
        slow_f = slow_f + (lat.param("fraction", 0.35) * w)[None, :]
        extra = lat.param("delay", 0.9) * w + lat.param("delay_late", 0.9) * worse
        slow_med = np.where(w[None, :] > 0, np.maximum(slow_med, med + extra[None, :]), slow_med)
        drivers["latency"] = served * w * lat.param("fraction", 0.35)

    mem_frac = np.zeros((inst, n))
    leak = faults.get("leak")
    if leak is not None and leak.service == spec.name:
        frac = (spec.mem_base + life.leak_age) / spec.mem_limit
        mem_frac = frac
        gc = np.clip((frac - 0.8) / 0.2, 0, 1)
        med = med * (1.0 + 2.0 * gc ** 2)
        slow_f = slow_f + 0.25 * gc ** 2
        slow_med = slow_med + 0.6 * gc
        e500 = e500 + 0.03 * gc ** 4  # OutOfMemoryError thrown inside requests just before the kill
        drivers["gc_pressure"] = (gc > 0.3).mean(axis=0) * (0.05 + 0.3 * gc.max(axis=0))

    # a dead instance still receives its share until the load balancer ejects it
    dead = ~life.alive
    first_dead = dead & np.concatenate([np.ones((inst, 1), bool), ~dead[:, :-1]], axis=1)
    e503 = e503 + first_dead * 0.8 + (dead & ~first_dead) * 0.15

    # callees, seen one lag later
    fail_parts: list[np.ndarray] = []
    m_add = np.zeros(n)
    f_keep = np.ones(n)
    extra_num, extra_den = np.zeros(n), np.zeros(n)
    for e in spec.calls:
        c = callees[e.callee]
        cm, cf, cms, cerr = (_lag(c[k], lag) for k in ("med", "slow_f", "slow_med", "err"))
        timeout = (1 - cf) * (1 - _cdf(TIMEOUT_S, cm, c["sigma"])) + cf * (1 - _cdf(TIMEOUT_S, cms, SLOW_SIGMA))
        p = _call_fail(np.clip(cerr + timeout, 0, 1), e.ratio, e.crit)
        fail_parts.append(p)
        drivers[f"upstream:{e.callee}"] = served * p
        drivers[f"timeout:{e.callee}"] = served * _call_fail(timeout, e.ratio, e.crit)
        m_add = m_add + min(e.ratio, 3.0) * cm
        fr = _call_fail(cf, e.ratio, 1.0)
        f_keep = f_keep * (1 - fr)
        extra_num = extra_num + fr * (np.minimum(cms, TIMEOUT_S) - cm)
        extra_den = extra_den + fr
    up_fail = 1.0 - np.prod([1 - p for p in fail_parts], axis=0) if fail_parts else np.zeros(n)
    med_t = med + m_add[None, :]
    f_call = 1 - f_keep
    call_extra = np.where(extra_den > 0, extra_num / np.maximum(extra_den, 1e-9), 0.0)
    slow_t = 1 - (1 - np.clip(slow_f, 0, 1)) * (1 - f_call[None, :])
    slow_med_t = np.where(
        slow_t > 0,
        (np.clip(slow_f, 0, 1) * slow_med + f_call[None, :] * (med_t + call_extra[None, :]))
        / np.maximum(np.clip(slow_f, 0, 1) + f_call[None, :], 1e-9),
        slow_med)
    slow_med_t = np.maximum(slow_med_t, med_t * 1.5)
    e503_t = 1 - (1 - np.clip(e503, 0, 1)) * (1 - 0.75 * up_fail[None, :])
    e500_t = 1 - (1 - np.clip(e500, 0, 1)) * (1 - 0.25 * up_fail[None, :])
    e500_t = np.clip(e500_t, 0, 1)
    e503_t = np.clip(np.minimum(e503_t, 1 - e500_t), 0, 1)

    # draws per instance
    alive = life.alive
    imb = np.exp(rng.normal(0, 0.04, inst))
    weight = alive * imb[:, None]
    wsum = weight.sum(axis=0)
    share = np.where(wsum > 0, weight / np.maximum(wsum, 1e-9), 0.0)
    # the refused requests of a dead datastore still reach its proxy
    lam = offered[None, :] * share * step
    count = rng.poisson(np.clip(lam, 0, None))
    p404 = 0.012 if spec.role == "edge" else 0.002
    p = np.stack([1 - p404 - e500_t - e503_t, np.full((inst, n), p404), e500_t, e503_t], axis=-1)
    p = np.clip(p, 0, 1)
    p = p / p.sum(axis=-1, keepdims=True)
    codes = rng.multinomial(count, p).transpose(2, 0, 1)  # (4, inst, n)
    cdf_main = np.stack([_cdf(le, med_t, spec.sigma) for le in LE], axis=-1)
    cdf_slow = np.stack([_cdf(le, slow_med_t, SLOW_SIGMA) for le in LE], axis=-1)
    sf = np.clip(slow_t, 0, 1)[..., None]
    cdf = (1 - sf) * cdf_main + sf * cdf_slow
    cells = np.diff(np.concatenate([np.zeros((inst, n, 1)), cdf, np.ones((inst, n, 1))], axis=-1), axis=-1)
    cells = np.clip(cells, 0, 1)
    cells = cells / cells.sum(axis=-1, keepdims=True)
    buckets = rng.multinomial(count, cells).transpose(2, 0, 1)  # (B+1, inst, n)
    mean_main = med_t * np.exp(spec.sigma ** 2 / 2)
    mean_slow = slow_med_t * np.exp(SLOW_SIGMA ** 2 / 2)
    lat_sum = count * ((1 - sf[..., 0]) * mean_main + sf[..., 0] * mean_slow)
    lat_sum = lat_sum * (1 + rng.normal(0, 1, (inst, n)) * 0.5 / np.sqrt(count + 1))
    lat_sum = np.maximum(lat_sum, 0)

    per_inst_served = served[None, :] * share
    cores = spec.cpu_idle + cost * per_inst_served * np.exp(rng.normal(0, 0.03, (inst, n)))
    cores = cores + 0.35 * np.clip(1.0 - life.since_start / 60.0, 0, 1) * spec.cpu_limit  # JIT / warm-up
    cores = np.where(down[None, :] > 0, spec.cpu_idle * 0.3, cores)
    for sp in plan.spikes:
        if sp.service == spec.name and sp.what == "cpu" and sp.instance < inst:
            k = int(np.searchsorted(ts, sp.ts))
            if k < n:
                cores[sp.instance, k] += 0.6 * spec.cpu_limit
    cores = np.minimum(cores, spec.cpu_limit)
    cpu = cores * step * alive

    memory = _memory(spec, ts, rng, life, served, leak is not None and leak.service == spec.name, down)

    instances = []
    for i in range(inst):
        instances.append(InstanceSim(
            name=f"{spec.name}-{i}", codes=codes[:, i, :], buckets=buckets[:, i, :], lat_sum=lat_sum[i],
            cpu=cpu[i], memory=memory[i], reset=life.reset[i], restarts=life.restarts[i],
            scraped=life.scraped[i]))
    tot = codes.sum(axis=(0, 1)).astype(float)
    err = np.where(tot > 0, (codes[2] + codes[3]).sum(axis=0) / np.maximum(tot, 1), 0.0)
    err = np.where(tot > 0, err, (e500_t + e503_t).mean(axis=0))
    # a dead instance's share of calls fails at the caller even though its own counters miss them
    err = err + (first_dead * 0.8 + (dead & ~first_dead) * 0.15).sum(axis=0) / inst
    err = np.where(alive.any(axis=0), np.clip(err, 0, 1), 1.0)
    summary = {
        "med": np.median(med_t, axis=0), "slow_f": np.mean(slow_t, axis=0),
        "slow_med": np.mean(slow_med_t, axis=0), "err": err,
        "sigma": np.full(n, spec.sigma),
    }
    drivers["requests"] = served
    drivers["errors"] = (codes[2] + codes[3]).sum(axis=0) / step
    drivers["load"] = served / max(float(np.max(served)), 1e-9) if served.size else served
    sim = ServiceSim(spec=spec, instances=instances, served=served, offered=offered, drivers=drivers,
                     versions=life.versions, mem_frac=mem_frac, restarts_at=sorted(life.restarts_at))
    return sim, summary


def _memory(spec: ServiceSpec, ts: np.ndarray, rng: np.random.Generator, life: _Life, served: np.ndarray,
            leaking: bool, down: np.ndarray) -> np.ndarray:
    n, inst = len(ts), spec.instances
    load = served / max(float(np.max(served)), 1e-9)
    base = spec.mem_base * (0.9 + 0.12 * load)[None, :] * np.exp(rng.normal(0, 0.004, (inst, n)))
    if spec.jvm:
        period = rng.uniform(180, 420, inst)
        phase = rng.uniform(0, 1, inst)
        saw = ((ts[None, :] / period[:, None]) + phase[:, None]) % 1.0
        base = base * (1.0 + 0.06 * saw)
    warm = 0.6 + 0.4 * np.clip(life.since_start / 300.0, 0, 1)  # heap and caches refill after a start
    mem = base * warm
    if leaking:
        mem = mem + life.leak_age
    mem = np.where(down[None, :] > 0, 40 * 1048576.0 * np.exp(rng.normal(0, 0.2, (inst, n))), mem)
    return np.asarray(np.minimum(mem, spec.mem_limit))
