"""The MLOps loop with the real stages: drift -> incident -> retrain -> new model version -> drift clears
-> incident resolves -> the retrain is verified. Only the training pipeline is a test server."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import web
from prometheus_client import CollectorRegistry

from aiops.act.ledger import ActionState
from aiops.act.stage import ActStage
from aiops.config import load_settings
from aiops.correlate.correlator import Correlator
from aiops.correlate.topology import Topology
from aiops.decide.engine import Decider
from aiops.decide.rules import load_rules
from aiops.drift import DriftMonitor, PredictionRecord
from aiops.records import Action, ActionOutcome, Incident, IncidentStatus, SignalKind
from tests.act.kube_double import serve

REPO = Path(__file__).resolve().parents[2]
T0 = 1_767_600_000.0
STEP = 15.0
DRIFT_AT = 3600.0  # seconds after T0
TRAIN_S = 600.0  # the pipeline trains and rolls out the new version this long after the request


class Pipeline:
    """A training pipeline endpoint: records run requests; the new version goes live TRAIN_S later."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.deployed_at: float | None = None
        self.now = 0.0

    async def runs(self, request: web.Request) -> web.Response:
        self.requests.append(await request.json())
        self.deployed_at = self.now + TRAIN_S
        return web.json_response({"run_id": f"run-{len(self.requests)}"})


def predictions(rng: np.random.Generator, t: float, version: str) -> list[PredictionRecord]:
    """Two predictions per second of a ranker; from DRIFT_AT the inputs shift and stay shifted."""
    shifted = t - T0 >= DRIFT_AT
    out = []
    for k in range(2):
        x = rng.normal(1.2 if shifted else 0.0, 1.0, size=2)
        out.append(PredictionRecord(ts=t + k / 2, model="ranker", service="ranker", version=version,
                                    features=(("price", float(x[0])), ("session_depth", float(x[1]))),
                                    prediction=float(x.sum() > 1.0)))
    return out


async def test_drift_triggers_one_retrain_and_the_new_version_resolves_the_incident(tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules_dir)
    pipeline = Pipeline()
    app = web.Application()
    app.router.add_post("/runs", pipeline.runs)
    runner, port = await serve(app)
    (rules_dir / "actions.yaml").write_text((REPO / "rules" / "actions.yaml").read_text().replace(
        "  retrain:\n", "  retrain:\n    dry_run: false\n").replace(
        "  url: null", f"  url: http://127.0.0.1:{port}/runs"))
    settings = load_settings(None, env={"AIOPS_ACT__DRY_RUN": "false",
                                        "AIOPS_ACT__LEDGER_PATH": str(tmp_path / "ledger.jsonl")})
    rules = load_rules(rules_dir)
    monitor = DriftMonitor(settings.drift.model_copy(update={"reference_size": 1200, "window_s": 600.0}))
    correlator = Correlator(settings.correlate, Topology())
    decider = Decider(rules, settings.act)
    stage = await ActStage.open(settings, rules.action_rules, CollectorRegistry())
    rng = np.random.default_rng(7)
    incidents: list[Incident] = []
    actions: list[Action] = []
    drift_signals = []
    try:
        t = T0
        while t < T0 + 4 * 3600:
            pipeline.now = t
            version = "v2" if pipeline.deployed_at is not None and t >= pipeline.deployed_at else "v1"
            for step_t in np.arange(t, t + STEP):
                for rec in predictions(rng, float(step_t), version):
                    for s in monitor.process(rec):
                        drift_signals.append(s)
                        correlator.on_signal(s)
            t += STEP
            for s in monitor.tick(t):
                drift_signals.append(s)
                correlator.on_signal(s)
            for inc in correlator.tick(t):
                incidents.append(inc)
                actions += [a for a in await stage.on_decision(inc) if isinstance(a, Action)]
                for d in decider.on_incident(inc):
                    if isinstance(d, Action):
                        actions += [a for a in await stage.on_decision(d) if isinstance(a, Action)]
            actions += [a for a in await stage.tick(t) if isinstance(a, Action)]
        ledger = stage.executor.ledger
    finally:
        await stage.close()
        await runner.cleanup()

    onsets = [s for s in drift_signals if s.end_ts is None]
    assert onsets and all(s.kind is SignalKind.DRIFT for s in onsets)
    assert DRIFT_AT <= onsets[0].ts - T0 <= DRIFT_AT + 600
    (request,) = pipeline.requests  # retrained exactly once
    assert request["model"] == "ranker" and request["drift"]["evidence"]
    assert any("price" in e or "session_depth" in e for e in request["drift"]["evidence"])
    (done,) = [a for a in actions if a.outcome is ActionOutcome.DONE]
    assert done.type == "retrain" and "run run-1" in done.reason
    # the new version closes every drift signal, the incident resolves, and the retrain is verified
    assert pipeline.deployed_at is not None
    ends = [s for s in drift_signals if s.end_ts is not None]
    assert ends and max(s.end_ts for s in ends) <= pipeline.deployed_at + 120
    assert [i.status for i in incidents][0] is IncidentStatus.OPEN
    (resolved,) = [i for i in incidents if i.status is IncidentStatus.RESOLVED]
    assert resolved.ts > pipeline.deployed_at
    (tracked,) = [x for x in ledger.book.actions.values() if x.type == "retrain"]
    assert tracked.state is ActionState.VERIFIED, tracked.history
