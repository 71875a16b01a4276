"""Every guard refuses when it should, with its reason in the output; and lets a good action through."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from aiops.act.core import ActionCore, ActResult
from aiops.act.ledger import ActionState, Ledger
from aiops.act.metrics import ActMetrics
from aiops.act.rules import parse_action_rules
from aiops.records import ActionOutcome, Alert, IncidentStatus, SignalKind

from .support import T0, apply, incident, planned, signal, submit

LIVE = """
defaults: {dry_run: false, cooldown_s: 0, max_per_target_per_hour: 100}
actions:
  scale_up: {}
  rollback: {}
  retrain: {}
limits: {global_per_hour: 100, max_concurrent: 100, max_targets_per_incident: 100}
"""


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.jsonl")


def core_for(ledger: Ledger, yaml_text: str = LIVE, dry_run: bool = False) -> ActionCore:
    return ActionCore(parse_action_rules(yaml_text, "actions.yaml"), ledger.book, dry_run=dry_run)


def refused(step) -> str:  # type: ignore[no-untyped-def]
    assert step.execute is None, "a refused action must not execute"
    (out,) = [o for o in step.output if not isinstance(o, Alert)]
    assert out.outcome is ActionOutcome.REFUSED, out
    return out.reason


def test_live_action_passes_and_plans_execution(ledger: Ledger) -> None:
    core = core_for(ledger)
    step = submit(core, ledger, planned(), incident(), T0)
    assert step.execute is not None and step.output == ()
    assert [e.state for e in step.entries] == [ActionState.PLANNED, ActionState.EXECUTING]


def test_global_dry_run_is_the_default_and_refuses_to_act(ledger: Ledger) -> None:
    core = ActionCore(parse_action_rules(LIVE), ledger.book)  # dry_run defaults to True
    step = submit(core, ledger, replace(planned(), reason="saturation of checkout"), incident(), T0)
    assert step.execute is None
    (out,) = step.output
    assert out.outcome is ActionOutcome.PLANNED and out.dry_run
    assert out.reason == "dry run: guards passed; saturation of checkout"  # the decision's own reason is kept


def test_per_rule_dry_run_holds_even_when_global_is_off(ledger: Ledger) -> None:
    rules = parse_action_rules("actions:\n  scale_up: {cooldown_s: 0}\n")  # no dry_run key: per-rule default
    core = ActionCore(rules, ledger.book, dry_run=False)
    step = submit(core, ledger, planned(), incident(), T0)
    assert step.execute is None and step.output[0].dry_run and "dry run" in step.output[0].reason


def test_dry_run_still_reports_guard_refusals(ledger: Ledger) -> None:
    core = ActionCore(parse_action_rules(LIVE), ledger.book, dry_run=True)
    step = submit(core, ledger, planned("rollback"), incident(), T0)  # no deploy preceded it
    assert "precondition: no deploy of checkout" in refused(step)
    assert step.output[0].dry_run


def test_rollback_needs_a_preceding_deploy_of_the_top_root_cause(ledger: Ledger) -> None:
    core = core_for(ledger)
    assert "no deploy of checkout within 1800s" in refused(
        submit(core, ledger, planned("rollback", iid="a"), incident("a"), T0))
    # a deploy long before the onset does not count either
    assert "no deploy" in refused(
        submit(core, ledger, planned("rollback", iid="b"), incident("b", deploy_ts=T0 - 7200), T0))
    assert "not the top root cause (payments is)" in refused(
        submit(core, ledger, planned("rollback", iid="c"), incident("c", deploy_ts=T0 - 60, top="payments"), T0))
    ok = submit(core, ledger, planned("rollback", iid="d"), incident("d", deploy_ts=T0 - 60), T0)
    assert ok.execute is not None


def test_scale_up_needs_a_metric_signal_on_the_target(ledger: Ledger) -> None:
    core = core_for(ledger)
    only_logs = (signal("checkout", "tpl-7", kind=SignalKind.LOG), signal("frontend"))
    reason = refused(submit(core, ledger, planned(), incident(signals=only_logs), T0))
    assert reason == "precondition: no active metric signal on checkout"


def test_configured_preconditions_min_severity_and_signal_names(ledger: Ledger) -> None:
    text = LIVE.replace("scale_up: {}", "scale_up: {preconditions: {min_severity: critical, "
                                        "signal_names: ['cpu|saturation']}}")
    core = core_for(ledger, text)
    assert refused(submit(core, ledger, planned(iid="a"), incident("a", severity="warning"), T0)) == \
        "precondition: severity warning is below critical"
    assert "matching ['cpu|saturation']" in refused(submit(core, ledger, planned(iid="b"), incident("b"), T0))
    sat = (signal("checkout", "container_cpu_saturation"),)
    assert submit(core, ledger, planned(iid="c"), incident("c", signals=sat), T0).execute is not None


def test_disabled_and_unsupported_types_are_refused(ledger: Ledger) -> None:
    core = core_for(ledger, LIVE.replace("retrain: {}", "retrain: {enabled: false}"))
    drift = (signal("checkout", "model:fraud", kind=SignalKind.DRIFT),)
    assert refused(submit(core, ledger, planned("retrain"), incident(signals=drift), T0)).startswith("disabled:")
    assert refused(submit(core, ledger, planned("reboot_node"), incident(), T0)).startswith("unsupported:")


def test_cooldown_per_target(ledger: Ledger) -> None:
    core = core_for(ledger, LIVE.replace("scale_up: {}", "scale_up: {cooldown_s: 600}"))
    first = submit(core, ledger, planned(iid="a"), incident("a"), T0)
    apply(ledger, core.finish(first.execute.action_id, ActResult(ActionOutcome.DONE, "scaled 2->3"), T0 + 1))
    reason = refused(submit(core, ledger, planned(iid="b"), incident("b"), T0 + 300))
    assert reason == "cooldown: service=checkout was acted on 300s ago (cooldown 600s)"
    # another service is not cooling down; and after the cooldown the same target may act again
    assert submit(core, ledger, planned(service="payments", iid="b"), incident("b", "payments"), T0 + 300).execute
    assert submit(core, ledger, planned(iid="c"), incident("c"), T0 + 601).execute is not None


def test_rate_limit_per_target_per_hour(ledger: Ledger) -> None:
    core = core_for(ledger, LIVE.replace("scale_up: {}", "scale_up: {max_per_target_per_hour: 2}"))
    for i, dt in enumerate((0, 100)):
        assert submit(core, ledger, planned(iid=f"i{i}"), incident(f"i{i}"), T0 + dt).execute is not None
    assert refused(submit(core, ledger, planned(iid="i2"), incident("i2"), T0 + 200)) == \
        "rate_limit: 2 actions on service=checkout in the last hour (max 2)"
    assert submit(core, ledger, planned(iid="i3"), incident("i3"), T0 + 3601).execute is not None


def test_global_rate_limit_per_hour(ledger: Ledger) -> None:
    core = core_for(ledger, LIVE.replace("global_per_hour: 100", "global_per_hour: 2"))
    for svc in ("a", "b"):
        assert submit(core, ledger, planned(service=svc, iid=svc), incident(svc, svc), T0).execute
    assert "(global max 2)" in refused(submit(core, ledger, planned(service="c", iid="c"), incident("c", "c"), T0))


def test_max_concurrent_counts_executing_and_unverified(ledger: Ledger) -> None:
    core = core_for(ledger, LIVE.replace("max_concurrent: 100", "max_concurrent: 1"))
    first = submit(core, ledger, planned(service="a", iid="a"), incident("a", "a"), T0)
    assert refused(submit(core, ledger, planned(service="b", iid="b"), incident("b", "b"), T0 + 1)) == \
        "max_concurrent: 1 actions executing or awaiting verification (max 1)"
    apply(ledger, core.finish(first.execute.action_id, ActResult(ActionOutcome.DONE, "ok"), T0 + 2))
    assert "max_concurrent" in refused(submit(core, ledger, planned(service="c", iid="c"), incident("c", "c"), T0 + 3))
    # once verified it no longer counts
    recovered = incident("a", "a", signals=(signal("a", end_ts=T0 + 30),), ts=T0 + 30)
    apply(ledger, core.observe(recovered, T0 + 30))
    assert submit(core, ledger, planned(service="d", iid="d"), incident("d", "d"), T0 + 31).execute is not None


def test_max_targets_per_incident(ledger: Ledger) -> None:
    core = core_for(ledger, LIVE.replace("max_targets_per_incident: 100", "max_targets_per_incident: 1"))
    inc = incident(signals=(signal("checkout"), signal("frontend")))
    assert submit(core, ledger, planned(), inc, T0).execute is not None
    assert refused(submit(core, ledger, planned(service="frontend"), inc, T0)) == \
        "max_targets_per_incident: incident inc-1 already acts on 1 targets (max 1)"


def test_maintenance_window_absolute_and_weekly(ledger: Ledger) -> None:
    core = core_for(ledger, LIVE + """
maintenance:
  - {name: db-migration, start: "2026-01-01T00:00:00Z", end: "2026-01-01T01:00:00Z", services: [checkout]}
  - {name: weekend, weekly: {days: [sat, sun], start: "22:00", end: "02:00"}}
""")
    assert refused(submit(core, ledger, planned(iid="a"), incident("a"), T0 + 60)) == \
        "maintenance: window db-migration is active"
    assert submit(core, ledger, planned(service="pay", iid="b"), incident("b", "pay"), T0 + 60).execute
    saturday_23h = T0 + 2 * 86400 + 23 * 3600  # Thu + 2 days
    sunday_01h = T0 + 3 * 86400 + 1 * 3600
    monday_01h = T0 + 4 * 86400 + 1 * 3600  # still Sunday's window (crosses midnight)
    tuesday_01h = T0 + 5 * 86400 + 1 * 3600
    for i, ts in enumerate((saturday_23h, sunday_01h, monday_01h)):
        assert refused(submit(core, ledger, planned(iid=f"w{i}"), incident(f"w{i}"), ts)) == \
            "maintenance: window weekend is active"
    assert submit(core, ledger, planned(iid="tue"), incident("tue"), tuesday_01h).execute is not None


def test_silence_blocks_matching_actions(ledger: Ledger) -> None:
    core = core_for(ledger, LIVE + """
silences:
  - {name: sre-investigating, start: 1767225600, end: 1767229200, services: [checkout], types: [rollback],
     comment: "alice is on it"}
""")
    reason = refused(submit(core, ledger, planned("rollback"), incident(deploy_ts=T0 - 30), T0 + 10))
    assert reason == "silenced: sre-investigating until 2026-01-01T01:00:00Z (alice is on it)"
    assert submit(core, ledger, planned("scale_up"), incident(deploy_ts=T0 - 30), T0 + 10).execute is not None


def test_approval_waits_then_runs_once_approved(ledger: Ledger) -> None:
    core = core_for(ledger, LIVE.replace("scale_up: {}", "scale_up: {approval: true, approval_ttl_s: 600}"))
    step = submit(core, ledger, planned(), incident(), T0)
    assert step.execute is None
    (out,) = step.output
    aid = dict(out.params)["action_id"]
    assert out.outcome is ActionOutcome.PLANNED and not out.dry_run
    assert out.reason == f"awaiting approval: aiops approve {aid} (expires 2026-01-01T00:10:00Z)"
    assert all(s.execute is None for s in core.tick(T0 + 60))  # not approved: nothing runs
    apply(ledger, core.approve(aid, "alice", T0 + 120))
    (run,) = [apply(ledger, s) for s in core.tick(T0 + 121)]
    assert run.execute is not None and run.execute.action_id == aid
    assert ledger.book.get(aid).state is ActionState.EXECUTING and ledger.book.get(aid).approved_by == "alice"
    assert core.tick(T0 + 122) == []  # executing: no second run


def test_approval_expires(ledger: Ledger) -> None:
    core = core_for(ledger, LIVE.replace("scale_up: {}", "scale_up: {approval: true, approval_ttl_s: 600}"))
    aid = dict(submit(core, ledger, planned(), incident(), T0).output[0].params)["action_id"]
    assert core.tick(T0 + 599) == []
    (exp,) = [apply(ledger, s) for s in core.tick(T0 + 600)]
    assert refused(exp) == "expired: not approved within 600s"
    assert core.approve(aid, "late-bob", T0 + 700).entries == ()  # too late: nothing happens


def test_approved_action_rechecks_time_guards(ledger: Ledger) -> None:
    core = core_for(ledger, LIVE.replace("scale_up: {}", "scale_up: {approval: true}") + """
maintenance:
  - {name: late-window, start: 1767225700, end: 1767229200}
""")
    aid = dict(submit(core, ledger, planned(), incident(), T0).output[0].params)["action_id"]
    apply(ledger, core.approve(aid, "alice", T0 + 200))
    (step,) = core.tick(T0 + 201)
    assert refused(step) == "maintenance: window late-window is active"


def test_verification_success(ledger: Ledger) -> None:
    core = core_for(ledger)
    step = submit(core, ledger, planned(), incident(), T0)
    aid = step.execute.action_id
    apply(ledger, core.finish(aid, ActResult(ActionOutcome.DONE, "scaled 2->3"), T0 + 1))
    apply(ledger, core.observe(incident(ts=T0 + 60), T0 + 60))  # still active: not yet
    assert ledger.book.get(aid).state is ActionState.DONE
    apply(ledger, core.observe(incident(ts=T0 + 120, status=IncidentStatus.RESOLVED), T0 + 120))
    assert ledger.book.get(aid).state is ActionState.VERIFIED
    assert core.tick(T0 + 10_000) == []


def test_verification_failure_escalates_and_never_loops(ledger: Ledger) -> None:
    core = core_for(ledger, LIVE.replace("scale_up: {}", "scale_up: {verify_s: 300}"))
    aid = submit(core, ledger, planned(), incident(), T0).execute.action_id
    apply(ledger, core.finish(aid, ActResult(ActionOutcome.DONE, "scaled 2->3"), T0 + 1))
    assert core.tick(T0 + 301) == []
    (fail,) = [apply(ledger, s) for s in core.tick(T0 + 302)]
    action, alert = fail.output
    assert action.outcome is ActionOutcome.FAILED
    assert action.reason.startswith("verification failed: incident signals did not recover within 300s")
    assert "escalated, not retried" in action.reason
    assert isinstance(alert, Alert) and dict(alert.labels)["alertname"] == "AiopsRemediationFailed"
    # the decide stage planning the same action again does nothing ...
    assert submit(core, ledger, planned(), incident(), T0 + 400) .entries == ()
    # ... and the same action for a new incident on the same target is refused, not retried
    assert refused(submit(core, ledger, planned(iid="inc-2"), incident("inc-2"), T0 + 4000)).startswith(
        "failure_backoff: scale_up on service=checkout failed at")


def test_actuator_failure_is_recorded_and_escalated(ledger: Ledger) -> None:
    core = core_for(ledger)
    aid = submit(core, ledger, planned(), incident(), T0).execute.action_id
    step = apply(ledger, core.finish(aid, ActResult(ActionOutcome.FAILED, "kubernetes: 403 forbidden"), T0 + 1))
    assert step.output[0].outcome is ActionOutcome.FAILED and step.output[0].reason == "kubernetes: 403 forbidden"
    assert isinstance(step.output[1], Alert)


def test_duplicate_decision_never_executes_twice(ledger: Ledger) -> None:
    core = core_for(ledger)
    assert submit(core, ledger, planned(), incident(), T0).execute is not None
    again = submit(core, ledger, planned(), incident(ts=T0 + 15), T0 + 15)
    assert again.entries == () and again.execute is None and again.output == ()


def test_restart_reloads_ledger_and_fails_in_doubt_actions(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    with Ledger(path) as first:
        core = core_for(first)
        assert submit(core, first, planned(), incident(), T0).execute is not None
        # the process dies here: EXECUTING is durable, the result never written
    with Ledger(path) as second:
        core = core_for(second)
        assert submit(core, second, planned(), incident(), T0 + 15).execute is None  # same key: not again
        (doubt,) = [apply(second, s) for s in core.recover(T0 + 15)]
        assert doubt.output[0].outcome is ActionOutcome.FAILED and doubt.output[0].reason.startswith("in doubt")
        assert doubt.execute is None


def test_metrics_count_state_changes_and_refusals(tmp_path: Path) -> None:
    reg = CollectorRegistry()
    ledger = Ledger(tmp_path / "l.jsonl", metrics=ActMetrics(reg))
    core = core_for(ledger, LIVE.replace("max_concurrent: 100", "max_concurrent: 1"))
    submit(core, ledger, planned(service="a", iid="a"), incident("a", "a"), T0)
    submit(core, ledger, planned(service="b", iid="b"), incident("b", "b"), T0)
    get = reg.get_sample_value
    assert get("aiops_action_state_changes_total", {"type": "scale_up", "state": "planned"}) == 2
    assert get("aiops_action_state_changes_total", {"type": "scale_up", "state": "executing"}) == 1
    assert get("aiops_action_refusals_total", {"type": "scale_up", "guard": "max_concurrent"}) == 1
    assert get("aiops_actions_in_flight", {}) == 1
