"""Shared builders for the act tests: incidents as the correlator would produce them."""

from __future__ import annotations

from aiops.act.core import ActionCore, Step
from aiops.act.ledger import Ledger
from aiops.records import (
    Action,
    ActionOutcome,
    ChangeEvent,
    Incident,
    IncidentStatus,
    RootCause,
    Signal,
    SignalKind,
)

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z, a Thursday


def signal(service: str, name: str = "http_request_duration_seconds:p99", kind: SignalKind = SignalKind.METRIC,
           ts: float = T0, end_ts: float | None = None) -> Signal:
    return Signal(id=f"{service}/{name}", ts=ts, kind=kind, service=service, name=name, score=0.9,
                  direction="up", end_ts=end_ts)


def incident(iid: str = "inc-1", service: str = "checkout", ts: float = T0, *, severity: str = "critical",
             deploy_ts: float | None = None, signals: tuple[Signal, ...] | None = None,
             status: IncidentStatus = IncidentStatus.OPEN, top: str | None = None) -> Incident:
    changes = () if deploy_ts is None else (
        ChangeEvent(ts=deploy_ts, type="deploy", service=service, attrs=(("version", "v2"),)),)
    return Incident(
        id=iid, ts=ts, status=status, opened_ts=T0, services=(service, "frontend"),
        root_causes=(RootCause(service=top or service, score=0.8), RootCause(service="frontend", score=0.2)),
        severity=severity,
        signals=signals if signals is not None else (signal(service), signal("frontend")),
        changes=changes,
    )


def planned(kind: str = "scale_up", service: str = "checkout", iid: str = "inc-1", ts: float = T0) -> Action:
    return Action(ts=ts, incident_id=iid, type=kind, target=(("service", service),), dry_run=True,
                  outcome=ActionOutcome.PLANNED)


def apply(ledger: Ledger, step: Step) -> Step:
    """What the executor shell does with a step: write its entries durably first."""
    ledger.append(step.entries)
    return step


def submit(core: ActionCore, ledger: Ledger, action: Action, inc: Incident, now: float) -> Step:
    return apply(ledger, core.submit(action, inc, now))
