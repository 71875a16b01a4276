"""Guards: pure checks that may refuse an action, each returning a reason an SRE can read.

Every guard is a function of the planned action, its incident, the guard configuration, the
ledger's :class:`~aiops.act.ledger.ActionBook` and the event time ``now``; none reads a clock.
A refusal reason starts with the guard's name (``"cooldown: ..."``) so that metrics and
humans can group refusals by guard.

>>> from aiops.act.rules import ActionRules
>>> from aiops.records import Action, ActionOutcome, Incident, IncidentStatus
>>> inc = Incident(id="i", ts=0.0, status=IncidentStatus.OPEN, opened_ts=0.0, services=("api",),
...                root_causes=(), severity="warning")
>>> act = Action(ts=0.0, incident_id="i", type="rollback", target=(("service", "api"),), dry_run=True,
...              outcome=ActionOutcome.PLANNED)
>>> ctx = GuardContext(act, inc, ActionRules(), ActionBook(), now=0.0)
>>> check(ctx)
'precondition: api is not the top root cause'
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from aiops.act.ledger import ActionBook, ActionState, target_key, target_service
from aiops.act.rules import SEVERITIES, ActionRule, ActionRules
from aiops.records import Action, Incident, SignalKind

HOUR_S = 3600.0


@dataclass(frozen=True, slots=True)
class GuardContext:
    """Everything a guard may look at."""

    action: Action
    incident: Incident
    rules: ActionRules
    book: ActionBook
    now: float

    @property
    def rule(self) -> ActionRule:
        return self.rules.rule(self.action.type)

    @property
    def service(self) -> str:
        return target_service(self.action.target)

    @property
    def target(self) -> str:
        return target_key(self.action.target)


Guard = Callable[[GuardContext], str | None]


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def enabled(ctx: GuardContext) -> str | None:
    if not ctx.rule.enabled:
        return f"disabled: {ctx.action.type} is disabled in {ctx.rules.source or 'actions.yaml'}"
    if not ctx.service:
        return "precondition: the target names no service"
    return None


def preconditions(ctx: GuardContext) -> str | None:
    pre = ctx.rule.effective_preconditions(ctx.action.type)
    inc, svc = ctx.incident, ctx.service
    if pre.min_severity is not None:
        have = SEVERITIES.index(inc.severity) if inc.severity in SEVERITIES else -1
        if have < SEVERITIES.index(pre.min_severity):
            return f"precondition: severity {inc.severity} is below {pre.min_severity}"
    if pre.top_root_cause and (not inc.root_causes or inc.root_causes[0].service != svc):
        top = inc.root_causes[0].service if inc.root_causes else "none"
        return f"precondition: {svc} is not the top root cause" + (f" ({top} is)" if inc.root_causes else "")
    if pre.signal_kinds or pre.signal_names:
        kinds = {SignalKind(k) for k in pre.signal_kinds}
        names = [re.compile(p) for p in pre.signal_names]
        ok = any(
            s.active and s.service == svc and (not kinds or s.kind in kinds)
            and (not names or any(p.search(s.name) for p in names))
            for s in inc.signals
        )
        if not ok:
            want = "/".join(sorted(pre.signal_kinds)) or "any"
            named = f" matching {list(pre.signal_names)}" if names else ""
            return f"precondition: no active {want} signal{named} on {svc}"
    if pre.deploy_within_s is not None:
        onset = min((s.ts for s in inc.signals if s.kind is not SignalKind.CHANGE), default=inc.opened_ts)
        onset = min(onset, inc.opened_ts)
        deploys = [c for c in inc.changes
                   if c.type == "deploy" and c.service == svc and onset - pre.deploy_within_s <= c.ts <= onset]
        if not deploys:
            return f"precondition: no deploy of {svc} within {pre.deploy_within_s:.0f}s before the incident onset"
    return None


def max_targets_per_incident(ctx: GuardContext) -> str | None:
    limit = ctx.rules.limits.max_targets_per_incident
    counted = (ActionState.AWAITING_APPROVAL, ActionState.APPROVED, ActionState.EXECUTING, ActionState.DONE,
               ActionState.VERIFIED, ActionState.FAILED, ActionState.DRY_RUN)
    others = {target_key(t.target) for t in ctx.book.for_incident(ctx.incident.id) if t.state in counted}
    others.discard(ctx.target)
    if len(others) >= limit:
        return (f"max_targets_per_incident: incident {ctx.incident.id} already acts on {len(others)} targets "
                f"(max {limit})")
    return None


def silences(ctx: GuardContext) -> str | None:
    for w in ctx.rules.silences:
        if w.matches(ctx.now, ctx.service, ctx.action.type):
            until = f" until {_iso(w.end)}" if w.end is not None else ""
            return f"silenced: {w.name or 'silence'}{until}" + (f" ({w.comment})" if w.comment else "")
    return None


def maintenance(ctx: GuardContext) -> str | None:
    for w in ctx.rules.maintenance:
        if w.matches(ctx.now, ctx.service, ctx.action.type):
            return f"maintenance: window {w.name or 'unnamed'} is active" + (f" ({w.comment})" if w.comment else "")
    return None


def failure_backoff(ctx: GuardContext) -> str | None:
    failed = ctx.book.failures.get((ctx.action.type, ctx.target))
    backoff = ctx.rules.limits.failure_backoff_s
    if failed is not None and ctx.now - failed < backoff:
        return (f"failure_backoff: {ctx.action.type} on {ctx.target} failed at {_iso(failed)}; "
                f"not retried for {backoff:.0f}s (escalated instead)")
    return None


def cooldown(ctx: GuardContext) -> str | None:
    last = max((ts for ts, tk, _ in ctx.book.executions if tk == ctx.target), default=None)
    cool = ctx.rule.cooldown_s
    if last is not None and ctx.now - last < cool:
        return f"cooldown: {ctx.target} was acted on {ctx.now - last:.0f}s ago (cooldown {cool:.0f}s)"
    return None


def rate_limits(ctx: GuardContext) -> str | None:
    since = ctx.now - HOUR_S
    recent = [(ts, tk) for ts, tk, _ in ctx.book.executions if ts > since]
    per_target = sum(1 for _, tk in recent if tk == ctx.target)
    if per_target >= ctx.rule.max_per_target_per_hour:
        return (f"rate_limit: {per_target} actions on {ctx.target} in the last hour "
                f"(max {ctx.rule.max_per_target_per_hour})")
    if len(recent) >= ctx.rules.limits.global_per_hour:
        return f"rate_limit: {len(recent)} actions in the last hour (global max {ctx.rules.limits.global_per_hour})"
    return None


def concurrency(ctx: GuardContext) -> str | None:
    n, limit = ctx.book.in_flight(), ctx.rules.limits.max_concurrent
    if n >= limit:
        return f"max_concurrent: {n} actions executing or awaiting verification (max {limit})"
    return None


GUARDS: tuple[Guard, ...] = (
    enabled, preconditions, max_targets_per_incident, silences, maintenance, failure_backoff, cooldown,
    rate_limits, concurrency,
)
"""In order: what the action is, then what the world allows right now."""

AT_EXECUTION: tuple[Guard, ...] = (enabled, silences, maintenance, failure_backoff, cooldown, rate_limits, concurrency)
"""Re-checked when an approved action is about to run: time has passed since it was planned."""


def check(ctx: GuardContext, guards: Sequence[Guard] = GUARDS) -> str | None:
    """Return the first refusal reason, or None when every guard lets the action through."""
    for guard in guards:
        reason = guard(ctx)
        if reason is not None:
            return reason
    return None
