"""Property: whatever the order of decisions, results, clock ticks and restarts, the ledger never shows
an action executed twice, nor a cooldown, rate or concurrency limit broken."""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from aiops.act.core import ActionCore, ActResult
from aiops.act.ledger import ActionState, Ledger
from aiops.act.rules import parse_action_rules
from aiops.records import ActionOutcome

from .support import T0, incident, planned

RULES = """
defaults: {dry_run: false, cooldown_s: 300, max_per_target_per_hour: 3, verify_s: 200}
actions: {scale_up: {}, rollback: {preconditions: {}}}
limits: {global_per_hour: 5, max_concurrent: 2, max_targets_per_incident: 2, failure_backoff_s: 900}
"""
RULE_SET = parse_action_rules(RULES)

op = st.one_of(
    st.tuples(st.just("submit"), st.integers(0, 3), st.sampled_from("abc"), st.sampled_from(["scale_up", "rollback"])),
    st.tuples(st.just("finish"), st.integers(0, 5), st.sampled_from([ActionOutcome.DONE, ActionOutcome.FAILED])),
    st.tuples(st.just("tick")),
    st.tuples(st.just("restart")),
    st.tuples(st.just("wait"), st.integers(1, 900)),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(op, min_size=1, max_size=40))
def test_no_double_execution_and_limits_hold(ops: list[tuple]) -> None:  # type: ignore[type-arg]
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "ledger.jsonl"
        ledger = Ledger(path)
        core = ActionCore(RULE_SET, ledger.book, dry_run=False)
        now = T0
        pending: list[str] = []  # executions started and not yet finished (a crash may strand them)
        for o in ops:
            if o[0] == "submit":
                _, i, svc, kind = o
                inc = incident(f"inc-{i}", svc, deploy_ts=T0 - 60)
                step = core.submit(planned(kind, svc, iid=f"inc-{i}"), inc, now)
                ledger.append(step.entries)
                if step.execute is not None:
                    pending.append(step.execute.action_id)
            elif o[0] == "finish" and pending:
                aid = pending.pop(o[1] % len(pending))
                ledger.append(core.finish(aid, ActResult(o[2], "result"), now).entries)
            elif o[0] == "tick":
                for step in core.tick(now):
                    ledger.append(step.entries)
            elif o[0] == "restart":
                ledger.close()
                ledger = Ledger(path)
                core = ActionCore(RULE_SET, ledger.book, dry_run=False)
                pending = []  # the crashed process's executions are gone with it
                for step in core.recover(now):
                    ledger.append(step.entries)
            elif o[0] == "wait":
                now += o[1]
        ledger.close()
        check_ledger(path)


def check_ledger(path: Path) -> None:
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    executing = [x for x in lines if x["state"] == ActionState.EXECUTING.value]
    ids = [x["action_id"] for x in executing]
    assert len(ids) == len(set(ids)), "an action executed twice"
    rule, limits = RULE_SET.rule("scale_up"), RULE_SET.limits
    by_target: dict[str, list[float]] = defaultdict(list)
    in_flight: set[str] = set()
    for x in lines:
        if x["state"] == ActionState.EXECUTING.value:
            tk = ",".join(f"{k}={v}" for k, v in sorted(x["target"].items()))
            ts = x["ts"]
            before = by_target[tk]
            assert not before or ts - before[-1] >= rule.cooldown_s, "cooldown broken"
            assert sum(1 for t in before if t > ts - 3600) < rule.max_per_target_per_hour, "per-target rate broken"
            assert sum(1 for t in (t for v in by_target.values() for t in v) if t > ts - 3600) < \
                limits.global_per_hour, "global rate broken"
            assert len(in_flight) < limits.max_concurrent, "concurrency broken"
            before.append(ts)
            in_flight.add(x["action_id"])
        elif x["state"] in (ActionState.VERIFIED.value, ActionState.FAILED.value, ActionState.REFUSED.value):
            in_flight.discard(x["action_id"])
