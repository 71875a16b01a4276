"""Compare replay output with a scenario's ``expect`` (SCENARIO_FORMAT.md, ``--check``).

An expected incident is met when an incident opens within ``[fault_start - slack,
fault_start + detect_within]`` and, in its latest ranking published by that deadline,
the expected service is among the top 3 root causes. Quiet spans must see no incident
open. Actions of a matched incident must be exactly the expected types (when given);
an incident matched to no expectation must take no action.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiops.sources.scenario import Expect, ExpectedIncident

OPEN_SLACK_S = 60.0
"""An incident may open this long before the recorded fault start (step alignment, clock skew)."""


@dataclass
class Match:
    expected: ExpectedIncident
    incident_id: str | None = None
    opened_ts: float | None = None
    rank: int | None = None  # 1-based rank of the expected service, None if absent
    actions: list[str] = field(default_factory=list)

    @property
    def delay(self) -> float | None:
        return None if self.opened_ts is None else self.opened_ts - self.expected.fault_start


@dataclass
class CheckResult:
    matches: list[Match]
    problems: list[str]
    false_incidents: list[str]  # ids of incidents matched to no expectation

    @property
    def ok(self) -> bool:
        return not self.problems

    def report(self) -> str:
        lines = []
        for m in self.matches:
            e = m.expected
            if m.incident_id is None:
                lines.append(f"MISSED  root cause {e.service} (fault at {e.fault_start:.0f})")
            else:
                lines.append(
                    f"{'ok' if m.rank is not None and m.rank <= 3 else 'BAD':6}  {m.incident_id}: root cause "
                    f"{e.service} ranked {m.rank if m.rank is not None else '-'}, detected after "
                    f"{m.delay:.0f}s (allowed {e.detect_within:.0f}s), actions {sorted(m.actions) or 'none'}"
                )
        lines.extend(f"PROBLEM {p}" for p in self.problems)
        lines.append("check: " + ("passed" if self.ok else f"FAILED ({len(self.problems)} problems)"))
        return "\n".join(lines)


def _first_open(records: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    opens: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.get("kind") == "incident" and r.get("status") == "open" and r["id"] not in opens:
            opens[r["id"]] = r
    return opens


def _ranking_by(records: Sequence[dict[str, Any]], incident_id: str, deadline: float) -> list[str]:
    ranking: list[str] = []
    for r in records:
        if r.get("kind") == "incident" and r.get("id") == incident_id and r.get("status") != "resolved":
            if r["ts"] <= deadline or not ranking:
                ranking = [rc["service"] for rc in r.get("root_causes", [])]
    return ranking


def check(records: Sequence[dict[str, Any]], expect: Expect) -> CheckResult:
    """Compare decisions (replay output records) with the expectations."""
    opens = _first_open(records)
    actions: dict[str, list[str]] = {}
    for r in records:
        if r.get("kind") == "action" and r.get("outcome") in ("planned", "done"):
            actions.setdefault(r["incident_id"], []).append(r["type"])

    problems: list[str] = []
    matches: list[Match] = []
    used: set[str] = set()
    for exp in sorted(expect.incidents, key=lambda e: e.fault_start):
        m = Match(exp)
        matches.append(m)
        lo, hi = exp.fault_start - OPEN_SLACK_S, exp.fault_start + exp.detect_within
        candidates = [o for o in opens.values() if lo <= o["ts"] <= hi and o["id"] not in used]
        best: tuple[int, float, str] | None = None
        for o in candidates:
            ranking = _ranking_by(records, o["id"], hi)
            rank = ranking.index(exp.service) + 1 if exp.service in ranking else 99
            cand = (rank, o["ts"], o["id"])
            if best is None or cand < best:
                best = cand
        if best is None:
            late = [o for o in opens.values() if o["ts"] > hi and o["id"] not in used
                    and exp.service in o.get("services", [])]
            if late:
                problems.append(
                    f"incident for {exp.service} opened late: {late[0]['ts'] - exp.fault_start:.0f}s after the "
                    f"fault, allowed {exp.detect_within:.0f}s"
                )
            else:
                problems.append(f"missed: no incident opened for root cause {exp.service} "
                                f"within {exp.detect_within:.0f}s of {exp.fault_start:.0f}")
            continue
        rank, opened, inc_id = best
        used.add(inc_id)
        m.incident_id, m.opened_ts = inc_id, opened
        m.rank = rank if rank != 99 else None
        m.actions = actions.get(inc_id, [])
        if m.rank is None or m.rank > 3:
            ranking = _ranking_by(records, inc_id, hi)
            problems.append(f"{inc_id}: root cause {exp.service} not in the top 3 {ranking[:3]}")
        if exp.actions is not None and sorted(set(m.actions)) != sorted(set(exp.actions)):
            got, wanted = sorted(set(m.actions)) or "none", sorted(exp.actions) or "none"
            problems.append(f"{inc_id}: actions {got}, expected {wanted}")

    false_incidents = [i for i in opens if i not in used]
    for inc_id in false_incidents:
        if actions.get(inc_id):
            problems.append(f"{inc_id}: unexpected actions {sorted(set(actions[inc_id]))} on an unexpected incident")
    for start, end in expect.quiet:
        for o in opens.values():
            if start <= o["ts"] <= end:
                problems.append(f"{o['id']}: opened at {o['ts']:.0f} inside quiet span [{start:.0f}, {end:.0f}]")
    return CheckResult(matches=matches, problems=problems, false_incidents=false_incidents)
