"""The bar: generated bad-deploy, saturation and model-drift scenarios plan the expected action, and
in non-dry-run mode the act stage makes the right requests, exactly once, against the API double."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from aiops.act.stage import ActStage
from aiops.config import load_settings
from aiops.decide.rules import load_rules
from aiops.observe.rejects import Rejects
from aiops.records import Action, ActionOutcome, Incident
from aiops.scenario.generate import generate
from aiops.scenario.replay import replay
from aiops.sources.scenario import load_scenario

from .kube_double import KubeDouble, deployment, serve, write_kubeconfig

REPO = Path(__file__).resolve().parents[2]
APPS = "/apis/apps/v1/namespaces/default"

# kind -> the writes the act stage must make for its expected action, and nothing else
WRITES = {
    "bad-deploy": [("PATCH", f"{APPS}/deployments/checkout")],
    "traffic-surge": [("PATCH", f"{APPS}/deployments/search/scale")],
    "model-drift": [],  # retrain goes to the pipeline endpoint, not to Kubernetes
}


@pytest.mark.integration  # end to end through generator, pipeline and act stage: ~10 s of CPU each
@pytest.mark.parametrize("kind", sorted(WRITES))
async def test_scenario_plans_the_expected_action_and_executes_it_once(kind: str, tmp_path: Path) -> None:
    scenario_dir = tmp_path / kind
    generate(kind, scenario_dir, seed=1, hours=3)
    scenario = load_scenario(scenario_dir)
    assert scenario.expect is not None
    (expected,) = scenario.expect.incidents
    rules = load_rules(REPO / "rules")
    result = replay(scenario, load_settings(None), rules, Rejects(log_examples=False))
    planned = [d for d in result.decisions if isinstance(d, Action)]
    assert [(a.type, dict(a.target)["service"], a.outcome, a.dry_run) for a in planned] == [
        (t, expected.service, ActionOutcome.PLANNED, True) for t in expected.actions or ()]

    # the same decisions, now acted on for real
    pipeline_runs: list[dict[str, Any]] = []

    async def runs(request: web.Request) -> web.Response:
        pipeline_runs.append(await request.json())
        return web.json_response({"run_id": "r1"})

    app = web.Application()
    app.router.add_post("/runs", runs)
    runner, port = await serve(app)
    double = await KubeDouble().start()
    services = {expected.service} | set(scenario.topology) | {c for cs in scenario.topology.values() for c in cs}
    for svc in sorted(services):
        double.add_deployment(deployment(svc, image="v2", revision=2), history=("v1", "v2"))
    rules_dir = tmp_path / "rules"
    shutil.copytree(REPO / "rules", rules_dir)
    (rules_dir / "actions.yaml").write_text((REPO / "rules" / "actions.yaml").read_text()
                                            .replace("  dry_run: true", "  dry_run: false")
                                            .replace("  url: null", f"  url: http://127.0.0.1:{port}/runs"))
    settings = load_settings(None, env={
        "AIOPS_ACT__DRY_RUN": "false", "AIOPS_ACT__LEDGER_PATH": str(tmp_path / "ledger.jsonl"),
        "AIOPS_ACT__KUBECONFIG": str(write_kubeconfig(tmp_path / "kubeconfig", double.port))})
    stage = await ActStage.open(settings, load_rules(rules_dir).action_rules, CollectorRegistry())
    outcomes: list[Action] = []
    try:
        for d in result.decisions:
            if isinstance(d, (Incident, Action)):
                outcomes += [a for a in await stage.on_decision(d) if isinstance(a, Action)]
                outcomes += [a for a in await stage.tick(d.ts) if isinstance(a, Action)]
        # the decide stage planning it again (e.g. after a restart replays the input) changes nothing
        for d in result.decisions:
            if isinstance(d, (Incident, Action)):
                outcomes += [a for a in await stage.on_decision(d) if isinstance(a, Action)]
    finally:
        await stage.close()
        await double.stop()
        await runner.cleanup()
    # one DONE per expected action; a later FAILED can only be its verification (recorded data does not
    # change because we acted), which escalates and never executes again
    done = [(a.type, dict(a.target)["service"]) for a in outcomes if a.outcome is ActionOutcome.DONE]
    assert done == [(t, expected.service) for t in expected.actions or ()], [a.reason for a in outcomes]
    assert all(a.reason.startswith("verification failed") for a in outcomes if a.outcome is not ActionOutcome.DONE)
    assert [(r.method, r.path) for r in double.requests if r.method != "GET"] == WRITES[kind]
    assert len(pipeline_runs) == (1 if kind == "model-drift" else 0)
    if pipeline_runs:
        assert pipeline_runs[0]["service"] == expected.service and pipeline_runs[0]["drift"]["signals"]
