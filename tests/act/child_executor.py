"""A minimal act daemon for the crash test: plans one scale_up and executes it, optionally hanging
right before (``--hang before``) or right after (``--hang after``) the actuator call so the test can
SIGKILL it there. Prints every output record as a JSON line."""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from aiops.act.core import ActionCore, ActResult, Execution
from aiops.act.executor import Executor
from aiops.act.kube import KubeActuator, api_client
from aiops.act.ledger import Ledger
from aiops.act.rules import parse_action_rules
from aiops.observe.logging import configure
from aiops.records import to_output

from .support import T0, incident, planned

RULES = "defaults: {dry_run: false, cooldown_s: 0}\nactions:\n  scale_up: {step: 1, max_replicas: 10}\n"


async def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ledger", type=Path, required=True)
    p.add_argument("--kubeconfig", type=Path, required=True)
    p.add_argument("--hang", choices=["before", "after", "no"], default="no")
    args = p.parse_args()
    configure()  # logs to stderr; stdout carries only the records
    rules = parse_action_rules(RULES)
    api = await api_client(args.kubeconfig)
    kube = KubeActuator(api, rules)

    async def scale_up(ex: Execution) -> ActResult:
        if args.hang == "before":
            print("HANGING", flush=True)
            await asyncio.Event().wait()
        result = await kube.scale_up(ex)
        if args.hang == "after":
            print("HANGING", flush=True)
            await asyncio.Event().wait()
        return result

    with Ledger(args.ledger) as ledger:
        ex = Executor(ActionCore(rules, ledger.book, dry_run=False), ledger, {"scale_up": scale_up})
        outs = await ex.start(T0 + 30)
        outs += await ex.on_incident(incident(ts=T0 + 30), [planned()], T0 + 30)
        for o in outs:
            print(json.dumps({"record": o.__class__.__name__, **(to_output(o) if hasattr(o, "outcome") else
                                                                  {"labels": dict(o.labels)})}), flush=True)
    await api.close()


if __name__ == "__main__":
    asyncio.run(main())
