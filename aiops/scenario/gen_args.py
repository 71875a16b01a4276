"""Arguments of ``aiops scenario generate`` (kept apart so building the CLI parser imports no numpy)."""

from __future__ import annotations

import argparse
from pathlib import Path

KIND_NAMES = ("bad-deploy", "traffic-surge", "datastore-down", "latency-injection", "memory-leak", "model-drift",
              "quiet-seasonal", "quiet-bursts")


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    """Add the generator's arguments to ``p``; defaults that depend on the kind stay ``None``."""
    p.add_argument("kind", choices=KIND_NAMES, help="what happens in the scenario")
    p.add_argument("--out", type=Path, required=True, help="scenario directory to write")
    p.add_argument("--seed", type=int, default=1, help="random seed: same arguments, same bytes")
    p.add_argument("--services", type=int, default=None, help="number of services, 2-15 (default per kind)")
    p.add_argument("--hours", type=float, default=6.0, help="length of the scenario")
    p.add_argument("--step", type=float, default=15.0, help="scrape interval in seconds")
    p.add_argument("--start", type=float, default=None,
                   help="unix start time (default: 2026-01-05 at the kind's start hour, UTC)")
    p.add_argument("--target", default=None, help="root-cause service (default per kind)")
    p.add_argument("--name", default=None, help="scenario name (default: the directory name)")
    p.add_argument("--log-scale", type=float, default=None, help="multiplier of routine log volume")
