"""Bounded-lateness reorder buffer: releases records in event-time order behind a watermark.

The watermark trails the newest timestamp seen by ``lateness_s``. A record older than what
was already released is late: it is counted and skipped, because processing it would break
the event-time order every stage relies on (and so replay determinism).

>>> from aiops.observe.rejects import Rejects
>>> from aiops.records import ChangeEvent
>>> buf = ReorderBuffer(lateness_s=10, rejects=Rejects(log_examples=False))
>>> ev = lambda ts: ChangeEvent(ts=ts, type="deploy", service="a")
>>> [r.ts for r in buf.push(ev(5))], [r.ts for r in buf.push(ev(3))], [r.ts for r in buf.push(ev(15))]
([], [], [3, 5])
>>> buf.push(ev(2)), [r.ts for r in buf.drain()]
([], [15])
"""

from __future__ import annotations

import heapq
import itertools

from aiops.observe.rejects import Rejects
from aiops.records import Record


class ReorderBuffer:
    def __init__(self, lateness_s: float, rejects: Rejects) -> None:
        self.lateness_s = lateness_s
        self._rejects = rejects
        self._heap: list[tuple[float, int, Record]] = []
        self._seq = itertools.count()  # ties keep arrival order, so equal timestamps replay stably
        self._max_ts = float("-inf")
        self._released = float("-inf")  # everything at or before this has been released

    @property
    def watermark(self) -> float:
        """Event time up to which every record has been released (or will be dropped as late)."""
        return self._released

    def __len__(self) -> int:
        return len(self._heap)

    def push(self, record: Record) -> list[Record]:
        """Accept one record; return the records the watermark now releases, oldest first."""
        ts = record.ts
        if ts < self._released:
            self._rejects.reject("runtime", "late_record", detail=f"{type(record).__name__} at {ts}, "
                                 f"watermark {self._released}")
            return []
        heapq.heappush(self._heap, (ts, next(self._seq), record))
        if ts > self._max_ts:
            self._max_ts = ts
            return self._release(ts - self.lateness_s)
        return []

    def advance(self, event_ts: float) -> list[Record]:
        """Move the watermark to ``event_ts - lateness`` although no record arrived (idle sources)."""
        if event_ts > self._max_ts:
            self._max_ts = event_ts
        return self._release(self._max_ts - self.lateness_s)

    def drain(self) -> list[Record]:
        """Release everything (end of a replay, or shutdown)."""
        return self._release(float("inf"))

    def _release(self, upto: float) -> list[Record]:
        out: list[Record] = []
        heap = self._heap
        while heap and heap[0][0] <= upto:
            out.append(heapq.heappop(heap)[2])
        if upto > self._released:
            self._released = upto if upto != float("inf") else (out[-1].ts if out else self._released)
        return out
