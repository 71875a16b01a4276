"""Signals and change events -> incidents with ranked root causes (open / update / resolved).

Grouping is by time, service and topology, in the manner of Alertmanager's group-by but on the
call graph: a new signal joins a live incident when its service is one of the incident's
services or adjacent to one of them in the :class:`~aiops.correlate.topology.Topology`, and
its onset is within ``window_s`` of the incident's latest onset. Later onsets join only where
the incident's trouble goes on: in a service whose evidence there is active or ended within
``window_s`` (a leak that ends in OOM kills), or in its leading root cause while any of its
evidence is (a restart after the fix); an earlier victim that has been calm for longer turns
anomalous on its own account (see :meth:`Correlator._still_its_problem`). Signals that join nothing
wait in a pending pool; a group of related pending signals opens an incident once a symptom
in it (errors, latency, unavailability, restarts, model degradation: see
:mod:`aiops.correlate.symptoms`) has lasted ``open_hold_s`` and the group holds ``min_signals``
independent pieces of evidence (or the symptom alone has lasted ``persist_s``). Causes such as
request rates, CPU or memory join incidents and inform the ranking but never open one alone.

Lifecycle, as seen in the records :meth:`Correlator.tick` returns:

- ``open``: once per incident id, never again;
- ``update``: the set of services, the order of the top root causes or the severity changed
  (nothing is emitted for evidence that changes no conclusion), or a resolved incident re-fired
  within ``flap_window_s`` (flap control: the *same* id comes back with status ``update`` and
  ``explain.opened`` says it was reopened; there is no second ``open``, so no second page);
- ``resolved``: no signal of the incident has been active for ``resolve_after_s``.

Everything is a function of the inputs and event time (no clock), so replay is exact.

>>> import structlog
>>> from aiops.config import CorrelateSettings
>>> from aiops.records import Signal, SignalKind
>>> quiet = structlog.wrap_logger(structlog.ReturnLogger())  # a daemon passes nothing: logs go to stderr
>>> c = Correlator(CorrelateSettings(), Topology.from_mapping({"web": ["db"]}), logger=quiet)
>>> for i, (svc, ts) in enumerate([("db", 100.0), ("web", 115.0)]):
...     c.on_signal(Signal(id=f"s{i}", ts=ts, kind=SignalKind.METRIC, service=svc,
...                        name="http_requests_total:error_ratio", score=0.9, direction="up"))
>>> [(i.status.value, i.root_causes[0].service) for t in range(105, 300, 15) for i in c.tick(float(t))]
[('open', 'db')]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import structlog

from aiops.config import CorrelateSettings
from aiops.correlate.rank import hms, rank_causes
from aiops.correlate.symptoms import family, is_error_log, is_symptom
from aiops.correlate.topology import Topology
from aiops.records import (
    ChangeEvent,
    Explanation,
    Incident,
    IncidentStatus,
    RootCause,
    Signal,
    SignalKind,
    make_labels,
)

log = structlog.get_logger(__name__)

SNAPSHOT_VERSION = 1
MAX_LEFT_OUT = 20
"""Left-out notes kept per incident: enough to explain, bounded so a storm cannot grow state."""

ENTRY_HIT_METRICS = ("*error_ratio*", "*availability*", "*success*")
"""Series whose anomaly at an entry service means users are hit (critical by default)."""
CRITICAL_SERVICES = 3
"""An incident spanning this many services is critical by default."""


@dataclass
class _Inc:
    id: str
    opened_ts: float
    signal_ids: list[str] = field(default_factory=list)
    last_activity: float = 0.0
    resolved_ts: float | None = None
    reopened: int = 0
    published: tuple[tuple[str, ...], tuple[str, ...], str] | None = None  # services, top-3, severity
    opened_why: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)
    ranking_lines: list[str] = field(default_factory=list)
    services_seen: list[str] = field(default_factory=list)
    rank_cache: tuple[Any, list[RootCause]] | None = None  # not persisted: recomputed after a restore

    @property
    def live(self) -> bool:
        return self.resolved_ts is None


class Correlator:
    """Turns a stream of signals and changes into incidents (see the module docstring)."""

    def __init__(self, settings: CorrelateSettings, topology: Topology, logger: Any = None) -> None:
        self.settings = settings
        self._log = logger if logger is not None else log
        self.topology = topology
        self._signals: dict[str, Signal] = {}
        self._owner: dict[str, str] = {}  # signal id -> incident id
        self._pending: list[str] = []  # signal ids waiting for enough evidence
        self._new: list[str] = []  # signal ids seen since the last tick
        self._changes: list[ChangeEvent] = []
        self._incidents: dict[str, _Inc] = {}
        self._seq = 0
        self._last_tick: float | None = None

    # -- input ----------------------------------------------------------------------------

    def on_signal(self, signal: Signal) -> None:
        """Take an onset (``end_ts`` None) or a recovery (same ``id``, ``end_ts`` set)."""
        if signal.kind is SignalKind.CHANGE:
            return  # changes come through on_change
        self.topology.learn_from_signal(signal)
        known = self._signals.get(signal.id)
        if known is not None:
            # A recovery keeps the onset we grouped by; a repeated onset only refreshes evidence.
            self._signals[signal.id] = Signal(
                id=known.id, ts=known.ts, kind=known.kind, service=known.service, name=known.name,
                score=max(known.score, signal.score), direction=known.direction or signal.direction,
                evidence=known.evidence or signal.evidence, end_ts=signal.end_ts, labels=known.labels,
            )
            return
        self._signals[signal.id] = signal
        self._new.append(signal.id)

    def on_change(self, event: ChangeEvent) -> None:
        """Remember a deploy / config change as a root-cause suspect for later onsets."""
        self._changes.append(event)

    # -- the step -------------------------------------------------------------------------

    def tick(self, ts: float) -> list[Incident]:
        """Advance to event time ``ts``: group new signals, open, update and resolve incidents."""
        self._last_tick = ts
        out: list[Incident] = []
        new, self._new = self._new, []
        new.sort(key=lambda i: (self._signals[i].ts, i))
        lasts = {inc.id: self._service_evidence(inc) for inc in self._incidents.values() if inc.live} if new else {}
        for sid in new:
            inc = self._live_match(self._signals[sid], lasts)
            if inc is None:
                self._pending.append(sid)
                self._note_left_out(sid, "its service is not connected to the incident's services in the "
                                         "topology, or its onset is too far from their latest onsets while "
                                         "its own service's trouble there is over")
            else:
                self._join(inc, sid)
                sig = self._signals[sid]
                if sig.service is not None:
                    until = lasts[inc.id]
                    until[sig.service] = max(until.get(sig.service, sig.ts), _evidence_end(sig))
        out.extend(self._open_from_pending(ts))
        for inc in list(self._incidents.values()):
            if inc.live:
                rec = self._refresh(inc, ts)
                if rec is not None:
                    out.append(rec)
        self._prune(ts)
        return out

    def _live_match(self, sig: Signal, lasts: Mapping[str, Mapping[str, float]]) -> _Inc | None:
        """The live incident a new signal belongs to: related service, onset near its latest evidence.

        ``lasts`` gives, per live incident, each service's latest evidence there (the end of its
        last signal, infinity while one is active).
        """
        if sig.service is None:
            return None
        w = self.settings.window_s
        best: _Inc | None = None
        for inc in self._incidents.values():
            if not inc.live or sig.ts < inc.opened_ts - w:
                continue
            services = self._services(inc)
            if sig.ts > inc.last_activity + w and not self._still_its_problem(inc, sig, lasts.get(inc.id, {})):
                continue
            if not any(self.topology.related(sig.service, s) for s in services):
                continue
            if best is None or inc.last_activity > best.last_activity:
                best = inc
        return best

    def _still_its_problem(self, inc: _Inc, sig: Signal, until: Mapping[str, float]) -> bool:
        """May a signal whose onset is long after the incident's latest onsets still join it?

        Propagation is quick: a new onset belongs to an incident near its latest onsets, and a
        later one only where the incident's own trouble goes on. That is a service whose
        evidence there is active or ended within ``window_s`` (a leak that ends in OOM kills, an
        intermittent error), and the incident's leading root cause as long as any evidence of the
        incident is (its restart or recovery after a fix is part of its story). A victim that has
        been calm for longer turns anomalous on its own account. Bounding this by the latest
        evidence, not by the incident's open span, keeps one lingering signal from pulling every
        later anomaly of an earlier victim (and, through it, that victim's neighbours) into it.
        """
        w = self.settings.window_s
        if sig.ts <= until.get(sig.service or "", -math.inf) + w:
            return True
        lead = inc.published[1][0] if inc.published and inc.published[1] else None
        return sig.service == lead and sig.ts <= max(until.values(), default=-math.inf) + w

    def _flap_match(self, group: Sequence[str], ts: float) -> _Inc | None:
        """A recently resolved incident this group re-fires (flap control), if any."""
        services = {svc for g in group if (svc := self._signals[g].service) is not None}
        best: _Inc | None = None
        for inc in self._incidents.values():
            if inc.live or inc.resolved_ts is None or ts - inc.resolved_ts > self.settings.flap_window_s:
                continue
            if not any(self.topology.related(a, b) for a in services for b in self._services(inc)):
                continue
            if best is None or (inc.resolved_ts or 0.0) > (best.resolved_ts or 0.0):
                best = inc
        return best

    def _join(self, inc: _Inc, sid: str) -> None:
        sig = self._signals[sid]
        inc.signal_ids.append(sid)
        self._owner[sid] = inc.id
        inc.last_activity = max(inc.last_activity, sig.ts)
        if sig.service is not None and sig.service not in inc.services_seen:
            # one joint onset per incident and pair: a storm of series must not count as many
            for other in sorted(inc.services_seen):
                self.topology.observe_co_anomaly(sig.service, other)
            inc.services_seen.append(sig.service)

    def _open_from_pending(self, ts: float) -> list[Incident]:
        s = self.settings
        alive: list[str] = []
        for sid in self._pending:
            sig = self._signals[sid]
            if sig.ts < ts - s.window_s and not sig.active:
                # too old to join anything: it was noise
                self._note_left_out(sid, "expired without enough evidence for an incident of its own")
                continue
            alive.append(sid)
        self._pending = alive
        if not alive:
            return []
        out: list[Incident] = []
        for group in self._components(alive):
            why = self._opening_reason(group, ts)
            if why is None:
                continue
            members = set(group)
            self._pending = [p for p in self._pending if p not in members]
            ordered = sorted(group, key=lambda g: (self._signals[g].ts, g))
            old = self._flap_match(group, ts)
            if old is not None:
                old.resolved_ts = None
                old.reopened += 1
                old.published = None  # force an update record for the re-fire
                old.opened_why.append(f"reopened at {hms(ts)} (re-fire #{old.reopened} within the flap window "
                                      f"of {s.flap_window_s:.0f} s): {why}")
                for sid in ordered:
                    self._join(old, sid)
                self._log.info("incident_reopened", incident_id=old.id, reopened=old.reopened)
                continue  # the refresh below emits its update
            self._seq += 1
            first = self._signals[ordered[0]].ts
            inc = _Inc(id=f"inc-{int(first)}-{self._seq}", opened_ts=ts, last_activity=first)
            inc.opened_why.append(why)
            for sid in ordered:
                self._join(inc, sid)
            self._incidents[inc.id] = inc
            for sid in self._pending:
                if sid not in members:
                    self._note_left_out(sid, "pending when the incident opened: its service is not connected "
                                             "to the incident's in the topology, or its onset is too far apart")
            rec = self._refresh(inc, ts, status=IncidentStatus.OPEN)
            assert rec is not None
            self._log.info("incident_opened", incident_id=inc.id, services=list(rec.services),
                           root_cause=rec.root_causes[0].service if rec.root_causes else None)
            out.append(rec)
        return out

    def _held(self, sig: Signal, ts: float) -> bool:
        """Has the signal lasted ``open_hold_s`` (Prometheus' ``for:``)? Blips end before that."""
        end = ts if sig.end_ts is None else sig.end_ts
        return end - sig.ts >= self.settings.open_hold_s

    def _components(self, sids: Sequence[str]) -> list[list[str]]:
        """Group pending signals: one bucket per service, buckets joined when related and close in time.

        Bucketing first keeps a storm (hundreds of series of one service) linear in the number
        of signals; only the services are compared pairwise.
        """
        buckets: dict[str, list[str]] = {}
        for sid in sids:
            svc = self._signals[sid].service
            if svc is not None:
                buckets.setdefault(svc, []).append(sid)
        names = sorted(buckets)
        span = {n: (min(self._signals[x].ts for x in buckets[n]), max(self._signals[x].ts for x in buckets[n]))
                for n in names}
        parent = {n: n for n in names}

        def find(n: str) -> str:
            while parent[n] != n:
                parent[n] = parent[parent[n]]
                n = parent[n]
            return n

        w = self.settings.window_s
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                gap = max(span[a][0], span[b][0]) - min(span[a][1], span[b][1])
                if gap <= w and self.topology.related(a, b):
                    parent[find(a)] = find(b)
        groups: dict[str, list[str]] = {}
        for n in names:
            groups.setdefault(find(n), []).extend(buckets[n])
        return sorted(groups.values(), key=lambda g: min((self._signals[x].ts, x) for x in g))

    def _opening_reason(self, group: Sequence[str], ts: float) -> str | None:
        """Why this group of pending signals makes an incident now, or None.

        It needs a symptom (:mod:`aiops.correlate.symptoms`) from metrics or model drift that
        is still active and has lasted ``open_hold_s`` (Prometheus' ``for:``: transients and
        one-step spikes end sooner), and then either ``min_signals`` distinct series in the
        group (corroboration by other measurements, services or error logs; the quantiles of one
        histogram are one measurement, see :func:`~aiops.correlate.symptoms.family`) or that
        symptom alone lasting ``persist_s``. Logs corroborate but never open an incident alone.
        """
        s = self.settings
        sigs = [self._signals[g] for g in group]
        held = sorted((x for x in sigs if x.active and x.kind is not SignalKind.LOG and is_symptom(x)
                       and self._held(x, ts)), key=lambda x: (x.ts, -x.score))
        if not held:
            return None
        lead = held[0]
        families = {family(x) for x in sigs if x.kind is not SignalKind.LOG or is_error_log(x)}
        services = sorted({x.service for x in sigs if x.service})
        lasted = f"{self._describe(lead)} lasting {ts - lead.ts:.0f} s (>= {s.open_hold_s:.0f} s)"
        if len(families) >= s.min_signals:
            return (f"symptom {lasted}, with {len(families)} kinds of evidence in {', '.join(services)} within "
                    f"{max(x.ts for x in sigs) - min(x.ts for x in sigs):.0f} s (at least {s.min_signals} needed)")
        if ts - lead.ts >= s.persist_s:
            return f"symptom {lasted}, alone but for {ts - lead.ts:.0f} s (>= {s.persist_s:.0f} s)"
        return None

    def _refresh(self, inc: _Inc, ts: float, status: IncidentStatus | None = None) -> Incident | None:
        sigs = [self._signals[i] for i in inc.signal_ids if i in self._signals]
        if status is None and sigs:
            ends = [x.end_ts for x in sigs]
            if all(e is not None for e in ends) and ts - max(e for e in ends if e is not None) >= \
                    self.settings.resolve_after_s:
                inc.resolved_ts = ts
                self._log.info("incident_resolved", incident_id=inc.id)
                return self._record(inc, ts, IncidentStatus.RESOLVED, sigs)
        rec = self._record(inc, ts, status or IncidentStatus.UPDATE, sigs)
        key = (rec.services, tuple(rc.service for rc in rec.root_causes[:3]), rec.severity)
        if status is None and key == inc.published:
            return None
        inc.published = key
        return rec

    def _record(self, inc: _Inc, ts: float, status: IncidentStatus, sigs: list[Signal]) -> Incident:
        first = min((x.ts for x in sigs), default=inc.opened_ts)
        lookback = self.settings.change_lookback_s
        changes = tuple(c for c in self._changes if first - lookback <= c.ts <= ts)
        # Ranking only changes with the evidence: skip it on the many steps that bring none.
        key = (len(sigs), round(sum(x.score for x in sigs), 9), len(changes), len(self.topology))
        if inc.rank_cache is not None and inc.rank_cache[0] == key:
            causes = inc.rank_cache[1]
        else:
            causes, lines = rank_causes(sigs, changes, self.topology, change_lookback_s=lookback,
                                        tolerance_s=self.settings.onset_tolerance_s)
            inc.rank_cache = (key, causes)
            inc.ranking_lines = lines
        services = tuple(sorted({x.service for x in sigs if x.service}))
        return Incident(
            id=inc.id, ts=ts, status=status, opened_ts=inc.opened_ts, services=services,
            root_causes=tuple(causes), severity=self._severity(sigs, services), signals=tuple(sigs),
            changes=changes,
            explain=Explanation(opened=tuple(inc.opened_why), ranking=tuple(inc.ranking_lines),
                                left_out=tuple(inc.left_out)),
        )

    def _severity(self, sigs: Sequence[Signal], services: Sequence[str]) -> str:
        if len(services) >= CRITICAL_SERVICES:
            return "critical"
        for x in sigs:
            if x.service and self.topology.is_entry(x.service) and x.kind is SignalKind.METRIC and \
                    any(fnmatchcase(x.name, g) for g in ENTRY_HIT_METRICS):
                return "critical"
        return "warning"

    def _note_left_out(self, sid: str, why: str) -> None:
        sig = self._signals[sid]
        for inc in self._incidents.values():
            if inc.live and inc.opened_ts - self.settings.window_s <= sig.ts <= inc.last_activity + \
                    self.settings.window_s:
                note = f"{sig.service}: {self._describe(sig)} at {hms(sig.ts)}: {why}"
                if note not in inc.left_out and len(inc.left_out) < MAX_LEFT_OUT:
                    inc.left_out.append(note)

    def _prune(self, ts: float) -> None:
        """Forget what can no longer matter, so state stays bounded in a long-running daemon."""
        # Keep the changes a live incident may still cite (its first onset minus the lookback).
        oldest = min((self._signals[i].ts for inc in self._incidents.values() if inc.live
                      for i in inc.signal_ids[:1] if i in self._signals), default=ts)
        keep_from = min(ts, oldest) - self.settings.change_lookback_s - self.settings.window_s
        self._changes = [c for c in self._changes if c.ts >= keep_from]
        horizon = self.settings.flap_window_s + self.settings.resolve_after_s
        for inc_id, inc in list(self._incidents.items()):
            if inc.resolved_ts is not None and ts - inc.resolved_ts > horizon:
                for sid in inc.signal_ids:
                    self._signals.pop(sid, None)
                    self._owner.pop(sid, None)
                del self._incidents[inc_id]
        pending = set(self._pending) | set(self._new)
        for sid in [s for s in self._signals if s not in self._owner and s not in pending]:
            del self._signals[sid]

    # -- helpers --------------------------------------------------------------------------

    def _services(self, inc: _Inc) -> set[str]:
        return {svc for i in inc.signal_ids if (svc := self._signals[i].service) is not None}

    def _service_evidence(self, inc: _Inc) -> dict[str, float]:
        """Each service's latest evidence in the incident: its signals' last end, infinity while one is active."""
        until: dict[str, float] = {}
        for i in inc.signal_ids:
            sig = self._signals[i]
            if sig.service is not None:
                until[sig.service] = max(until.get(sig.service, -math.inf), _evidence_end(sig))
        return until

    @staticmethod
    def _describe(sig: Signal) -> str:
        arrow = f" {sig.direction}" if sig.direction else ""
        return f"{sig.service} {sig.kind.value} {sig.name}{arrow}"

    def incident_ids(self) -> list[str]:
        return list(self._incidents)

    def explanation(self, incident_id: str) -> Explanation | None:
        """The explanation of a live or recently resolved incident, for ``aiops explain``."""
        inc = self._incidents.get(incident_id)
        if inc is None:
            return None
        return Explanation(opened=tuple(inc.opened_why), ranking=tuple(inc.ranking_lines),
                           left_out=tuple(inc.left_out))

    # -- state ----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Plain JSON-able state (versioned); :meth:`from_snapshot` rebuilds an equal correlator."""
        return {
            "version": SNAPSHOT_VERSION,
            "topology": self.topology.snapshot(),
            "signals": [_signal_out(s) for s in self._signals.values()],
            "owner": dict(self._owner),
            "pending": list(self._pending),
            "new": list(self._new),
            "changes": [{"ts": c.ts, "type": c.type, "service": c.service, "attrs": [list(a) for a in c.attrs]}
                        for c in self._changes],
            "incidents": [
                {"id": i.id, "opened_ts": i.opened_ts, "signal_ids": i.signal_ids, "last_activity": i.last_activity,
                 "resolved_ts": i.resolved_ts, "reopened": i.reopened,
                 "published": [list(i.published[0]), list(i.published[1]), i.published[2]] if i.published else None,
                 "opened_why": i.opened_why, "left_out": i.left_out, "ranking_lines": i.ranking_lines,
                 "services_seen": i.services_seen}
                for i in self._incidents.values()
            ],
            "seq": self._seq,
            "last_tick": self._last_tick,
        }

    @classmethod
    def from_snapshot(cls, data: Mapping[str, Any], settings: CorrelateSettings,
                      topology: Topology | None = None, logger: Any = None) -> Correlator:
        """Rebuild from :meth:`snapshot`; a given ``topology`` is merged with the saved one."""
        if data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported correlator snapshot version {data.get('version')!r}")
        topo = Topology.from_snapshot(data["topology"])
        if topology is not None:
            topo.merge(topology)
        c = cls(settings, topo, logger=logger)
        c._signals = {s["id"]: _signal_in(s) for s in data["signals"]}
        c._owner = dict(data["owner"])
        c._pending = list(data["pending"])
        c._new = list(data["new"])
        c._changes = [ChangeEvent(ts=x["ts"], type=x["type"], service=x["service"],
                                  attrs=tuple((a, b) for a, b in x["attrs"])) for x in data["changes"]]
        for d in data["incidents"]:
            pub = d["published"]
            c._incidents[d["id"]] = _Inc(
                id=d["id"], opened_ts=d["opened_ts"], signal_ids=list(d["signal_ids"]),
                last_activity=d["last_activity"], resolved_ts=d["resolved_ts"], reopened=d["reopened"],
                published=(tuple(pub[0]), tuple(pub[1]), pub[2]) if pub else None,
                opened_why=list(d["opened_why"]), left_out=list(d["left_out"]),
                ranking_lines=list(d["ranking_lines"]), services_seen=list(d.get("services_seen", [])),
            )
        c._seq = int(data["seq"])
        c._last_tick = data.get("last_tick")
        return c


def _evidence_end(sig: Signal) -> float:
    """When a signal stopped being evidence: its end, or infinity while it is active."""
    return math.inf if sig.end_ts is None else sig.end_ts


def _signal_out(s: Signal) -> dict[str, Any]:
    return {"id": s.id, "ts": s.ts, "kind": s.kind.value, "service": s.service, "name": s.name, "score": s.score,
            "direction": s.direction, "evidence": list(s.evidence), "end_ts": s.end_ts,
            "labels": [list(x) for x in s.labels]}


def _signal_in(d: Mapping[str, Any]) -> Signal:
    return Signal(id=d["id"], ts=d["ts"], kind=SignalKind(d["kind"]), service=d["service"], name=d["name"],
                  score=d["score"], direction=d["direction"], evidence=tuple(d["evidence"]), end_ts=d["end_ts"],
                  labels=make_labels(dict(d["labels"])))
