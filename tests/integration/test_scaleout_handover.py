"""A correlator hand-over between two scale-out daemons on a real broker, without the minute-long fault test.

Owner A acts (a rollback done, a scale-up that fails and escalates), checkpoints its correlator
and is then dropped as if killed. Owner B acquires the correlator from the changelog: it must say
again what was firing (the incident's alert, then the escalation), refuse the replayed plan (the
hand-over marker), and carry on A's tracking from the act journal: B verifies the rollback A ran
and, when the signals do not recover, fails it and escalates — without running anything itself.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from aiops.act.core import ActResult, Execution
from aiops.act.ledger import ActionState, action_id
from aiops.act.stage import ActStage
from aiops.config import Settings, load_settings
from aiops.correlate.topology import Topology
from aiops.decide.rules import load_rules
from aiops.records import Action, ActionOutcome, Alert, AlertStatus
from aiops.runtime.scaleout import ScaleOutDaemon

from ..act.support import T0, incident
from ..runtime.test_live_checkpoint import _Recorder
from .conftest import free_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


class _Actuator:
    def __init__(self, outcome: ActionOutcome) -> None:
        self.outcome = outcome
        self.calls: list[str] = []

    async def __call__(self, ex: Execution) -> ActResult:
        self.calls.append(ex.action_id)
        return ActResult(self.outcome, "done" if self.outcome is ActionOutcome.DONE else "API said no")


def _settings(tmp: Path, name: str, bootstrap: str, tag: str) -> Settings:
    rules_dir = tmp / "rules"
    if not rules_dir.exists():
        shutil.copytree(REPO / "rules", rules_dir)
        text = (REPO / "rules" / "actions.yaml").read_text()
        (rules_dir / "actions.yaml").write_text(text.replace("  dry_run: true", "  dry_run: false"))
    return load_settings(env={
        "AIOPS_RULES_DIR": str(rules_dir), "AIOPS_STATE_DIR": str(tmp / f"state-{name}"),
        "AIOPS_ACT__DRY_RUN": "false", "AIOPS_HTTP__PORT": str(free_port()),
        "AIOPS_KAFKA__BOOTSTRAP": bootstrap, "AIOPS_KAFKA__GROUP_ID": f"ho-{tag}",
        "AIOPS_KAFKA__METRICS_TOPIC": f"ho-m-{tag}", "AIOPS_KAFKA__LOGS_TOPIC": "", "AIOPS_KAFKA__EVENTS_TOPIC": "",
        "AIOPS_LIVE__MODE": "scale_out", "AIOPS_LIVE__SIGNALS_TOPIC": f"ho-signals-{tag}",
        "AIOPS_LIVE__CHANGELOG_TOPIC": f"ho-state-{tag}",
    })


async def _owner(tmp: Path, name: str, bootstrap: str, tag: str) -> tuple[ScaleOutDaemon, dict[str, _Actuator]]:
    settings = _settings(tmp, name, bootstrap, tag)
    rules = load_rules(settings.rules_dir)
    daemon = ScaleOutDaemon(settings, rules, Topology())
    actuators = {"rollback": _Actuator(ActionOutcome.DONE), "scale_up": _Actuator(ActionOutcome.FAILED)}
    daemon.act = await ActStage.open(settings, rules.action_rules, daemon.registry, daemon.rejects,
                                     actuators=actuators)  # type: ignore[arg-type]
    daemon.sinks.append(_Recorder())  # type: ignore[arg-type]
    await daemon._connect()
    # The signals partition, as the correlate group would hand it over (the owner seeks it to its checkpoint).
    tp = TopicPartition(settings.live.signals_topic, 0)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    consumer.assign([tp])
    try:
        await daemon._acquire_correlator(consumer, tp)
    finally:
        await consumer.stop()
    return daemon, actuators


async def _act_and_checkpoint(a: ScaleOutDaemon, acts: dict[str, _Actuator]) -> None:
    """Owner A: the incident, its alert and two planned actions; the rollback is done, the scale-up fails."""
    own = Alert(ts=T0, incident_id="inc-1", status=AlertStatus.FIRING, labels=(("severity", "critical"),),
                annotations=(("summary", "checkout is failing"),))
    a._act_next_tick = T0  # the act stage runs (as after the first release)
    await a._dispatch([incident(deploy_ts=T0 - 120), own, _planned("rollback", "checkout"),
                       _planned("scale_up", "frontend")])
    sent: list[Alert] = a.sinks[-1].sent  # type: ignore[attr-defined]
    escalations = [x for x in sent if dict(x.labels).get("alertname") == "AiopsRemediationFailed"]
    assert sent[0] == own and acts["rollback"].calls and acts["scale_up"].calls and len(escalations) == 1, sent
    a._corr_offset, a._corr_dirty = 0, True
    await a._save_correlator()


async def _close(daemon: ScaleOutDaemon) -> None:
    assert daemon.act is not None and daemon.changelog is not None and daemon._producer is not None
    await daemon.act.close()
    await daemon._producer.stop()
    await daemon.changelog.close()


def _planned(kind: str, service: str) -> Action:
    return Action(ts=T0, incident_id="inc-1", type=kind, target=(("service", service),), dry_run=False,
                  outcome=ActionOutcome.PLANNED)


async def test_the_new_owner_reannounces_escalations_and_continues_verification(
    kafka_bootstrap: str, tmp_path: Path,
) -> None:
    tag = uuid.uuid4().hex[:8]
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(f"ho-m-{tag}", 2, 1)])
    finally:
        await admin.close()
    a, acts_a = await _owner(tmp_path, "a", kafka_bootstrap, tag)
    try:
        await _act_and_checkpoint(a, acts_a)
    finally:
        await _close(a)  # killed: nothing more from A
    sent_a: list[Alert] = a.sinks[-1].sent  # type: ignore[attr-defined]
    escalations = [x for x in sent_a if dict(x.labels).get("alertname") == "AiopsRemediationFailed"]
    own = sent_a[0]

    b, acts_b = await _owner(tmp_path, "b", kafka_bootstrap, tag)
    try:
        # What was firing is said again, the incident's own alert first.
        assert b.sinks[-1].sent == [own, escalations[0]]  # type: ignore[attr-defined]
        rollback = action_id("inc-1", "rollback", (("service", "checkout"),))
        t = b.act.executor.ledger.book.get(rollback)  # type: ignore[union-attr]
        assert t is not None and t.state is ActionState.DONE
        # The replayed decisions reach B: the marker refuses the plan, the incident update feeds verification.
        assert b._act_next_tick is None  # started again at the first release after the take-over, as here
        await b._start_act(T0 + 60)
        await b._dispatch([incident(ts=T0 + 60, deploy_ts=T0 - 120), _planned("rollback", "checkout")])
        await b._act_tick(T0 + 700)  # past verify_s (600): A's rollback did not help
        assert t.state is ActionState.FAILED and "verification failed" in t.reason
        sent_b = b.sinks[-1].sent  # type: ignore[attr-defined]
        late = [x for x in sent_b if dict(x.annotations).get("action_id") == rollback]
        assert len(late) == 1 and late[0].status is AlertStatus.FIRING
        assert acts_b["rollback"].calls == [] and acts_b["scale_up"].calls == []
        assert {x.incident_id for x in b._firing.alerts()} == {"inc-1"} and len(b._firing.alerts()) == 3
        markers = await b.changelog.restore(0, prefix=b.acted_prefix)  # type: ignore[union-attr]
        journal: dict[str, Any] = markers[b._acted_key(_planned("rollback", "checkout"))].state
        assert [e.split('"state":"')[1].split('"')[0] for e in journal["entries"]] == [
            "planned", "executing", "done", "failed"]
    finally:
        await _close(b)
