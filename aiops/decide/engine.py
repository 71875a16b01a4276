"""Incidents -> alerts (what to tell people) and planned actions (what to do), by the rules.

Alerting follows Alertmanager's model: one alert per incident, identified by its labels
(``alertname``, ``incident_id``, ``service``, ``severity`` and whatever routes add), sent
``firing`` when the incident opens, again when its conclusion changes (the correlator only
emits an ``update`` then) and ``resolved`` when it resolves. A flapping incident that the
correlator re-opens keeps its id and labels, so a receiver sees the same alert fire again,
not a new page; the alert says ``reopened``.

Remediation rules are walked in file order like Alertmanager routes: the first rule whose
condition holds plans its action and stops the walk for this incident unless it says
``continue: true``. The walk is repeated at every open/update until it has stopped, since
evidence grows as an incident unfolds; each (action, target) is planned at most once per
incident. Actions are ``planned`` with ``dry_run`` from :class:`~aiops.config.ActSettings`;
carrying them out is ``aiops.act``'s job.

>>> import structlog
>>> from aiops.config import ActSettings
>>> from aiops.decide.rules import parse_rules
>>> from aiops.records import Incident, IncidentStatus, RootCause
>>> rules = parse_rules({"r.yaml": "remediations:\\n  - {name: r, action: scale_up, when: {services_at_least: 1}}\\n"})
>>> inc = Incident(id="inc-1", ts=10.0, status=IncidentStatus.OPEN, opened_ts=10.0, services=("api",),
...                root_causes=(RootCause("api", 0.9),), severity="warning")
>>> quiet = structlog.wrap_logger(structlog.ReturnLogger())  # a daemon passes nothing: logs go to stderr
>>> [type(d).__name__ for d in Decider(rules, ActSettings(), logger=quiet).on_incident(inc)]
['Alert', 'Action']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from typing import Any

import structlog

from aiops.config import ActSettings
from aiops.decide.rules import Cond, Remediation, Rules
from aiops.records import (
    Action,
    ActionOutcome,
    Alert,
    AlertStatus,
    ChangeEvent,
    Incident,
    IncidentStatus,
    Signal,
)

log = structlog.get_logger(__name__)

SNAPSHOT_VERSION = 1
ONSET_TOLERANCE_S = 30.0
"""A change this long after the first anomaly still counts (scrape and step alignment)."""


class _Attrs:
    """Template access to a record's fields and labels; unknown names render empty."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)

    def __getattr__(self, name: str) -> str:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._values.get(name, "")

    def __format__(self, spec: str) -> str:
        return format(self._values.get("name", ""), spec)


def _signal_attrs(sig: Signal | None) -> _Attrs:
    if sig is None:
        return _Attrs({})
    values = dict(sig.labels)
    values.update(name=sig.name, metric=sig.name, kind=sig.kind.value, direction=sig.direction,
                  service=sig.service or "", onset=_iso(sig.ts))
    values.setdefault("model", sig.name if sig.kind.value == "drift" else values.get("model", ""))
    return _Attrs(values)


def _change_attrs(ch: ChangeEvent | None) -> _Attrs:
    if ch is None:
        return _Attrs({})
    values = dict(ch.attrs)
    values.update(type=ch.type, service=ch.service or "", ts=_iso(ch.ts), name=ch.type)
    return _Attrs(values)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _Formatter(dict):  # type: ignore[type-arg]
    """``str.format_map`` context: missing keys render empty instead of raising."""

    def __missing__(self, key: str) -> str:
        return ""


@dataclass
class _Match:
    """What a condition matched: the first signal and change, for templates and reasons."""

    signal: Signal | None = None
    change: ChangeEvent | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class _State:
    fired: bool = False
    resolved: bool = False
    alert_key: str = ""
    chain_done: bool = False
    planned: list[str] = field(default_factory=list)


class Decider:
    """Applies the rules to each incident record; see the module docstring."""

    def __init__(self, rules: Rules, act: ActSettings, logger: Any = None) -> None:
        self.rules = rules
        self.act = act
        self._log = logger if logger is not None else log
        self._state: dict[str, _State] = {}

    def on_incident(self, incident: Incident) -> list[Alert | Action]:
        """Alerts and planned actions for one incident record (open, update or resolved)."""
        st = self._state.setdefault(incident.id, _State())
        out: list[Alert | Action] = []
        if incident.status is IncidentStatus.RESOLVED:
            if st.fired and not st.resolved:
                out.append(self._alert(incident, AlertStatus.RESOLVED, reopened=False))
            st.resolved = True
            return out
        reopened = st.resolved
        st.resolved = False
        alert = self._alert(incident, AlertStatus.FIRING, reopened=reopened)
        key = repr((alert.labels, [a for a in alert.annotations if a[0] != "reopened"]))
        if not st.fired or reopened or key != st.alert_key:
            out.append(alert)
            st.fired, st.alert_key = True, key
        if not st.chain_done:
            out.extend(self._plan(incident, st))
        return out

    # -- alerts ---------------------------------------------------------------------------

    def _context(self, incident: Incident, match: _Match | None = None) -> _Formatter:
        top = incident.root_causes[0] if incident.root_causes else None
        ctx = _Formatter(
            service=top.service if top else (incident.services[0] if incident.services else ""),
            services=", ".join(incident.services),
            severity=self.severity(incident),
            incident_id=incident.id,
            opened=_iso(incident.opened_ts),
            opened_ms=str(int(incident.opened_ts * 1000)),
            metric=(top.metric or "") if top else "",
            template=(top.template or "") if top else "",
            signal=_signal_attrs(match.signal if match else None),
            change=_change_attrs(match.change if match else None),
        )
        ctx["summary"] = self._summary(incident, ctx)
        return ctx

    def severity(self, incident: Incident) -> str:
        """The correlator's severity unless a severity rule (first match) overrides it."""
        for rule in self.rules.alerts.severity:
            if _holds(rule.when, incident, list(incident.signals), list(incident.changes), _Match()):
                return rule.severity
        return incident.severity

    @staticmethod
    def _summary(incident: Incident, ctx: Mapping[str, Any]) -> str:
        n = len(incident.services)
        where = f"{n} service{'s' if n != 1 else ''} anomalous"
        if not incident.root_causes:
            return f"{where}: {ctx['services']}"
        top = incident.root_causes[0]
        what = f" ({top.metric})" if top.metric else (f" (log {top.template})" if top.template else "")
        return f"{where}, likely root cause {top.service}{what}"

    @staticmethod
    def _description(incident: Incident) -> str:
        lines = []
        for i, rc in enumerate(incident.root_causes[:3], 1):
            lines.append(f"{i}. {rc.service} (score {rc.score:.2f})")
            lines.extend(f"   - {e}" for e in rc.evidence)
        lines.append(f"Services: {', '.join(incident.services)}; opened {_iso(incident.opened_ts)}.")
        return "\n".join(lines)

    def _alert(self, incident: Incident, status: AlertStatus, reopened: bool) -> Alert:
        ctx = self._context(incident)
        labels = {k: _render(v, ctx) for k, v in self.rules.alerts.labels}
        labels.update(incident_id=incident.id, severity=ctx["severity"], service=ctx["service"])
        annotations = {"summary": ctx["summary"], "description": self._description(incident)}
        annotations.update({k: _render(v, ctx) for k, v in self.rules.alerts.annotations})
        for route in self.rules.alerts.routes:
            if all(any(fnmatchcase(labels.get(k, ""), g) for g in globs) for k, globs in route.match):
                labels.update({k: _render(v, ctx) for k, v in route.labels})
                annotations.update({k: _render(v, ctx) for k, v in route.annotations})
                break
        if reopened:
            annotations["reopened"] = "true"
        return Alert(ts=incident.ts, incident_id=incident.id, status=status,
                     labels=tuple(sorted((k, v) for k, v in labels.items() if v)),
                     annotations=tuple(sorted((k, v) for k, v in annotations.items() if v)))

    # -- remediation ----------------------------------------------------------------------

    def _plan(self, incident: Incident, st: _State) -> list[Action]:
        if not incident.root_causes:
            return []
        top = incident.root_causes[0]
        out: list[Action] = []
        for rule in self.rules.remediations:
            if incident.ts - incident.opened_ts > rule.plan_within_s:
                # Remediation acts on the picture an incident opens with; what emerges much later
                # (secondary effects, a shifted ranking) is for the humans the alert reached.
                continue
            sigs, changes = _scope(incident, rule, top.service)
            match = _Match()
            if not _holds(rule.when, incident, sigs, changes, match):
                continue
            ctx = self._context(incident, match)
            target = {"service": top.service}
            target.update({k: _render(v, ctx) for k, v in rule.target})
            params = {k: _render(v, ctx) for k, v in rule.params}
            key = repr((rule.action, sorted(target.items())))
            if key not in st.planned:
                st.planned.append(key)
                reason = _render(rule.reason, ctx) if rule.reason else \
                    f"rule {rule.name}: " + ("; ".join(match.notes) or "condition held")
                out.append(Action(
                    ts=incident.ts, incident_id=incident.id, type=rule.action,
                    target=tuple(sorted((k, v) for k, v in target.items() if v)),
                    dry_run=self.act.dry_run, outcome=ActionOutcome.PLANNED, reason=reason,
                    params=tuple(sorted((k, v) for k, v in params.items() if v)),
                ))
                self._log.info("action_planned", incident_id=incident.id, action=rule.action,
                               service=top.service, rule=rule.name)
            if not rule.continue_:
                st.chain_done = True
                break
        return out

    # -- state ----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {"version": SNAPSHOT_VERSION,
                "incidents": {k: {"fired": s.fired, "resolved": s.resolved, "alert_key": s.alert_key,
                                  "chain_done": s.chain_done, "planned": list(s.planned)}
                              for k, s in self._state.items()}}

    @classmethod
    def from_snapshot(cls, data: Mapping[str, Any], rules: Rules, act: ActSettings, logger: Any = None) -> Decider:
        if data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"unsupported decider snapshot version {data.get('version')!r}")
        d = cls(rules, act, logger=logger)
        for k, s in data["incidents"].items():
            d._state[k] = _State(fired=s["fired"], resolved=s["resolved"], alert_key=s["alert_key"],
                                 chain_done=s["chain_done"], planned=list(s["planned"]))
        return d

    def forget_resolved(self, keep: int = 10_000) -> None:
        """Bound state in a long-running daemon: drop the oldest resolved incidents beyond ``keep``."""
        resolved = [k for k, s in self._state.items() if s.resolved]
        for k in resolved[: max(0, len(self._state) - keep)]:
            del self._state[k]


def _render(template: str, ctx: Mapping[str, Any]) -> str:
    try:
        return template.format_map(ctx)
    except (AttributeError, KeyError, IndexError, ValueError):
        return template  # validated at load; a value that still cannot render shows raw


def _scope(incident: Incident, rule: Remediation, service: str) -> tuple[list[Signal], list[ChangeEvent]]:
    if rule.scope == "incident":
        return list(incident.signals), list(incident.changes)
    return ([s for s in incident.signals if s.service == service],
            [c for c in incident.changes if c.service == service])


def _holds(cond: Cond, incident: Incident, sigs: Sequence[Signal], changes: Sequence[ChangeEvent],
           match: _Match) -> bool:
    op = cond.op
    if op == "all":
        return all(_holds(c, incident, sigs, changes, match) for c in cond.children)
    if op == "any":
        return any(_holds(c, incident, sigs, changes, match) for c in cond.children)
    if op == "not":
        return not _holds(cond.children[0], incident, sigs, changes, _Match())
    if op == "services_at_least":
        return len(incident.services) >= cond.number
    if op == "severity":
        return incident.severity in cond.values
    if op == "signal":
        sc = cond.signal
        assert sc is not None
        for s in sorted(sigs, key=lambda x: (x.ts, -x.score)):
            if sc.kinds and s.kind.value not in sc.kinds:
                continue
            if sc.metrics and not any(fnmatchcase(s.name, g) for g in sc.metrics):
                continue
            if sc.direction and s.direction != sc.direction:
                continue
            if sc.min_score is not None and s.score < sc.min_score:
                continue
            if sc.services and not any(fnmatchcase(s.service or "", g) for g in sc.services):
                continue
            if match.signal is None:
                match.signal = s
            match.notes.append(f"{s.service} {s.name}{' ' + s.direction if s.direction else ''} "
                               f"since {_iso(s.ts)}")
            return True
        return False
    if op == "change":
        cc = cond.change
        assert cc is not None
        onset = min((s.ts for s in sigs), default=None)
        if onset is None:
            onset = min((s.ts for s in incident.signals), default=incident.opened_ts)
        best: ChangeEvent | None = None
        for ch in changes:
            if cc.types and not any(fnmatchcase(ch.type, g) for g in cc.types):
                continue
            if onset - cc.within_s <= ch.ts <= onset + ONSET_TOLERANCE_S and (best is None or ch.ts > best.ts):
                best = ch
        if best is None:
            return False
        if match.change is None:
            match.change = best
        version = best.attr("version")
        match.notes.append(f"{best.type}{' ' + version if version else ''} of {best.service} "
                           f"{onset - best.ts:.0f} s before first anomaly")
        return True
    raise AssertionError(f"unknown condition op {op!r}")  # rules.py validated the tree
