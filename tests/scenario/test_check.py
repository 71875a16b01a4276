"""``--check``: expected incidents found in time with the right root cause and actions; quiet stays quiet."""

from __future__ import annotations

from typing import Any

from aiops.scenario.check import check
from aiops.sources.scenario import Expect, ExpectedIncident

FAULT = 10_000.0


def incident(ts: float, inc_id: str, status: str, ranking: list[str]) -> dict[str, Any]:
    return {"kind": "incident", "ts": ts, "id": inc_id, "status": status,
            "root_causes": [{"service": s, "score": 1.0} for s in ranking], "services": ranking, "severity": "critical"}


def action(ts: float, inc_id: str, kind: str, outcome: str = "planned") -> dict[str, Any]:
    return {"kind": "action", "ts": ts, "incident_id": inc_id, "type": kind, "target": {"service": "x"},
            "dry_run": True, "outcome": outcome, "reason": ""}


def expect(actions: tuple[str, ...] | None = ("rollback",), quiet: tuple[tuple[float, float], ...] = ()) -> Expect:
    return Expect(incidents=(ExpectedIncident("checkout", FAULT, 300, actions=actions),), quiet=quiet)


def test_detected_in_time_with_root_cause_and_action_passes() -> None:
    records = [incident(FAULT + 90, "i1", "open", ["frontend", "checkout"]), action(FAULT + 90, "i1", "rollback")]
    result = check(records, expect())
    assert result.ok, result.report()
    assert result.matches[0].rank == 2 and result.matches[0].delay == 90


def test_missed_late_and_misranked_are_reported() -> None:
    assert "missed" in check([], expect()).report()
    late = check([incident(FAULT + 400, "i1", "open", ["checkout"])], expect())
    assert not late.ok and "late" in late.report()
    ranked = check([incident(FAULT + 30, "i1", "open", ["a", "b", "c", "checkout"])], expect(actions=None))
    assert not ranked.ok and "not in the top 3" in ranked.report()


def test_ranking_is_judged_as_of_the_deadline() -> None:
    records = [
        incident(FAULT + 30, "i1", "open", ["a", "b", "c"]),
        incident(FAULT + 120, "i1", "update", ["checkout", "a"]),  # improved before the deadline
        incident(FAULT + 900, "i1", "update", ["a", "b", "c"]),  # later changes do not count
    ]
    assert check(records, expect(actions=None)).ok


def test_wrong_missing_or_unexpected_actions_fail() -> None:
    base = [incident(FAULT + 30, "i1", "open", ["checkout"])]
    assert not check([*base, action(FAULT + 30, "i1", "scale_up")], expect()).ok
    assert not check(base, expect()).ok
    assert check([*base, action(FAULT + 30, "i1", "scale_up", outcome="refused")], expect(actions=())).ok
    stray = [*base, incident(500, "i0", "open", ["db"]), action(500, "i0", "rollback")]
    assert "unexpected actions" in check(stray, expect(actions=None)).report()


def test_incident_in_quiet_span_fails() -> None:
    records = [incident(5_000, "i0", "open", ["db"]), incident(FAULT + 30, "i1", "open", ["checkout"])]
    result = check(records, expect(actions=None, quiet=((1_000, FAULT - 60),)))
    assert not result.ok and "quiet span" in result.report()
    assert result.false_incidents == ["i0"]
