"""A Kubernetes API test double: the real paths, verbs, content types and JSON bodies the actuators use.

It keeps Deployments, StatefulSets and ReplicaSets in memory, applies strategic-merge patches
to the scale subresource and RFC 6902 JSON patches (``test``/``replace``/``add``/``remove``)
to Deployments, simulates the deployment controller's revision bump on a template change,
requires a bearer token, and records every request.
"""

from __future__ import annotations

import copy
import json
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

TOKEN = "test-token"
REVISION = "deployment.kubernetes.io/revision"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    """Start ``app`` on a free loopback port; the caller cleans the runner up."""
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, port


def write_kubeconfig(path: Path, port: int, token: str = TOKEN, namespace: str = "default") -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "double", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "aiops", "user": {"token": token}}],
        "contexts": [{"name": "double", "context": {"cluster": "double", "user": "aiops", "namespace": namespace}}],
        "current-context": "double",
    }))
    return path


def deployment(name: str, ns: str = "default", replicas: int = 2, image: str = "v1", revision: int = 1,
               uid: str | None = None) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "uid": uid or f"uid-{name}", "resourceVersion": "1000",
                     "generation": revision, "labels": labels,
                     "annotations": {REVISION: str(revision), "kubectl.kubernetes.io/last-applied-configuration": "{}"},
                     "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": {"replicas": replicas, "selector": {"matchLabels": labels},
                 "template": template(name, image),
                 "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
                 "revisionHistoryLimit": 10, "progressDeadlineSeconds": 600},
        "status": {"replicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas,
                   "observedGeneration": revision},
    }


def template(name: str, image: str, pod_hash: str | None = None) -> dict[str, Any]:
    labels = {"app": name, **({"pod-template-hash": pod_hash} if pod_hash else {})}
    return {"metadata": {"labels": labels},
            "spec": {"containers": [{"name": name, "image": f"registry.example/{name}:{image}",
                                     "ports": [{"containerPort": 8080, "protocol": "TCP"}]}]}}


def replicaset(dep: dict[str, Any], image: str, revision: int, replicas: int = 0) -> dict[str, Any]:
    name = dep["metadata"]["name"]
    pod_hash = f"{abs(hash((name, image))) % 10**10:010d}"
    return {
        "apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": f"{name}-{pod_hash}", "namespace": dep["metadata"]["namespace"],
                     "uid": f"rs-{name}-{revision}", "resourceVersion": str(900 + revision),
                     "labels": {"app": name, "pod-template-hash": pod_hash},
                     "annotations": {REVISION: str(revision), "deployment.kubernetes.io/desired-replicas": "2",
                                     "deployment.kubernetes.io/max-replicas": "3"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": name,
                                          "uid": dep["metadata"]["uid"], "controller": True,
                                          "blockOwnerDeletion": True}]},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name, "pod-template-hash": pod_hash}},
                 "template": template(name, image, pod_hash)},
        "status": {"replicas": replicas},
    }


def _status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                              "message": message, "reason": reason, "code": code}, status=code)


def _pointer(doc: Any, path: str) -> tuple[Any, str]:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]
    for p in parts[:-1]:
        doc = doc[int(p)] if isinstance(doc, list) else doc[p]
    return doc, parts[-1]


def json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """Apply an RFC 6902 patch; raise ValueError when a ``test`` fails or a path is missing."""
    out = copy.deepcopy(doc)
    for op in ops:
        parent, key = _pointer(out, op["path"])
        if op["op"] == "test":
            if parent.get(key) != op["value"]:
                raise ValueError(f"test failed at {op['path']}")
        elif op["op"] in ("replace", "add"):
            if op["op"] == "replace" and key not in parent:
                raise ValueError(f"replace of missing {op['path']}")
            parent[key] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            del parent[key]
        else:
            raise ValueError(f"unsupported op {op['op']}")
    return out


@dataclass
class KubeDouble:
    deployments: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    statefulsets: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    replicasets: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    port: int = 0
    _runner: web.AppRunner | None = None

    def add_deployment(self, dep: dict[str, Any], history: tuple[str, ...] = ()) -> None:
        """Add a deployment whose ReplicaSet history is ``history`` (oldest first, the last is current)."""
        self.deployments[(dep["metadata"]["namespace"], dep["metadata"]["name"])] = dep
        for rev, image in enumerate(history, start=1):
            self.replicasets.append(replicaset(dep, image, rev, replicas=dep["spec"]["replicas"]
                                               if rev == len(history) else 0))

    def calls(self, method: str | None = None) -> list[tuple[str, str]]:
        return [(r.method, r.path) for r in self.requests if method is None or r.method == method]

    async def start(self) -> KubeDouble:
        app = web.Application(middlewares=[self._record])
        base = "/apis/apps/v1/namespaces/{ns}"
        app.router.add_get(base + "/deployments/{name}", self.get_deployment)
        app.router.add_patch(base + "/deployments/{name}", self.patch_deployment)
        app.router.add_get(base + "/{kind:deployments|statefulsets}/{name}/scale", self.get_scale)
        app.router.add_patch(base + "/{kind:deployments|statefulsets}/{name}/scale", self.patch_scale)
        app.router.add_get(base + "/replicasets", self.list_replicasets)
        app.router.add_post("/apis/batch/v1/namespaces/{ns}/jobs", self.create_job)
        self._runner, self.port = await serve(app)
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        body = None
        if request.can_read_body:
            raw = await request.read()
            body = json.loads(raw) if raw else None
        self.requests.append(Request(request.method, request.path, dict(request.query),
                                     request.headers.get("Content-Type", ""), body))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return _status(401, "Unauthorized", "Unauthorized")
        return await handler(request)  # type: ignore[no-any-return]

    def _workload(self, request: web.Request) -> dict[str, Any] | None:
        store = self.statefulsets if request.match_info.get("kind") == "statefulsets" else self.deployments
        return store.get((request.match_info["ns"], request.match_info["name"]))

    async def get_deployment(self, request: web.Request) -> web.Response:
        dep = self._workload(request)
        if dep is None:
            return _status(404, "NotFound", f'deployments.apps "{request.match_info["name"]}" not found')
        return web.json_response(dep)

    async def patch_deployment(self, request: web.Request) -> web.Response:
        dep = self._workload(request)
        if dep is None:
            return _status(404, "NotFound", f'deployments.apps "{request.match_info["name"]}" not found')
        if request.headers.get("Content-Type") != "application/json-patch+json":
            return _status(415, "UnsupportedMediaType", "this double expects a JSON patch for deployments")
        try:
            new = json_patch(dep, await request.json())
        except (ValueError, KeyError, IndexError) as exc:
            return _status(422, "Invalid", str(exc))
        self._bump(new)
        if new["spec"]["template"] != dep["spec"]["template"]:
            self._controller_rollout(new)
        dep.clear()
        dep.update(new)
        return web.json_response(dep)

    def _controller_rollout(self, dep: dict[str, Any]) -> None:
        # What the deployment controller does on a template change: the ReplicaSet with the same
        # template (ignoring pod-template-hash) becomes the newest revision.
        owned = [rs for rs in self.replicasets
                 if rs["metadata"]["ownerReferences"][0]["uid"] == dep["metadata"]["uid"]]
        top = max(int(rs["metadata"]["annotations"][REVISION]) for rs in owned)
        for rs in owned:
            t = copy.deepcopy(rs["spec"]["template"])
            t["metadata"]["labels"].pop("pod-template-hash", None)
            if t == dep["spec"]["template"]:
                rs["metadata"]["annotations"][REVISION] = str(top + 1)
                dep["metadata"]["annotations"][REVISION] = str(top + 1)

    @staticmethod
    def _bump(obj: dict[str, Any]) -> None:
        obj["metadata"]["resourceVersion"] = str(int(obj["metadata"]["resourceVersion"]) + 1)
        obj["metadata"]["generation"] = int(obj["metadata"].get("generation", 1)) + 1

    @staticmethod
    def _scale(obj: dict[str, Any]) -> dict[str, Any]:
        m = obj["metadata"]
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {"name": m["name"], "namespace": m["namespace"], "uid": m["uid"],
                             "resourceVersion": m["resourceVersion"], "creationTimestamp": "2026-01-01T00:00:00Z"},
                "spec": {"replicas": obj["spec"]["replicas"]},
                "status": {"replicas": obj["status"]["replicas"],
                           "selector": ",".join(f"{k}={v}" for k, v in obj["spec"]["selector"]["matchLabels"].items())}}

    async def get_scale(self, request: web.Request) -> web.Response:
        obj = self._workload(request)
        if obj is None:
            return _status(404, "NotFound", f'{request.match_info["kind"]}.apps "{request.match_info["name"]}" '
                                            "not found")
        return web.json_response(self._scale(obj))

    async def patch_scale(self, request: web.Request) -> web.Response:
        obj = self._workload(request)
        if obj is None:
            return _status(404, "NotFound", "not found")
        if request.headers.get("Content-Type") not in ("application/strategic-merge-patch+json",
                                                       "application/merge-patch+json"):
            return _status(415, "UnsupportedMediaType", "expected a merge patch for scale")
        body = await request.json()
        obj["spec"]["replicas"] = int(body["spec"]["replicas"])
        self._bump(obj)
        return web.json_response(self._scale(obj))

    async def list_replicasets(self, request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        want = dict(p.split("=", 1) for p in request.query.get("labelSelector", "").split(",") if p)
        items = [rs for rs in self.replicasets if rs["metadata"]["namespace"] == ns
                 and all(rs["metadata"]["labels"].get(k) == v for k, v in want.items())]
        return web.json_response({"kind": "ReplicaSetList", "apiVersion": "apps/v1",
                                  "metadata": {"resourceVersion": "2000"}, "items": items})

    async def create_job(self, request: web.Request) -> web.Response:
        job = await request.json()
        job.setdefault("metadata", {})
        job["metadata"]["namespace"] = request.match_info["ns"]
        job["metadata"]["uid"] = f"job-{len(self.jobs)}"
        if "generateName" in job["metadata"] and "name" not in job["metadata"]:
            job["metadata"]["name"] = job["metadata"]["generateName"] + f"{len(self.jobs):05d}"
        if any(j["metadata"]["name"] == job["metadata"]["name"] and j["metadata"]["namespace"] == job["metadata"][
                "namespace"] for j in self.jobs):
            return _status(409, "AlreadyExists", f'jobs.batch "{job["metadata"]["name"]}" already exists')
        self.jobs.append(job)
        return web.json_response(job, status=201)
