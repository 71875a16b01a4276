"""The checkpoint store protocol and what every backend shares.

A backend is two methods, in the manner of Drain3's ``PersistenceHandler``: :meth:`save` a
snapshot (a plain JSON-able ``dict``) and :meth:`load` the newest usable one back, or ``None``.
Where the bytes live (a directory, a compacted Kafka topic, memory) is the backend's only
concern; the bytes themselves are always :mod:`aiops.state.envelope`'s versioned format.

A backend never raises on bad stored data: a corrupt or incompatible checkpoint is logged
(``checkpoint_unusable``), counted by reason, set aside where the backend can, and ``load``
falls back to an older generation or returns ``None`` (the daemon then starts cold rather than
not at all).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import structlog
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client import Counter as PromCounter

from aiops.state.envelope import Checkpoint

Offsets = Mapping[tuple[str, int], int]
"""Source positions a checkpoint covers: ``(topic, partition) -> next offset to read``."""


@runtime_checkable
class CheckpointStore(Protocol):
    """Where checkpoints live. ``save`` then ``load`` returns an equal ``dict``."""

    def save(self, snapshot: dict[str, Any], *, event_ts: float | None = None,
             offsets: Offsets | None = None) -> None:
        """Store ``snapshot`` durably (atomically: a crash leaves the old or the new one, whole)."""
        ...

    def load(self) -> dict[str, Any] | None:
        """The newest usable snapshot, or ``None`` if there is none."""
        ...

    def load_checkpoint(self) -> Checkpoint | None:
        """Like :meth:`load`, with the event time and offsets the snapshot covers."""
        ...

    def set_aside(self, reason: str, detail: str = "") -> None:
        """Mark the checkpoint the last load returned as unusable (the stages refused its state)."""
        ...


class StoreTelemetry:
    """Counts and logs of one store: saves, bytes written, unusable checkpoints by reason.

    ``failures`` is always kept (tests and ``aiops`` status lines read it); with a registry the
    same numbers are exported as ``aiops_checkpoint_saves_total``,
    ``aiops_checkpoint_unusable_total{reason}`` and ``aiops_checkpoint_bytes``.
    """

    def __init__(self, backend: str, registry: CollectorRegistry | None = None, logger: Any = None) -> None:
        self.backend = backend
        self.log = logger if logger is not None else structlog.get_logger(__name__)
        self.saves = 0
        self.failures: Counter[str] = Counter()
        self._saves_metric: PromCounter | None = None
        self._fail_metric: PromCounter | None = None
        self._bytes_metric: Gauge | None = None
        if registry is not None:
            self._saves_metric = PromCounter("aiops_checkpoint_saves", "Checkpoints written", ["backend"],
                                             registry=registry)
            self._fail_metric = PromCounter("aiops_checkpoint_unusable", "Checkpoints found unusable and set aside",
                                            ["backend", "reason"], registry=registry)
            self._bytes_metric = Gauge("aiops_checkpoint_bytes", "Size of the newest checkpoint", ["backend"],
                                       registry=registry)

    def saved(self, where: str, size: int, event_ts: float | None) -> None:
        self.saves += 1
        if self._saves_metric is not None and self._bytes_metric is not None:
            self._saves_metric.labels(self.backend).inc()
            self._bytes_metric.labels(self.backend).set(size)
        self.log.info("checkpoint_saved", backend=self.backend, where=where, bytes=size, event_ts=event_ts)

    def unusable(self, reason: str, where: str, detail: str, moved_to: str | None) -> None:
        self.failures[reason] += 1
        if self._fail_metric is not None:
            self._fail_metric.labels(self.backend, reason).inc()
        self.log.warning("checkpoint_unusable", backend=self.backend, reason=reason, where=where,
                         detail=detail[:300], moved_to=moved_to)

    def loaded(self, where: str, size: int, event_ts: float | None) -> None:
        self.log.info("checkpoint_loaded", backend=self.backend, where=where, bytes=size, event_ts=event_ts)
