"""Raw Prometheus samples -> derived series at aligned steps.

What an on-call engineer would graph, computed the way PromQL does it:

- counters (``*_total``, ``*_count``, ``*_sum``) become per-second rates, summed per
  ``(service, name)``; a value lower than the previous one is a reset (the process restarted),
  so the increase is the new value itself, as ``rate()`` assumes;
- a counter family with a status label (``code``, ``status``, ...) also gives an error ratio:
  5xx rate / total rate;
- histogram ``*_bucket`` series give p50/p90/p99 per ``(service, name)`` by linear interpolation
  inside the bucket, as ``histogram_quantile()`` does; ``X_sum``/``X_count`` give the mean ``X:mean``;
- gauges stay as they are, one series per label set.

Gaps are not interpolated into false anomalies: a member series that misses a scrape stands in
with its last rate for ``stale_steps`` steps (as Prometheus' lookback does), so a missed scrape of
one instance does not dip its service's total; a NaN is a gap; a gap longer than
``max_gap_steps`` restarts the counter instead of producing one averaged rate across it.
Samples are expected in event-time order (the runtime's reorder buffer sees to it); a duplicate
or out-of-order sample of a series is counted and skipped.

**Cardinality is bounded** (:class:`~aiops.config.LimitSettings`): at most
``max_series_per_service`` raw series per ``service`` label and ``max_series`` in all. The first
sample of a series beyond a limit is refused — counted as a rejected record
(``series_limit_per_service`` / ``series_limit_total``), with a ``cardinality_limit`` warning at
most once per service per ``warn_interval_s`` of event time — and series already tracked keep
working. Refusing the newcomer, not evicting an old series, is deliberate: eviction would let a
label explosion push out the series an engineer already relies on. Slots come back as series
go idle: a series silent longer than ``max_gap_steps`` (and ``stale_steps``) is forgotten —
without changing any output, since its next sample would only set a new baseline anyway — so
pod churn does not fill a service's quota over the weeks.

>>> from aiops.observe.rejects import Rejects
>>> from aiops.records import MetricSample
>>> d = MetricDeriver(step_s=15, stale_steps=4, max_gap_steps=20, rejects=Rejects())
>>> for ts, v in [(0, 100.0), (15, 130.0), (30, 10.0), (45, 40.0)]:  # reset at 30
...     d.add(MetricSample(ts, "jobs_total", (("service", "api"),), v))
>>> [(ts, round(p[0].value, 3)) for ts, p in d.flush(60)]
[(15.0, 2.0), (30.0, 0.667), (45.0, 2.0)]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from aiops.config import LimitSettings
from aiops.decode.jsonline import slot_constructor
from aiops.observe.rejects import Rejects
from aiops.records import Labels, MetricSample, PointKind, SeriesPoint

COUNTER_SUFFIXES = ("_total", "_count", "_sum")
STATUS_LABELS = ("code", "status", "status_code", "response_code", "http_status")
QUANTILES = ((0.5, "p50"), (0.9, "p90"), (0.99, "p99"))
_EPS = 1e-12

SeriesId = tuple[str, Labels]
GroupKey = tuple[str | None, str]
_ALL = "\x00all services"  # warning-throttle key of the total limit (no service can be named this)

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _Member:
    """Latest per-second rate of one raw counter series and the step it belongs to.

    ``live`` turns false when the member is pruned from its group, so the series that feeds it
    knows to insert a new one instead of updating this one in place.
    """

    rate: float
    step: int
    live: bool = True


@dataclass(slots=True)
class _Route:
    """Where one raw series' values go; computed once per series, not per sample."""

    service: str | None
    group: GroupKey  # (service, name) for counters, (service, base name) for buckets
    is_error: bool  # a 5xx member of a family with a status label
    has_status: bool
    le: float | None  # bucket upper bound for histogram buckets


class _Series:
    """One raw series the deriver tracks: its last accepted sample and where its values go.

    Everything a sample needs is found with the one lookup of its ``(name, labels)``: the last
    value, the route (``_UNROUTED`` until computed: a restored deriver recomputes routes lazily),
    the rate member it updates in place, and for a gauge its point key.
    """

    __slots__ = ("sid", "ts", "value", "route", "member", "gauge", "seen")

    def __init__(self, sid: SeriesId, ts: float, value: float, route: Any) -> None:
        self.sid = sid
        self.ts = ts
        self.value = value
        self.route = route
        self.member: _Member | None = None
        self.gauge: tuple[str | None, str] | None = None  # (service, point key) of a gauge
        self.seen = -1  # a gauge's last step generation in ``MetricDeriver._gauges``


def _gauge_key(name: str, labels: Labels) -> tuple[str | None, str]:
    service = dict(labels).get("service")
    key = name + "{" + ",".join(f"{k}={v}" for k, v in labels if k != "service") + "}"
    return service, f"{service}/{key}"


def _route(name: str, labels: Labels) -> _Route | None:
    """None for gauges; routing for counters and histogram buckets."""
    d = dict(labels)
    service = d.get("service")
    if name.endswith("_bucket") and "le" in d:
        try:
            le = float(d["le"])  # "+Inf" parses as inf
        except ValueError:
            return None
        return _Route(service, (service, name[: -len("_bucket")]), False, False, le)
    if name.endswith(COUNTER_SUFFIXES):
        status = next((d[k] for k in STATUS_LABELS if k in d), None)
        return _Route(service, (service, name), status is not None and status.startswith("5"), status is not None, None)
    return None


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float:
    """Quantile ``q`` from cumulative ``(upper_bound, count)`` buckets, PromQL-style.

    >>> histogram_quantile(0.5, [(0.1, 50.0), (0.5, 90.0), (float("inf"), 100.0)])
    0.1
    >>> round(histogram_quantile(0.9, [(0.1, 50.0), (0.5, 80.0), (1.0, 100.0), (float("inf"), 100.0)]), 3)
    0.75
    """
    return _quantiles((q,), buckets)[0]


def _quantiles(qs: tuple[float, ...], buckets: list[tuple[float, float]]) -> list[float]:
    """:func:`histogram_quantile` for several quantiles, sorting and accumulating the buckets once."""
    buckets = sorted(buckets)
    if not buckets or not math.isinf(buckets[-1][0]):
        return [math.nan] * len(qs)
    # Counts from separate series can be slightly non-monotone (scrapes at different instants).
    cum, fixed = 0.0, []
    for le, c in buckets:
        cum = max(cum, c)
        fixed.append((le, cum))
    total = fixed[-1][1]
    if total <= _EPS:
        return [math.nan] * len(qs)
    return [_quantile(q * total, fixed) for q in qs]


def _quantile(rank: float, fixed: list[tuple[float, float]]) -> float:
    lower_bound, lower_count = 0.0, 0.0
    for le, c in fixed:
        if c >= rank:
            if math.isinf(le):
                return lower_bound  # the highest finite bound, as PromQL answers
            if c - lower_count <= _EPS:
                return le
            return lower_bound + (le - lower_bound) * (rank - lower_count) / (c - lower_count)
        lower_bound, lower_count = le, c
    return lower_bound


class MetricDeriver:
    """Turns raw samples into :class:`SeriesPoint` batches, one batch per aligned step.

    Call :meth:`add` in event-time order, then :meth:`flush` with the watermark to collect
    every step that is complete. ``limits`` bounds the series tracked (module docstring).
    """

    def __init__(self, step_s: float, stale_steps: int, max_gap_steps: int, rejects: Rejects,
                 limits: LimitSettings | None = None) -> None:
        self.step_s = float(step_s)
        self.stale_steps = stale_steps
        self.max_gap_s = max_gap_steps * self.step_s
        self._rejects = rejects
        self.limits = limits or LimitSettings()
        self._per_service: dict[str | None, int] = {}  # series in ``_last`` per service label
        self._warned: dict[str | None, float] = {}  # service (or _ALL) -> event time of its last warning
        self._refused: dict[str | None, int] = {}  # refused since that warning
        self._sweep_every = max(1, max_gap_steps // 4)  # steps between sweeps: a slot frees soon after max_gap
        self._last: dict[SeriesId, _Series] = {}  # every tracked series, with its last accepted sample
        self._rates: dict[GroupKey, dict[Labels, _Member]] = {}
        self._errors: dict[GroupKey, dict[Labels, _Member]] = {}
        self._status_groups: set[GroupKey] = set()
        self._hist: dict[GroupKey, dict[float, dict[Labels, _Member]]] = {}
        self._gauges: list[_Series] = []  # gauges seen in the current step, in order (value: ``.value``)
        self._gauge_gen = 0  # bumped when the step's gauges are cleared; a gauge's ``seen`` says if it is listed
        self._names: dict[GroupKey, _GroupNames] = {}  # point names of a counter group, built once
        self._hist_names_cache: dict[GroupKey, _GroupNames] = {}  # of a histogram: (metric, key) per quantile
        self._step: int | None = None  # the step being filled
        self._lo, self._hi = _INF, -_INF  # times certainly inside ``_step`` (no floor needed)
        self._ready: list[tuple[float, list[SeriesPoint]]] = []

    def step_of(self, ts: float) -> int:
        """Index of the aligned step a timestamp belongs to (nearest multiple of ``step_s``)."""
        return int(math.floor(ts / self.step_s + 0.5))

    def add(self, sample: MetricSample) -> None:
        """Take one raw sample (event-time order); bad ones are counted in ``rejects`` and skipped."""
        ts = sample.ts
        # The hot path: one dict lookup per sample, no allocation for a known series.
        if not self._lo < ts < self._hi:
            step = int(math.floor(ts / self.step_s + 0.5))
            current = self._step
            if current is None:
                self._set_step(step)
            elif step > current:
                self._close_until(step)
            elif step < current:
                self._rejects.reject("derive", "late_sample", detail=f"{sample.name} at {ts}")
                return
        step = self._step  # type: ignore[assignment]
        value = sample.value
        if value - value != 0.0:  # NaN or infinite: one test on the hot path for both
            if value == value:
                self._rejects.reject("derive", "infinite_value", detail=f"{sample.name} at {ts}")
            return  # NaN is a gap: the series' last rate stands in for it while fresh
        sid = (sample.name, sample.labels)
        series = self._last.get(sid)
        if series is None:
            self._add_first(sid, sample, value)
            return
        last_ts = series.ts
        if ts <= last_ts:
            reason = "duplicate_sample" if ts == last_ts else "out_of_order_sample"
            self._rejects.reject("derive", reason, detail=f"{sample.name}{dict(sample.labels)} at {ts}")
            return
        route = series.route
        if route is _UNROUTED:  # restored from a snapshot: routes are recomputed on the next sample
            route = _route(sample.name, sample.labels)
            if route is not None and value < 0:  # checked below; not cached, as for a new series
                self._rejects.reject("derive", "negative_counter", detail=f"{sample.name} at {ts}: {value}")
                return
            series.route = route
            if route is None:
                series.gauge = _gauge_key(sample.name, sample.labels)
            elif route.has_status:
                self._status_groups.add(route.group)
        if route is None:
            series.ts = ts
            series.value = value
            if series.seen != self._gauge_gen:
                series.seen = self._gauge_gen
                self._gauges.append(series)
            return
        if value < 0:
            # Counters never go below zero; a negative one would read as a reset to a negative rate.
            self._rejects.reject("derive", "negative_counter", detail=f"{sample.name} at {ts}: {value}")
            return
        last_value = series.value
        series.ts = ts
        series.value = value
        dt = ts - last_ts
        if dt > self.max_gap_s:
            return  # too long a gap to average over: this sample is the new baseline
        increase = value - last_value if value >= last_value else value  # reset
        rate = increase / dt
        if rate == _INF:  # a huge jump over a tiny interval: no float holds it
            self._rejects.reject("derive", "rate_overflow", detail=f"{sample.name} at {ts}")
            return
        member = series.member
        if member is not None and member.live:
            member.rate = rate
            member.step = step
            return
        self._new_member(series, route, sample.labels, rate, step)

    def add_many(self, samples: Iterable[MetricSample]) -> None:
        """:meth:`add` each sample in turn (same state, points and rejects), for one call per batch.

        The common sample — inside the current step, finite, of a known and routed series,
        newer than its last — is handled here with everything bound locally; any other goes
        through :meth:`add` untouched, before this loop has changed anything for it.

        >>> from aiops.observe.rejects import Rejects
        >>> a = MetricDeriver(15, 4, 20, Rejects())
        >>> b = MetricDeriver(15, 4, 20, Rejects())
        >>> samples = [MetricSample(t * 15.0, "jobs_total", (("service", "api"),), 10.0 * t * t) for t in range(6)]
        >>> for s in samples:
        ...     a.add(s)
        >>> b.add_many(samples)
        >>> a.flush(90) == b.flush(90)
        True
        """
        add = self.add
        lo, hi, step, gen = self._lo, self._hi, self._step, self._gauge_gen
        get = self._last.get
        listed = self._gauges.append
        max_gap = self.max_gap_s
        for sample in samples:
            ts = sample.ts
            value = sample.value
            if not lo < ts < hi or value - value != 0.0:  # a new step, or NaN/inf: the full path
                add(sample)
                lo, hi, step, gen = self._lo, self._hi, self._step, self._gauge_gen
                get, listed = self._last.get, self._gauges.append
                continue
            series = get((sample.name, sample.labels))
            if series is None or ts <= series.ts or (route := series.route) is _UNROUTED:
                add(sample)  # first sample, duplicate / out of order, or a route still to compute
                get, listed = self._last.get, self._gauges.append
                continue
            if route is None:  # a gauge
                series.ts = ts
                series.value = value
                if series.seen != gen:
                    series.seen = gen
                    listed(series)
                continue
            if value < 0:
                add(sample)  # rejected there, as a negative counter
                continue
            last_ts = series.ts
            last_value = series.value
            series.ts = ts
            series.value = value
            dt = ts - last_ts
            if dt > max_gap:
                continue  # too long a gap to average over: this sample is the new baseline
            rate = (value - last_value if value >= last_value else value) / dt
            if rate == _INF:
                self._rejects.reject("derive", "rate_overflow", detail=f"{sample.name} at {ts}")
                continue
            member = series.member
            if member is not None and member.live:
                member.rate = rate
                member.step = step
            else:
                self._new_member(series, route, sample.labels, rate, step)  # type: ignore[arg-type]

    def _new_member(self, series: _Series, route: _Route, labels: Labels, rate: float, step: int) -> None:
        """Give a counter series a (new) rate member in its group: first rate, or after a prune."""
        member = series.member = _Member(rate, step)
        if route.le is not None:
            self._hist.setdefault(route.group, {}).setdefault(route.le, {})[labels] = member
        else:
            self._rates.setdefault(route.group, {})[labels] = member
            if route.is_error:
                self._errors.setdefault(route.group, {})[labels] = member

    def _add_first(self, sid: SeriesId, sample: MetricSample, value: float) -> None:
        """The first sample of a series not tracked (yet): admitted only within the cardinality limits."""
        labels = sample.labels
        service = _service_of(labels)
        if (self._per_service.get(service, 0) >= self.limits.max_series_per_service
                or len(self._last) >= self.limits.max_series):
            self._refuse(service, sample)
            return
        route = _route(sample.name, labels)
        if route is not None and value < 0:  # refused series cost no memory
            self._rejects.reject("derive", "negative_counter", detail=f"{sample.name} at {sample.ts}: {value}")
            return
        if route is not None and route.has_status:
            self._status_groups.add(route.group)
        self._per_service[service] = self._per_service.get(service, 0) + 1
        series = self._last[sid] = _Series(sid, sample.ts, value, route)
        if route is None:
            series.gauge = _gauge_key(sample.name, labels)
            series.seen = self._gauge_gen
            self._gauges.append(series)
        # The first sample of a counter only sets its baseline.

    def _set_step(self, step: int) -> None:
        """Make ``step`` the one being filled, with the band of times that certainly fall in it."""
        self._step = step
        margin = 1e-6 + abs(step) * 1e-12  # in steps: far above the rounding of ts / step_s
        self._lo = (step - 0.5 + margin) * self.step_s
        self._hi = (step + 0.5 - margin) * self.step_s

    def _refuse(self, service: str | None, sample: MetricSample) -> None:
        """Count a sample of a series beyond a limit; warn once per service per interval (event time)."""
        per_service = self._per_service.get(service, 0) >= self.limits.max_series_per_service
        reason = "series_limit_per_service" if per_service else "series_limit_total"
        self._rejects.reject("derive", reason, detail=f"{service}: {sample.name}{dict(sample.labels)}"[:200])
        key = service if per_service else _ALL  # bounded: only services already at their limit
        self._refused[key] = self._refused.get(key, 0) + 1
        warned = self._warned.get(key)
        if warned is None or sample.ts - warned >= self.limits.warn_interval_s:
            log.warning("cardinality_limit", stage="derive", reason=reason, service=service,
                        limit=self.limits.max_series_per_service if per_service else self.limits.max_series,
                        tracked=self._per_service.get(service, 0) if per_service else len(self._last),
                        refused=self._refused[key], example=f"{sample.name}{dict(sample.labels)}"[:200])
            self._warned[key] = sample.ts
            self._refused[key] = 0

    @property
    def series_count(self) -> int:
        """Raw series tracked now (what the cardinality limits bound)."""
        return len(self._last)

    def series_per_service(self) -> dict[str | None, int]:
        return dict(self._per_service)

    def flush(self, watermark: float) -> list[tuple[float, list[SeriesPoint]]]:
        """Close every step that ends at or before ``watermark``; return the closed batches."""
        if self._step is not None:
            end = math.floor(watermark / self.step_s - 0.5)  # last step whose window has passed
            if end >= self._step:
                self._close_until(end + 1)
        out, self._ready = self._ready, []
        return out

    # -- state ---------------------------------------------------------------------------
    SNAPSHOT_VERSION = 1

    def snapshot(self) -> dict[str, Any]:
        """Plain, JSON-able state, versioned; insertion order is kept because it orders the output points.

        >>> from aiops.observe.rejects import Rejects
        >>> d = MetricDeriver(15, 4, 20, Rejects(log_examples=False))
        >>> d.add(MetricSample(0.0, "jobs_total", (("service", "api"),), 10.0))
        >>> e = MetricDeriver.from_snapshot(d.snapshot(), 15, 4, 20, Rejects(log_examples=False))
        >>> e.add(MetricSample(15.0, "jobs_total", (("service", "api"),), 40.0))
        >>> [(ts, p[0].value) for ts, p in e.flush(30)]
        [(15.0, 2.0)]
        """
        def members(m: dict[Labels, _Member]) -> list[list[Any]]:
            return [[_labels_out(lb), x.rate, x.step] for lb, x in m.items()]

        return {
            "version": self.SNAPSHOT_VERSION,
            "step_s": self.step_s,
            "step": self._step,
            "last": [[name, _labels_out(lb), x.ts, x.value] for (name, lb), x in self._last.items()],
            "rates": [[svc, name, members(m)] for (svc, name), m in self._rates.items()],
            "errors": [[svc, name, members(m)] for (svc, name), m in self._errors.items()],
            # Sorted: a set's order follows string hashes, which differ per process (PYTHONHASHSEED).
            "status_groups": [[svc, name] for svc, name in sorted(self._status_groups, key=_group_order)],
            "hist": [[svc, base, [[le, members(m)] for le, m in by_le.items()]]
                     for (svc, base), by_le in self._hist.items()],
            "gauges": [[x.sid[0], _labels_out(x.sid[1]), x.value] for x in self._gauges],
            "ready": [[ts, [[p.ts, p.key, p.service, p.metric, p.kind.value, p.value] for p in pts]]
                      for ts, pts in self._ready],
        }

    @classmethod
    def from_snapshot(cls, data: dict[str, Any], step_s: float, stale_steps: int, max_gap_steps: int,
                      rejects: Rejects, limits: LimitSettings | None = None) -> MetricDeriver:
        """Rebuild a deriver from :meth:`snapshot` output; ``step_s`` must be the one it was saved with.

        A snapshot holding more series than today's limits is kept whole (no tracked series is
        dropped); new series are refused until idle ones are forgotten.
        """
        if data.get("version") != cls.SNAPSHOT_VERSION:
            raise ValueError(f"unsupported deriver snapshot version {data.get('version')!r}")
        if float(data["step_s"]) != float(step_s):
            raise ValueError(f"deriver state was saved with step {data['step_s']} s, not {step_s} s")
        d = cls(step_s, stale_steps, max_gap_steps, rejects, limits)

        def members(rows: list[list[Any]]) -> dict[Labels, _Member]:
            return {_labels_in(lb): _Member(float(rate), int(step)) for lb, rate, step in rows}

        if data["step"] is not None:
            d._set_step(int(data["step"]))
        d._last = {}
        for name, lb, ts, v in data["last"]:
            sid = (str(name), _labels_in(lb))
            d._last[sid] = _Series(sid, float(ts), float(v), _UNROUTED)
        d._rates = {(svc, str(name)): members(rows) for svc, name, rows in data["rates"]}
        d._errors = {(svc, str(name)): members(rows) for svc, name, rows in data["errors"]}
        d._status_groups = {(svc, str(name)) for svc, name in data["status_groups"]}
        d._hist = {(svc, str(base)): {float(le): members(rows) for le, rows in by_le}
                   for svc, base, by_le in data["hist"]}
        for name, lb, v in data["gauges"]:
            sid = (str(name), _labels_in(lb))
            gauge = d._last.get(sid)
            if gauge is None or _route(*sid) is not None or gauge.seen == d._gauge_gen:
                raise ValueError(f"deriver snapshot lists {name} as a gauge of the step but does not track it as one")
            # A gauge's value serves only its point, so the step's value as saved is its value.
            gauge.value = float(v)
            gauge.route, gauge.gauge, gauge.seen = None, _gauge_key(*sid), d._gauge_gen
            d._gauges.append(gauge)
        for _, lb in d._last:
            service = _service_of(lb)
            d._per_service[service] = d._per_service.get(service, 0) + 1
        d._ready = [(float(ts), [SeriesPoint(float(p[0]), str(p[1]), p[2], str(p[3]), PointKind(p[4]), float(p[5]))
                                 for p in pts]) for ts, pts in data["ready"]]
        # Routes are a pure function of (name, labels): recomputed lazily on the next sample.
        return d

    def _close_until(self, next_step: int) -> None:
        assert self._step is not None
        # Empty steps in between still carry fresh rates; beyond staleness there is nothing to emit.
        last_useful = min(next_step - 1, self._step + self.stale_steps)
        for step in range(self._step, last_useful + 1):
            points = self._points(step)
            if points:
                self._ready.append((step * self.step_s, points))
            self._gauges.clear()
            self._gauge_gen += 1
        # Sweep on fixed step numbers, so a restored deriver sweeps exactly when the original would.
        k = self._sweep_every
        if -(-self._step // k) * k < next_step:
            self._forget_idle(next_step)
        self._set_step(next_step)

    def _forget_idle(self, next_step: int) -> None:
        """Drop series and rate members no future step can use (frees their cardinality slots).

        Samples still to come are at or after ``(next_step - 1/2) * step``: a series last seen more
        than ``max_gap`` before that only restarts from a new baseline, and a member older than
        ``stale_steps`` is never summed again; so forgetting them changes no output.
        """
        cutoff = (next_step - 1.5) * self.step_s - self.max_gap_s
        idle = [sid for sid, x in self._last.items() if x.ts < cutoff]
        for sid in idle:
            del self._last[sid]
            service = _service_of(sid[1])
            left = self._per_service[service] - 1
            if left:
                self._per_service[service] = left
            else:
                del self._per_service[service]
                self._warned.pop(service, None)
                self._refused.pop(service, None)
        oldest = next_step - self.stale_steps - 1
        for groups in (self._rates, self._errors):
            for group in [g for g, members in groups.items() if _prune(members, oldest)]:
                del groups[group]
        for by_le in self._hist.values():
            for le in [le for le, m in by_le.items() if _prune(m, oldest)]:
                del by_le[le]
        for group in [g for g, by_le in self._hist.items() if not by_le]:
            del self._hist[group]
        # Name caches follow the groups, so a churn of services does not grow them for ever.
        if len(self._names) > 2 * len(self._rates) + 64:
            self._names = {g: n for g, n in self._names.items() if g in self._rates}
        if len(self._hist_names_cache) > 2 * len(self._hist) + 64:
            self._hist_names_cache = {g: n for g, n in self._hist_names_cache.items() if g in self._hist}
        if self._status_groups:
            routed = {x.route.group for x in self._last.values()
                      if x.route is not None and x.route is not _UNROUTED and x.route.has_status}
            self._status_groups = {g for g in self._status_groups if g in self._rates or g in routed}

    def _fresh_sum(self, members: dict[Labels, _Member], step: int) -> float | None:
        total, any_fresh = 0.0, False
        oldest = step - self.stale_steps
        for m in members.values():
            if m.step >= oldest:
                total += m.rate
                any_fresh = True
        return total if any_fresh else None

    def _group_names(self, group: GroupKey) -> _GroupNames:
        names = self._names.get(group)
        if names is None:
            service, name = group
            if name.endswith("_sum"):
                base = name[: -len("_sum")]
                names = ((service, base + "_count"), f"{base}:mean", f"{service}/{base}:mean", "", "")
            else:
                names = (None, f"{name}:rate", f"{service}/{name}:rate",
                         f"{name}:error_ratio", f"{service}/{name}:error_ratio")
            self._names[group] = names
        return names

    def _hist_names(self, group: GroupKey) -> _GroupNames:
        names = self._hist_names_cache.get(group)
        if names is None:
            service, base = group
            names = self._hist_names_cache[group] = tuple(x for _, label in QUANTILES  # type: ignore[assignment]
                                               for x in (f"{base}:{label}", f"{service}/{base}:{label}"))
        return names

    def _points(self, step: int) -> list[SeriesPoint]:
        """The step's derived points: counter rates, error ratios and means, quantiles, then gauges.

        Runs once per step over every group and gauge, so names and keys come from caches and
        each point is built once, straight into the output.
        """
        ts = step * self.step_s
        points: list[SeriesPoint] = []
        append = points.append
        new = _new_point
        oldest = step - self.stale_steps
        non_finite = 0
        rates: dict[GroupKey, float] = {}
        for group, members in self._rates.items():
            total, any_fresh = 0.0, False
            for m in members.values():
                if m.step >= oldest:
                    total += m.rate
                    any_fresh = True
            if any_fresh:
                rates[group] = total
        status_groups = self._status_groups
        for group, total in rates.items():
            count_group, metric, key, err_metric, err_key = self._group_names(group)
            service = group[0]
            if count_group is not None:
                count = rates.get(count_group)
                if count is not None and count > _EPS:
                    value = total / count
                    if value - value == 0.0:
                        append(new(ts, key, service, metric, _QUANTILE, value))
                    else:
                        non_finite += 1
                continue  # a bare sum rate means nothing to an engineer
            if total - total == 0.0:
                append(new(ts, key, service, metric, _RATE, total))
            else:
                non_finite += 1
            if group in status_groups and total > _EPS:
                errors = self._fresh_sum(self._errors.get(group, {}), step) or 0.0
                value = errors / total
                if value - value == 0.0:
                    append(new(ts, err_key, service, err_metric, _ERROR_RATIO, value))
                else:
                    non_finite += 1
        for group, by_le in self._hist.items():
            buckets = []
            for le, members in by_le.items():
                total, any_fresh = 0.0, False
                for m in members.values():
                    if m.step >= oldest:
                        total += m.rate
                        any_fresh = True
                if any_fresh:
                    buckets.append((le, total))
            names = self._hist_names(group)
            service = group[0]
            for i, value in enumerate(_quantiles(_QS, buckets)):
                if value != value:
                    continue  # no quantile from these buckets
                if value - value == 0.0:
                    append(new(ts, names[2 * i + 1], service, names[2 * i], _QUANTILE, value))
                else:
                    non_finite += 1
        for gauge in self._gauges:
            name = gauge.sid[0]
            value = gauge.value
            service, key = gauge.gauge  # type: ignore[misc]
            if value - value == 0.0:
                append(new(ts, key, service, name, _GAUGE, value))
            else:
                non_finite += 1
        if non_finite:  # sums of near-max rates overflow; a detector must never see inf/NaN
            self._rejects.reject("derive", "non_finite_point", detail=f"{non_finite} at {ts}")
        return points


class SeriesCollector(Collector):
    """Exports ``aiops_deriver_series`` (raw series tracked) and ``aiops_deriver_series_limit`` at scrape time.

    ``deriver`` is called per scrape (``lambda: pipeline.deriver``), so a deriver replaced by a
    checkpoint restore needs no new registration. Refused series are counted by
    :class:`~aiops.observe.rejects.Rejects` (``aiops_records_rejected_total{stage="derive",
    reason="series_limit_per_service"}``); together they show how close the limits are.

    >>> from prometheus_client import CollectorRegistry, generate_latest
    >>> reg = CollectorRegistry()
    >>> reg.register(SeriesCollector(lambda: MetricDeriver(15, 4, 20, Rejects(log_examples=False))))
    >>> b"aiops_deriver_series 0.0" in generate_latest(reg)
    True
    """

    def __init__(self, deriver: Callable[[], MetricDeriver]) -> None:
        self._deriver = deriver

    def collect(self) -> Iterator[GaugeMetricFamily]:
        d = self._deriver()
        series = GaugeMetricFamily("aiops_deriver_series", "Raw metric series the deriver tracks")
        series.add_metric([], d.series_count)
        fullest = GaugeMetricFamily("aiops_deriver_series_max_per_service",
                                    "Raw series of the service with the most (the per-service limit binds there)")
        fullest.add_metric([], max(d.series_per_service().values(), default=0))
        limit = GaugeMetricFamily("aiops_deriver_series_limit", "Cardinality limits of the deriver", labels=["limit"])
        limit.add_metric(["per_service"], d.limits.max_series_per_service)
        limit.add_metric(["total"], d.limits.max_series)
        yield series
        yield fullest
        yield limit


_UNROUTED: Any = object()
_INF = math.inf
_QS = tuple(q for q, _ in QUANTILES)
_RATE, _QUANTILE, _ERROR_RATIO, _GAUGE = PointKind.RATE, PointKind.QUANTILE, PointKind.ERROR_RATIO, PointKind.GAUGE
_new_point = slot_constructor(SeriesPoint, ("ts", "key", "service", "metric", "kind", "value"))
_GroupNames = tuple[Any, ...]  # counter: (count group of a _sum or None, metric, key, error metric, error key)


def _service_of(labels: Labels) -> str | None:
    for k, v in labels:
        if k == "service":
            return v
    return None


def _group_order(group: GroupKey) -> tuple[bool, str, str]:
    return group[0] is None, group[0] or "", group[1]


def _prune(members: dict[Labels, _Member], oldest: int) -> bool:
    """Remove members last updated before step ``oldest``; ``True`` if none is left."""
    for labels in [lb for lb, m in members.items() if m.step < oldest]:
        members.pop(labels).live = False
    return not members


def _labels_out(labels: Labels) -> list[list[str]]:
    return [[k, v] for k, v in labels]


def _labels_in(rows: list[list[str]]) -> Labels:
    return tuple((str(k), str(v)) for k, v in rows)
