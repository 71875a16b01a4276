"""Act tracking handed from one owner to the next: two real executors with ledgers of their own.

The first owner's executor journals every ledger entry (as the scale-out daemon does into the
changelog; here a dict keyed like it, newest value per key, as compaction keeps it). It "dies";
the second owner loads the journal, appends what its own ledger lacks, and its act stage carries
on: the approval wait expires or runs on approval, the executed action is verified or fails and
escalates, an action left executing is failed as in doubt. Nothing runs twice.
"""

from __future__ import annotations

from pathlib import Path

from aiops.act.core import ActionCore, ActResult, Execution
from aiops.act.executor import Executor
from aiops.act.handover import ActJournal
from aiops.act.ledger import ActionState, LedgerEntry, Target, action_id
from aiops.act.rules import parse_action_rules
from aiops.records import ActionOutcome, Alert, AlertStatus, IncidentStatus

from .support import T0, incident, planned, signal


def _key(incident_id: str, kind: str, target: Target) -> str:
    return f"g/acted/{incident_id}/{kind}/{sorted(target)}"


class _Actuator:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, ex: Execution) -> ActResult:
        self.calls.append(ex.action_id)
        return ActResult(ActionOutcome.DONE, "scaled 2->3")


class _Owner:
    """One correlator owner's act stage: its own ledger file, journaling into the shared store."""

    def __init__(self, tmp: Path, name: str, rules: str, store: dict[str, dict]) -> None:
        from aiops.act.ledger import Ledger

        self.ledger = Ledger(tmp / f"{name}.jsonl")
        self.core = ActionCore(parse_action_rules(rules), self.ledger.book, dry_run=False)
        self.actuator = _Actuator()
        self.executor = Executor(self.core, self.ledger, {"scale_up": self.actuator})
        self.journal = ActJournal(_key)
        self.store = store

        async def journal(entries: list[LedgerEntry]) -> None:
            self.store.update(self.journal.record(entries, self.core.incident))

        self.executor.journal = journal  # type: ignore[assignment]

    def take_over(self) -> int:
        """What a new owner does on acquiring the correlator: import the journal into its own ledger."""
        self.journal.load(self.store)
        missing = self.journal.missing(self.ledger.book)
        self.ledger.append(missing)
        for inc in self.journal.incidents():
            self.core.remember(inc)
        return len(missing)


VERIFY = """
actions:
  scale_up: {dry_run: false, cooldown_s: 0, verify_s: 600}
"""
APPROVAL = """
actions:
  scale_up: {dry_run: false, cooldown_s: 0, approval: true, approval_ttl_s: 600}
"""


async def test_verification_continues_on_the_new_owner_and_escalates(tmp_path: Path) -> None:
    store: dict[str, dict] = {}
    old = _Owner(tmp_path, "old", VERIFY, store)
    inc = incident()
    out = await old.executor.on_incident(inc, [planned()], T0)
    assert [a.outcome for a in out if not isinstance(a, Alert)] == [ActionOutcome.DONE]
    aid = action_id("inc-1", "scale_up", (("service", "checkout"),))
    assert old.ledger.book.get(aid).state is ActionState.DONE  # type: ignore[union-attr]
    # The old owner dies here, before verification. Its journal is all that is left of its tracking.
    new = _Owner(tmp_path, "new", VERIFY, store)
    assert new.take_over() == 3  # planned, executing, done
    t = new.ledger.book.get(aid)
    assert t is not None and t.state is ActionState.DONE and t.done_ts == T0
    assert new.ledger.book.in_flight() == 1  # the concurrency guard counts it on the new owner too
    # The same decision replayed on the new owner is a duplicate, never a second execution.
    assert await new.executor.on_incident(inc, [planned()], T0 + 15) == []
    assert await new.executor.tick(T0 + 300) == []
    out = await new.executor.tick(T0 + 615)
    (failed,) = [a for a in out if not isinstance(a, Alert)]
    (escalation,) = [a for a in out if isinstance(a, Alert)]
    assert failed.outcome is ActionOutcome.FAILED and "verification failed" in failed.reason
    # The signals the old owner last saw come with the action: the escalation names them.
    assert "still active" in failed.reason
    assert escalation.status is AlertStatus.FIRING and dict(escalation.annotations)["action_id"] == aid
    assert old.actuator.calls == [aid] and new.actuator.calls == []
    # The failure is journaled in turn: a third owner would not escalate it again.
    third = _Owner(tmp_path, "third", VERIFY, store)
    assert third.take_over() == 4
    assert await third.executor.tick(T0 + 700) == []
    assert third.core.escalations() == [escalation]


async def test_recovered_signals_verify_it_on_the_new_owner(tmp_path: Path) -> None:
    store: dict[str, dict] = {}
    old = _Owner(tmp_path, "old", VERIFY, store)
    await old.executor.on_incident(incident(), [planned()], T0)
    new = _Owner(tmp_path, "new", VERIFY, store)
    new.take_over()
    calm = incident(ts=T0 + 120, status=IncidentStatus.UPDATE,
                    signals=(signal("checkout", end_ts=T0 + 100), signal("frontend", end_ts=T0 + 90)))
    assert await new.executor.on_incident(calm, [], T0 + 120) == []
    aid = action_id("inc-1", "scale_up", (("service", "checkout"),))
    assert new.ledger.book.get(aid).state is ActionState.VERIFIED  # type: ignore[union-attr]
    assert await new.executor.tick(T0 + 900) == []


async def test_an_approval_wait_continues_on_the_new_owner(tmp_path: Path) -> None:
    store: dict[str, dict] = {}
    old = _Owner(tmp_path, "old", APPROVAL, store)
    out = await old.executor.on_incident(incident(), [planned()], T0)
    aid = action_id("inc-1", "scale_up", (("service", "checkout"),))
    assert [dict(a.params).get("action_id") for a in out] == [aid]  # "awaiting approval: aiops approve ..."
    new = _Owner(tmp_path, "new", APPROVAL, store)
    new.take_over()
    assert new.ledger.book.get(aid).state is ActionState.AWAITING_APPROVAL  # type: ignore[union-attr]
    # Approved on the new owner (HTTP or `aiops approve` against its ledger): it runs there, once,
    # with the incident context that came with the journal.
    assert await new.executor.approve(aid, "alice", T0 + 60)
    out = await new.executor.tick(T0 + 75)
    assert [a.outcome for a in out] == [ActionOutcome.DONE]
    assert new.actuator.calls == [aid] and old.actuator.calls == []
    assert store[_key("inc-1", "scale_up", (("service", "checkout"),))]["entries"][-1].find('"done"') > 0


async def test_an_unapproved_action_expires_on_the_new_owner(tmp_path: Path) -> None:
    store: dict[str, dict] = {}
    old = _Owner(tmp_path, "old", APPROVAL, store)
    await old.executor.on_incident(incident(), [planned()], T0)
    new = _Owner(tmp_path, "new", APPROVAL, store)
    new.take_over()
    out = await new.executor.tick(T0 + 601)
    assert [(a.outcome, a.reason.split(":")[0]) for a in out] == [(ActionOutcome.REFUSED, "expired")]


async def test_an_action_left_executing_is_in_doubt_on_the_new_owner(tmp_path: Path) -> None:
    store: dict[str, dict] = {}
    old = _Owner(tmp_path, "old", VERIFY, store)

    async def dies(ex: Execution) -> ActResult:  # the owner is killed while the actuator runs
        raise SystemExit

    old.executor.actuators["scale_up"] = dies
    try:
        await old.executor.on_incident(incident(), [planned()], T0)
    except SystemExit:
        pass
    new = _Owner(tmp_path, "new", VERIFY, store)
    new.take_over()
    out = await new.executor.start(T0 + 30)
    assert [(getattr(a, "outcome", None), type(a).__name__) for a in out] == [(ActionOutcome.FAILED, "Action"),
                                                                                (None, "Alert")]
    assert new.actuator.calls == []  # never run again: it may have run


def test_a_damaged_journal_value_is_counted_and_skipped(tmp_path: Path) -> None:
    journal = ActJournal(_key)
    journal.load({"g/acted/x": {"entries": ["{not json", '{"ts": 1}']}, "g/acted/y": {"incident": {"id": 3}}})
    assert journal.unreadable == 3 and journal.missing(_Owner(tmp_path, "o", VERIFY, {}).ledger.book) == []


async def test_an_action_is_not_run_when_its_journal_cannot_be_written(tmp_path: Path) -> None:
    """A next owner that does not know an action ran might run it again: without the journal, it does not run."""
    from aiops.act.executor import JournalError

    owner = _Owner(tmp_path, "o", VERIFY, {})

    async def broken(entries: list[LedgerEntry]) -> None:
        raise JournalError("broker unavailable")

    owner.executor.journal = broken  # type: ignore[assignment]
    out = await owner.executor.on_incident(incident(), [planned()], T0)
    assert owner.actuator.calls == []
    (failed,) = [a for a in out if not isinstance(a, Alert)]
    assert failed.outcome is ActionOutcome.FAILED and "hand-over journal is unavailable" in failed.reason
    assert [dict(a.labels)["alertname"] for a in out if isinstance(a, Alert)] == ["AiopsRemediationFailed"]
