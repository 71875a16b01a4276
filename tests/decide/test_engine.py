"""Decider: alerts per incident lifecycle, each remediation rule plans / does not plan."""

from __future__ import annotations

from pathlib import Path

import structlog

from aiops.config import ActSettings
from aiops.decide.engine import Decider
from aiops.decide.rules import load_rules, parse_rules
from aiops.records import (
    Action,
    Alert,
    AlertStatus,
    ChangeEvent,
    Incident,
    IncidentStatus,
    RootCause,
    Signal,
    SignalKind,
)

QUIET = structlog.wrap_logger(structlog.ReturnLogger())
RULES = load_rules(Path(__file__).resolve().parents[2] / "rules")
T0 = 1_767_225_600.0


def s(svc: str, name: str, direction: str = "up", kind: SignalKind = SignalKind.METRIC, ts: float = T0,
      labels: tuple[tuple[str, str], ...] = ()) -> Signal:
    return Signal(id=f"{svc}:{name}", ts=ts, kind=kind, service=svc, name=name, score=0.9, direction=direction,
                  labels=labels)


def inc(sigs: list[Signal], changes: list[ChangeEvent] = (), status: IncidentStatus = IncidentStatus.OPEN,
        top: str = "api", ts: float = T0 + 60, severity: str = "warning") -> Incident:
    services = tuple(sorted({x.service for x in sigs if x.service}))
    return Incident(id="inc-1", ts=ts, status=status, opened_ts=T0 + 60, services=services,
                    root_causes=(RootCause(top, 0.9, metric=sigs[0].name if sigs else None,
                                           evidence=("first anomalous service",)),),
                    severity=severity, signals=tuple(sigs), changes=tuple(changes))


def decide(d: Decider, incident: Incident) -> tuple[list[Alert], list[Action]]:
    out = d.on_incident(incident)
    return [x for x in out if isinstance(x, Alert)], [x for x in out if isinstance(x, Action)]


def deploy(svc: str = "api", ago: float = 90.0) -> ChangeEvent:
    return ChangeEvent(ts=T0 - ago, type="deploy", service=svc,
                       attrs=(("previous_version", "v1.0"), ("version", "v1.1")))


def test_rollback_after_deploy_with_errors() -> None:
    d = Decider(RULES, ActSettings(), logger=QUIET)
    _, actions = decide(d, inc([s("api", "http_requests_total:error_ratio")], [deploy()]))
    assert [(a.type, dict(a.target), dict(a.params)) for a in actions] == [
        ("rollback", {"service": "api"}, {"previous_version": "v1.0", "version": "v1.1"})]
    assert actions[0].dry_run and "v1.1" in actions[0].reason


def test_no_rollback_when_the_deploy_is_old_or_of_another_service() -> None:
    for change in (deploy(ago=4000.0), deploy(svc="web")):
        d = Decider(RULES, ActSettings(), logger=QUIET)
        _, actions = decide(d, inc([s("api", "http_requests_total:error_ratio")], [change]))
        assert [a.type for a in actions] != ["rollback"]


def test_scale_up_on_saturation_without_change() -> None:
    sat = [s("api", "http_requests_total:rate"), s("api", "process_cpu_seconds_total:rate")]
    _, actions = decide(Decider(RULES, ActSettings(), logger=QUIET), inc(sat))
    assert [a.type for a in actions] == ["scale_up"]
    # the same saturation right after a deploy is the deploy's fault: rollback, not scale
    _, actions = decide(Decider(RULES, ActSettings(), logger=QUIET),
                        inc(sat + [s("api", "http_request_duration_seconds:p99")], [deploy()]))
    assert [a.type for a in actions] == ["rollback"]


def test_no_scale_up_on_rate_alone_or_rate_down() -> None:
    for sigs in ([s("api", "http_requests_total:rate")],
                 [s("api", "http_requests_total:rate", "down"), s("api", "process_cpu_seconds_total:rate")]):
        _, actions = decide(Decider(RULES, ActSettings(), logger=QUIET), inc(sigs))
        assert actions == []


def test_retrain_on_model_signals_with_model_target() -> None:
    sigs = [s("ranker", "model_online_accuracy", "down", labels=(("model", "ranker-v3"),))]
    _, actions = decide(Decider(RULES, ActSettings(), logger=QUIET), inc(sigs, top="ranker"))
    assert [(a.type, dict(a.target)) for a in actions] == [("retrain", {"model": "ranker-v3", "service": "ranker"})]
    drift = [s("ranker", "ranker-v3", kind=SignalKind.DRIFT)]
    _, actions = decide(Decider(RULES, ActSettings(), logger=QUIET), inc(drift, top="ranker"))
    assert [a.type for a in actions] == ["retrain"]


def test_conditions_look_at_the_top_cause_only() -> None:
    # the caller has a deploy and errors, but the top root cause is its callee
    sigs = [s("web", "http_requests_total:error_ratio"), s("db", "http_request_duration_seconds:p99")]
    _, actions = decide(Decider(RULES, ActSettings(), logger=QUIET), inc(sigs, [deploy("web")], top="db"))
    assert actions == []


def test_actions_planned_once_per_incident() -> None:
    d = Decider(RULES, ActSettings(), logger=QUIET)
    first = inc([s("api", "http_requests_total:error_ratio")], [deploy()])
    _, a1 = decide(d, first)
    _, a2 = decide(d, inc([s("api", "http_requests_total:error_ratio"), s("web", "x:p99")], [deploy()],
                          status=IncidentStatus.UPDATE))
    assert len(a1) == 1 and a2 == []


def test_dry_run_follows_act_settings() -> None:
    _, actions = decide(Decider(RULES, ActSettings(dry_run=False), logger=QUIET),
                        inc([s("api", "http_requests_total:error_ratio")], [deploy()]))
    assert actions[0].dry_run is False


def test_alert_lifecycle_and_routing() -> None:
    d = Decider(RULES, ActSettings(), logger=QUIET)
    sigs = [s("api", "http_requests_total:error_ratio")]
    alerts, _ = decide(d, inc(sigs, severity="critical"))
    assert [a.status for a in alerts] == [AlertStatus.FIRING]
    labels, ann = dict(alerts[0].labels), dict(alerts[0].annotations)
    assert labels["severity"] == "critical" and labels["receiver"] == "pager" and labels["service"] == "api"
    assert "api" in ann["runbook_url"] and "first anomalous service" in ann["description"]
    # an update that changes nothing an engineer sees sends nothing
    alerts, _ = decide(d, inc(sigs, status=IncidentStatus.UPDATE, severity="critical", ts=T0 + 90))
    assert alerts == []
    alerts, _ = decide(d, inc(sigs, status=IncidentStatus.RESOLVED, severity="critical", ts=T0 + 900))
    assert [a.status for a in alerts] == [AlertStatus.RESOLVED]
    # flap: the correlator re-opens the same incident as an update -> same alert fires again, marked
    alerts, _ = decide(d, inc(sigs, status=IncidentStatus.UPDATE, severity="critical", ts=T0 + 1000))
    assert [a.status for a in alerts] == [AlertStatus.FIRING]
    assert dict(alerts[0].annotations)["reopened"] == "true" and alerts[0].incident_id == "inc-1"


def test_severity_rule_overrides() -> None:
    rules = parse_rules({"a.yaml": "alerts:\n  severity:\n    - when: {services_at_least: 2}\n"
                                   "      severity: critical\n"})
    d = Decider(rules, ActSettings(), logger=QUIET)
    alerts, _ = decide(d, inc([s("api", "a"), s("web", "b")]))
    assert dict(alerts[0].labels)["severity"] == "critical"


def test_continue_plans_several_and_snapshot_keeps_dedupe() -> None:
    text = ("remediations:\n"
            "  - {name: a, action: notify_owner, continue: true, when: {services_at_least: 1}}\n"
            "  - {name: b, action: scale_up, when: {signal: {metric: '*:rate'}}}\n")
    rules = parse_rules({"r.yaml": text})
    d = Decider(rules, ActSettings(), logger=QUIET)
    _, actions = decide(d, inc([s("api", "x:rate")]))
    assert [a.type for a in actions] == ["notify_owner", "scale_up"]
    d2 = Decider.from_snapshot(d.snapshot(), rules, ActSettings(), logger=QUIET)
    _, again = decide(d2, inc([s("api", "x:rate")], status=IncidentStatus.UPDATE))
    assert again == []


def test_no_planning_long_after_the_incident_opened() -> None:
    d = Decider(RULES, ActSettings(), logger=QUIET)
    decide(d, inc([s("api", "http_requests_total:error_ratio")]))  # nothing to do at open
    late = Incident(id="inc-1", ts=T0 + 60 + 3600, status=IncidentStatus.UPDATE, opened_ts=T0 + 60,
                    services=("api",), root_causes=(RootCause("api", 0.9),), severity="warning",
                    signals=(s("api", "http_requests_total:rate"), s("api", "process_cpu_seconds_total:rate")))
    _, actions = decide(d, late)
    assert actions == []
