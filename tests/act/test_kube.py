"""Kubernetes actuators through kubernetes_asyncio against an API double serving the real paths."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aiops.act.core import ActionCore
from aiops.act.executor import Executor
from aiops.act.kube import KubeActuator, api_client
from aiops.act.ledger import ActionState, Ledger
from aiops.act.rules import parse_action_rules
from aiops.records import ActionOutcome, Alert

from .kube_double import REVISION, KubeDouble, deployment, write_kubeconfig
from .support import T0, incident, planned

LIVE = """
defaults: {dry_run: false, cooldown_s: 0}
actions:
  scale_up: {step: 2, max_replicas: 5}
  rollback: {}
kubernetes:
  namespace: shop
  workloads:
    postgres: {namespace: data, kind: StatefulSet, name: pg}
"""
APPS = "/apis/apps/v1/namespaces"


@pytest.fixture
async def double() -> AsyncIterator[KubeDouble]:
    d = await KubeDouble().start()
    yield d
    await d.stop()


async def executor(double: KubeDouble, tmp_path: Path, text: str = LIVE, dry_run: bool = False) -> Executor:
    rules = parse_action_rules(text, "actions.yaml")
    api = await api_client(write_kubeconfig(tmp_path / "kubeconfig", double.port))
    kube = KubeActuator(api, rules)
    ledger = Ledger(tmp_path / "ledger.jsonl")
    return Executor(ActionCore(rules, ledger.book, dry_run=dry_run), ledger,
                    {"scale_up": kube.scale_up, "rollback": kube.rollback})


async def close(ex: Executor) -> None:
    ex.ledger.close()
    for a in ex.actuators.values():
        await a.__self__.api.close()  # type: ignore[attr-defined]


async def test_scale_up_patches_the_scale_subresource_once(double: KubeDouble, tmp_path: Path) -> None:
    double.add_deployment(deployment("checkout", "shop", replicas=2))
    ex = await executor(double, tmp_path)
    (out,) = await ex.on_incident(incident(), [planned()], T0)
    assert out.outcome is ActionOutcome.DONE and not out.dry_run
    assert out.reason == "scaled deployments/checkout in shop from 2 to 4 replicas"
    assert double.deployments[("shop", "checkout")]["spec"]["replicas"] == 4
    assert double.calls() == [("GET", f"{APPS}/shop/deployments/checkout/scale"),
                              ("PATCH", f"{APPS}/shop/deployments/checkout/scale")]
    patch = double.requests[1]
    assert patch.content_type == "application/strategic-merge-patch+json" and patch.body == {"spec": {"replicas": 4}}
    # the same decision again (next incident update): no request at all
    assert await ex.on_incident(incident(ts=T0 + 15), [planned()], T0 + 15) == []
    assert len(double.calls("PATCH")) == 1
    await close(ex)


async def test_scale_up_never_exceeds_max_replicas(double: KubeDouble, tmp_path: Path) -> None:
    double.add_deployment(deployment("checkout", "shop", replicas=4))
    ex = await executor(double, tmp_path)
    (out,) = await ex.on_incident(incident("a"), [planned(iid="a")], T0)
    assert out.outcome is ActionOutcome.DONE and double.deployments[("shop", "checkout")]["spec"]["replicas"] == 5
    (out,) = await ex.on_incident(incident("b"), [planned(iid="b")], T0 + 10)
    assert out.outcome is ActionOutcome.REFUSED
    assert out.reason == "max_replicas: deployments/checkout in shop already has 5 replicas (max 5)"
    assert len(double.calls("PATCH")) == 1
    await close(ex)


async def test_decided_step_is_honoured_but_capped_by_the_guard_config(double: KubeDouble, tmp_path: Path) -> None:
    from dataclasses import replace
    double.add_deployment(deployment("checkout", "shop", replicas=1))
    ex = await executor(double, tmp_path)
    (out,) = await ex.on_incident(incident("a"), [replace(planned(iid="a"), params=(("step", "+1"),))], T0)
    assert out.reason.endswith("from 1 to 2 replicas")
    (out,) = await ex.on_incident(incident("b"), [replace(planned(iid="b"), params=(("step", "+7"),))], T0)
    assert out.reason.endswith("from 2 to 4 replicas")  # configured step 2
    await close(ex)


async def test_scale_up_statefulset_from_workload_mapping(double: KubeDouble, tmp_path: Path) -> None:
    sts = deployment("pg", "data", replicas=1)
    sts["kind"] = "StatefulSet"
    double.statefulsets[("data", "pg")] = sts
    ex = await executor(double, tmp_path)
    (out,) = await ex.on_incident(incident(service="postgres"), [planned(service="postgres")], T0)
    assert out.outcome is ActionOutcome.DONE, out.reason
    assert sts["spec"]["replicas"] == 3
    assert double.calls("PATCH") == [("PATCH", f"{APPS}/data/statefulsets/pg/scale")]
    await close(ex)


async def test_rollback_patches_the_previous_template(double: KubeDouble, tmp_path: Path) -> None:
    dep = deployment("checkout", "shop", image="v3", revision=3)
    double.add_deployment(dep, history=("v1", "v2", "v3"))
    double.add_deployment(deployment("cart", "shop", image="v9"), history=("v8", "v9"))  # not ours
    ex = await executor(double, tmp_path)
    inc = incident(deploy_ts=T0 - 120)
    (out,) = await ex.on_incident(inc, [planned("rollback")], T0)
    assert out.outcome is ActionOutcome.DONE, out.reason
    assert out.reason == "rolled back deployments/checkout in shop from revision 3 to 2"
    assert double.calls() == [("GET", f"{APPS}/shop/deployments/checkout"),
                              ("GET", f"{APPS}/shop/replicasets"),
                              ("PATCH", f"{APPS}/shop/deployments/checkout")]
    assert double.requests[1].query == {"labelSelector": "app=checkout"}
    patch = double.requests[2]
    assert patch.content_type == "application/json-patch+json"
    assert patch.body[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "1000"}
    live = double.deployments[("shop", "checkout")]
    container = live["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example/checkout:v2"
    assert "pod-template-hash" not in live["spec"]["template"]["metadata"]["labels"]
    assert live["metadata"]["annotations"][REVISION] == "4"  # the controller made v2 the newest revision
    assert live["metadata"]["annotations"]["aiops.io/rolled-back-for"] == "inc-1"
    assert "deployment.kubernetes.io/desired-replicas" not in live["metadata"]["annotations"]
    await close(ex)


async def test_rollback_refused_without_history(double: KubeDouble, tmp_path: Path) -> None:
    double.add_deployment(deployment("checkout", "shop", image="v1"), history=("v1",))
    ex = await executor(double, tmp_path)
    (out,) = await ex.on_incident(incident(deploy_ts=T0 - 60), [planned("rollback")], T0)
    assert out.outcome is ActionOutcome.REFUSED
    assert out.reason == ("rollback: deployments/checkout in shop: "
                          "no previous revision of the deployment to roll back to")
    assert double.calls("PATCH") == []
    await close(ex)


async def test_api_errors_fail_the_action_and_escalate(double: KubeDouble, tmp_path: Path) -> None:
    ex = await executor(double, tmp_path)  # no deployment: 404
    out, alert = await ex.on_incident(incident(), [planned()], T0)
    assert out.outcome is ActionOutcome.FAILED and out.reason == \
        "kubernetes: deployments/checkout in shop: 404 Not Found"
    assert isinstance(alert, Alert)
    assert ex.ledger.book.with_state(ActionState.FAILED)
    await close(ex)


async def test_dry_run_makes_no_request(double: KubeDouble, tmp_path: Path) -> None:
    double.add_deployment(deployment("checkout", "shop"), history=("v1", "v2"))
    ex = await executor(double, tmp_path, dry_run=True)
    outs = await ex.on_incident(incident(deploy_ts=T0 - 60), [planned(), planned("rollback")], T0)
    assert [(o.type, o.outcome, o.dry_run) for o in outs] == [
        ("scale_up", ActionOutcome.PLANNED, True), ("rollback", ActionOutcome.PLANNED, True)]
    assert double.requests == []
    await close(ex)
