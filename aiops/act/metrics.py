"""Prometheus metrics of the act stage; the registry is passed in.

>>> from prometheus_client import CollectorRegistry
>>> from aiops.act.ledger import ActionState, LedgerEntry
>>> reg = CollectorRegistry()
>>> m = ActMetrics(reg)
>>> m.observe(LedgerEntry(ts=0.0, action_id="a", state=ActionState.REFUSED, incident_id="i", type="rollback",
...                       target=(("service", "api"),), reason="cooldown: api was acted on 5s ago"))
>>> reg.get_sample_value("aiops_action_refusals_total", {"type": "rollback", "guard": "cooldown"})
1.0
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from aiops.act.ledger import ActionBook, ActionState, LedgerEntry


class ActMetrics:
    """``aiops_action_state_changes_total{type,state}``, refusals by guard, actions in flight."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.transitions = Counter("aiops_action_state_changes", "Action state changes written to the ledger",
                                   ["type", "state"], registry=registry)
        self.refusals = Counter("aiops_action_refusals", "Actions refused, by the guard that refused them",
                                ["type", "guard"], registry=registry)
        self.in_flight = Gauge("aiops_actions_in_flight", "Actions executing or awaiting verification",
                               registry=registry)

    def observe(self, entry: LedgerEntry, book: ActionBook | None = None) -> None:
        self.transitions.labels(entry.type, entry.state.value).inc()
        if entry.state in (ActionState.REFUSED, ActionState.EXPIRED):
            guard = entry.reason.split(":", 1)[0].strip() or "unknown"
            self.refusals.labels(entry.type, guard).inc()
        if book is not None:
            self.in_flight.set(book.in_flight())
