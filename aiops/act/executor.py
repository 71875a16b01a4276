"""The async shell of the act stage: writes the core's ledger entries, then calls actuators.

Order is the whole point: entries are fsynced *before* an actuator runs, so a crash leaves an
``executing`` entry that a restarted daemon fails as "in doubt" (:meth:`ActionCore.recover`)
instead of running the action again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

import structlog

from aiops.act.core import ActionCore, ActResult, Execution, Step
from aiops.act.ledger import Ledger, LedgerEntry
from aiops.records import Action, ActionOutcome, Alert, Incident

log = structlog.get_logger(__name__)

Actuator = Callable[[Execution], Awaitable[ActResult]]
"""Carries out one action; reports done / refused / failed. Must not raise for expected failures."""

Journal = Callable[[Sequence[LedgerEntry]], Awaitable[None]]
"""Copies ledger entries elsewhere (scale-out: the changelog, for the next correlator owner).

Raises :class:`JournalError` when the copy could not be made."""


class JournalError(Exception):
    """The journal could not take the entries: an action they would start must not run."""


class Executor:
    """Planned actions in, ``Action`` outcomes (and escalation ``Alert`` records) out."""

    def __init__(self, core: ActionCore, ledger: Ledger, actuators: Mapping[str, Actuator]) -> None:
        if core.book is not ledger.book:
            raise ValueError("the core must decide on the ledger's own book")
        self.core = core
        self.ledger = ledger
        self.actuators = dict(actuators)
        # Awaited after every ledger write (and with entries other processes appended), before any
        # actuator call: whoever reads the journal is never behind what was done.
        self.journal: Journal | None = None

    async def start(self, now: float) -> list[Action | Alert]:
        """Call once after (re)start: actions left executing by a crash are failed, not repeated."""
        return await self._run_all(self.core.recover(now))

    async def on_incident(self, incident: Incident, planned: Sequence[Action], now: float) -> list[Action | Alert]:
        """Handle one incident record and the actions the decide stage planned for it."""
        out = await self._run(self.core.observe(incident, now))
        for action in planned:
            if action.outcome is ActionOutcome.PLANNED and action.incident_id == incident.id:
                out += await self._run(self.core.submit(action, incident, now))
        return out

    async def tick(self, now: float) -> list[Action | Alert]:
        """Pick up approvals written by other processes, then advance the core's clock."""
        await self._journal_or_warn(self.ledger.refresh())
        return await self._run_all(self.core.tick(now))

    async def approve(self, aid: str, by: str, now: float) -> bool:
        """An approval through the daemon (authenticated HTTP); runs on the next tick."""
        await self._journal_or_warn(self.ledger.refresh())
        step = self.core.approve(aid, by, now)
        self.ledger.append(step.entries)
        # If this is lost, the approval still stands here; a next owner would let the action expire.
        await self._journal_or_warn(step.entries)
        return bool(step.entries)

    async def _journal(self, entries: Sequence[LedgerEntry]) -> None:
        if entries and self.journal is not None:
            await self.journal(entries)

    async def _journal_or_warn(self, entries: Sequence[LedgerEntry]) -> None:
        try:
            await self._journal(entries)
        except JournalError as exc:
            log.warning("act_journal_behind", entries=len(entries), error=str(exc))

    async def _run_all(self, steps: Sequence[Step]) -> list[Action | Alert]:
        out: list[Action | Alert] = []
        for step in steps:
            out += await self._run(step)
        return out

    async def _run(self, step: Step) -> list[Action | Alert]:
        self.ledger.append(step.entries)  # durable before anything below happens
        journaled: JournalError | None = None
        try:
            await self._journal(step.entries)
        except JournalError as exc:
            journaled = exc
        out: list[Action | Alert] = list(step.output)
        ex = step.execute
        if ex is None:
            return out
        actuator = self.actuators.get(ex.action.type)
        if journaled is not None:
            # Whoever takes over next would not know it ran, and might run it again: fail it, loudly.
            result = ActResult(ActionOutcome.FAILED,
                               f"not executed: the hand-over journal is unavailable ({journaled})")
        elif actuator is None:
            result = ActResult(ActionOutcome.FAILED, f"unsupported: no actuator configured for {ex.action.type}")
        else:
            try:
                result = await actuator(ex)
            except Exception as exc:  # an actuator bug must still end in a ledger state, not a stuck action
                log.exception("actuator_error", action_id=ex.action_id, type=ex.action.type)
                result = ActResult(ActionOutcome.FAILED, f"actuator error: {type(exc).__name__}: {exc}")
        # The result's time is the time the action was decided at: event time, not the wall clock.
        finish = self.core.finish(ex.action_id, result, self.core.book.get(ex.action_id).last_ts)  # type: ignore[union-attr]
        self.ledger.append(finish.entries)
        # If this is lost, a next owner sees the action executing and fails it as in doubt: safe.
        await self._journal_or_warn(finish.entries)
        return out + list(finish.output)
