"""The action ledger: every state change of every action, written durably before anything is done.

An action is keyed by ``(incident id, action type, target)``; its id is a short hash of that
key, so the same decision made twice (a duplicate from the decide stage, or a replay after a
restart) lands on the same ledger entry and is never executed twice.

:class:`ActionBook` is the pure fold of ledger entries into the current state of each action
and the execution history the guards need (cooldowns, rate limits, concurrency).
:class:`Ledger` persists entries as append-only JSON lines, fsynced, under an ``flock`` so that
``aiops approve`` in another process can append an approval safely.

>>> book = ActionBook()
>>> aid = action_id("inc-1", "scale_up", (("service", "api"),))
>>> book.apply(LedgerEntry(ts=10.0, action_id=aid, state=ActionState.PLANNED, incident_id="inc-1",
...                        type="scale_up", target=(("service", "api"),)))
True
>>> book.apply(LedgerEntry(ts=11.0, action_id=aid, state=ActionState.EXECUTING, incident_id="inc-1",
...                        type="scale_up", target=(("service", "api"),)))
True
>>> book.get(aid).state, book.in_flight()
(<ActionState.EXECUTING: 'executing'>, 1)
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from aiops.observe.rejects import Rejects

if TYPE_CHECKING:
    from aiops.act.metrics import ActMetrics

log = structlog.get_logger(__name__)

Target = tuple[tuple[str, str], ...]


class ActionState(StrEnum):
    """The life of an action. Terminal states never change again."""

    PLANNED = "planned"
    DRY_RUN = "dry_run"  # guards passed, nothing done because dry run is on (terminal)
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    REFUSED = "refused"  # a guard refused it (terminal)
    EXPIRED = "expired"  # approval did not come in time (terminal)
    EXECUTING = "executing"  # written before the actuator is called
    DONE = "done"  # the actuator succeeded; verification pending
    VERIFIED = "verified"  # the incident's signals recovered in time (terminal)
    FAILED = "failed"  # actuator error, verification timeout, or in doubt after a crash (terminal)


TERMINAL = frozenset({ActionState.DRY_RUN, ActionState.REFUSED, ActionState.EXPIRED, ActionState.VERIFIED,
                      ActionState.FAILED})

# Which state may follow which; anything else in the file is ignored (e.g. an approval that
# arrives after the action expired).
_NEXT: dict[ActionState | None, frozenset[ActionState]] = {
    None: frozenset({ActionState.PLANNED}),
    ActionState.PLANNED: frozenset({ActionState.DRY_RUN, ActionState.AWAITING_APPROVAL, ActionState.REFUSED,
                                    ActionState.EXECUTING}),
    ActionState.AWAITING_APPROVAL: frozenset({ActionState.APPROVED, ActionState.EXPIRED, ActionState.REFUSED}),
    ActionState.APPROVED: frozenset({ActionState.EXECUTING, ActionState.REFUSED, ActionState.EXPIRED}),
    ActionState.EXECUTING: frozenset({ActionState.DONE, ActionState.FAILED, ActionState.REFUSED}),
    ActionState.DONE: frozenset({ActionState.VERIFIED, ActionState.FAILED}),
}


def action_id(incident_id: str, action_type: str, target: Target) -> str:
    """Stable id of an action: the same incident, type and target always give the same id.

    >>> action_id("inc-1", "rollback", (("service", "api"),)) == action_id("inc-1", "rollback", (("service", "api"),))
    True
    """
    key = json.dumps([incident_id, action_type, sorted(target)], separators=(",", ":"))
    return "act-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def target_key(target: Target) -> str:
    """Canonical text of a target, for per-target guards.

    >>> target_key((("service", "api"), ("namespace", "shop")))
    'namespace=shop,service=api'
    """
    return ",".join(f"{k}={v}" for k, v in sorted(target))


def target_service(target: Target) -> str:
    for k, v in target:
        if k == "service":
            return v
    return ""


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One state change of one action, as one JSON line."""

    ts: float
    action_id: str
    state: ActionState
    incident_id: str
    type: str
    target: Target
    reason: str = ""
    dry_run: bool = False
    params: tuple[tuple[str, str], ...] = ()
    by: str = ""  # who approved, for the audit trail

    def to_json(self) -> str:
        return json.dumps({
            "ts": self.ts, "action_id": self.action_id, "state": self.state.value, "incident_id": self.incident_id,
            "type": self.type, "target": dict(self.target), "reason": self.reason, "dry_run": self.dry_run,
            "params": dict(self.params), "by": self.by,
        }, separators=(",", ":"), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> LedgerEntry:
        """Parse one ledger line; raise ``ValueError`` if it is not a valid entry."""
        d: Any = json.loads(line)
        if not isinstance(d, dict):
            raise ValueError("not an object")
        try:
            return cls(
                ts=float(d["ts"]), action_id=str(d["action_id"]), state=ActionState(d["state"]),
                incident_id=str(d["incident_id"]), type=str(d["type"]),
                target=tuple(sorted((str(k), str(v)) for k, v in dict(d["target"]).items())),
                reason=str(d.get("reason", "")), dry_run=bool(d.get("dry_run", False)),
                params=tuple(sorted((str(k), str(v)) for k, v in dict(d.get("params") or {}).items())),
                by=str(d.get("by", "")),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"missing or bad field: {exc}") from None


@dataclass
class Tracked:
    """What the ledger knows about one action."""

    action_id: str
    incident_id: str
    type: str
    target: Target
    state: ActionState
    planned_ts: float
    last_ts: float
    dry_run: bool = False
    reason: str = ""
    params: tuple[tuple[str, str], ...] = ()
    executed_ts: float | None = None
    done_ts: float | None = None
    approved_by: str = ""
    history: list[tuple[float, ActionState, str]] = field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL


@dataclass
class ActionBook:
    """Pure fold of ledger entries: per-action state plus the execution history guards read."""

    actions: dict[str, Tracked] = field(default_factory=dict)
    executions: list[tuple[float, str, str]] = field(default_factory=list)  # (ts, target key, type)
    failures: dict[tuple[str, str], float] = field(default_factory=dict)  # (type, target key) -> ts
    ignored: int = 0
    _by_incident: dict[str, list[str]] = field(default_factory=dict)

    def get(self, aid: str) -> Tracked | None:
        return self.actions.get(aid)

    def apply(self, e: LedgerEntry) -> bool:
        """Apply one entry; return False (and count it) when it is not a legal transition."""
        t = self.actions.get(e.action_id)
        current = t.state if t is not None else None
        if e.state not in _NEXT.get(current, frozenset()):
            self.ignored += 1
            return False
        if t is None:
            t = self.actions[e.action_id] = Tracked(
                action_id=e.action_id, incident_id=e.incident_id, type=e.type, target=e.target,
                state=e.state, planned_ts=e.ts, last_ts=e.ts, params=e.params)
            self._by_incident.setdefault(e.incident_id, []).append(e.action_id)
        t.state, t.last_ts, t.reason = e.state, e.ts, e.reason
        t.dry_run = t.dry_run or e.dry_run
        t.history.append((e.ts, e.state, e.reason))
        if e.state is ActionState.EXECUTING:
            t.executed_ts = e.ts
            self.executions.append((e.ts, target_key(e.target), e.type))
        elif e.state is ActionState.DONE:
            t.done_ts = e.ts
            if e.params:
                t.params = e.params
        elif e.state is ActionState.APPROVED:
            t.approved_by = e.by
        elif e.state is ActionState.FAILED:
            key = (e.type, target_key(e.target))
            self.failures[key] = max(e.ts, self.failures.get(key, e.ts))
        return True

    def in_flight(self) -> int:
        """Actions executing or done but not yet verified: what 'concurrent' limits count."""
        return sum(1 for t in self.actions.values() if t.state in (ActionState.EXECUTING, ActionState.DONE))

    def for_incident(self, incident_id: str) -> Iterator[Tracked]:
        return (self.actions[a] for a in self._by_incident.get(incident_id, ()))

    def prune(self, before: float) -> int:
        """Forget finished actions last changed before ``before`` and older execution history.

        Bounds memory in a long-running daemon. The ledger file keeps everything (audit); a
        restart re-reads it, so choose ``before`` well past any cooldown, rate window or failure
        backoff, and past the age of any decision that could still be repeated.
        """
        old = [a for a, t in self.actions.items() if t.terminal and t.last_ts < before]
        for aid in old:
            t = self.actions.pop(aid)
            ids = self._by_incident.get(t.incident_id, [])
            ids.remove(aid)
            if not ids:
                self._by_incident.pop(t.incident_id, None)
        self.executions = [x for x in self.executions if x[0] >= before]
        self.failures = {k: ts for k, ts in self.failures.items() if ts >= before}
        return len(old)

    def with_state(self, *states: ActionState) -> list[Tracked]:
        return [t for t in self.actions.values() if t.state in states]


class Ledger:
    """Append-only JSON-lines ledger with fsync; the in-memory :class:`ActionBook` follows it.

    Several processes may append (the daemon, ``aiops approve``): each append holds an
    exclusive ``flock`` and first reads what others wrote, so the book sees every entry once.
    A torn last line (a crash mid-write) is counted as a reject and skipped.
    """

    def __init__(self, path: Path, rejects: Rejects | None = None, metrics: ActMetrics | None = None) -> None:
        self.path = path
        self._metrics = metrics
        self.book = ActionBook()
        self._rejects = rejects if rejects is not None else Rejects(log_examples=False)
        self._offset = 0
        self._line_no = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_APPEND: every write lands at the current end even with other writers.
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)
        self._loading = True  # history read at open is state, not news: not logged or counted again
        self.refresh()
        self._loading = False

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def refresh(self) -> list[LedgerEntry]:
        """Read entries other processes appended since the last read; return the applied ones."""
        fcntl.flock(self._fd, fcntl.LOCK_SH)
        try:
            return self._read_new()
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def append(self, entries: Iterable[LedgerEntry]) -> None:
        """Write entries durably (fsync) and then apply them to the book."""
        batch = list(entries)
        if not batch:
            return
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            self._read_new()
            size = os.fstat(self._fd).st_size
            prefix = b""
            if size > 0 and os.pread(self._fd, 1, size - 1) != b"\n":
                prefix = b"\n"  # terminate a torn line so ours stays parseable
            data = prefix + b"".join(e.to_json().encode() + b"\n" for e in batch)
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
            os.fsync(self._fd)
            self._offset = size + len(data)
            self._line_no += data.count(b"\n")
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        for e in batch:
            if self._applied(e):
                log.info("action_state", action_id=e.action_id, state=e.state.value, incident_id=e.incident_id,
                         type=e.type, target=target_key(e.target), reason=e.reason, dry_run=e.dry_run)
            else:
                log.warning("action_state_ignored", action_id=e.action_id, state=e.state.value)

    def _applied(self, e: LedgerEntry) -> bool:
        if not self.book.apply(e):
            return False
        if self._metrics is not None and not self._loading:
            self._metrics.observe(e, self.book)
        return True

    def _read_new(self) -> list[LedgerEntry]:
        size = os.fstat(self._fd).st_size
        if size <= self._offset:
            return []
        raw = os.pread(self._fd, size - self._offset, self._offset)
        end = raw.rfind(b"\n")
        if end < 0:
            return []  # a line still being written (or torn): read it when it is complete
        applied = []
        for line in raw[: end + 1].splitlines():
            self._line_no += 1
            if not line.strip():
                continue
            try:
                entry = LedgerEntry.from_json(line.decode("utf-8"))
            except (ValueError, UnicodeDecodeError) as exc:
                self._rejects.reject("act", "bad_ledger_line", where=f"{self.path}:{self._line_no}", detail=str(exc))
                continue
            if not self._applied(entry):
                continue
            applied.append(entry)
            if not self._loading:
                log.info("action_state", action_id=entry.action_id, state=entry.state.value,
                         incident_id=entry.incident_id, type=entry.type, reason=entry.reason, by=entry.by,
                         external=True)
        self._offset += end + 1
        return applied
