"""The live daemon acts: a bad deploy through Kafka makes `LiveDaemon` roll back, once, through the
real Kubernetes client against the API double; in dry run it makes no request at all."""

from __future__ import annotations

import asyncio
import io
import json
import shutil
import time
import uuid
from pathlib import Path

import pytest

from aiops.config import Settings, load_settings
from aiops.correlate.topology import Topology
from aiops.decide.rules import load_rules
from aiops.runtime.live import LiveDaemon

from ..act.kube_double import KubeDouble, deployment, write_kubeconfig
from .conftest import free_port
from .telemetry import STEP, build
from .test_live_e2e import create_topics, produce

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ROLLBACK = ("PATCH", "/apis/apps/v1/namespaces/default/deployments/api")


def _settings(tmp_path: Path, bootstrap: str, topics: dict[str, str], group: str, dry_run: bool,
              kube_port: int) -> Settings:
    rules_dir = tmp_path / "rules"
    if not rules_dir.exists():
        shutil.copytree(REPO / "rules", rules_dir)
        # Both switches must be off for anything to execute: the action's own (here) and the global one.
        text = (REPO / "rules" / "actions.yaml").read_text()
        assert "  dry_run: true" in text
        (rules_dir / "actions.yaml").write_text(text.replace("  dry_run: true", "  dry_run: false"))
    return load_settings(env={
        "AIOPS_RULES_DIR": str(rules_dir), "AIOPS_STATE_DIR": str(tmp_path / "state"),
        "AIOPS_ACT__DRY_RUN": str(dry_run).lower(),
        "AIOPS_ACT__KUBECONFIG": str(write_kubeconfig(tmp_path / "kubeconfig", kube_port)),
        "AIOPS_ACT__TICK_S": "15",
        "AIOPS_RUNTIME__LATENESS_S": "300",
        "AIOPS_KAFKA__BOOTSTRAP": bootstrap, "AIOPS_KAFKA__GROUP_ID": group,
        "AIOPS_KAFKA__AUTO_OFFSET_RESET": "earliest",
        "AIOPS_KAFKA__METRICS_TOPIC": topics["metrics"], "AIOPS_KAFKA__LOGS_TOPIC": topics["logs"],
        "AIOPS_KAFKA__EVENTS_TOPIC": topics["events"],
        "AIOPS_HTTP__PORT": str(free_port()), "AIOPS_LIVE__IDLE_ADVANCE_S": "1",
    })


async def _run_until_resolved(settings: Settings, timeout: float = 180) -> list[dict]:
    """Run a daemon until its output shows the incident resolved; return its decisions."""
    rules = load_rules(settings.rules_dir)
    out = io.StringIO()
    daemon = LiveDaemon(settings, rules, Topology.from_mapping(rules.topology_mapping()), out=out, step_s=STEP)
    stop = asyncio.Event()
    runner = asyncio.create_task(daemon.run(stop))

    def decisions() -> list[dict]:
        return [json.loads(line) for line in out.getvalue().splitlines()]

    deadline = time.monotonic() + timeout
    while not runner.done() and time.monotonic() < deadline:
        if any(d["kind"] == "incident" and d["status"] == "resolved" for d in decisions()):
            break
        await asyncio.sleep(0.2)
    stop.set()
    assert await asyncio.wait_for(runner, 60) == 0
    got = decisions()
    assert any(d["kind"] == "incident" and d["status"] == "resolved" for d in got), got
    return got


@pytest.mark.parametrize("dry_run", [False, True], ids=["live", "dry-run"])
async def test_bad_deploy_rolls_back_once(kafka_bootstrap: str, tmp_path: Path, dry_run: bool) -> None:
    records, truth = build(seed=11)
    tag = uuid.uuid4().hex[:8]
    topics = {"metrics": f"act-m-{tag}", "logs": f"act-l-{tag}", "events": f"act-e-{tag}"}
    await create_topics(kafka_bootstrap, list(topics.values()))
    await produce(kafka_bootstrap, topics, records, [])
    double = await KubeDouble().start()
    double.add_deployment(deployment("api", image="v2", revision=2), history=("v1", "v2"))
    try:
        first = await _run_until_resolved(_settings(tmp_path, kafka_bootstrap, topics, f"a-{tag}", dry_run,
                                                    double.port))
        # A second group reads everything again from the start, cold (its own checkpoint), with the
        # same ledger: the decide stage plans the same rollback again, and the ledger makes it a no-op.
        again = await _run_until_resolved(_settings(tmp_path, kafka_bootstrap, topics, f"b-{tag}", dry_run,
                                                    double.port))
    finally:
        await double.stop()

    planned = [d for d in first if d["kind"] == "action" and not _acted(d)]
    assert [(d["type"], d["target"]["service"]) for d in planned] == [("rollback", truth.root_cause)]
    writes = [c for c in double.calls() if c[0] != "GET"]
    outcomes = [(d["type"], d["outcome"], d["dry_run"]) for d in first if d["kind"] == "action" and _acted(d)]
    if dry_run:
        assert double.requests == [], "dry run: no request at all"
        assert outcomes == [("rollback", "planned", True)]
    else:
        assert writes == [ROLLBACK], writes
        patch = next(r for r in double.requests if r.method == "PATCH")
        assert "registry.example/api:v1" in json.dumps(patch.body), "rolled back to the previous revision"
        # The fault outlasts verify_s in the data (nothing really rolled back): verification fails and
        # escalates, as a separate alert for the same incident.
        assert outcomes == [("rollback", "done", False), ("rollback", "failed", False)]
        escalations = [d for d in first if d["kind"] == "alert"
                       and d["labels"].get("alertname") == "AiopsRemediationFailed"]
        assert len(escalations) == 1 and escalations[0]["incident_id"] == planned[0]["incident_id"]
    # The second run decided the same thing and acted on none of it.
    assert [d for d in again if d["kind"] == "incident"] == [d for d in first if d["kind"] == "incident"]
    assert [d for d in again if d["kind"] == "action" and not _acted(d)] == planned
    assert [d for d in again if d["kind"] == "action" and _acted(d)] == []
    assert [c for c in double.calls() if c[0] != "GET"] == writes


def _acted(d: dict) -> bool:
    """An action record from the act stage (an outcome), not the decide stage's plan."""
    return bool(d["outcome"] != "planned" or d["reason"].startswith("dry run"))
