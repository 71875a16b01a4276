"""``aiops explain``: why an incident opened, why each cause ranked where it did, what was left out.

The correlator writes an ``explain`` payload into every incident record (replay output) and
keeps it in its snapshot (state file), so the answer comes from what the daemon decided at
the time, not from a re-run with today's code.

>>> recs = [{"kind": "incident", "id": "inc-1", "ts": 60.0, "status": "open", "opened_ts": 60.0,
...          "services": ["db"], "severity": "warning",
...          "root_causes": [{"service": "db", "score": 0.9, "evidence": ["first anomalous service"]}],
...          "explain": {"opened": ["2 anomalous series in db"], "ranking": ["#1 db score 0.900"],
...                      "left_out": []}}]
>>> print(explain_records(recs, "inc-1").splitlines()[0])
incident inc-1: open at 1970-01-01T00:01:00Z, severity warning, services db
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


class ExplainError(LookupError):
    """The incident is not in the given output or state."""


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Records of a replay output file; unreadable lines are skipped (it is a report, not input)."""
    out = []
    with path.open(encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                out.append(rec)
    return out


def explain_records(records: Sequence[Mapping[str, Any]], incident_id: str) -> str:
    """Explain an incident from replay output records (its latest record, plus its history)."""
    history = [r for r in records if r.get("kind") == "incident" and r.get("id") == incident_id]
    if not history:
        known = sorted({str(r.get("id")) for r in records if r.get("kind") == "incident"})
        raise ExplainError(f"no incident {incident_id!r} (known: {', '.join(known[:20]) or 'none'})")
    last = history[-1]
    lines = [f"incident {incident_id}: {last.get('status')} at {_iso(float(last['ts']))}, severity "
             f"{last.get('severity')}, services {', '.join(last.get('services', []))}"]
    lines.append("history: " + "; ".join(
        f"{r.get('status')} {_iso(float(r['ts']))} top {', '.join(c['service'] for c in r.get('root_causes', [])[:3])}"
        for r in history))
    ex = last.get("explain") or {}
    lines += _section("why it opened", ex.get("opened", []))
    lines.append("root causes, best first:")
    for i, rc in enumerate(last.get("root_causes", []), 1):
        what = rc.get("metric") or rc.get("template") or ""
        lines.append(f"  {i}. {rc['service']} (score {rc.get('score')}){' ' + what if what else ''}")
        lines.extend(f"       - {e}" for e in rc.get("evidence", []))
    lines += _section("how the scores were made", ex.get("ranking", []))
    lines += _section("signals left out", ex.get("left_out", []) or ["none"])
    related = [r for r in records if r.get("incident_id") == incident_id and r.get("kind") in ("alert", "action")]
    if related:
        lines.append("decisions:")
        for r in related:
            if r["kind"] == "alert":
                lines.append(f"  alert {r.get('status')} at {_iso(float(r['ts']))}")
            else:
                lines.append(f"  action {r.get('type')} {r.get('outcome')} on {r.get('target')}: {r.get('reason')}")
    return "\n".join(lines)


def _section(title: str, items: Iterable[str]) -> list[str]:
    items = list(items)
    return [f"{title}:"] + [f"  - {x}" for x in items] if items else [f"{title}: (not recorded)"]


def explain_state(state: Mapping[str, Any], incident_id: str) -> str:
    """Explain an incident from a state file: a correlator snapshot, alone or under ``correlator``."""
    snap = _find_correlator(state)
    if snap is None:
        raise ExplainError("the state holds no correlator snapshot")
    for inc in snap["incidents"]:
        if inc.get("id") == incident_id:
            status = "resolved" if inc.get("resolved_ts") is not None else "open"
            lines = [f"incident {incident_id}: {status}, opened {_iso(float(inc['opened_ts']))}"]
            lines += _section("why it opened", inc.get("opened_why", []))
            lines += _section("how the scores were made", inc.get("ranking_lines", []))
            lines += _section("signals left out", inc.get("left_out", []) or ["none"])
            return "\n".join(lines)
    known = [str(i.get("id")) for i in snap["incidents"]]
    raise ExplainError(f"no incident {incident_id!r} in the state (known: {', '.join(known[:20]) or 'none'})")


def _find_correlator(state: Any, depth: int = 0) -> Mapping[str, Any] | None:
    """The correlator snapshot inside a pipeline state: under ``correlator`` or wherever it nests."""
    if not isinstance(state, Mapping) or depth > 3:
        return None
    if isinstance(state.get("incidents"), list) and "topology" in state:
        return state
    if "correlator" in state:
        found = _find_correlator(state["correlator"], depth + 1)
        if found is not None:
            return found
    for value in state.values():
        found = _find_correlator(value, depth + 1)
        if found is not None:
            return found
    return None


def _read_state(path: Path) -> Any:
    """A checkpoint file (``aiops-checkpoint/N`` envelope) or a plain JSON snapshot."""
    data = path.read_bytes()
    if data.startswith(b"aiops-checkpoint/"):
        from aiops.state.envelope import CheckpointError, decode

        try:
            return decode(data).state
        except CheckpointError as exc:
            raise ExplainError(f"{path}: {exc}") from None
    try:
        return json.loads(data)
    except ValueError as exc:
        raise ExplainError(f"{path}: neither a checkpoint nor JSON: {exc}") from None


def explain_file(incident_id: str, replay_out: Path | None = None, state: Path | None = None) -> str:
    """The CLI's entry: explain from a replay output file or a state file."""
    if replay_out is not None:
        return explain_records(read_jsonl(replay_out), incident_id)
    if state is not None:
        return explain_state(_read_state(state), incident_id)
    raise ExplainError("give --replay-out FILE or --state FILE")
