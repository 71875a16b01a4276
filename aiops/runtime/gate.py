"""The progress gate: which steps the one correlator may close, given what every partition reported.

Scale-out (docs/scale-out.md) runs one detect half per input partition and one correlator for
all of them. The correlator may tick at step ``s`` only once every partition has closed ``s``,
or a signal of a slower partition would reach it after the step it belongs to. Each detect half
reports its progress with its steps (:class:`~aiops.runtime.signals_topic.PartitionSteps`);
the gate keeps the steps' signals and changes until it may release them, and then releases every
step up to the **frontier**: the minimum progress over the partitions.

* **Every partition counts.** With ``partitions`` given (the input topics' partition count),
  nothing is released until each partition has reported, so the first instance to start does not
  run ahead of the others. A partition whose owner has read everything it holds without ever
  finding a record (no service hashes to it) reports ``empty`` and is left out; a silent one whose
  half has started is moved on by its owner (docs/scale-out.md), so it does not hold the others.
* **A dead owner holds the correlator back** until the group hands its partitions to a survivor
  (the session timeout plus a restore): that is latency, not loss. ``stale_steps`` optionally caps
  it in event time (a partition that far behind the most advanced one is left out of the minimum);
  off by default, because while instances catch up on a backlog at different speeds, event time
  says nothing about being dead: in the fault test a cap of the lateness bound (20 steps) left out
  a partition that was only slower and delayed the incident by 24 steps.
* **Late steps** — a step of a partition that comes after the frontier passed it (the partition
  was stale, or reported for the first time) — are not lost: their signals and changes go to the
  next step released, with their own event times, and are counted (``late_items``).
* **Repeats** — a detect half restored from an older checkpoint publishes again the steps it had
  published before it stopped. Steps at or below a partition's reported progress are dropped
  (``duplicate_steps``), so a replayed tail is not correlated twice.
* **Order** — a released step carries its signals and changes partition by partition (ascending),
  each partition's in the order its half produced them, whatever order the messages came in.

Pure and synchronous: time is what the messages say.

>>> from aiops.records import ChangeEvent
>>> from aiops.runtime.pipeline import ClosedStep
>>> from aiops.runtime.signals_topic import PartitionSteps
>>> g = ProgressGate(step_s=15.0, partitions=3, stale_steps=10)
>>> deploy = ChangeEvent(1500.0, "deploy", "api")
>>> g.add(PartitionSteps(0, 15.0, through=102, steps=(ClosedStep(100, 15.0, (deploy,)),)))
>>> g.add(PartitionSteps(1, 15.0, through=100))
>>> g.close()  # partition 2 has not reported yet
[]
>>> g.add(PartitionSteps(2, 15.0, empty=True))  # and never had data
>>> [(s.index, len(s.items)) for s in g.close()]  # partition 1 has closed only up to 100
[(100, 1)]
>>> g.add(PartitionSteps(1, 15.0, through=107))
>>> [s.index for s in g.close()], g.frontier  # partition 0 (102) now holds back partition 1
([101, 102], 102)
>>> g.add(PartitionSteps(1, 15.0, through=115))  # partition 0 is now 13 steps behind: stale
>>> [s.index for s in g.close()][-1], g.stale_partitions()
(115, [0])
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from aiops.observe.rejects import Rejects
from aiops.runtime.pipeline import MAX_CLOSE_STEPS, ClosedStep, StepItem
from aiops.runtime.signals_topic import PartitionSteps, item_from_plain, item_to_plain

GATE_VERSION = 1


class ProgressGate:
    """Merges the partitions' closed steps into one step sequence for the correlator (module docstring)."""

    def __init__(self, step_s: float, *, partitions: int | None = None, stale_steps: int | None = None,
                 rejects: Rejects | None = None) -> None:
        if stale_steps is not None and stale_steps < 1:
            raise ValueError("stale_steps must be >= 1 (or None: never)")
        self.step_s = float(step_s)
        self.partitions = partitions
        self.stale_steps = stale_steps
        self.rejects = rejects
        self._empty: set[int] = set()  # partitions whose owner found nothing in them, ever
        self._real: dict[int, int] = {}  # partition -> last step its half closed (dedup key)
        self._idle: dict[int, int] = {}  # partition -> progress vouched for a half with no record yet
        self._buffer: dict[int, dict[int, list[StepItem]]] = {}  # step -> partition -> items
        self._cursor: int | None = None  # next step to release
        self._first: int | None = None  # earliest step any message mentioned (where releasing starts)
        self.late_items = 0
        self.duplicate_steps = 0

    # -- input -------------------------------------------------------------------------------

    def add(self, m: PartitionSteps) -> None:
        """Take one partition's message (any partition, any order of partitions)."""
        if m.step_s != self.step_s:
            if self.rejects is not None:
                self.rejects.reject("signals", "other_step", detail=f"partition {m.partition} step {m.step_s} s, "
                                    f"correlator step {self.step_s} s")
            return
        p = m.partition
        real = self._real.get(p)
        for s in m.steps:
            if real is not None and s.index <= real:
                self.duplicate_steps += 1
                continue
            self._note_first(s.index)
            if not s.items:
                continue
            index = s.index
            if self._cursor is not None and index < self._cursor:
                self.late_items += len(s.items)
                index = self._cursor  # released with the next step, with their own event times
            self._buffer.setdefault(index, {}).setdefault(p, []).extend(s.items)
        if m.through is not None and (real is None or m.through > real):
            self._real[p] = m.through
            self._note_first(m.through)
        if m.idle_through is not None and m.idle_through > self._idle.get(p, -math.inf):
            self._idle[p] = m.idle_through
            self._note_first(m.idle_through)
        if m.empty:
            self._empty.add(p)

    def _note_first(self, index: int) -> None:
        if self._first is None or index < self._first:
            self._first = index

    # -- progress ----------------------------------------------------------------------------

    def progress(self) -> dict[int, int]:
        """Each known partition's progress: the last step it closed (or its owner vouched for)."""
        out = dict(self._idle)
        for p, s in self._real.items():
            out[p] = max(s, out.get(p, s))
        return out

    def stale_partitions(self) -> list[int]:
        """Partitions left out of the frontier: more than ``stale_steps`` behind the most advanced."""
        prog = self.progress()
        if not prog or self.stale_steps is None:
            return []
        top = max(prog.values())
        return sorted(p for p, s in prog.items() if s < top - self.stale_steps)

    def waiting_for(self) -> list[int]:
        """Required partitions that have not reported yet (nothing is released until they have)."""
        if self.partitions is None:
            return []
        heard = set(self._real) | set(self._idle) | self._empty
        return [p for p in range(self.partitions) if p not in heard]

    @property
    def frontier(self) -> int | None:
        """The last step every partition that counts has closed; ``None`` while that is unknown."""
        if self.waiting_for():
            return None
        prog = self.progress()
        if not prog:
            return None
        top = max(prog.values())
        floor = top - self.stale_steps if self.stale_steps is not None else -math.inf
        return min(s for s in prog.values() if s >= floor)

    @property
    def next_step(self) -> int | None:
        """The next step :meth:`close` will release (``None`` before the first release)."""
        return self._cursor

    @property
    def watermark(self) -> float:
        """Event time of the last released step (``-inf`` before the first)."""
        return (self._cursor - 1) * self.step_s if self._cursor is not None else -math.inf

    def close(self) -> list[ClosedStep]:
        """Every step up to the frontier not yet released, oldest first, each with its signals and changes."""
        frontier = self.frontier
        if frontier is None or self._first is None:
            return []
        first = self._cursor if self._cursor is not None else self._first
        if frontier < first:
            return []
        if frontier - first > MAX_CLOSE_STEPS:
            # As the detect half does after a long silence; what was buffered before goes to the first step kept.
            first = frontier - MAX_CLOSE_STEPS
            for index in [i for i in self._buffer if i < first]:
                for p, items in self._buffer.pop(index).items():
                    self._buffer.setdefault(first, {}).setdefault(p, []).extend(items)
        out: list[ClosedStep] = []
        for index in range(first, frontier + 1):
            by_partition = self._buffer.pop(index, None)
            items: tuple[StepItem, ...] = ()
            if by_partition:
                items = tuple(x for p in sorted(by_partition) for x in by_partition[p])
            out.append(ClosedStep(index, self.step_s, items))
        self._cursor = frontier + 1
        return out

    # -- state -------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Plain data: progress per partition, buffered items, the release cursor and counters."""
        return {
            "version": GATE_VERSION, "step_s": self.step_s,
            "real": [[p, s] for p, s in sorted(self._real.items())],
            "empty": sorted(self._empty),
            "idle": [[p, s] for p, s in sorted(self._idle.items())],
            "buffer": [[i, p, [item_to_plain(x) for x in items]]
                       for i, by_p in sorted(self._buffer.items()) for p, items in sorted(by_p.items())],
            "cursor": self._cursor, "first": self._first,
            "late_items": self.late_items, "duplicate_steps": self.duplicate_steps,
        }

    @classmethod
    def from_snapshot(cls, data: dict[str, Any], step_s: float, *, partitions: int | None = None,
                      stale_steps: int | None = None, rejects: Rejects | None = None) -> ProgressGate:
        """Rebuild a gate; ``ValueError`` if ``data`` is another version or another step."""
        if data.get("version") != GATE_VERSION:
            raise ValueError(f"gate snapshot version {data.get('version')!r}, this build reads {GATE_VERSION}")
        if float(data["step_s"]) != float(step_s):
            raise ValueError(f"gate saved with step {data['step_s']} s, this correlator uses {step_s} s")
        g = cls(step_s, partitions=partitions, stale_steps=stale_steps, rejects=rejects)
        g._empty = {int(p) for p in data["empty"]}
        g._real = {int(p): int(s) for p, s in data["real"]}
        g._idle = {int(p): int(s) for p, s in data["idle"]}
        for i, p, items in data["buffer"]:
            g._buffer.setdefault(int(i), {})[int(p)] = [item_from_plain(x) for x in items]
        g._cursor = None if data["cursor"] is None else int(data["cursor"])
        g._first = None if data["first"] is None else int(data["first"])
        g.late_items = int(data["late_items"])
        g.duplicate_steps = int(data["duplicate_steps"])
        return g


def steps_message(partition: int, step_s: float, steps: Iterable[ClosedStep], through: int | None,
                  idle_through: int | None = None, empty: bool = False) -> PartitionSteps:
    """The message a detect half publishes: its non-empty steps, and how far it has closed.

    The first step is kept even when empty, so the correlator starts ticking where the partition started.
    """
    kept = tuple(s for i, s in enumerate(steps) if s.items or i == 0)
    return PartitionSteps(partition, step_s, through, kept, idle_through, empty)


__all__ = ["GATE_VERSION", "ProgressGate", "steps_message"]
