"""Act tracking that survives a hand-over: every ledger entry of an action, journaled where the next owner reads it.

The action ledger is a file per instance. In scale-out mode the act stage runs on whichever
instance owns the correlator; when that owner dies, an action it was still tracking — awaiting
approval, or executed and awaiting verification — would be forgotten by the new owner, whose
ledger never saw it. :class:`ActJournal` keeps, per action, the list of its ledger entries as one
value under the action's hand-over key (the scale-out daemon stores it in the changelog next to
the hand-over marker, so the newest value per key is the action's whole history). The executor
calls the journal after each ledger write and *before* an actuator runs
(:attr:`~aiops.act.executor.Executor.journal`), so the journal is never behind the outside world.

A new owner :meth:`~ActJournal.load`\\ s the values and appends to its own ledger the entries its
book lacks (:meth:`~ActJournal.missing`). Its act stage then continues as if it had decided them:
an approval wait expires or runs once approved, a done action is verified or fails and escalates,
and an action left ``executing`` is failed as in doubt at its start (never run again) — the same
rules as a single daemon after a restart. Guards see the old owner's executions (cooldowns,
rate limits, failure backoff) because they are in the imported entries.

>>> from aiops.act.ledger import ActionBook, ActionState, LedgerEntry
>>> key = lambda iid, kind, target: f"acted/{iid}/{kind}"
>>> old = ActJournal(key)
>>> e1 = LedgerEntry(ts=10.0, action_id="act-1", state=ActionState.PLANNED, incident_id="inc-1", type="rollback",
...                  target=(("service", "api"),))
>>> e2 = LedgerEntry(ts=10.0, action_id="act-1", state=ActionState.AWAITING_APPROVAL, incident_id="inc-1",
...                  type="rollback", target=(("service", "api"),))
>>> stored = old.record([e1, e2])       # what the owner writes: {key: value}
>>> new = ActJournal(key)
>>> new.load(stored)
>>> [e.state.value for e in new.missing(ActionBook())]
['planned', 'awaiting_approval']
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import structlog

from aiops.act.ledger import ActionBook, LedgerEntry, Target
from aiops.records import ChangeEvent, Explanation, Incident, IncidentStatus, RootCause, Signal, SignalKind

log = structlog.get_logger(__name__)

KeyOf = Callable[[str, str, Target], str]
"""The hand-over key of an action from (incident id, type, target)."""


class ActJournal:
    """Ledger entries per action, as values to store under each action's key (see the module docstring)."""

    def __init__(self, key_of: KeyOf) -> None:
        self.key_of = key_of
        self._entries: dict[str, list[LedgerEntry]] = {}
        self._incidents: dict[str, Incident] = {}  # the newest context stored with an action, by incident id
        self.unreadable = 0  # stored entries that could not be parsed (counted, skipped)

    def value(self, key: str, incident_id: str, kind: str, target: Target,
              incident: Incident | None = None) -> dict[str, Any]:
        """The stored form of one action's journal (a hand-over marker with its entries and incident context)."""
        out: dict[str, Any] = {"incident_id": incident_id, "type": kind, "target": [list(x) for x in target],
                               "entries": [e.to_json() for e in self._entries.get(key, ())]}
        if incident is not None:
            out["incident"] = incident_out(incident)
        return out

    def record(self, entries: Iterable[LedgerEntry],
               context: Callable[[str], Incident | None] = lambda _: None) -> dict[str, dict[str, Any]]:
        """Take new ledger entries; return the value to store for every action they touch.

        ``context`` gives the newest snapshot of an incident (the act core's): an approved action
        needs it to run, and the next owner may not see the incident again before that.
        """
        touched: dict[str, LedgerEntry] = {}
        for e in entries:
            key = self.key_of(e.incident_id, e.type, e.target)
            self._entries.setdefault(key, []).append(e)
            touched[key] = e
        return {k: self.value(k, e.incident_id, e.type, e.target, context(e.incident_id))
                for k, e in touched.items()}

    def incidents(self) -> list[Incident]:
        """The incident context stored with the loaded actions (newest snapshot per incident)."""
        return list(self._incidents.values())

    def load(self, values: Mapping[str, Mapping[str, Any]]) -> None:
        """Replace what is known with stored values (a marker without entries is an action handed over,
        whose act stage had not written anything yet)."""
        self._entries = {}
        self._incidents = {}
        for key, value in values.items():
            if isinstance(value, Mapping) and value.get("incident") is not None:
                try:
                    inc = incident_in(value["incident"])
                    known = self._incidents.get(inc.id)
                    if known is None or inc.ts >= known.ts:
                        self._incidents[inc.id] = inc
                except (KeyError, TypeError, ValueError) as exc:
                    self.unreadable += 1
                    log.warning("act_journal_incident_unreadable", key=key, error=repr(exc))
            got: list[LedgerEntry] = []
            for line in value.get("entries", ()) if isinstance(value, Mapping) else ():
                try:
                    got.append(LedgerEntry.from_json(str(line)))
                except ValueError as exc:
                    self.unreadable += 1
                    log.warning("act_journal_entry_unreadable", key=key, error=str(exc))
            self._entries[key] = got

    def missing(self, book: ActionBook, since: float | None = None) -> list[LedgerEntry]:
        """Entries ``book`` does not hold yet, in order; actions last changed before ``since`` are left out
        (their history matters to no guard any more, and the book prunes them anyway).

        An action's states never repeat (the life of an action is acyclic), so an entry is missing
        when the book's history of its action has no entry of that state.
        """
        out: list[LedgerEntry] = []
        for entries in self._entries.values():
            if not entries or (since is not None and entries[-1].ts < since):
                continue
            t = book.get(entries[0].action_id)
            have = {state for _, state, _ in t.history} if t is not None else set()
            out.extend(e for e in entries if e.state not in have)
        return out

    def __len__(self) -> int:
        return len(self._entries)


def incident_out(inc: Incident) -> dict[str, Any]:
    """An incident as plain JSON data, every field kept (the replay output form drops some).

    >>> inc = Incident(id="inc-1", ts=5.0, status=IncidentStatus.OPEN, opened_ts=5.0, services=("api",),
    ...                root_causes=(RootCause("api", 0.9, metric="m"),), severity="critical",
    ...                signals=(Signal("api/m", 1.0, SignalKind.METRIC, "api", "m", 3.0, "up", ("e",)),),
    ...                changes=(ChangeEvent(0.5, "deploy", "api", (("version", "v2"),)),),
    ...                explain=Explanation(opened=("x",)))
    >>> incident_in(incident_out(inc)) == inc
    True
    """
    return {
        "id": inc.id, "ts": inc.ts, "status": inc.status.value, "opened_ts": inc.opened_ts,
        "services": list(inc.services), "severity": inc.severity,
        "root_causes": [[r.service, r.score, r.metric, r.template, list(r.evidence)] for r in inc.root_causes],
        "signals": [[s.id, s.ts, s.kind.value, s.service, s.name, s.score, s.direction, list(s.evidence), s.end_ts,
                     [list(x) for x in s.labels]] for s in inc.signals],
        "changes": [[c.ts, c.type, c.service, [list(x) for x in c.attrs]] for c in inc.changes],
        "explain": None if inc.explain is None else [list(inc.explain.opened), list(inc.explain.ranking),
                                                     list(inc.explain.left_out)],
    }


def incident_in(d: Mapping[str, Any]) -> Incident:
    """Undo :func:`incident_out`; raises ``KeyError``/``TypeError``/``ValueError`` for malformed data."""
    def pairs(xs: Any) -> tuple[tuple[str, str], ...]:
        return tuple((str(k), str(v)) for k, v in xs)

    def opt(x: Any) -> str | None:
        return None if x is None else str(x)

    ex = d["explain"]
    return Incident(
        id=str(d["id"]), ts=float(d["ts"]), status=IncidentStatus(d["status"]), opened_ts=float(d["opened_ts"]),
        services=tuple(str(s) for s in d["services"]), severity=str(d["severity"]),
        root_causes=tuple(RootCause(str(s), float(sc), opt(m), opt(t), tuple(str(e) for e in ev))
                          for s, sc, m, t, ev in d["root_causes"]),
        signals=tuple(Signal(str(i), float(ts), SignalKind(k), opt(svc), str(n), float(sc), str(dr),
                             tuple(str(e) for e in ev), None if end is None else float(end), pairs(lb))
                      for i, ts, k, svc, n, sc, dr, ev, end, lb in d["signals"]),
        changes=tuple(ChangeEvent(float(ts), str(t), opt(svc), pairs(at)) for ts, t, svc, at in d["changes"]),
        explain=None if ex is None else Explanation(tuple(map(str, ex[0])), tuple(map(str, ex[1])),
                                                    tuple(map(str, ex[2]))),
    )


__all__ = ["ActJournal", "KeyOf", "incident_in", "incident_out"]
