"""The ``aiops`` command line: the edge where settings are read and the pipeline is built."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from aiops.config import ConfigError, Settings, load_settings
from aiops.observe.logging import configure


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(args.config, env=os.environ)


def cmd_replay(args: argparse.Namespace) -> int:
    from aiops.scenario.replay import replay_command

    return replay_command(args.scenario, _settings(args), out=args.out, check=args.check, quiet=args.quiet)


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
