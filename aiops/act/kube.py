"""Kubernetes actuators: scale up through the scale subresource, roll back like ``kubectl rollout undo``.

The thin async shell around two pure functions, :func:`scale_target` and :func:`rollback_patch`,
which work on the API's JSON (camelCase dicts) and are tested without a cluster. The client is
``kubernetes_asyncio`` with in-cluster service-account auth or a kubeconfig; no shell commands.

Requests made (and all the RBAC they need, see ``deploy/rbac.yaml``):

- scale_up: ``GET`` then ``PATCH /apis/apps/v1/namespaces/NS/{deployments|statefulsets}/NAME/scale``
- rollback: ``GET /apis/apps/v1/namespaces/NS/deployments/NAME``,
  ``GET /apis/apps/v1/namespaces/NS/replicasets?labelSelector=...``,
  ``PATCH /apis/apps/v1/namespaces/NS/deployments/NAME`` (JSON patch, guarded by a ``test`` of
  the resourceVersion that was read, so a concurrent change makes the rollback fail instead of
  clobbering it)
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

from aiops.act.core import ActResult, Execution
from aiops.act.ledger import target_service
from aiops.act.rules import ActionRules
from aiops.records import ActionOutcome

REVISION = "deployment.kubernetes.io/revision"
POD_TEMPLATE_HASH = "pod-template-hash"
# Annotations `kubectl rollout undo` keeps from the deployment rather than copying from the ReplicaSet.
_SKIP_ANNOTATIONS = frozenset({
    "kubectl.kubernetes.io/last-applied-configuration", REVISION, "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas", "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
})
ROLLBACK_ANNOTATION = "aiops.io/rolled-back-for"


async def api_client(kubeconfig: Path | None = None, context: str | None = None) -> client.ApiClient:
    """Build a client: the given kubeconfig, else the pod's service account, else ~/.kube/config."""
    cfg = client.Configuration()
    if kubeconfig is not None:
        await config.load_kube_config(config_file=str(kubeconfig), context=context, client_configuration=cfg)
    else:
        try:
            config.load_incluster_config(client_configuration=cfg)
        except ConfigException:
            await config.load_kube_config(context=context, client_configuration=cfg)
    return client.ApiClient(configuration=cfg)


def scale_target(current: int, step: int, max_replicas: int) -> int | None:
    """Replicas to scale to, or None when already at (or above) the maximum.

    >>> scale_target(3, 2, 10), scale_target(9, 2, 10), scale_target(10, 1, 10)
    (5, 10, None)
    """
    if current >= max_replicas:
        return None
    return min(current + step, max_replicas)


def _selector(match_labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(match_labels.items()))


def _revision(obj: dict[str, Any]) -> int:
    try:
        return int(((obj.get("metadata") or {}).get("annotations") or {}).get(REVISION, ""))
    except ValueError:
        return -1


def _strip_hash(template: dict[str, Any]) -> dict[str, Any]:
    t = copy.deepcopy(template)
    labels = (t.get("metadata") or {}).get("labels")
    if labels:
        labels.pop(POD_TEMPLATE_HASH, None)
    return t


def rollback_patch(deployment: dict[str, Any], replicasets: list[dict[str, Any]],
                   note: str = "") -> tuple[list[dict[str, Any]], int, int] | str:
    """The JSON patch that returns a deployment to its previous revision, as ``kubectl rollout undo`` does.

    Returns ``(patch, from_revision, to_revision)`` or a reason it cannot be done. Only
    ReplicaSets controlled by this deployment (owner reference uid) count as its history.

    >>> dep = {"metadata": {"uid": "u1", "resourceVersion": "7", "annotations": {REVISION: "2"}},
    ...        "spec": {"template": {"metadata": {"labels": {"app": "a"}}, "spec": {"image": "a:v2"}}}}
    >>> def rs(rev, image):
    ...     return {"metadata": {"annotations": {REVISION: str(rev)}, "ownerReferences": [{"uid": "u1",
    ...             "controller": True}]}, "spec": {"template": {"metadata": {"labels": {"app": "a",
    ...             POD_TEMPLATE_HASH: "h" + str(rev)}}, "spec": {"image": image}}}}
    >>> patch, old, new = rollback_patch(dep, [rs(1, "a:v1"), rs(2, "a:v2")])
    >>> old, new, patch[1]["value"]["spec"]["image"], patch[1]["value"]["metadata"]["labels"]
    (2, 1, 'a:v1', {'app': 'a'})
    >>> rollback_patch(dep, [rs(2, "a:v2")])
    'no previous revision of the deployment to roll back to'
    """
    meta = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    if spec.get("paused"):
        return "the deployment is paused; resume it before rolling back"
    uid = meta.get("uid")
    history = [rs for rs in replicasets
               if any(o.get("uid") == uid and o.get("controller") for o in (rs.get("metadata") or {}).get(
                   "ownerReferences") or ())
               and _revision(rs) > 0]
    if not history:
        return "no ReplicaSet history found for the deployment"
    history.sort(key=_revision)
    current = max(_revision(deployment), _revision(history[-1]))
    older = [rs for rs in history if _revision(rs) < current]
    if not older:
        return "no previous revision of the deployment to roll back to"
    previous = older[-1]
    template = _strip_hash((previous.get("spec") or {}).get("template") or {})
    if template == _strip_hash(spec.get("template") or {}):
        return f"the deployment already runs the template of revision {_revision(previous)}"
    kept = {k: v for k, v in (meta.get("annotations") or {}).items() if k in _SKIP_ANNOTATIONS}
    copied = {k: v for k, v in ((previous.get("metadata") or {}).get("annotations") or {}).items()
              if k not in _SKIP_ANNOTATIONS}
    annotations = {**kept, **copied, **({ROLLBACK_ANNOTATION: note} if note else {})}
    patch = [
        {"op": "test", "path": "/metadata/resourceVersion", "value": meta.get("resourceVersion")},
        {"op": "replace", "path": "/spec/template", "value": template},
        {"op": "replace", "path": "/metadata/annotations", "value": annotations},
    ]
    return patch, current, _revision(previous)


class KubeActuator:
    """scale_up and rollback against the Kubernetes API, for the workloads named in actions.yaml."""

    def __init__(self, api: client.ApiClient, rules: ActionRules, timeout_s: float = 10.0) -> None:
        self.api = api
        self.apps = client.AppsV1Api(api)
        self.rules = rules
        self.timeout_s = timeout_s

    async def scale_up(self, ex: Execution) -> ActResult:
        ns, kind, name = self.rules.kubernetes.workload(target_service(ex.action.target))
        rule = self.rules.rule("scale_up")
        where = f"{kind.lower()}s/{name} in {ns}"
        read, patch = ((self.apps.read_namespaced_stateful_set_scale, self.apps.patch_namespaced_stateful_set_scale)
                       if kind == "StatefulSet" else
                       (self.apps.read_namespaced_deployment_scale, self.apps.patch_namespaced_deployment_scale))
        try:
            scale = await read(name, ns, _request_timeout=self.timeout_s)
            current = int(scale.spec.replicas or 0)
            want = scale_target(current, _step(ex, rule.step), rule.max_replicas)
            if want is None:
                return ActResult(ActionOutcome.REFUSED, f"max_replicas: {where} already has {current} replicas "
                                                        f"(max {rule.max_replicas})")
            await patch(name, ns, {"spec": {"replicas": want}}, _request_timeout=self.timeout_s)
        except (TimeoutError, ApiException, aiohttp.ClientError) as exc:
            return ActResult(ActionOutcome.FAILED, f"kubernetes: {where}: {_describe(exc)}")
        return ActResult(ActionOutcome.DONE, f"scaled {where} from {current} to {want} replicas",
                         (("replicas_before", str(current)), ("replicas_after", str(want))))

    async def rollback(self, ex: Execution) -> ActResult:
        ns, kind, name = self.rules.kubernetes.workload(target_service(ex.action.target))
        where = f"deployments/{name} in {ns}"
        if kind != "Deployment":
            return ActResult(ActionOutcome.REFUSED, f"unsupported: rollback of a {kind} ({name})")
        try:
            dep = self.api.sanitize_for_serialization(
                await self.apps.read_namespaced_deployment(name, ns, _request_timeout=self.timeout_s))
            match = ((dep.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
            if not match:
                return ActResult(ActionOutcome.REFUSED, f"unsupported: {where} has no matchLabels selector")
            listed = await self.apps.list_namespaced_replica_set(ns, label_selector=_selector(match),
                                                                 _request_timeout=self.timeout_s)
            replicasets = self.api.sanitize_for_serialization(listed).get("items") or []
            plan = rollback_patch(dep, replicasets, note=ex.action.incident_id)
            if isinstance(plan, str):
                return ActResult(ActionOutcome.REFUSED, f"rollback: {where}: {plan}")
            patch, old, new = plan
            await self.apps.patch_namespaced_deployment(name, ns, patch, _request_timeout=self.timeout_s)
        except (TimeoutError, ApiException, aiohttp.ClientError) as exc:
            return ActResult(ActionOutcome.FAILED, f"kubernetes: {where}: {_describe(exc)}")
        return ActResult(ActionOutcome.DONE, f"rolled back {where} from revision {old} to {new}",
                         (("revision_before", str(old)), ("revision_after", str(new))))


def _step(ex: Execution, configured: int) -> int:
    # The decide rule may ask for a smaller step ("+1"); it may never exceed the configured one.
    try:
        asked = int(dict(ex.action.params).get("step", "").lstrip("+"))
    except ValueError:
        return configured
    return max(1, min(asked, configured))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        return f"{exc.status} {exc.reason}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
