"""Checkpoints kept in memory: for tests and for one process handing state to another object.

It stores the same encoded bytes as every other backend, so it exercises the envelope too.

>>> import structlog
>>> store = MemoryCheckpointStore(logger=structlog.wrap_logger(structlog.ReturnLogger()))
>>> store.load() is None
True
>>> store.save({"a": [1.5, 2.5]}, event_ts=30.0, offsets={("aiops.metrics", 3): 120})
>>> store.load(), store.load_checkpoint().offsets
({'a': [1.5, 2.5]}, {('aiops.metrics', 3): 120})
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from aiops.state.base import Offsets, StoreTelemetry
from aiops.state.envelope import Checkpoint, CheckpointError, decode, encode


class MemoryCheckpointStore:
    """A :class:`~aiops.state.base.CheckpointStore` holding the newest ``keep + 1`` checkpoints in a list."""

    def __init__(self, *, keep: int = 0, level: int = 1, registry: CollectorRegistry | None = None,
                 logger: Any = None) -> None:
        self.keep = keep
        self.level = level
        self.telemetry = StoreTelemetry("memory", registry, logger)
        self.blobs: list[bytes] = []  # newest first; public so tests can damage a checkpoint
        self.set_aside_blobs: list[bytes] = []
        self._last_loaded: int | None = None

    @property
    def failures(self) -> dict[str, int]:
        return dict(self.telemetry.failures)

    def save(self, snapshot: dict[str, Any], *, event_ts: float | None = None,
             offsets: Offsets | None = None) -> None:
        data = encode(Checkpoint(state=snapshot, created_event_ts=event_ts, offsets=dict(offsets or {})), self.level)
        self.blobs.insert(0, data)
        del self.blobs[self.keep + 1:]
        self.telemetry.saved("memory", len(data), event_ts)

    def load(self) -> dict[str, Any] | None:
        cp = self.load_checkpoint()
        return None if cp is None else cp.state

    def load_checkpoint(self) -> Checkpoint | None:
        self._last_loaded = None
        while self.blobs:
            try:
                cp = decode(self.blobs[0])
            except CheckpointError as exc:
                self._set_aside(0, exc.reason, exc.detail)
                continue
            self._last_loaded = 0
            self.telemetry.loaded("memory", len(self.blobs[0]), cp.created_event_ts)
            return cp
        return None

    def set_aside(self, reason: str, detail: str = "") -> None:
        if self._last_loaded is not None:
            self._set_aside(self._last_loaded, reason, detail)
            self._last_loaded = None

    def _set_aside(self, index: int, reason: str, detail: str) -> None:
        self.set_aside_blobs.append(self.blobs.pop(index))
        self.telemetry.unusable(reason, f"memory[{index}]", detail, "memory:set_aside")
