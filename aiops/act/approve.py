"""``aiops approve``: approve an action waiting in the ledger, or list the waiting ones.

The command appends an ``approved`` entry to the same ledger the daemon writes (under the
ledger's lock); the daemon reads it on its next tick and runs the action, re-checking the
guards that depend on time (maintenance, silences, cooldown, rate and concurrency limits).
An approval after the action's approval window is refused here and ignored by the daemon.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time

from aiops.act.ledger import ActionState, Ledger, LedgerEntry
from aiops.act.rules import ActionRulesError, load_action_rules
from aiops.act.stage import ledger_path, pending
from aiops.config import Settings


def approve_command(args: argparse.Namespace, settings: Settings) -> int:
    path = ledger_path(settings)
    if not path.exists():
        print(f"aiops approve: no ledger at {path}", file=sys.stderr)
        return 1
    with Ledger(path) as ledger:
        if args.list or not args.action_id:
            for item in pending(ledger):
                print(json.dumps(item, sort_keys=True))
            return 0
        return approve(ledger, settings, args.action_id, args.by or getpass.getuser(), time.time())


def approve(ledger: Ledger, settings: Settings, aid: str, by: str, now: float) -> int:
    """Append the approval; ``now`` is the wall clock (this is the edge, a human's action)."""
    try:
        rules = load_action_rules(settings.rules_dir)
    except ActionRulesError as exc:
        print(f"aiops approve: {exc}", file=sys.stderr)
        return 2
    t = ledger.book.get(aid)
    if t is None:
        print(f"aiops approve: unknown action {aid}", file=sys.stderr)
        return 1
    if t.state is not ActionState.AWAITING_APPROVAL:
        print(f"aiops approve: {aid} is {t.state.value}, not awaiting approval", file=sys.stderr)
        return 1
    ttl = rules.rule(t.type).approval_ttl_s
    if now >= t.planned_ts + ttl:
        print(f"aiops approve: {aid} expired ({ttl:.0f}s approval window)", file=sys.stderr)
        return 1
    ledger.append([LedgerEntry(ts=now, action_id=aid, state=ActionState.APPROVED, incident_id=t.incident_id,
                               type=t.type, target=t.target, reason=f"approved by {by}", params=t.params, by=by)])
    print(f"approved {aid}: {t.type} on {dict(t.target)} for incident {t.incident_id}")
    return 0
