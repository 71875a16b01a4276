"""The retrain actuator: start a training pipeline with the model name, the drift evidence and a data window.

One backend, chosen in ``actions.yaml`` (``retrain.backend``):

- ``http``: ``POST`` the request as JSON to a pipeline endpoint (Kubeflow Pipelines runs, Argo
  Workflows submit, Airflow dag runs all take a JSON body), with a bearer token and an
  ``Idempotency-Key`` header set to the action id;
- ``kafka``: one message on a topic, keyed by the action id;
- ``job``: a Kubernetes ``batch/v1`` Job from a template, with the request passed as environment
  variables and a name derived from the action id, so a second create is a 409, not a second run.

The request itself (:func:`retrain_request`) is pure and built from the incident's drift signals.

>>> from aiops.act.core import Execution
>>> from aiops.records import Action, ActionOutcome, Incident, IncidentStatus, Signal, SignalKind
>>> sig = Signal(id="d", ts=100.0, kind=SignalKind.DRIFT, service="ranker", name="ranker:data_drift", score=0.4,
...              evidence=("feature price: PSI 0.41, KS p=1e-09",), labels=(("model", "ranker"),))
>>> inc = Incident(id="i", ts=500.0, status=IncidentStatus.OPEN, opened_ts=120.0, services=("ranker",),
...                root_causes=(), severity="warning", signals=(sig,))
>>> act = Action(ts=500.0, incident_id="i", type="retrain", target=(("service", "ranker"),), dry_run=False,
...              outcome=ActionOutcome.PLANNED)
>>> req = retrain_request(Execution("act-1", act, inc), data_window_s=3600)
>>> req["model"], req["data_window"], req["drift"]["evidence"]
('ranker', {'start': -3100.0, 'end': 500.0}, ['feature price: PSI 0.41, KS p=1e-09'])
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import yaml
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from aiops.act.core import ActResult, Execution
from aiops.act.ledger import target_service
from aiops.act.rules import ActionRules, RetrainRules
from aiops.records import ActionOutcome, SignalKind


def retrain_request(ex: Execution, data_window_s: float) -> dict[str, Any]:
    """The JSON request every backend sends: what to retrain, why, and on which data."""
    svc = target_service(ex.action.target)
    drift = ([s for s in ex.incident.signals if s.kind is SignalKind.DRIFT and s.service == svc]
             or [s for s in ex.incident.signals if s.kind is SignalKind.DRIFT]
             # metric-detected model decay (model_* gauges) is evidence too when no drift monitor runs
             or [s for s in ex.incident.signals if s.service == svc and s.name.startswith("model_")])
    model = (dict(ex.action.params).get("model") or dict(ex.action.target).get("model")
             or next((dict(s.labels).get("model") for s in drift if dict(s.labels).get("model")), None)
             or (drift[0].name.split(":", 1)[0] if drift else svc))
    end = ex.incident.ts
    return {
        "model": model,
        "service": svc,
        "incident_id": ex.incident.id,
        "action_id": ex.action_id,
        "reason": "drift",
        "drift": {
            "signals": [{"name": s.name, "onset": s.ts, "score": round(s.score, 4), **dict(s.labels)} for s in drift],
            "evidence": [e for s in drift for e in s.evidence],
        },
        "data_window": {"start": end - data_window_s, "end": end},
    }


class Producer(Protocol):
    """The part of ``aiokafka.AIOKafkaProducer`` the kafka backend uses."""

    async def send_and_wait(self, topic: str, value: bytes | None = None, key: bytes | None = None) -> Any: ...


class RetrainActuator:
    """Trigger a retrain through the configured backend; never raises for an expected failure."""

    def __init__(self, rules: ActionRules, *, session: aiohttp.ClientSession | None = None,
                 producer: Producer | None = None, api: client.ApiClient | None = None,
                 token: str | None = None) -> None:
        self.cfg: RetrainRules = rules.retrain
        self.namespace = rules.kubernetes.namespace
        self.session = session
        self.producer = producer
        self.api = api
        self.token = token
        self._template: dict[str, Any] | None = None
        if self.cfg.backend == "job" and self.cfg.job_template is not None:
            self._template = load_job_template(self.cfg.job_template)

    async def __call__(self, ex: Execution) -> ActResult:
        request = retrain_request(ex, self.cfg.data_window_s)
        window = f"data {request['data_window']['start']:.0f}..{request['data_window']['end']:.0f}"
        params = (("model", str(request["model"])), ("backend", self.cfg.backend))
        try:
            if self.cfg.backend == "http":
                run = await self._http(request)
            elif self.cfg.backend == "kafka":
                run = await self._kafka(request)
            else:
                run = await self._job(request)
        except _Refused as exc:
            return ActResult(ActionOutcome.FAILED, f"retrain: {exc}", params)
        except (TimeoutError, aiohttp.ClientError, ApiException, OSError) as exc:
            detail = f"{exc.status} {exc.reason}" if isinstance(exc, ApiException) else f"{type(exc).__name__}: {exc}"
            return ActResult(ActionOutcome.FAILED, f"retrain: {self.cfg.backend}: {detail}", params)
        return ActResult(ActionOutcome.DONE, f"retrain of {request['model']} started via {self.cfg.backend} "
                                             f"({run}; {window})", (*params, ("run", run)))

    async def _http(self, request: dict[str, Any]) -> str:
        if self.cfg.url is None or self.session is None:
            raise _Refused("http backend needs retrain.url and an HTTP session")
        headers = {"Idempotency-Key": request["action_id"]}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        timeout = aiohttp.ClientTimeout(total=self.cfg.timeout_s)
        async with self.session.post(self.cfg.url, json=request, headers=headers, timeout=timeout) as resp:
            text = await resp.text()
            if resp.status >= 300:
                raise _Refused(f"http: {self.cfg.url} answered {resp.status}: {text[:200]}")
        try:
            body = json.loads(text) if text else {}
        except ValueError:
            body = {}
        run = _run_id(body) if isinstance(body, dict) else None
        return f"run {run}" if run else f"HTTP {resp.status}"

    async def _kafka(self, request: dict[str, Any]) -> str:
        if self.producer is None or self.cfg.topic is None:
            raise _Refused("kafka backend needs retrain.topic and a producer")
        await asyncio.wait_for(self.producer.send_and_wait(
            self.cfg.topic, json.dumps(request, sort_keys=True).encode(), key=request["action_id"].encode()),
            self.cfg.timeout_s)
        return f"message on {self.cfg.topic}"

    async def _job(self, request: dict[str, Any]) -> str:
        if self.api is None or self._template is None:
            raise _Refused("job backend needs retrain.job_template and a Kubernetes client")
        job = job_manifest(self._template, request)
        ns = job["metadata"].get("namespace") or self.namespace
        try:
            await client.BatchV1Api(self.api).create_namespaced_job(ns, job, _request_timeout=self.cfg.timeout_s)
        except ApiException as exc:
            if exc.status != 409:
                raise
            return f"job {ns}/{job['metadata']['name']} already existed"
        return f"job {ns}/{job['metadata']['name']}"


class _Refused(Exception):
    pass


def _run_id(body: dict[str, Any]) -> str | None:
    # Kubeflow: run_id or run.id; Airflow: dag_run_id; Argo: metadata.name.
    for path in (("run_id",), ("run", "id"), ("dag_run_id",), ("metadata", "name"), ("id",)):
        node: Any = body
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, (str, int)):
            return str(node)
    return None


def load_job_template(path: Path) -> dict[str, Any]:
    """Read a ``batch/v1`` Job manifest; raise ``ValueError`` naming the file when it is not one."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("kind") != "Job" or not doc.get("spec", {}).get("template"):
        raise ValueError(f"{path}: not a batch/v1 Job with spec.template")
    return doc


def job_manifest(template: dict[str, Any], request: dict[str, Any]) -> dict[str, Any]:
    """The Job to create: the template with a deterministic name and the request as env variables.

    >>> t = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "retrain"},
    ...      "spec": {"template": {"spec": {"containers": [{"name": "t", "image": "trainer"}]}}}}
    >>> job = job_manifest(t, {"model": "m", "action_id": "act-0123456789ab", "incident_id": "i",
    ...                        "data_window": {"start": 1.0, "end": 2.0}, "drift": {}})
    >>> job["metadata"]["name"], [e["name"] for e in job["spec"]["template"]["spec"]["containers"][0]["env"]]
    ('retrain-0123456789ab', ['AIOPS_MODEL', 'AIOPS_INCIDENT_ID', 'AIOPS_DATA_START', 'AIOPS_DATA_END', \
'AIOPS_RETRAIN_REQUEST'])
    """
    job = json.loads(json.dumps(template))  # deep copy of plain data
    meta = job.setdefault("metadata", {})
    base = meta.pop("generateName", None) or meta.get("name") or "aiops-retrain"
    meta["name"] = f"{base.rstrip('-')}-{request['action_id'].removeprefix('act-')}"[:63]
    meta.setdefault("labels", {})["aiops.io/action-id"] = request["action_id"]
    env = [
        {"name": "AIOPS_MODEL", "value": str(request["model"])},
        {"name": "AIOPS_INCIDENT_ID", "value": str(request["incident_id"])},
        {"name": "AIOPS_DATA_START", "value": f"{request['data_window']['start']:.0f}"},
        {"name": "AIOPS_DATA_END", "value": f"{request['data_window']['end']:.0f}"},
        {"name": "AIOPS_RETRAIN_REQUEST", "value": json.dumps(request, sort_keys=True)},
    ]
    for c in job["spec"]["template"]["spec"].get("containers", []):
        c["env"] = [e for e in c.get("env", []) if not str(e.get("name", "")).startswith("AIOPS_")] + env
    return job  # type: ignore[no-any-return]
