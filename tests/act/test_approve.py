"""Approval mode end to end: `aiops approve ID` in another process's role, and the authenticated HTTP call."""

from __future__ import annotations

import json
import time
from pathlib import Path

from aiohttp import ClientSession, web
from prometheus_client import CollectorRegistry

from aiops.act.core import ActResult, Execution
from aiops.act.stage import ActStage
from aiops.cli import main
from aiops.config import load_settings
from aiops.records import ActionOutcome

from .kube_double import serve
from .support import incident, planned

RULES = """
actions:
  scale_up: {dry_run: false, approval: true, approval_ttl_s: 600, cooldown_s: 0}
"""


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def __call__(self, ex: Execution) -> ActResult:
        self.calls.append(ex.action_id)
        return ActResult(ActionOutcome.DONE, "scaled 2->3")


def setup(tmp_path: Path) -> tuple[Path, Path]:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "actions.yaml").write_text(RULES)
    token = tmp_path / "token"
    token.write_text("approve-me\n")
    cfg = tmp_path / "aiops.yaml"
    cfg.write_text(json.dumps({"rules_dir": str(rules), "act": {
        "dry_run": False, "ledger_path": str(tmp_path / "ledger.jsonl"), "approve_token_file": str(token)}}))
    return cfg, rules


async def open_stage(cfg: Path, recorder: Recorder) -> ActStage:
    from aiops.act.rules import load_action_rules

    settings = load_settings(cfg)
    return await ActStage.open(settings, load_action_rules(settings.rules_dir), CollectorRegistry(),
                               actuators={"scale_up": recorder})


async def test_cli_approval_lets_the_daemon_act_once(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg, _ = setup(tmp_path)
    rec = Recorder()
    stage = await open_stage(cfg, rec)
    now = time.time()  # the CLI stamps approvals with the wall clock: plan at "now"
    inc = incident(ts=now)
    assert await stage.on_decision(inc) == []
    (waiting,) = await stage.on_decision(planned(ts=now))
    aid = dict(waiting.params)["action_id"]
    assert waiting.outcome is ActionOutcome.PLANNED and f"aiops approve {aid}" in waiting.reason
    assert await stage.tick(now + 1) == [] and rec.calls == []
    capsys.readouterr()

    assert main(["--config", str(cfg), "approve", "--list"]) == 0
    assert json.loads(capsys.readouterr().out)["action_id"] == aid
    assert main(["--config", str(cfg), "approve", aid, "--by", "alice"]) == 0
    assert main(["--config", str(cfg), "approve", aid, "--by", "bob"]) == 1  # already approved
    (done,) = await stage.tick(now + 5)
    assert done.outcome is ActionOutcome.DONE and rec.calls == [aid]
    assert await stage.tick(now + 10) == [] and rec.calls == [aid]
    await stage.close()


async def test_cli_refuses_an_expired_approval(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg, _ = setup(tmp_path)
    stage = await open_stage(cfg, Recorder())
    old = time.time() - 601
    await stage.on_decision(incident(ts=old))
    (waiting,) = await stage.on_decision(planned(ts=old))
    assert main(["--config", str(cfg), "approve", dict(waiting.params)["action_id"]]) == 1
    assert "expired (600s approval window)" in capsys.readouterr().err
    await stage.close()


async def test_http_approval_needs_the_token(tmp_path: Path) -> None:
    cfg, _ = setup(tmp_path)
    rec = Recorder()
    stage = await open_stage(cfg, rec)
    t0 = 1_767_225_600.0
    await stage.on_decision(incident(ts=t0))
    (waiting,) = await stage.on_decision(planned(ts=t0))
    aid = dict(waiting.params)["action_id"]
    app = web.Application()
    for (method, path), handler in stage.routes().items():
        app.router.add_route(method, path, handler)
    runner, port = await serve(app)
    url = f"http://127.0.0.1:{port}/actions/{aid}/approve"
    try:
        async with ClientSession() as http:
            async with http.post(url) as r:
                assert r.status == 401
            async with http.post(url, headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401
            assert await stage.tick(t0 + 60) == [] and rec.calls == []
            async with http.get(f"http://127.0.0.1:{port}/actions",
                                headers={"Authorization": "Bearer approve-me"}) as r:
                assert [a["action_id"] for a in await r.json()] == [aid]
            async with http.post(url, headers={"Authorization": "Bearer approve-me", "X-Approved-By": "carol"}) as r:
                assert r.status == 200 and (await r.json())["by"] == "carol"
            async with http.post(url, headers={"Authorization": "Bearer approve-me"}) as r:
                assert r.status == 409
    finally:
        await runner.cleanup()
    (done,) = await stage.tick(t0 + 61)
    assert done.outcome is ActionOutcome.DONE and rec.calls == [aid]
    assert stage.executor.ledger.book.get(aid).approved_by == "carol (http)"
    await stage.close()
