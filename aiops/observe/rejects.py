"""Counted, logged rejection of bad input: the daemon keeps running and says what it skipped.

>>> r = Rejects(log_examples=False)
>>> r.reject("decode", "bad_json", where="metrics.jsonl:3")
>>> r.total, r.by_reason()
(1, {('decode', 'bad_json'): 1})
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import structlog
from prometheus_client import CollectorRegistry, Counter as PromCounter

log = structlog.get_logger(__name__)


@dataclass
class Rejects:
    """Counts rejected records by (stage, reason) and keeps the first examples of each.

    With a registry, also exports ``aiops_records_rejected_total{stage,reason}``.
    """

    registry: CollectorRegistry | None = None
    max_examples: int = 5
    log_examples: bool = True
    _counts: Counter[tuple[str, str]] = field(default_factory=Counter)
    _examples: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    _metric: PromCounter | None = None

    def __post_init__(self) -> None:
        if self.registry is not None:
            self._metric = PromCounter(
                "aiops_records_rejected", "Records rejected, by stage and reason",
                ["stage", "reason"], registry=self.registry,
            )

    def reject(self, stage: str, reason: str, where: str = "", detail: str = "") -> None:
        key = (stage, reason)
        self._counts[key] += 1
        examples = self._examples.setdefault(key, [])
        if len(examples) < self.max_examples:
            examples.append(f"{where}: {detail}" if where else detail)
            # Log the first few of each kind; a flood of the same reason shows in the counter.
            if self.log_examples:
                log.warning("record_rejected", stage=stage, reason=reason, where=where, detail=detail[:200])
        if self._metric is not None:
            self._metric.labels(stage, reason).inc()

    @property
    def total(self) -> int:
        return sum(self._counts.values())

    def by_reason(self) -> dict[tuple[str, str], int]:
        return dict(self._counts)

    def report(self) -> list[str]:
        """Human-readable lines: one per (stage, reason) with its count and first examples."""
        lines = []
        for (stage, reason), n in sorted(self._counts.items()):
            lines.append(f"{stage}/{reason}: {n}")
            lines.extend(f"    {ex}" for ex in self._examples.get((stage, reason), []))
        return lines
