"""The pure decide-to-execute core: planned actions in, ledger entries and an execution plan out.

:class:`ActionCore` never performs I/O. For every input it returns :class:`Step` values: the
ledger entries to write *first* (durably), the records to emit (``Action`` outcomes, an
escalation ``Alert``), and at most one :class:`Execution` the shell may carry out only after
the entries are written. Its state is the ledger's :class:`ActionBook`, so a restarted daemon
that reloads the ledger makes the same decisions and never executes an action twice.

Life of an action (see :class:`~aiops.act.ledger.ActionState`)::

    planned -> refused(reason) | dry_run | awaiting_approval -> approved | expired
            -> executing -> done -> verified | failed(+escalation)
                         -> failed (actuator error, or in doubt after a crash)
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from aiops.act.guards import AT_EXECUTION, GuardContext, check
from aiops.act.ledger import ActionBook, ActionState, LedgerEntry, Tracked, action_id, target_key, target_service
from aiops.act.rules import ActionRules
from aiops.records import Action, ActionOutcome, Alert, AlertStatus, Incident, IncidentStatus, SignalKind

SUPPORTED = frozenset({"scale_up", "rollback", "retrain"})


@dataclass(frozen=True, slots=True)
class Execution:
    """An actuator call the shell may make once the step's entries are durable."""

    action_id: str
    action: Action
    incident: Incident


@dataclass(frozen=True, slots=True)
class ActResult:
    """What an actuator reports: done, refused (e.g. already at max replicas) or failed."""

    outcome: ActionOutcome
    detail: str
    params: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Step:
    """Write ``entries``, then emit ``output``, then (if set) run ``execute``."""

    entries: tuple[LedgerEntry, ...] = ()
    output: tuple[Action | Alert, ...] = ()
    execute: Execution | None = None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ActionCore:
    """Guards, approval, verification and deduplication over an :class:`ActionBook`.

    ``dry_run`` is the global switch (``ActSettings.dry_run``); an action executes only when it
    and the action type's own ``dry_run`` are both off.
    """

    def __init__(self, rules: ActionRules, book: ActionBook, dry_run: bool = True,
                 supported: frozenset[str] = SUPPORTED) -> None:
        self.rules = rules
        self.book = book
        self.dry_run = dry_run
        self.supported = supported
        self._incidents: dict[str, Incident] = {}

    # -- inputs -------------------------------------------------------------------------------

    def submit(self, action: Action, incident: Incident, now: float) -> Step:
        """Decide what to do with a planned action. A duplicate of a known action gives an empty step."""
        self._incidents[incident.id] = incident
        target = tuple(sorted(action.target))
        aid = action_id(action.incident_id, action.type, target)
        if self.book.get(aid) is not None:
            return Step()  # the same decision again (duplicate or replay after restart): never twice
        action = replace(action, target=target)
        dry = self.dry_run or self.rules.rule(action.type).dry_run
        planned = self._entry(now, aid, action, ActionState.PLANNED, action.reason, dry_run=dry)
        if action.type not in self.supported:
            return self._refuse(now, aid, action, f"unsupported: no actuator for {action.type}", dry, planned)
        reason = check(GuardContext(action, incident, self.rules, self.book, now))
        if reason is not None:
            return self._refuse(now, aid, action, reason, dry, planned)
        if dry:
            why = ("dry run: guards passed" + (", approval would be required" if self.rules.rule(action.type).approval
                                                else "") + (f"; {action.reason}" if action.reason else ""))
            return Step(
                entries=(planned, self._entry(now, aid, action, ActionState.DRY_RUN, why, dry_run=True)),
                output=(self._out(now, action, ActionOutcome.PLANNED, why, dry_run=True),),
            )
        rule = self.rules.rule(action.type)
        if rule.approval:
            deadline = now + rule.approval_ttl_s
            why = f"awaiting approval: aiops approve {aid} (expires {_iso(deadline)})"
            return Step(
                entries=(planned, self._entry(now, aid, action, ActionState.AWAITING_APPROVAL, why)),
                output=(self._out(now, action, ActionOutcome.PLANNED, why, dry_run=False,
                                  extra=(("action_id", aid),)),),
            )
        return Step(entries=(planned, self._entry(now, aid, action, ActionState.EXECUTING)),
                    execute=Execution(aid, action, incident))

    def finish(self, aid: str, result: ActResult, now: float) -> Step:
        """Record what the actuator did."""
        t = self._tracked(aid)
        action = self._action(t)
        if result.outcome is ActionOutcome.DONE:
            state = ActionState.DONE
        elif result.outcome is ActionOutcome.REFUSED:
            state = ActionState.REFUSED
        else:
            state = ActionState.FAILED
        entry = self._entry(now, aid, action, state, result.detail, params=result.params)
        out = self._out(now, action, result.outcome, result.detail, dry_run=False, extra=result.params)
        escalation = (self._escalate(now, t, result.detail),) if state is ActionState.FAILED else ()
        return Step(entries=(entry,), output=(out, *escalation))

    def observe(self, incident: Incident, now: float) -> Step:
        """Take a new snapshot of an incident; actions on it whose signals recovered are verified."""
        self._incidents[incident.id] = incident
        entries = []
        for t in list(self.book.for_incident(incident.id)):
            if t.state is ActionState.DONE and t.done_ts is not None and now <= t.done_ts + self._verify_s(t):
                if _recovered(incident):
                    why = f"verified: signals recovered {now - t.done_ts:.0f}s after the action"
                    entries.append(self._entry(now, t.action_id, self._action(t), ActionState.VERIFIED, why))
        return Step(entries=tuple(entries))

    def approve(self, aid: str, by: str, now: float) -> Step:
        """An approval arriving through the daemon (HTTP); ``aiops approve`` writes the same entry."""
        t = self.book.get(aid)
        if t is None or t.state is not ActionState.AWAITING_APPROVAL:
            return Step()
        return Step(entries=(self._entry(now, aid, self._action(t), ActionState.APPROVED, f"approved by {by}",
                                         by=by),))

    def tick(self, now: float) -> list[Step]:
        """Advance event time: run approved actions, expire stale approvals, fail unverified actions."""
        steps: list[Step] = []
        for t in sorted(self.book.with_state(ActionState.AWAITING_APPROVAL, ActionState.APPROVED, ActionState.DONE),
                        key=lambda t: (t.planned_ts, t.action_id)):
            action = self._action(t)
            rule = self.rules.rule(t.type)
            if t.state is ActionState.AWAITING_APPROVAL and now >= t.planned_ts + rule.approval_ttl_s:
                why = f"expired: not approved within {rule.approval_ttl_s:.0f}s"
                steps.append(Step(entries=(self._entry(now, t.action_id, action, ActionState.EXPIRED, why),),
                                  output=(self._out(now, action, ActionOutcome.REFUSED, why, dry_run=False),)))
            elif t.state is ActionState.APPROVED and t.last_ts >= t.planned_ts + rule.approval_ttl_s:
                why = f"expired: approved by {t.approved_by} after the {rule.approval_ttl_s:.0f}s approval window"
                steps.append(Step(entries=(self._entry(now, t.action_id, action, ActionState.EXPIRED, why),),
                                  output=(self._out(now, action, ActionOutcome.REFUSED, why, dry_run=False),)))
            elif t.state is ActionState.APPROVED:
                steps.append(self._run_approved(t, action, now))
            elif t.state is ActionState.DONE and t.done_ts is not None and now > t.done_ts + self._verify_s(t):
                inc = self._incidents.get(t.incident_id)
                active = [s.name for s in (inc.signals if inc else ()) if s.active and s.kind is not SignalKind.CHANGE]
                why = (f"verification failed: incident signals did not recover within {self._verify_s(t):.0f}s"
                       + (f" (still active: {', '.join(sorted(set(active))[:5])})" if active else "")
                       + "; escalated, not retried")
                steps.append(Step(entries=(self._entry(now, t.action_id, action, ActionState.FAILED, why),),
                                  output=(self._out(now, action, ActionOutcome.FAILED, why, dry_run=False),
                                          self._escalate(now, t, why))))
        return steps

    def recover(self, now: float) -> list[Step]:
        """After a restart: an action left ``executing`` may or may not have run, so it is failed
        (in doubt) and escalated rather than executed again."""
        steps = []
        for t in self.book.with_state(ActionState.EXECUTING):
            action = self._action(t)
            why = ("in doubt: the daemon stopped after the ledger write and before the result; "
                   "not executed again, check the target")
            steps.append(Step(entries=(self._entry(now, t.action_id, action, ActionState.FAILED, why),),
                              output=(self._out(now, action, ActionOutcome.FAILED, why, dry_run=False),
                                      self._escalate(now, t, why))))
        return steps

    def escalations(self, skip: Collection[str] = ()) -> list[Alert]:
        """The escalation alert of every failed action the book holds, except those in ``skip`` (action ids).

        Every failure escalates, with the failure's event time and reason, so the alert rebuilt
        from the book equals the one sent then. A restarted daemon uses it for failures its
        checkpoint does not cover (decided after it, or written just before a crash).
        """
        return [self._escalate(t.last_ts, t, t.reason)
                for t in sorted(self.book.with_state(ActionState.FAILED), key=lambda t: (t.last_ts, t.action_id))
                if t.action_id not in skip]

    def remember(self, incident: Incident) -> None:
        """Take an incident snapshot as context without verifying anything (one handed over from another
        instance); a newer snapshot already seen wins."""
        known = self._incidents.get(incident.id)
        if known is None or incident.ts >= known.ts:
            self._incidents[incident.id] = incident

    def incident(self, incident_id: str) -> Incident | None:
        """The latest snapshot seen of an incident (context for its actions and their verification)."""
        return self._incidents.get(incident_id)

    def forget_finished(self) -> None:
        """Drop resolved incidents whose actions are all finished (bounded memory)."""
        for iid in [i for i, inc in self._incidents.items() if inc.status is IncidentStatus.RESOLVED]:
            if all(t.terminal for t in self.book.for_incident(iid)):
                del self._incidents[iid]

    # -- helpers ------------------------------------------------------------------------------

    def _run_approved(self, t: Tracked, action: Action, now: float) -> Step:
        inc = self._incidents.get(t.incident_id)
        if inc is None:
            why = "refused: incident context lost (restart) before the approved action ran; decide again"
            return Step(entries=(self._entry(now, t.action_id, action, ActionState.REFUSED, why),),
                        output=(self._out(now, action, ActionOutcome.REFUSED, why, dry_run=False),))
        reason = check(GuardContext(action, inc, self.rules, self.book, now), AT_EXECUTION)
        if reason is not None:
            return Step(entries=(self._entry(now, t.action_id, action, ActionState.REFUSED, reason),),
                        output=(self._out(now, action, ActionOutcome.REFUSED, reason, dry_run=False),))
        return Step(entries=(self._entry(now, t.action_id, action, ActionState.EXECUTING,
                                         f"approved by {t.approved_by}"),),
                    execute=Execution(t.action_id, action, inc))

    def _refuse(self, now: float, aid: str, action: Action, reason: str, dry: bool, planned: LedgerEntry) -> Step:
        return Step(entries=(planned, self._entry(now, aid, action, ActionState.REFUSED, reason, dry_run=dry)),
                    output=(self._out(now, action, ActionOutcome.REFUSED, reason, dry_run=dry),))

    def _verify_s(self, t: Tracked) -> float:
        return self.rules.rule(t.type).verify_s

    def _tracked(self, aid: str) -> Tracked:
        t = self.book.get(aid)
        if t is None:
            raise KeyError(f"unknown action {aid}")
        return t

    @staticmethod
    def _action(t: Tracked) -> Action:
        return Action(ts=t.planned_ts, incident_id=t.incident_id, type=t.type, target=t.target, dry_run=t.dry_run,
                      outcome=ActionOutcome.PLANNED, params=t.params)

    @staticmethod
    def _entry(now: float, aid: str, action: Action, state: ActionState, reason: str = "", *, dry_run: bool = False,
               params: tuple[tuple[str, str], ...] | None = None, by: str = "") -> LedgerEntry:
        return LedgerEntry(ts=now, action_id=aid, state=state, incident_id=action.incident_id, type=action.type,
                           target=action.target, reason=reason, dry_run=dry_run,
                           params=action.params if params is None else params, by=by)

    @staticmethod
    def _out(now: float, action: Action, outcome: ActionOutcome, reason: str, *, dry_run: bool,
             extra: tuple[tuple[str, str], ...] = ()) -> Action:
        params = tuple(sorted({**dict(action.params), **dict(extra)}.items()))
        return Action(ts=now, incident_id=action.incident_id, type=action.type, target=action.target,
                      dry_run=dry_run, outcome=outcome, reason=reason, params=params)

    @staticmethod
    def _escalate(now: float, t: Tracked, why: str) -> Alert:
        service = target_service(t.target)
        return Alert(
            ts=now, incident_id=t.incident_id, status=AlertStatus.FIRING,
            labels=(("alertname", "AiopsRemediationFailed"), ("action", t.type), ("service", service),
                    ("severity", "critical")),
            annotations=(("summary", f"{t.type} on {target_key(t.target)} failed; a human is needed"),
                         ("description", why), ("action_id", t.action_id)),
        )


def _recovered(incident: Incident) -> bool:
    if incident.status is IncidentStatus.RESOLVED:
        return True
    watched = [s for s in incident.signals if s.kind is not SignalKind.CHANGE]
    return bool(watched) and all(not s.active for s in watched)
