"""The ledger is durable, append-only, shared safely with `aiops approve`, and survives a torn line."""

from __future__ import annotations

from pathlib import Path

from aiops.act.ledger import ActionState, Ledger, LedgerEntry, action_id
from aiops.observe.rejects import Rejects

TARGET = (("service", "api"),)


def entry(state: ActionState, ts: float = 1.0, aid: str | None = None, **kw: object) -> LedgerEntry:
    return LedgerEntry(ts=ts, action_id=aid or action_id("inc", "scale_up", TARGET), state=state, incident_id="inc",
                       type="scale_up", target=TARGET, **kw)  # type: ignore[arg-type]


def test_entries_round_trip_and_reload(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    with Ledger(path) as led:
        led.append([entry(ActionState.PLANNED), entry(ActionState.EXECUTING, 2.0)])
        led.append([entry(ActionState.DONE, 3.0, params=(("replicas", "3"),))])
    assert len(path.read_text().splitlines()) == 3
    with Ledger(path) as again:
        t = again.book.get(action_id("inc", "scale_up", TARGET))
        assert t is not None and t.state is ActionState.DONE and t.params == (("replicas", "3"),)
        assert [s for _, s, _ in t.history] == [ActionState.PLANNED, ActionState.EXECUTING, ActionState.DONE]
        assert again.book.executions == [(2.0, "service=api", "scale_up")]


def test_illegal_transitions_are_ignored(tmp_path: Path) -> None:
    with Ledger(tmp_path / "l.jsonl") as led:
        led.append([entry(ActionState.PLANNED), entry(ActionState.REFUSED, reason="cooldown: x")])
        led.append([entry(ActionState.EXECUTING, 2.0)])  # refused is terminal
        assert led.book.get(action_id("inc", "scale_up", TARGET)).state is ActionState.REFUSED
        assert led.book.ignored == 1 and led.book.executions == []


def test_torn_last_line_is_counted_and_later_appends_stay_readable(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    with Ledger(path) as led:
        led.append([entry(ActionState.PLANNED)])
    with path.open("a") as f:
        f.write('{"ts": 2.0, "action_id": "act-')  # killed mid-write
    rejects = Rejects(log_examples=False)
    with Ledger(path, rejects) as led:
        led.append([entry(ActionState.EXECUTING, 3.0)])
    with Ledger(path, rejects) as led:
        assert led.book.get(action_id("inc", "scale_up", TARGET)).state is ActionState.EXECUTING
    assert rejects.by_reason() == {("act", "bad_ledger_line"): 1}


def test_a_second_writer_is_seen_by_refresh_and_before_appending(tmp_path: Path) -> None:
    path = tmp_path / "l.jsonl"
    aid = action_id("inc", "scale_up", TARGET)
    with Ledger(path) as daemon, Ledger(path) as cli:
        daemon.append([entry(ActionState.PLANNED), entry(ActionState.AWAITING_APPROVAL)])
        cli.refresh()
        assert cli.book.get(aid).state is ActionState.AWAITING_APPROVAL
        cli.append([entry(ActionState.APPROVED, 5.0, by="alice")])
        (seen,) = daemon.refresh()
        assert seen.state is ActionState.APPROVED and daemon.book.get(aid).approved_by == "alice"
        daemon.append([entry(ActionState.EXECUTING, 6.0)])
        cli.refresh()
        assert cli.book.get(aid).state is ActionState.EXECUTING
    assert len(path.read_text().splitlines()) == 4


def test_prune_forgets_old_finished_actions_only() -> None:
    from aiops.act.ledger import ActionBook

    book = ActionBook()
    old = action_id("inc", "scale_up", TARGET)
    live = action_id("inc2", "scale_up", TARGET)
    for state, ts in ((ActionState.PLANNED, 1.0), (ActionState.EXECUTING, 2.0), (ActionState.DONE, 3.0),
                      (ActionState.VERIFIED, 4.0)):
        book.apply(entry(state, ts))
    for state, ts in ((ActionState.PLANNED, 5.0), (ActionState.EXECUTING, 6.0)):
        book.apply(LedgerEntry(ts=ts, action_id=live, state=state, incident_id="inc2", type="scale_up",
                               target=TARGET))
    assert book.prune(before=5.0) == 1
    assert book.get(old) is None and list(book.for_incident("inc")) == []
    assert [t.action_id for t in book.for_incident("inc2")] == [live]
    assert book.executions == [(6.0, "service=api", "scale_up")]
