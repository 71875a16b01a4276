"""Root-cause ranking of the services in one incident, with the evidence behind each rank.

Each anomalous service gets a score from the evidence an on-call engineer would
weigh themselves, and a sentence for each piece that they can check on a dashboard:

- **onset order**: the fault shows first where it starts (the earliest anomalous service);
- **propagation direction**: errors and latency flow from callee to caller, so a service
  whose anomalous callees turned bad no later than itself is more likely a victim, and a
  service that every other anomalous service (transitively) calls explains them all
  (the "upstream explains downstream" heuristic of MicroRCA, Wu et al., NOMS 2020, and
  CauseInfer, Chen et al., INFOCOM 2014);
- **load direction**: requests flow from caller to callee, so a callee whose only anomaly is
  the traffic it receives (its request rate, and the CPU and memory serving a higher one), or
  whose request rate rose while an internal caller that is not called more itself turned bad
  (a retry storm, a loop), is that caller's victim, and the caller is credited with it;
- **recent change**: a deploy or config change of the service shortly before its first
  anomaly (most production incidents follow a change);
- **its own error logs**: new or bursting ERROR/WARN templates in the service's logs;
- **strength**: how strongly and how broadly (in independent measurements) its series deviate.

Onset order counts from the first *loud* service (:data:`ONSET_SHARE` of the strongest), so a
faint blip elsewhere a step earlier does not make every loud service "late".

Services that are not anomalous but are called by several anomalous services that share
nothing else downstream are added as *unobserved* candidates: a database or third-party API
rarely exports the metrics that would make it anomalous itself.

The weights are deliberately plain and documented in :data:`WEIGHTS`; none names a service,
a metric family beyond generic globs, or a scenario.

>>> from aiops.correlate.topology import Topology
>>> from aiops.records import Signal, SignalKind
>>> t = Topology.from_mapping({"web": ["api"], "api": ["db"]})
>>> sig = lambda svc, ts: Signal(id=svc, ts=ts, kind=SignalKind.METRIC, service=svc,
...                              name="http_requests_total:error_ratio", score=1.0, direction="up")
>>> ranked, _ = rank_causes([sig("web", 60.0), sig("api", 30.0), sig("db", 0.0)], [], t)
>>> [rc.service for rc in ranked]
['db', 'api', 'web']
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase

from aiops.correlate.symptoms import family
from aiops.correlate.topology import Topology
from aiops.records import ChangeEvent, RootCause, Signal, SignalKind

WEIGHTS = {
    "early": 0.25,  # among the first anomalous services
    "root_like": 0.20,  # no anomalous callee turned bad before it
    "explains": 0.20,  # share of the other anomalous services that (transitively) call it, later
    "change": 0.20,  # a change of this service shortly before its onset
    "logs": 0.07,  # its own new / bursting error templates
    "strength": 0.08,  # strength and breadth of its anomalies
}

ONSET_SHARE = 0.3
"""A service's onset is its first signal scoring at least this share of its strongest one."""

UNOBSERVED_FACTOR = 0.8
"""An unobserved common callee scores this fraction of what the evidence alone would give it."""


def hms(ts: float) -> str:
    """Event time as ``HH:MM:SS`` UTC, the form an engineer matches against a dashboard.

    >>> hms(1767225615.0)
    '00:00:15'
    """
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%H:%M:%S")


def _describe(sig: Signal) -> str:
    if sig.kind is SignalKind.LOG:
        text = sig.evidence[0] if sig.evidence else sig.name
        return f"log {text[:80]!r}"
    arrow = {"up": " up", "down": " down"}.get(sig.direction, "")
    short = sig.name.split(":", 1)[1] if ":" in sig.name and sig.kind is SignalKind.METRIC else sig.name
    return f"{short}{arrow}" if sig.kind is SignalKind.METRIC else f"{sig.kind.value} {sig.name}{arrow}"


@dataclass
class _Service:
    name: str
    signals: list[Signal] = field(default_factory=list)
    onset: float = math.inf
    parts: dict[str, float] = field(default_factory=dict)
    evidence: list[str] = field(default_factory=list)
    observed: bool = True
    strength: float = 0.0

    @property
    def score(self) -> float:
        s = sum(WEIGHTS[k] * v for k, v in self.parts.items())
        return s if self.observed else s * UNOBSERVED_FACTOR


def _strength(svc: _Service) -> float:
    """How loudly a service is anomalous: its strongest signal, a little more for breadth.

    Breadth counts independent measurements (:func:`~aiops.correlate.symptoms.family`): the
    quantiles of one histogram move together, and a service that exports more of them is not
    more anomalous for it.
    """
    if not svc.signals:
        return 0.0
    top = max(s.score for s in svc.signals)
    breadth = _breadth(svc.signals)
    return top * (1.0 + 0.1 * min(breadth - 1, 5))


def _covers(own: float, other: float, observed: bool) -> float:
    """How far a service of strength ``own`` can account for one of strength ``other`` (0..1)."""
    if not observed or other <= 0:
        return 1.0
    return min(1.0, own / other)


def _breadth(signals: Sequence[Signal]) -> int:
    """How many independent measurements of a service are anomalous."""
    return len({family(s) for s in signals})


def _change_for(service: str, onset: float, changes: Sequence[ChangeEvent], lookback_s: float,
                tolerance_s: float) -> ChangeEvent | None:
    best: ChangeEvent | None = None
    for ch in changes:
        if ch.service == service and onset - lookback_s <= ch.ts <= onset + tolerance_s:
            if best is None or ch.ts > best.ts:
                best = ch
    return best


def _change_sentence(ch: ChangeEvent, onset: float) -> str:
    version = ch.attr("version")
    prev = ch.attr("previous_version")
    what = ch.type + (f" {version}" if version else "") + (f" (from {prev})" if prev else "")
    delta = onset - ch.ts
    when = f"{delta:.0f} s before first anomaly" if delta >= 0 else f"{-delta:.0f} s after first anomaly"
    return f"{what} at {hms(ch.ts)}, {when}"


def rank_causes(
    signals: Sequence[Signal],
    changes: Sequence[ChangeEvent],
    topology: Topology,
    *,
    change_lookback_s: float = 1800.0,
    tolerance_s: float = 30.0,
    max_causes: int = 5,
) -> tuple[list[RootCause], list[str]]:
    """Rank the services of an incident; returns the causes and one explanation line per cause."""
    by_service: dict[str, _Service] = {}
    for sig in signals:
        if sig.service is None or sig.kind is SignalKind.CHANGE:
            continue
        by_service.setdefault(sig.service, _Service(sig.service)).signals.append(sig)
    if not by_service:
        return [], []
    for svc in by_service.values():
        # A service's onset is when its measured behaviour changed: its metric (or drift) signals
        # when it has any, since log templates come and go with traffic; and among those the loud
        # ones, since a faint early blip is as likely noise as a precursor, and onset order is the
        # strongest cue of all.
        measured = [s for s in svc.signals if s.kind is not SignalKind.LOG] or svc.signals
        loud = max(s.score for s in measured) * ONSET_SHARE
        svc.onset = min(s.ts for s in measured if s.score >= loud)
    for svc in by_service.values():
        svc.strength = _strength(svc)
    # The incident starts with its first loud service, by the same rule as a service's onset:
    # a faint blip elsewhere a step earlier is as likely noise as a precursor, and must not
    # make every loud service "later" (it still counts as early itself).
    loudest = max(s.strength for s in by_service.values())
    t0 = min(s.onset for s in by_service.values() if s.strength >= ONSET_SHARE * loudest)
    anomalous = set(by_service)
    max_strength = max(max(sig.score for sig in s.signals) for s in by_service.values()) or 1.0
    max_breadth = max(_breadth(s.signals) for s in by_service.values())

    # Services whose only anomaly is the traffic they receive (and the resources serving it):
    # load flows from caller to callee, so such a change says something about their callers.
    load_only = {name for name, svc in by_service.items() if _only_load(svc)}
    surged = _surge_senders(by_service, anomalous, topology, tolerance_s)
    for cand in _unobserved_candidates(anomalous, by_service, topology):
        by_service[cand.name] = cand
    down = {name: topology.downstream(name) for name in by_service}

    for svc in by_service.values():
        _score_service(svc, by_service, anomalous, load_only, surged, t0, changes, topology, down, change_lookback_s,
                       tolerance_s, max_strength, max_breadth)

    ordered = sorted(by_service.values(), key=lambda s: (-s.score, s.onset, s.name))[:max_causes]
    causes: list[RootCause] = []
    lines: list[str] = []
    for i, svc in enumerate(ordered, 1):
        metric_sig = max((s for s in svc.signals if s.kind is not SignalKind.LOG), key=lambda s: s.score,
                         default=None)
        log_sig = max((s for s in svc.signals if s.kind is SignalKind.LOG), key=lambda s: s.score, default=None)
        causes.append(RootCause(
            service=svc.name, score=round(svc.score, 4),
            metric=metric_sig.name if metric_sig else None,
            template=log_sig.name if log_sig else None,
            evidence=tuple(svc.evidence),
        ))
        parts = ", ".join(f"{k} {v:.2f}x{WEIGHTS[k]:.2f}" for k, v in svc.parts.items() if v)
        lines.append(f"#{i} {svc.name} score {svc.score:.3f} = {parts or 'no evidence'}"
                     + ("" if svc.observed else f" (unobserved, x{UNOBSERVED_FACTOR})"))
    return causes, lines


RESOURCE_GLOBS = ("*memory*", "*cpu*")
"""Resource use: it rises with the load a service serves, and callers feel it only once it turns
into errors, latency or restarts (which are signals of their own)."""


def _only_load(svc: _Service) -> bool:
    """True when the service shows a change in the traffic it serves and nothing callers can feel.

    Either every signal is a change in its request rate, or its request rate rose and the rest
    is resource use (CPU, memory) that follows the extra load: a busier service, not a broken
    one, as long as no error, latency, restart or log of its own says otherwise.

    >>> m = lambda name, d="up": Signal(id=name, ts=0.0, kind=SignalKind.METRIC, service="db", name=name,
    ...                                 score=1.0, direction=d)
    >>> _only_load(_Service("db", [m("http_requests_total:rate", "down")]))
    True
    >>> _only_load(_Service("db", [m("http_requests_total:rate"), m("process_cpu_seconds_total:rate")]))
    True
    >>> _only_load(_Service("db", [m("http_requests_total:rate"), m("http_request_duration_seconds:p99")]))
    False
    >>> _only_load(_Service("db", [m("process_cpu_seconds_total:rate")]))
    False
    """
    rates: list[Signal] = []
    rest: list[Signal] = []
    for s in svc.signals:
        (rates if s.kind is SignalKind.METRIC and family(s)[2] == "request_rate" else rest).append(s)
    if not rates:
        return False
    if not rest:
        return True
    return any(s.direction == "up" for s in rates) and all(
        s.kind is SignalKind.METRIC and any(fnmatchcase(s.name, g) for g in RESOURCE_GLOBS) for s in rest)


def _surge_senders(by_service: dict[str, _Service], anomalous: set[str], topology: Topology,
                   tol: float) -> dict[str, list[str]]:
    """Callees whose request rate rose, mapped to the anomalous internal callers that sent the surge.

    A caller sent it when it is anomalous no later than the callee, is itself called by others
    (an entry service passes its users' traffic on, which a detector may miss at the entry),
    and its own request rate did not rise: it calls more, not because it is called more (a
    retry storm, a loop, N+1 queries).
    """
    def rate_up(svc: _Service) -> bool:
        return any(s.kind is SignalKind.METRIC and s.direction == "up" and family(s)[2] == "request_rate"
                   for s in svc.signals)

    out: dict[str, list[str]] = {}
    for name in sorted(anomalous):
        svc = by_service[name]
        if not rate_up(svc):
            continue
        senders = [p for p in topology.callers(name) if p in anomalous and topology.callers(p)
                   and not rate_up(by_service[p]) and by_service[p].onset <= svc.onset + tol]
        if senders:
            out[name] = senders
    return out


def _fed(name: str, load_only: set[str], topology: Topology) -> set[str]:
    """Load-only services reached from ``name`` through load-only callees: traffic it sends."""
    seen: set[str] = set()
    stack = [name]
    while stack:
        for c in topology.callees(stack.pop()):
            if c in load_only and c not in seen and c != name:
                seen.add(c)
                stack.append(c)
    return seen


def _unobserved_candidates(anomalous: set[str], by_service: dict[str, _Service],
                           topology: Topology) -> list[_Service]:
    """Healthy-looking services called by two or more anomalous services with no anomalous callee.

    When several callers fail together and share one callee that exports nothing anomalous,
    that callee is the simplest explanation of all of them.
    """
    callers_of: dict[str, list[str]] = defaultdict(list)
    for name in sorted(anomalous):
        if any(c in anomalous for c in topology.callees(name)):
            continue  # its trouble is already explained by an anomalous callee
        for callee in topology.callees(name):
            if callee not in anomalous:
                callers_of[callee].append(name)
    out = []
    for callee, callers in sorted(callers_of.items()):
        if len(callers) >= 2:
            svc = _Service(callee, observed=False)
            svc.onset = min(by_service[c].onset for c in callers)
            out.append(svc)
    return out


def _score_service(
    svc: _Service, by_service: dict[str, _Service], anomalous: set[str], load_only: set[str],
    surged: dict[str, list[str]], t0: float,
    changes: Sequence[ChangeEvent], topology: Topology, down: dict[str, set[str]], lookback_s: float, tol: float,
    max_strength: float, max_breadth: int,
) -> None:
    name = svc.name
    others = anomalous - {name}

    # onset order (an unobserved candidate inherits the earliest onset of its anomalous callers)
    lag = svc.onset - t0
    # onsets are only as precise as the step: decay over a few tolerances (2 min at 15 s steps)
    svc.parts["early"] = 1.0 if lag <= tol else math.exp(-(lag - tol) / max(4.0 * tol, 1.0))
    if svc.observed:
        first = min(svc.signals, key=lambda s: (s.ts, -s.score))
        if lag <= tol:
            svc.evidence.append(f"first anomalous service: {_describe(first)} at {hms(first.ts)}")
        else:
            svc.evidence.append(f"anomalous {lag:.0f} s after the first service: {_describe(first)} "
                                f"at {hms(first.ts)}")

    # propagation: anomalous services it depends on, and anomalous services depending on it.
    # Both are weighed by strength: a faint blip in a callee does not explain a loud caller,
    # and a root cause should account for the bulk of the anomaly mass, not for one noisy node.
    if topology.knows(name):
        own = svc.strength
        below = down[name] & anomalous
        direct = set(topology.callees(name))
        blame: dict[str, float] = {}
        for c in below:
            # a callee that only sees a different rate of calls is this service's doing, not its cause
            if c not in load_only and name not in surged.get(c, ()) and by_service[c].onset <= svc.onset + tol:
                hop = 1.0 if c in direct else 0.8
                blame[c] = hop * min(1.0, by_service[c].strength / own) if own > 0 else hop
        worst = max(blame.values(), default=0.0)
        svc.parts["root_like"] = 1.0 - worst
        callees = topology.callees(name)
        if worst >= 0.5:
            culprits = sorted(blame, key=lambda c: (-blame[c], c))[:3]
            svc.evidence.append(f"callee {', '.join(culprits)} anomalous no later and as strongly "
                                f"(likely a victim of it)")
        elif callees:
            svc.evidence.append(f"its callees {', '.join(callees[:4])} look healthy" if not below
                                else f"its anomalous callees {', '.join(sorted(below)[:4])} turned bad later "
                                f"or only faintly")
        above = [o for o in sorted(others) if name in down[o]
                 and by_service[o].onset >= svc.onset - tol]
        mass = sum(by_service[o].strength for o in others)
        if mass > 0:
            # It explains its callers, each only as far as its own trouble can account for theirs
            # (a faint blip here does not explain a loud failure above: the mirror of the blame
            # weighting; an unobserved candidate is taken at face value), and the callees whose
            # change is the traffic it sends them (load flows down).
            fed = (_fed(name, load_only, topology) | {c for c, by in surged.items() if name in by}) - set(above)
            svc.parts["explains"] = sum(by_service[o].strength * _covers(own, by_service[o].strength, svc.observed)
                                        for o in [*above, *sorted(fed)]) / mass
        if above:
            lags = [max(0.0, by_service[o].onset - svc.onset) for o in above]
            spread = f"{min(lags):.0f}" if round(min(lags)) == round(max(lags)) else f"{min(lags):.0f}-{max(lags):.0f}"
            svc.evidence.append(f"callers {', '.join(above[:4])} anomalous {spread} s later")
    else:
        svc.parts["root_like"] = 0.5  # the graph cannot tell; neither credit nor blame
    if surged.get(name) and name not in load_only:
        svc.parts["root_like"] = 0.0
        svc.parts.pop("explains", None)
        svc.evidence.append(f"its request rate rose while its caller {', '.join(surged[name][:3])}, whose own "
                            f"traffic did not rise, was in trouble: the extra load came from that caller")
    senders = [c for c in topology.callers(name) if c in anomalous] if name in load_only else []
    if senders:
        # its callers send its traffic and are in trouble themselves: a victim, and it explains
        # nothing about them (being busier or idler cannot cause its callers' errors or latency)
        svc.parts["root_like"] = 0.0
        svc.parts.pop("explains", None)
        svc.evidence.append(f"only the traffic it receives changed (and the resources serving it), and its caller "
                            f"{', '.join(senders[:3])} is anomalous: traffic flows from callers")

    # a recent change of its own
    ch = _change_for(name, svc.onset, changes, lookback_s, tol)
    if ch is not None:
        svc.parts["change"] = 1.0
        svc.evidence.append(_change_sentence(ch, svc.onset))

    if not svc.observed:
        svc.evidence.insert(0, "not anomalous itself but called by anomalous "
                            + ", ".join(o for o in sorted(others) if name in topology.callees(o)))
        return

    logs = [s for s in svc.signals if s.kind is SignalKind.LOG]
    if logs:
        svc.parts["logs"] = 1.0
        top = max(logs, key=lambda s: s.score)
        svc.evidence.append(f"its own logs: {_describe(top)} from {hms(top.ts)}")

    strength = max(s.score for s in svc.signals) / max_strength
    breadth = _breadth(svc.signals) / max(1, max_breadth)
    svc.parts["strength"] = 0.5 * strength + 0.5 * breadth
