"""The ``aiops`` command line: the edge where settings are read and the pipeline is built."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from aiops.config import ConfigError, Settings, load_settings
from aiops.observe.logging import configure
from aiops.scenario.gen_args import add_generate_arguments


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config, env=os.environ)


def cmd_replay(args: argparse.Namespace) -> int:
    from aiops.scenario.replay import replay_command

    return replay_command(args.scenario, _settings(args), out=args.out, check=args.check, quiet=args.quiet)


def cmd_check_rules(args: argparse.Namespace) -> int:
    from aiops.decide.rules import RulesError, load_rules

    rules_dir = args.rules if args.rules is not None else _settings(args).rules_dir
    try:
        rules = load_rules(rules_dir)
    except RulesError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"OK: {rules_dir}: {len(rules.remediations)} remediation rules, {len(rules.alerts.routes)} alert routes, "
          f"{len(rules.alerts.severity)} severity rules, {len(rules.topology)} topology entries, "
          f"{len(rules.detector_overrides)} detector overrides")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from aiops.correlate.explain import ExplainError, explain_file

    try:
        print(explain_file(args.incident_id, replay_out=args.replay_out, state=args.state))
    except (ExplainError, OSError, ValueError) as exc:
        print(f"aiops explain: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from aiops.runtime.live import run_command

    return run_command(_settings(args), out=args.out, kafka=not args.no_kafka, step_s=args.step)


def cmd_record(args: argparse.Namespace) -> int:
    from aiops.scenario.record import record_command

    return record_command(args, _settings(args))


def cmd_scenario_generate(args: argparse.Namespace) -> int:
    from aiops.scenario.generate import generate_command

    return generate_command(args)


def cmd_approve(args: argparse.Namespace) -> int:
    from aiops.act.approve import approve_command

    return approve_command(args, _settings(args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aiops", description=__doc__)
    parser.add_argument("--config", type=Path, default=None, help="YAML settings file (env AIOPS_* overrides it)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("replay", help="replay a scenario directory through the pipeline")
    p.add_argument("scenario", type=Path)
    p.add_argument("--out", type=Path, default=None, help="write decisions as JSON lines here")
    p.add_argument("--check", action="store_true", help="compare decisions with the scenario's expect")
    p.add_argument("--quiet", action="store_true", help="print only the check report")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("check-rules", help="validate rules/*.yaml; print OK or file:line errors")
    p.add_argument("--rules", type=Path, default=None, help="rules directory (default: settings rules_dir)")
    p.set_defaults(func=cmd_check_rules)

    p = sub.add_parser("approve", help="approve a remediation waiting for approval (or --list the waiting ones)")
    p.add_argument("action_id", nargs="?", help="the id shown in the planned action (act-...)")
    p.add_argument("--by", default=None, help="who approves (default: the login name)")
    p.add_argument("--list", action="store_true", help="list actions awaiting approval as JSON lines")
    p.set_defaults(func=cmd_approve)

    p = sub.add_parser("explain", help="why an incident opened and how its root causes were ranked")
    p.add_argument("incident_id")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--replay-out", type=Path, default=None, help="a replay output file (JSON lines)")
    src.add_argument("--state", type=Path, default=None, help="a state file holding a correlator snapshot")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("run", help="the live daemon: Kafka / remote-write / PromQL in, alerts out, until SIGTERM")
    p.add_argument("--out", type=Path, default=None, help="also append decisions as JSON lines here")
    p.add_argument("--no-kafka", action="store_true", help="do not consume Kafka (remote-write / poller only)")
    p.add_argument("--step", type=float, default=None, help="alignment step in seconds (default: runtime.step_s)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("record", help="capture a time range of live telemetry into a scenario directory")
    p.add_argument("--from", dest="source", choices=["kafka", "prometheus"], default="kafka")
    p.add_argument("--start", required=True, help="unix seconds or ISO 8601 (inclusive)")
    p.add_argument("--end", required=True, help="unix seconds or ISO 8601 (exclusive)")
    p.add_argument("--out", type=Path, required=True, help="scenario directory to write")
    p.add_argument("--name", default=None, help="scenario name (default: the directory name)")
    p.add_argument("--description", default=None)
    p.add_argument("--step", type=float, default=None, help="scrape step to record in scenario.yaml")
    p.add_argument("--query", action="append", default=None, help="PromQL selector (prometheus; repeatable)")
    p.add_argument("--expect-from", type=Path, default=None,
                   help="decisions (JSON lines of `aiops run --out`) whose incidents become the expect block")
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("scenario", help="scenario tools")
    scenario_sub = p.add_subparsers(dest="scenario_command", required=True)
    p = scenario_sub.add_parser("generate", help="write a seeded synthetic incident scenario (see scenarios/README.md)")
    add_generate_arguments(p)
    p.set_defaults(func=cmd_scenario_generate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"aiops: configuration error: {exc}", file=sys.stderr)
        return 2
    configure(settings.log_level, settings.log_format)
    result: int = args.func(args)
    return result
