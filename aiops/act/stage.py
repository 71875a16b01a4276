"""The act stage as the live daemon runs it: decisions in, executed (or refused) actions out.

Wiring only: it builds the ledger, the pure :class:`~aiops.act.core.ActionCore`, the actuators
that the configuration needs (no Kubernetes client at all while everything is a dry run), and
the approval endpoint. The daemon hands it every decision (incident records give actions their
context and drive verification) and calls :meth:`ActStage.tick` every ``act.tick_s``.

HTTP approval: ``POST /actions/{id}/approve`` with ``Authorization: Bearer <token>`` (the token
file from ``act.approve_token_file``; without it the endpoint answers 404). ``GET /actions``
lists actions awaiting approval (same token).
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry

from aiops.act.core import ActionCore
from aiops.act.executor import Actuator, Executor
from aiops.act.ledger import ActionState, Ledger, target_key
from aiops.act.metrics import ActMetrics
from aiops.act.rules import ActionRules
from aiops.config import Settings
from aiops.observe.rejects import Rejects
from aiops.records import Action, ActionOutcome, Alert, Decision, Incident

log = structlog.get_logger(__name__)

Handler = Any  # aiohttp handler; typed loosely to keep aiohttp's types out of the public surface


class ActStage:
    """Decisions -> guarded actions; see the module docstring."""

    def __init__(self, executor: Executor, *, approve_token: str | None = None,
                 closers: tuple[Any, ...] = (), retention_s: float | None = None) -> None:
        self.executor = executor
        self.retention_s = retention_s
        self.approve_token = approve_token
        self._closers = closers
        self.now = 0.0  # newest event time seen: approvals through HTTP are stamped with it

    @classmethod
    async def open(cls, settings: Settings, rules: ActionRules, registry: CollectorRegistry,
                   rejects: Rejects | None = None, actuators: Mapping[str, Actuator] | None = None) -> ActStage:
        """Build from settings; actuators default to Kubernetes + retrain as configured."""
        act = settings.act
        ledger = Ledger(ledger_path(settings), rejects, ActMetrics(registry))
        core = ActionCore(rules, ledger.book, dry_run=act.dry_run)
        closers: list[Any] = []
        built: dict[str, Actuator] = dict(actuators or {})
        live_types = {t for t in ("scale_up", "rollback", "retrain") if not act.dry_run and not rules.rule(t).dry_run}
        if actuators is None and live_types:
            built.update(await _build_actuators(settings, rules, live_types, closers))
        token = _read_token(act.approve_token_file)
        log.info("act_stage_open", ledger=str(ledger.path), dry_run=act.dry_run, live=sorted(live_types),
                 known_actions=len(ledger.book.actions), http_approval=token is not None)
        # Keep finished actions in memory well past every window a guard looks back over.
        retention = max(7 * 86400.0, rules.limits.failure_backoff_s * 2,
                        *(r.cooldown_s * 2 for r in (rules.defaults, *rules.actions.values())))
        return cls(Executor(core, ledger, built), approve_token=token, closers=tuple(closers), retention_s=retention)

    async def start(self, now: float) -> list[Action | Alert]:
        return await self.executor.start(now)

    async def on_decision(self, decision: Decision) -> list[Action | Alert]:
        """Feed every decision in event-time order; returns the resulting action records and escalations."""
        self.now = max(self.now, decision.ts)
        if isinstance(decision, Incident):
            return await self.executor.on_incident(decision, (), decision.ts)
        if isinstance(decision, Action) and decision.outcome is ActionOutcome.PLANNED:
            incident = self.executor.core.incident(decision.incident_id)
            if incident is None:
                log.warning("action_without_incident", incident_id=decision.incident_id, type=decision.type)
                return [Action(ts=decision.ts, incident_id=decision.incident_id, type=decision.type,
                               target=decision.target, dry_run=decision.dry_run, outcome=ActionOutcome.REFUSED,
                               reason="precondition: the incident record did not reach the act stage")]
            return await self.executor.on_incident(incident, (decision,), decision.ts)
        return []

    async def tick(self, now: float) -> list[Action | Alert]:
        self.now = max(self.now, now)
        out = await self.executor.tick(now)
        self.executor.core.forget_finished()
        if self.retention_s is not None:
            self.executor.ledger.book.prune(now - self.retention_s)
        return out

    def routes(self) -> dict[tuple[str, str], Handler]:
        """Routes for the daemon's HTTP server (``HttpServer(routes=...)``)."""
        return {("POST", "/actions/{id}/approve"): self._approve, ("GET", "/actions"): self._list}

    async def close(self) -> None:
        for c in self._closers:
            await c()
        self.executor.ledger.close()

    # -- HTTP ---------------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        if self.approve_token is None:
            return False
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.approve_token}".encode())

    async def _approve(self, request: web.Request) -> web.Response:
        if self.approve_token is None:
            return web.json_response({"error": "HTTP approval is not configured"}, status=404)
        if not self._authorized(request):
            log.warning("approval_unauthorized", remote=request.remote)
            return web.json_response({"error": "unauthorized"}, status=401)
        aid = request.match_info["id"]
        by = request.headers.get("X-Approved-By", "http")[:64]
        t = self.executor.ledger.book.get(aid)
        if not await self.executor.approve(aid, f"{by} (http)", self.now):
            state = t.state.value if t is not None else "unknown"
            return web.json_response({"error": f"{aid} is not awaiting approval (state: {state})"}, status=409)
        return web.json_response({"action_id": aid, "state": "approved", "by": by})

    async def _list(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.json_response({"error": "unauthorized"}, status=401 if self.approve_token else 404)
        return web.json_response(pending(self.executor.ledger))


def ledger_path(settings: Settings) -> Path:
    """Where the ledger lives: ``act.ledger_path``, else ``actions.jsonl`` in the state directory."""
    return settings.act.ledger_path or settings.state_dir / "actions.jsonl"


def pending(ledger: Ledger) -> list[dict[str, Any]]:
    """Actions awaiting approval, oldest first."""
    return [{"action_id": t.action_id, "incident_id": t.incident_id, "type": t.type, "target": target_key(t.target),
             "planned_ts": t.planned_ts, "reason": t.reason}
            for t in sorted(ledger.book.with_state(ActionState.AWAITING_APPROVAL), key=lambda t: t.planned_ts)]


def _read_token(path: Any) -> str | None:
    if path is None:
        return None
    token = str(path.read_text(encoding="utf-8")).strip()
    if not token:
        raise ValueError(f"{path}: empty token")
    return token


async def _build_actuators(settings: Settings, rules: ActionRules, live: set[str], closers: list[Any]
                           ) -> dict[str, Actuator]:
    from aiops.act.kube import KubeActuator, api_client
    from aiops.act.retrain import RetrainActuator

    out: dict[str, Actuator] = {}
    api = None
    if live & {"scale_up", "rollback"} or ("retrain" in live and rules.retrain.backend == "job"):
        api = await api_client(settings.act.kubeconfig, settings.act.kube_context)
        closers.append(api.close)
        kube = KubeActuator(api, rules)
        out.update(scale_up=kube.scale_up, rollback=kube.rollback)
    if "retrain" in live:
        session = producer = None
        if rules.retrain.backend == "http":
            session = aiohttp.ClientSession()
            closers.append(session.close)
        elif rules.retrain.backend == "kafka":
            from aiokafka import AIOKafkaProducer

            from aiops.sources.kafka import kafka_client_kwargs

            producer = AIOKafkaProducer(**kafka_client_kwargs(settings.kafka), acks="all")  # consumers dedupe by key
            await producer.start()
            closers.append(producer.stop)
        out["retrain"] = RetrainActuator(rules, session=session, producer=producer, api=api,
                                         token=_read_token(settings.act.retrain_token_file))
    return out

