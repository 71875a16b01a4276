"""deploy/rbac.yaml grants exactly the API calls the actuators make: no more, no fewer."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from aiops.act.core import ActionCore
from aiops.act.executor import Executor
from aiops.act.kube import KubeActuator, api_client
from aiops.act.ledger import Ledger
from aiops.act.retrain import RetrainActuator
from aiops.act.rules import load_action_rules
from aiops.records import ActionOutcome, SignalKind

from .kube_double import KubeDouble, deployment, write_kubeconfig
from .support import T0, incident, planned, signal

REPO = Path(__file__).resolve().parents[2]
PATH = re.compile(r"^/apis/(?P<group>[^/]+)/v1/namespaces/[^/]+/(?P<resource>[a-z]+)"
                  r"(?:/(?P<name>[^/]+)(?:/(?P<sub>[a-z]+))?)?$")


def granted() -> set[tuple[str, str, str]]:
    docs = list(yaml.safe_load_all((REPO / "deploy" / "rbac.yaml").read_text()))
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    out = set()
    for d in docs:
        if d["kind"] == "Role":
            for rule in d["rules"]:
                for g in rule["apiGroups"]:
                    for r in rule["resources"]:
                        out.update((g, r, v) for v in rule["verbs"])
    return out


def verb_of(method: str, path: str) -> tuple[str, str, str]:
    m = PATH.match(path)
    assert m, path
    resource = m["resource"] + (f"/{m['sub']}" if m["sub"] else "")
    verb = {"GET": "get" if m["name"] else "list", "PATCH": "patch", "POST": "create"}[method]
    return m["group"], resource, verb


async def test_role_matches_the_calls_made(tmp_path: Path) -> None:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "job.yaml").write_text("apiVersion: batch/v1\nkind: Job\nmetadata: {name: retrain}\n"
                                        "spec: {template: {spec: {containers: [{name: t, image: t}]}}}\n")
    (rules_dir / "actions.yaml").write_text("""
defaults: {dry_run: false, cooldown_s: 0}
actions: {scale_up: {}, rollback: {}, retrain: {}}
kubernetes: {workloads: {pg: {kind: StatefulSet}}}
retrain: {backend: job, job_template: job.yaml}
limits: {max_concurrent: 10}
""")
    rules = load_action_rules(rules_dir)
    double = await KubeDouble().start()
    double.add_deployment(deployment("checkout", image="v2", revision=2), history=("v1", "v2"))
    double.statefulsets[("default", "pg")] = deployment("pg")
    api = await api_client(write_kubeconfig(tmp_path / "kubeconfig", double.port))
    try:
        kube = KubeActuator(api, rules)
        with Ledger(tmp_path / "ledger.jsonl") as ledger:
            ex = Executor(ActionCore(rules, ledger.book, dry_run=False), ledger,
                          {"scale_up": kube.scale_up, "rollback": kube.rollback,
                           "retrain": RetrainActuator(rules, api=api)})
            outs = await ex.on_incident(incident("a", deploy_ts=T0 - 60), [planned("rollback", iid="a")], T0)
            outs += await ex.on_incident(incident("b"), [planned(iid="b")], T0)
            outs += await ex.on_incident(incident("c", "pg"), [planned(service="pg", iid="c")], T0)
            drift = (signal("ranker", "ranker:data_drift", kind=SignalKind.DRIFT),)
            outs += await ex.on_incident(incident("d", "ranker", signals=drift),
                                         [planned("retrain", "ranker", iid="d")], T0)
        assert [o.outcome for o in outs] == [ActionOutcome.DONE] * 4, [o.reason for o in outs]
    finally:
        await api.close()
        await double.stop()
    used = {verb_of(r.method, r.path) for r in double.requests}
    assert used == granted()
