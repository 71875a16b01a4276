"""Snapshot forms the detector must restore from: the checkpoint envelope's, and the old list form."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from aiops.state.envelope import Checkpoint, decode, encode


def through_checkpoint(snap: dict[str, Any]) -> dict[str, Any]:
    """The snapshot as a restarted daemon reads it back: through the real checkpoint envelope."""
    return decode(encode(Checkpoint(state={"s": snap}))).state["s"]


def as_old_lists(snap: dict[str, Any]) -> dict[str, Any]:
    """A scorer snapshot in the list form checkpoints held before arrays (NaN as None), through JSON."""
    season = [[None if math.isnan(v) else v for v in row] for row in snap["season"].astype(np.float64).tolist()]
    old = {**snap, "arrays": {k: v.tolist() for k, v in snap["arrays"].items()}, "season": season,
           "transitions": snap["transitions"].astype(np.float64).tolist()}
    return json.loads(json.dumps(old))
